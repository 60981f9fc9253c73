# Dataset index, initial model and feature extraction (HDF5).


rule demo_data:
    output:
        directory(f"{RESULTS}/demo-data"),
    input:
        code("stages/demo_data.py", "data"),
    params:
        seed=config["dataset"]["demo_seed"],
        identities=config["dataset"]["demo_identities"],
        cameras=config["dataset"]["demo_cameras"],
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
        "python -m pipeline demo-data --out {output} --seed {params.seed}"
        " --identities {params.identities} --cameras {params.cameras} > {log} 2>&1"


checkpoint index:
    output:
        index=INDEX,
    input:
        code("stages/index.py", "data"),
        root=dataset_root(),
    params:
        dataset="market1501" if config["dataset"]["name"] == "demo" else config["dataset"]["name"],
        min_images=config["dataset"]["min_images_per_camera"],
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
        "python -m pipeline index --dataset {params.dataset} --root {input.root} --out {output.index}"
        " --min-images-per-camera {params.min_images} > {log} 2>&1"


rule init_model:
    """The initial encoder; with model.calibrate_bn, its BatchNorm statistics are estimated on
    the training images (pipeline/models/calibration.py)."""
    output:
        INIT_MODEL,
    input:
        code("stages/init_model.py", "models", "data/images.py"),
        index=INDEX if CALIBRATE_BN else [],
    params:
        opts=options(
            arch=config["model"]["arch"],
            pooling=config["model"]["pooling"],
            last_stride=config["model"]["last_stride"],
            pretrained=config["model"]["pretrained"],
            weights_path=config["model"]["weights_path"],
            seed=config["model"]["seed"],
        ),
        calibration=(
            options(
                calibrate_index=INDEX,
                calibration_images=config["model"]["calibration_images"],
                height=config["input"]["height"],
                width=config["input"]["width"],
                batch_size=config["extract"]["batch_size"],
                device=config["device"],
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
        "python -m pipeline init-model {params.opts} {params.calibration} --out {output} > {log} 2>&1"


rule extract:
    """Embeddings of one split by one checkpoint: <checkpoint>.<split>.h5 beside <checkpoint>.pt."""
    output:
        "{model}.{split}.h5",
    input:
        code("stages/extract.py", "features", "models", "data/images.py"),
        index=INDEX,
        model="{model}.pt",
    params:
        opts=options(
            height=config["input"]["height"],
            width=config["input"]["width"],
            batch_size=config["extract"]["batch_size"],
            workers=config["extract"]["workers"],
            dtype=config["extract"]["dtype"],
            device=config["device"],
            flip=config["extract"]["flip"],
        ),
    log:
        "{model}.{split}.extract.log",
    benchmark:
        "{model}.{split}.extract.benchmark.tsv"
    wildcard_constraints:
        model=r".*model(_init)?",
    conda:
        ENV
    threads: max(1, config["extract"]["workers"])
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=GPU,
    shell:
        "python -m pipeline extract --index {input.index} --checkpoint {input.model} --split {wildcards.split}"
        " {params.opts} --out {output} > {log} 2>&1"
