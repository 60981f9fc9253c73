# Stage 1 (paper Sec. III-B): per camera, agglomerative clustering of the initial features,
# then a separate encoder trained on that camera's own clusters (Eq. 3); its final clusters
# are the local labels that stage 2 refines with.


rule cluster_intra:
    output:
        f"{SHARED}/intra/cam{{cam}}/labels_init.csv",
    input:
        code("stages/cluster_intra.py", "cluster", "features"),
        features=f"{SHARED}/model_init.train.h5",
    params:
        opts=options(
            ratio=config["intra"]["ratio"],
            distance=config["intra"]["distance"],
            k1=config["intra"]["k1"],
            k2=config["intra"]["k2"],
        ),
    log:
        f"{LOGS}/intra/cam{{cam}}.cluster.log",
    benchmark:
        f"{BENCHMARKS}/intra/cam{{cam}}.cluster.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m pipeline cluster-intra --features {input.features} --camera {wildcards.cam}"
        " {params.opts} --out {output} > {log} 2>&1"


rule train_intra:
    output:
        checkpoint=f"{SHARED}/intra/cam{{cam}}/encoder.pt",
        labels=f"{SHARED}/intra/cam{{cam}}/local_labels.csv",
        log=f"{SHARED}/intra/cam{{cam}}/train_log.csv",
    input:
        code("stages/train_intra.py", "train", "cluster", "features", "models", "data"),
        index=INDEX,
        init=INIT_MODEL,
        labels=f"{SHARED}/intra/cam{{cam}}/labels_init.csv",
    params:
        opts=options(
            epochs=config["intra"]["epochs"],
            ratio=config["intra"]["ratio"],
            distance=config["intra"]["distance"],
            k1=config["intra"]["k1"],
            k2=config["intra"]["k2"],
            height=config["input"]["height"],
            width=config["input"]["width"],
            workers=config["extract"]["workers"],
            device=config["device"],
            seed=config["model"]["seed"],
            **config["intra"]["train"],
        ),
    log:
        f"{LOGS}/intra/cam{{cam}}.train.log",
    benchmark:
        f"{BENCHMARKS}/intra/cam{{cam}}.train.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPU,
    shell:
        "python -m pipeline train-intra --index {input.index} --camera {wildcards.cam}"
        " --init {input.init} --initial-labels {input.labels} {params.opts}"
        " --out-checkpoint {output.checkpoint} --out-labels {output.labels}"
        " --log {output.log} > {log} 2>&1"


rule collect_local_labels:
    """All cameras' local labels in one table, the refinement's input."""
    output:
        LOCAL_LABELS,
    input:
        code("stages/collect_local_labels.py"),
        tables=local_label_tables,
    log:
        f"{LOGS}/intra/collect_local_labels.log",
    benchmark:
        f"{BENCHMARKS}/intra/collect_local_labels.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline collect-local-labels --tables {input.tables} --out {output} > {log} 2>&1"
