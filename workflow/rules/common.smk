# Configuration, paths and input helpers shared by every rule file.
import math
import os
import sys
from pathlib import Path

import pandas as pd
from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, workflow.basedir)
from pipeline.config import deep_merge, validate_config  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402

SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"
try:
    _validated = validate_config(
        config,
        SCHEMAS / "config.schema.yaml",
        source=", ".join(map(str, workflow.configfiles)) or "config",
    )
    EXPERIMENTS = {
        name: validate_config(
            deep_merge(_validated["inter"], overrides),
            SCHEMAS / "inter.schema.yaml",
            source=f"experiments.{name}",
        )
        for name, overrides in _validated["experiments"].items()
    }
except PipelineError as error:
    raise WorkflowError(f"Invalid configuration: {error}") from None
config.clear()
config.update(_validated)

RESULTS = config["results"].rstrip("/")
SHARED = f"{RESULTS}/shared"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
INDEX = f"{SHARED}/index.csv"
INIT_MODEL = f"{SHARED}/model_init.pt"
LOCAL_LABELS = f"{SHARED}/intra/local_labels.csv"
COMPARISON = f"{RESULTS}/comparison.csv"
ENV = "../../envs/pipeline.yaml"

# Every rule runs `python -m pipeline <stage>`. The package is found through PYTHONPATH, and
# `python` is the conda environment's under --use-conda (or --sdm conda), else the python that
# runs Snakemake, so that a virtualenv works without being activated. Jobs inherit both.
_environment = os.environ.copy()
_search_path = [workflow.basedir, _environment.get("PYTHONPATH")]
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, _search_path)))
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    os.environ.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), _environment["PATH"]]))

# A job asks the scheduler for a GPU unless the config says to run on the CPU.
GPU = 0 if config["device"] == "cpu" else 1
# Whether the initial encoder's BatchNorm statistics are estimated on the training images.
CALIBRATE_BN = config["model"]["calibrate_bn"]
# On the CPU, OpenMP threads that spin between operations steal the cores of the jobs next to
# them (measured: a ResNet-18 forward 15.2 -> 19.8 images/s on a loaded 2-core machine).
if not GPU and "OMP_WAIT_POLICY" not in _environment:
    os.environ.update(OMP_WAIT_POLICY="PASSIVE")

wildcard_constraints:
    exp="|".join(map(str, EXPERIMENTS)),
    r=r"\d+",
    cam=r"\d+",
    split="train|query|gallery",


def code(*parts):
    """The package sources a stage runs, as inputs: editing them reruns the stage."""
    root = Path(workflow.basedir) / "pipeline"
    files = []
    for part in ("cli.py", "io.py", "errors.py", *parts):
        path = root / part
        files += sorted(map(str, path.glob("*.py"))) if path.is_dir() else [str(path)]
    return files


def options(**values):
    """Command-line options from keyword values: `flag=True` -> --flag, False -> --no-flag."""
    words = []
    for key, value in values.items():
        name = key.replace("_", "-")
        if isinstance(value, bool):
            words.append(f"--{name}" if value else f"--no-{name}")
        elif value is not None:
            words.append(f"--{name} {value}")
    return " ".join(words)


# ---------------------------------------------------------------- dataset and cameras
def dataset_root():
    if config["dataset"]["name"] == "demo":
        return f"{RESULTS}/demo-data"
    if not config["dataset"]["root"]:
        raise WorkflowError(f"dataset.root must be set for dataset {config['dataset']['name']}")
    return config["dataset"]["root"]


def cameras():
    """Training cameras, read from the dataset index (a checkpoint: known once it exists)."""
    index = pd.read_csv(checkpoints.index.get().output.index, usecols=["camid", "split"])
    return sorted(index.loc[index["split"] == "train", "camid"].unique().tolist())


def local_label_tables(wildcards=None):
    return [f"{SHARED}/intra/cam{cam}/local_labels.csv" for cam in cameras()]


# ---------------------------------------------------------------- rounds of stage 2
def n_rounds(exp):
    settings = EXPERIMENTS[exp]
    return math.ceil(settings["epochs"] / settings["epochs_per_round"])


def first_epoch(exp, r):
    return int(r) * EXPERIMENTS[exp]["epochs_per_round"]


def round_epochs(exp, r):
    settings = EXPERIMENTS[exp]
    return min(settings["epochs_per_round"], settings["epochs"] - first_epoch(exp, r))


def model_before_round(exp, r):
    """Checkpoint (without .pt) that round r starts from: the initial model, or round r-1's."""
    r = int(r)
    return f"{SHARED}/model_init" if r == 0 else f"{RESULTS}/{exp}/round{r - 1}/model"


def final_model(exp):
    return f"{RESULTS}/{exp}/round{n_rounds(exp) - 1}/model"


def round_features(wildcards):
    return f"{model_before_round(wildcards.exp, wildcards.r)}.train.h5"


def refine_local_labels(wildcards):
    """Stage 1's labels of all cameras in one table (a fixed path: no checkpoint lookup here,
    so that the refinement's inputs are known when its round's group job is formed)."""
    mode = EXPERIMENTS[wildcards.exp]["refine"]["mode"]
    return [] if mode == "none" else [LOCAL_LABELS]


def round_files(name):
    def files(wildcards):
        return [f"{RESULTS}/{wildcards.exp}/round{r}/{name}" for r in range(n_rounds(wildcards.exp))]

    return files


def refine_options(exp, r):
    """Options of round r's refinement; without refinement, only that (so that changing the
    unused refinement settings of such an experiment reruns nothing)."""
    refine = EXPERIMENTS[exp]["refine"]
    floor = EXPERIMENTS[exp]["weight_floor"] if EXPERIMENTS[exp]["cluster_weights"] else None
    if refine["mode"] == "none":
        return options(mode="none", weight_floor=floor)
    return options(
        mode=refine["mode"],
        weight_floor=floor,
        schedule=refine["schedule"],
        p0=refine["p0"],
        pivot_k=refine["pivot_k"],
        epoch=first_epoch(exp, r),
        total_epochs=EXPERIMENTS[exp]["epochs"],
        seed=config["model"]["seed"] + int(r),
    )


# ---------------------------------------------------------------- evaluation
def experiment_of(model):
    """Row label of a checkpoint in the comparison: its experiment, or `initial`."""
    return "initial" if model.endswith("model_init") else Path(model).parent.parent.name


def epoch_of(model):
    if model.endswith("model_init"):
        return 0
    exp = experiment_of(model)
    r = int(Path(model).parent.name.removeprefix("round"))
    return first_epoch(exp, r) + round_epochs(exp, r)


def print_comparison():
    if Path(COMPARISON).is_file():
        table = pd.read_csv(COMPARISON).to_string(index=False, float_format="%.4f")
        print(f"\nResults ({COMPARISON}):\n{table}")
