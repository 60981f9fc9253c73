# Stage 2 (paper Sec. III-C, Algorithm 1), one round at a time: global clustering of the
# current features, pivot-based refinement with the local labels, then `epochs_per_round`
# epochs of adversarial inter-camera training. Round r starts from round r-1's checkpoint
# (round 0 from the initial model), so the rounds chain through files.


rule cluster_global:
    output:
        clusters=f"{RESULTS}/{{exp}}/round{{r}}/clusters.csv",
        summary=f"{RESULTS}/{{exp}}/round{{r}}/clusters.json",
        neighbours=f"{RESULTS}/{{exp}}/round{{r}}/neighbours.npz",
    input:
        code("stages/cluster_global.py", "cluster", "features"),
        features=round_features,
    params:
        opts=lambda w: options(
            method=EXPERIMENTS[w.exp]["clusterer"],
            knn=EXPERIMENTS[w.exp]["knn"],
            k=EXPERIMENTS[w.exp]["k"],
            min_sim=EXPERIMENTS[w.exp]["min_sim"],
            min_size=EXPERIMENTS[w.exp]["min_size"],
            tune_iterations=EXPERIMENTS[w.exp]["tune_iterations"],
            eps=EXPERIMENTS[w.exp]["eps"],
            min_samples=EXPERIMENTS[w.exp]["min_samples"],
            seed=config["model"]["seed"],
        ),
    log:
        f"{LOGS}/{{exp}}/round{{r}}.cluster.log",
    benchmark:
        f"{BENCHMARKS}/{{exp}}/round{{r}}.cluster.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    group:
        "round"
    shell:
        "python -m pipeline cluster-global --features {input.features} {params.opts}"
        " --out {output.clusters} --summary {output.summary}"
        " --out-neighbours {output.neighbours} > {log} 2>&1"


rule refine:
    output:
        labels=f"{RESULTS}/{{exp}}/round{{r}}/refined.csv",
        summary=f"{RESULTS}/{{exp}}/round{{r}}/refine.json",
    input:
        code("stages/refine.py", "stages/collect_local_labels.py", "cluster", "features"),
        clusters=f"{RESULTS}/{{exp}}/round{{r}}/clusters.csv",
        neighbours=f"{RESULTS}/{{exp}}/round{{r}}/neighbours.npz",
        features=round_features,
        local_labels=refine_local_labels,
    params:
        opts=lambda w: refine_options(w.exp, w.r),
        local_labels=lambda w, input: (
            f"--local-labels {' '.join(input.local_labels)}" if input.local_labels else ""
        ),
    log:
        f"{LOGS}/{{exp}}/round{{r}}.refine.log",
    benchmark:
        f"{BENCHMARKS}/{{exp}}/round{{r}}.refine.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    group:
        "round"
    shell:
        "python -m pipeline refine --clusters {input.clusters} --features {input.features}"
        " --neighbours {input.neighbours} {params.local_labels} {params.opts}"
        " --out {output.labels} --summary {output.summary} > {log} 2>&1"


rule train_inter:
    output:
        model=f"{RESULTS}/{{exp}}/round{{r}}/model.pt",
        log=f"{RESULTS}/{{exp}}/round{{r}}/train_log.csv",
    input:
        code("stages/train_inter.py", "train", "features", "models", "data"),
        index=INDEX,
        labels=f"{RESULTS}/{{exp}}/round{{r}}/refined.csv",
        summary=f"{RESULTS}/{{exp}}/round{{r}}/refine.json",
        init=lambda w: f"{model_before_round(w.exp, w.r)}.pt",
    params:
        opts=lambda w: options(
            epochs=round_epochs(w.exp, w.r),
            total_epochs=EXPERIMENTS[w.exp]["epochs"],
            beta=EXPERIMENTS[w.exp]["beta"],
            grl_lambda=EXPERIMENTS[w.exp]["grl_lambda"],
            camera_loss=EXPERIMENTS[w.exp]["camera_loss"],
            cluster_weights=EXPERIMENTS[w.exp]["cluster_weights"],
            height=config["input"]["height"],
            width=config["input"]["width"],
            workers=config["extract"]["workers"],
            device=config["device"],
            seed=config["model"]["seed"],
            **EXPERIMENTS[w.exp]["train"],
        ),
    log:
        f"{LOGS}/{{exp}}/round{{r}}.train.log",
    benchmark:
        f"{BENCHMARKS}/{{exp}}/round{{r}}.train.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=GPU,
    shell:
        "python -m pipeline train-inter --index {input.index} --labels {input.labels}"
        " --refine-summary {input.summary} --init {input.init} {params.opts}"
        " --out-checkpoint {output.model} --log {output.log} > {log} 2>&1"
