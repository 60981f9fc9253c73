# CALR as a Snakemake workflow: see README.md. This file only declares the targets; each stage
# is one rule file in workflow/rules/, and every rule calls one `pipeline <stage>` command.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the demo. A --configfile replaces it rather than being merged into it: keys the
# given file leaves out take the schema's defaults (workflow/schemas), never the demo's values.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/intra.smk"
include: "workflow/rules/inter.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    collect_local_labels,
    compare,


rule all:
    input:
        COMPARISON,
        expand(f"{RESULTS}/{{exp}}/seed{{seed}}/report/summary.md", exp=EXPERIMENTS, seed=SEEDS),


onsuccess:
    print_comparison()
