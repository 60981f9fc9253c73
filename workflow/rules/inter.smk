# Stage 2 (paper Sec. III-C, Algorithm 1), one round at a time: global clustering of the
# current features, pivot-based refinement with the local labels, then `epochs_per_round`
# epochs of adversarial inter-camera training. Round r starts from round r-1's checkpoint
# (round 0 from the initial model), so the rounds chain through files. Every experiment runs
# once per seed, under <results>/<experiment>/seed<seed>/.


rule cluster_global:
    output:
        clusters=f"{RESULTS}/{{exp}}/seed{{seed}}/round{{r}}/clusters.csv",
        summary=f"{RESULTS}/{{exp}}/seed{{seed}}/round{{r}}/clusters.json",
        neighbours=f"{RESULTS}/{{exp}}/seed{{seed}}/round{{r}}/neighbours.npz",
    input:
        features=round_features,
        local_labels=clustering_local_labels,
    params:
        code=code("cluster_global"),
        opts=lambda w: " ".join(
            [
                clusterer_options(w.exp),
                cli({"knn": EXPERIMENTS[w.exp]["knn"]}, "inter"),
                runtime("device"),
                cli({"seed": int(w.seed)}),
            ]
        ),
        local_labels=local_labels_option,
    log:
        f"{LOGS}/{{exp}}/seed{{seed}}/round{{r}}.cluster.log",
    benchmark:
        f"{BENCHMARKS}/{{exp}}/seed{{seed}}/round{{r}}.cluster.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        # the neighbour search runs on the GPU (pipeline/cluster/knn.py)
        gpu=GPU,
    group:
        "round"
    shell:
        on_gpus(
            "python -m pipeline cluster-global --features {input.features:q}"
            " {params.local_labels} {params.opts}"
            " --out {output.clusters:q} --summary {output.summary:q}"
            " --out-neighbours {output.neighbours:q} > {log:q} 2>&1"
        )


rule refine:
    output:
        labels=f"{RESULTS}/{{exp}}/seed{{seed}}/round{{r}}/refined.csv",
        summary=f"{RESULTS}/{{exp}}/seed{{seed}}/round{{r}}/refine.json",
    input:
        clusters=rules.cluster_global.output.clusters,
        neighbours=rules.cluster_global.output.neighbours,
        features=round_features,
        local_labels=refine_local_labels,
    params:
        code=code("refine"),
        opts=lambda w: refine_options(w.exp, w.seed, w.r),
        local_labels=local_labels_option,
    log:
        f"{LOGS}/{{exp}}/seed{{seed}}/round{{r}}.refine.log",
    benchmark:
        f"{BENCHMARKS}/{{exp}}/seed{{seed}}/round{{r}}.refine.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    group:
        "round"
    shell:
        "python -m pipeline refine --clusters {input.clusters:q} --features {input.features:q}"
        " --neighbours {input.neighbours:q} {params.local_labels} {params.opts}"
        " --out {output.labels:q} --summary {output.summary:q} > {log:q} 2>&1"


rule train_inter:
    output:
        model=f"{RESULTS}/{{exp}}/seed{{seed}}/round{{r}}/model.pt",
        log=f"{RESULTS}/{{exp}}/seed{{seed}}/round{{r}}/train_log.csv",
    input:
        index=INDEX,
        labels=rules.refine.output.labels,
        summary=rules.refine.output.summary,
        init=lambda w: f"{model_before_round(w.exp, w.seed, w.r)}.pt",
        local_labels=training_local_labels,
    params:
        code=code("train_inter"),
        local_labels=local_labels_option,
        opts=lambda w: " ".join(
            [
                f"--experiment {quoted(w.exp)}",
                f"--epochs {round_epochs(w.exp, w.r)}",
                f"--total-epochs {EXPERIMENTS[w.exp]['epochs']}",
                cli(EXPERIMENTS[w.exp]["css"], "inter", "css"),
                loss_options(w.exp),
                cli(EXPERIMENTS[w.exp]["train"], "inter", "train"),
                cli(config["input"], "input"),
                runtime("device", "deterministic"),
                cli({"seed": int(w.seed)}),
            ]
        ),
    log:
        f"{LOGS}/{{exp}}/seed{{seed}}/round{{r}}.train.log",
    benchmark:
        f"{BENCHMARKS}/{{exp}}/seed{{seed}}/round{{r}}.train.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=lambda w: GPU * EXPERIMENTS[w.exp]["train"]["gpus"],
    shell:
        on_gpus(
            "python -m pipeline train-inter --index {input.index:q} --labels {input.labels:q}"
            " --refine-summary {input.summary:q} --init {input.init:q} {params.local_labels}"
            " {params.opts}"
            " --out-checkpoint {output.model:q} --log {output.log:q} > {log:q} 2>&1"
        )
