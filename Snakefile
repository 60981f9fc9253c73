# CALR as a Snakemake workflow: see README.md. This file only declares the targets; each stage
# is one rule file in workflow/rules/, and every rule calls one `pipeline <stage>` command.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/intra.smk"
include: "workflow/rules/inter.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    compare,


rule all:
    input:
        COMPARISON,
        expand(f"{RESULTS}/{{exp}}/report/summary.md", exp=EXPERIMENTS),


onsuccess:
    print_comparison()
