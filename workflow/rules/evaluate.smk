# Retrieval metrics (mAP, CMC, mINP) of a checkpoint on the query and gallery splits, and the
# comparison table across experiments. The delivered model of an experiment is its last
# round's: nothing here selects a model on test data.


rule evaluate:
    """The metrics of one checkpoint; its experiment, epoch and seed come from the checkpoint
    (recorded in the feature files by `pipeline extract`)."""
    output:
        "{model}.metrics.csv",
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
            " --gallery-features {input.gallery:q} {params.opts} --out {output:q} > {log:q} 2>&1"
        )


rule compare:
    output:
        table=report(COMPARISON, caption="../report/comparison.rst", category="Comparison"),
        markdown=f"{RESULTS}/comparison.md",
    input:
        metrics=[f"{INIT_MODEL.removesuffix('.pt')}.metrics.csv"]
        + [f"{final_model(exp, seed)}.metrics.csv" for exp in EXPERIMENTS for seed in SEEDS],
    params:
        code=code("compare"),
        config=quoted(workflow.configfiles[0] if workflow.configfiles else "config.yaml"),
    log:
        f"{LOGS}/compare.log",
    benchmark:
        f"{BENCHMARKS}/compare.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m pipeline compare --metrics {input.metrics:q} --out {output.table:q}"
        " --markdown {output.markdown:q} --config {params.config} > {log:q} 2>&1"
