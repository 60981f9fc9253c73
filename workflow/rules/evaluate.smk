# Retrieval metrics (mAP, CMC, mINP) of a checkpoint on the query and gallery splits, and the
# comparison across experiments and seeds. The delivered model of an experiment is its last
# round's: nothing here selects a model on test data. With evaluate.every_round the report also
# asks this rule for each earlier round's metrics (common.smk, round_metrics), which it plots for
# monitoring only; the comparison reads the last round's.

# the evaluated models (checkpoints without .pt): the initial one, shared by every seed, then
# each experiment's final model for each seed
EVALUATED = [INIT_MODEL.removesuffix(".pt")] + [
    final_model(exp, seed) for exp in EXPERIMENTS for seed in SEEDS
]


rule evaluate:
    """The metrics of one checkpoint and the scores of each query; its experiment, epoch and
    seed come from the checkpoint (recorded in the feature files by `pipeline extract`)."""
    output:
        metrics="{model}.metrics.csv",
        per_query="{model}.per_query.csv",
    input:
        index=INDEX,
        query="{model}.query.h5",
        gallery="{model}.gallery.h5",
    params:
        code=code("evaluate"),
        opts=" ".join(
            [
                f"--dataset {quoted(config['dataset']['name'])}",
                cli(config["evaluate"], "evaluate"),
                runtime("device", "deterministic"),
            ]
        ),
    log:
        "{model}.metrics.log",
    benchmark:
        "{model}.metrics.benchmark.tsv"
    wildcard_constraints:
        model=r".*model(_init)?",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    shell:
        on_gpus(
            "python -m pipeline evaluate --index {input.index:q} --query-features {input.query:q}"
            " --gallery-features {input.gallery:q} {params.opts} --out {output.metrics:q}"
            " --per-query {output.per_query:q} > {log:q} 2>&1"
        )


rule compare:
    """The comparison with uncertainty (pipeline/report/replicates.py): per experiment the mean
    and spread over seeds, per run a bootstrap interval over query identities, per experiment
    the paired difference against compare.baseline and its verdict. The HTML page, not the
    CSV, goes into the report: Snakemake's report shows HTML in the page and offers a CSV
    only as a download."""
    output:
        table=COMPARISON,
        runs=f"{RESULTS}/comparison_runs.csv",
        differences=f"{RESULTS}/comparison_differences.csv",
        markdown=f"{RESULTS}/comparison.md",
        text=COMPARISON_TEXT,
        html=report(
            f"{RESULTS}/comparison.html",
            caption="../report/comparison.rst",
            category="Comparison",
        ),
        plot=report(
            f"{RESULTS}/replicates.png",
            caption="../report/replicates.rst",
            category="Comparison",
        ),
    input:
        metrics=[f"{model}.metrics.csv" for model in EVALUATED],
        per_query=[f"{model}.per_query.csv" for model in EVALUATED],
    params:
        code=code("compare"),
        opts=cli(config["compare"], "compare"),
        shared=INITIAL,
        config=quoted(workflow.configfiles[0] if workflow.configfiles else "config.yaml"),
    log:
        f"{LOGS}/compare.log",
    benchmark:
        f"{BENCHMARKS}/compare.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline compare --metrics {input.metrics:q} --per-query {input.per_query:q}"
        " --shared {params.shared} {params.opts} --out {output.table:q}"
        " --runs-table {output.runs:q} --differences-table {output.differences:q}"
        " --markdown {output.markdown:q} --html {output.html:q} --text {output.text:q}"
        " --plot {output.plot:q} --config {params.config} > {log:q} 2>&1"
