# Per-experiment figures and tables (curves, cluster quality, t-SNE by camera, retrieval grid),
# marked for Snakemake's HTML report: `snakemake --report report.html`.


rule report:
    output:
        summary=f"{RESULTS}/{{exp}}/report/summary.md",
        curves=report(
            f"{RESULTS}/{{exp}}/report/curves.png",
            caption="../report/curves.rst",
            category="{exp}",
        ),
        quality=report(
            f"{RESULTS}/{{exp}}/report/cluster_quality.png",
            caption="../report/cluster_quality.rst",
            category="{exp}",
        ),
        tsne=report(
            f"{RESULTS}/{{exp}}/report/tsne_cameras.png",
            caption="../report/tsne.rst",
            category="{exp}",
        ),
        retrieval=report(
            f"{RESULTS}/{{exp}}/report/retrieval.png",
            caption="../report/retrieval.rst",
            category="{exp}",
        ),
    input:
        code("stages/report.py", "report", "features"),
        index=INDEX,
        # a round's training log carries every earlier round's rows too
        log=lambda w: f"{RESULTS}/{w.exp}/round{n_rounds(w.exp) - 1}/train_log.csv",
        summaries=round_files("refine.json"),
        before=f"{SHARED}/model_init.train.h5",
        after=lambda w: f"{final_model(w.exp)}.train.h5",
        query=lambda w: f"{final_model(w.exp)}.query.h5",
        gallery=lambda w: f"{final_model(w.exp)}.gallery.h5",
        metrics=lambda w: f"{final_model(w.exp)}.metrics.csv",
    params:
        opts=options(
            tsne_points=config["report"]["tsne_points"],
            retrieval_queries=config["report"]["retrieval_queries"],
            seed=config["model"]["seed"],
        ),
        out_dir=lambda w, output: str(Path(output.summary).parent),
    log:
        f"{LOGS}/{{exp}}/report.log",
    benchmark:
        f"{BENCHMARKS}/{{exp}}/report.tsv"
    conda:
        ENV
    threads: 1  # t-SNE is several times slower with many OpenMP threads on a busy machine
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m pipeline report --experiment {wildcards.exp} --index {input.index}"
        " --train-logs {input.log} --refine-summaries {input.summaries}"
        " --features-before {input.before} --features-after {input.after}"
        " --query {input.query} --gallery {input.gallery} --metrics {input.metrics}"
        " {params.opts} --out-dir {params.out_dir} > {log} 2>&1"
