# Stage 1 (paper Sec. III-B): per camera, agglomerative clustering of the initial features,
# then a separate encoder trained on that camera's own clusters (Eq. 3); its final clusters
# are the local labels that stage 2 refines with. The first clustering depends on the initial
# features only and is shared by every seed; the training is per seed.


rule cluster_intra:
    output:
        f"{SHARED}/intra/cam{{cam}}/labels_init.csv",
    input:
        features=f"{SHARED}/model_init.train.h5",
    params:
        code=code("cluster_intra"),
        opts=cli(config["intra"]["clustering"], "intra", "clustering"),
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
        "python -m pipeline cluster-intra --features {input.features:q} --camera {wildcards.cam}"
        " {params.opts} --out {output:q} > {log:q} 2>&1"


rule train_intra:
    output:
        checkpoint=f"{SHARED}/seed{{seed}}/intra/cam{{cam}}/encoder.pt",
        labels=f"{SHARED}/seed{{seed}}/intra/cam{{cam}}/local_labels.csv",
        log=f"{SHARED}/seed{{seed}}/intra/cam{{cam}}/train_log.csv",
    input:
        index=INDEX,
        init=INIT_MODEL,
        labels=rules.cluster_intra.output[0],
    params:
        code=code("train_intra"),
        opts=lambda w: " ".join(
            [
                f"--epochs {config['intra']['epochs']}",
                cli(config["intra"]["clustering"], "intra", "clustering"),
                cli(config["intra"]["train"], "intra", "train"),
                cli(config["input"], "input"),
                runtime("device", "deterministic"),
                cli({"seed": int(w.seed)}),
            ]
        ),
    log:
        f"{LOGS}/seed{{seed}}/intra/cam{{cam}}.train.log",
    benchmark:
        f"{BENCHMARKS}/seed{{seed}}/intra/cam{{cam}}.train.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=GPU * config["intra"]["train"]["gpus"],
    shell:
        on_gpus(
            "python -m pipeline train-intra --index {input.index:q} --camera {wildcards.cam}"
            " --init {input.init:q} --initial-labels {input.labels:q} {params.opts}"
            " --out-checkpoint {output.checkpoint:q} --out-labels {output.labels:q}"
            " --log {output.log:q} > {log:q} 2>&1"
        )


rule collect_local_labels:
    """All cameras' local labels in one table, the refinement's input."""
    output:
        f"{SHARED}/seed{{seed}}/intra/local_labels.csv",
    input:
        tables=local_label_tables,
    params:
        code=code("collect_local_labels"),
    log:
        f"{LOGS}/seed{{seed}}/intra/collect_local_labels.log",
    benchmark:
        f"{BENCHMARKS}/seed{{seed}}/intra/collect_local_labels.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline collect-local-labels --tables {input.tables:q} --out {output:q}"
        " > {log:q} 2>&1"


rule ics_labels:
    """Each camera's annotated identities, renumbered per camera so that no identity links two
    cameras: the local labels of the experiments in the intra-camera supervised setting
    (inter.local_labels: annotations), in place of stage 1."""
    output:
        ics_labels_table("{seed}"),
    input:
        index=INDEX,
    params:
        code=code("ics_labels"),
        opts=lambda w: cli({"seed": int(w.seed)}),
    log:
        f"{LOGS}/seed{{seed}}/ics_labels.log",
    benchmark:
        f"{BENCHMARKS}/seed{{seed}}/ics_labels.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m pipeline ics-labels --index {input.index:q} {params.opts} --out {output:q}"
        " > {log:q} 2>&1"
