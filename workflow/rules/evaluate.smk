# Retrieval metrics (mAP, CMC, mINP) of a checkpoint on the query and gallery splits, and the
# comparison table across experiments. The delivered model of an experiment is its last
# round's: nothing here selects a model on test data.


rule evaluate:
    output:
        "{model}.metrics.csv",
    input:
        code("stages/evaluate.py", "evaluate", "features"),
        index=INDEX,
        query="{model}.query.h5",
        gallery="{model}.gallery.h5",
    params:
        experiment=lambda w: experiment_of(w.model),
        dataset=config["dataset"]["name"],
        epoch=lambda w: epoch_of(w.model),
        opts=options(
            max_rank=config["evaluate"]["max_rank"],
            k1=config["evaluate"]["k1"],
            k2=config["evaluate"]["k2"],
            lambda_value=config["evaluate"]["lambda_value"],
            rerank=config["evaluate"]["rerank"],
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
    shell:
        "python -m pipeline evaluate --index {input.index} --query-features {input.query}"
        " --gallery-features {input.gallery} --experiment {params.experiment}"
        " --dataset {params.dataset} --epoch {params.epoch} {params.opts}"
        " --out {output} > {log} 2>&1"


rule compare:
    output:
        table=report(COMPARISON, caption="../report/comparison.rst", category="Comparison"),
        markdown=f"{RESULTS}/comparison.md",
    input:
        code("stages/compare.py"),
        metrics=[f"{INIT_MODEL.removesuffix('.pt')}.metrics.csv"]
        + [f"{final_model(exp)}.metrics.csv" for exp in EXPERIMENTS],
    params:
        config=workflow.configfiles[0] if workflow.configfiles else "config.yaml",
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
        "python -m pipeline compare --metrics {input.metrics} --out {output.table}"
        " --markdown {output.markdown} --config {params.config} > {log} 2>&1"
