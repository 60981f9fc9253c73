# Per-experiment figures and tables (curves, cluster quality, t-SNE by camera, retrieval grid),
# marked for Snakemake's HTML report: `snakemake --report report.html`.


rule report:
    output:
        summary=f"{RESULTS}/{{exp}}/seed{{seed}}/report/summary.md",
        curves=report(
            f"{RESULTS}/{{exp}}/seed{{seed}}/report/curves.png",
            caption="../report/curves.rst",
            category="{exp}",
            subcategory="seed {seed}",
        ),
        quality=report(
            f"{RESULTS}/{{exp}}/seed{{seed}}/report/cluster_quality.png",
            caption="../report/cluster_quality.rst",
            category="{exp}",
            subcategory="seed {seed}",
        ),
        tsne=report(
            f"{RESULTS}/{{exp}}/seed{{seed}}/report/tsne_cameras.png",
            caption="../report/tsne.rst",
            category="{exp}",
            subcategory="seed {seed}",
        ),
        retrieval=report(
            f"{RESULTS}/{{exp}}/seed{{seed}}/report/retrieval.png",
            caption="../report/retrieval.rst",
            category="{exp}",
            subcategory="seed {seed}",
        ),
    input:
        index=INDEX,
        # a round's training log carries every earlier round's rows too
        log=lambda w: f"{final_model(w.exp, w.seed).removesuffix('model')}train_log.csv",
        summaries=round_files("refine.json"),
        before=f"{SHARED}/model_init.train.h5",
        after=lambda w: f"{final_model(w.exp, w.seed)}.train.h5",
        query=lambda w: f"{final_model(w.exp, w.seed)}.query.h5",
        gallery=lambda w: f"{final_model(w.exp, w.seed)}.gallery.h5",
        metrics=lambda w: f"{final_model(w.exp, w.seed)}.metrics.csv",
        round_metrics=round_metrics,
    params:
        code=code("report"),
        opts=lambda w: " ".join([cli(config["report"], "report"), cli({"seed": int(w.seed)})]),
        round_metrics=lambda w, input: (
            f"--round-metrics {quoted(*input.round_metrics)}" if input.round_metrics else ""
        ),
        out_dir=lambda w, output: quoted(Path(output.summary).parent),
    log:
        f"{LOGS}/{{exp}}/seed{{seed}}/report.log",
    benchmark:
        f"{BENCHMARKS}/{{exp}}/seed{{seed}}/report.tsv"
    conda:
        ENV
    threads: 1  # t-SNE is several times slower with many OpenMP threads on a busy machine
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m pipeline report --experiment {wildcards.exp} --index {input.index:q}"
        " --train-logs {input.log:q} --refine-summaries {input.summaries:q}"
        " --features-before {input.before:q} --features-after {input.after:q}"
        " --query {input.query:q} --gallery {input.gallery:q} --metrics {input.metrics:q}"
        " {params.round_metrics} {params.opts} --out-dir {params.out_dir} > {log:q} 2>&1"
