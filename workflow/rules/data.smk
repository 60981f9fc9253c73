# Dataset index, initial model and feature extraction (HDF5).


rule demo_data:
    output:
        directory(f"{RESULTS}/demo-data"),
    params:
        code=code("demo_data"),
        opts=cli(config["demo"], "demo"),
    log:
        f"{LOGS}/demo_data.log",
    benchmark:
        f"{BENCHMARKS}/demo_data.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline demo-data --out {output:q} {params.opts} > {log:q} 2>&1"


checkpoint index:
    output:
        index=INDEX,
    input:
        root=dataset_root(),
    params:
        code=code("index"),
        opts=lambda w, input: cli({**config["dataset"], "root": input.root}, "dataset"),
    log:
        f"{LOGS}/index.log",
    benchmark:
        f"{BENCHMARKS}/index.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m pipeline index {params.opts} --out {output.index:q} > {log:q} 2>&1"


rule init_model:
    """The initial encoder; with model.calibrate_bn, its BatchNorm statistics are estimated on
    the training images (pipeline/models/calibration.py)."""
    output:
        INIT_MODEL,
    input:
        index=INDEX if CALIBRATE_BN else [],
    params:
        code=code("init_model"),
        opts=f"{cli(config['model'], 'model')} {runtime('seed')}",
        calibration=(
            " ".join(
                [
                    f"--calibrate-index {quoted(INDEX)}",
                    cli(config["input"], "input"),
                    runtime("device"),
                ]
            )
            if CALIBRATE_BN
            else ""
        ),
    log:
        f"{LOGS}/init_model.log",
    benchmark:
        f"{BENCHMARKS}/init_model.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=GPU if CALIBRATE_BN else 0,
    shell:
        on_gpus(
            "python -m pipeline init-model {params.opts} {params.calibration} --out {output:q}"
            " > {log:q} 2>&1"
        )


rule extract:
    """Embeddings of one split by one checkpoint: <checkpoint>.<split>.h5 beside <checkpoint>.pt."""
    output:
        "{model}.{split}.h5",
    input:
        index=INDEX,
        model="{model}.pt",
    params:
        code=code("extract"),
        opts=" ".join(
            [
                cli(config["extract"], "extract"),
                cli(config["input"], "input"),
                runtime("device", "deterministic"),
            ]
        ),
    log:
        "{model}.{split}.extract.log",
    benchmark:
        "{model}.{split}.extract.benchmark.tsv"
    wildcard_constraints:
        model=r".*model(_init)?",
    conda:
        ENV
    threads: max(1, config["extract"]["workers"] or 0)
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    shell:
        on_gpus(
            "python -m pipeline extract --index {input.index:q} --checkpoint {input.model:q}"
            " --split {wildcards.split} {params.opts} --out {output:q} > {log:q} 2>&1"
        )
