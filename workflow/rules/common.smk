# Configuration, paths and input helpers shared by every rule file.
import math
import os
import shlex
import sys
from pathlib import Path

import pandas as pd
from snakemake.settings.types import DeploymentMethod

sys.path.insert(0, workflow.basedir)
from pipeline.config import (  # noqa: E402
    INITIAL,
    command_line,
    load_schema,
    validate_workflow_config,
)
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.sources import code_hash  # noqa: E402

SCHEMAS = Path(workflow.basedir) / "workflow" / "schemas"
# the config schema, references inlined: a section's schema names each key's command-line flag
CONFIG_SCHEMA = load_schema(SCHEMAS / "config.schema.yaml")


def check_results_folder(results: str) -> str:
    """The results folder, refused when it is the filesystem root or holds the project."""
    where = Path(os.path.abspath(results))
    project = Path(workflow.basedir).resolve()
    if not results.strip() or where.resolve() == Path(where.anchor):
        raise PipelineError(f"results {results!r}: the results folder cannot be the filesystem root")
    if where.resolve() in (project, *project.parents) or any(
        where.resolve() == project / name or project / name in where.resolve().parents
        for name in ("pipeline", "workflow", "tests", "config", "envs", "profiles", "docs")
    ):
        raise PipelineError(
            f"results {results!r} resolves to {where.resolve()}, inside the project's own "
            "folders or above them; choose a folder of its own, such as results/<name>"
        )
    return results.rstrip("/") or results


try:
    _validated, EXPERIMENTS = validate_workflow_config(
        config, CONFIG_SCHEMA, source=", ".join(map(str, workflow.configfiles)) or "config"
    )
    RESULTS = check_results_folder(_validated["results"])
except PipelineError as error:
    raise WorkflowError(f"Invalid configuration: {error}") from None
config.clear()
config.update(_validated)

SHARED = f"{RESULTS}/shared"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
INDEX = f"{SHARED}/index.csv"
INIT_MODEL = f"{SHARED}/model_init.pt"
COMPARISON = f"{RESULTS}/comparison.csv"
COMPARISON_TEXT = f"{RESULTS}/comparison.txt"
ENV = "../../envs/pipeline.yaml"
# Replicates: every experiment runs once per seed (stage 1's training and stage 2); the
# index, the initial model, its features and the first intra-camera clustering do not depend
# on the seed and are shared by all.
SEEDS = [config["seed"] + replicate for replicate in range(config["replicates"])]

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
# Snakemake would cap a job's GPU request at the run's gpu resource without a word, and the
# training job would then claim fewer GPUs than its processes use: refused at start-up instead.
_gpus_asked = max(
    [config["intra"]["train"]["gpus"]] + [exp["train"]["gpus"] for exp in EXPERIMENTS.values()]
)
_gpus_given = getattr(workflow.global_resources.get("gpu"), "value", None)
if GPU and isinstance(_gpus_given, int) and _gpus_asked > _gpus_given:
    raise WorkflowError(
        f"Invalid configuration: train.gpus {_gpus_asked} but this run may use {_gpus_given} "
        f"GPU(s) (resources gpu in the profile, or --resources gpu=N); raise it to {_gpus_asked} "
        "or lower train.gpus"
    )
# Whether the initial encoder's BatchNorm statistics are estimated on the training images.
CALIBRATE_BN = config["model"]["calibrate_bn"]
# On the CPU, OpenMP threads that spin between operations steal the cores of the jobs next to
# them (measured: a ResNet-18 forward 15.2 -> 19.8 images/s on a loaded 2-core machine).
if not GPU and "OMP_WAIT_POLICY" not in _environment:
    os.environ.update(OMP_WAIT_POLICY="PASSIVE")

wildcard_constraints:
    exp="|".join(map(str, EXPERIMENTS)),
    seed=r"\d+",
    r=r"\d+",
    cam=r"\d+",
    split="train|query|gallery",


def code(stage):
    """The content hash of the code `pipeline <stage>` runs (pipeline/sources.py): a parameter
    of the stage's rule, so that editing that code, and only that code, reruns the stage."""
    return code_hash(workflow.basedir, f"pipeline.stages.{stage}")


def cli(values, *path, only=None):
    """The options that pass ``values``, the config section at ``path`` (e.g. "inter",
    "refine"; none: top-level keys), to a stage, quoted for the shell: each key's flag comes
    from the section's schema, that is from the stage's settings class."""
    section = CONFIG_SCHEMA
    for key in path:
        section = section["properties"][key]
    return command_line(values, section, only)


def runtime(*keys):
    """Options from the config's top-level keys (seed, device, deterministic)."""
    return cli({key: config[key] for key in keys})


def on_gpus(command):
    """The shell line ``command`` of a job that asks for ``resources.gpu`` GPUs, run on GPUs of
    its own: on a workstation `python -m pipeline.devices run` claims that many free GPU slots
    and points CUDA_VISIBLE_DEVICES at them (pipeline/devices.py); under SLURM, whose scheduler
    already isolates the job's GPUs, and for a job that asks for none, it runs the command as
    it is. With `device: cpu` the command alone."""
    return f"python -m pipeline.devices run --gpus {{resources.gpu}} -- {command}" if GPU else command


def quoted(*paths):
    return " ".join(shlex.quote(str(path)) for path in paths)


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


def intra_dir(seed):
    return f"{SHARED}/seed{seed}/intra"


def local_label_tables(wildcards):
    return [f"{intra_dir(wildcards.seed)}/cam{cam}/local_labels.csv" for cam in cameras()]


def ics_labels_table(seed):
    """Each camera's annotated identities, unlinked (`pipeline ics-labels`)."""
    return f"{SHARED}/seed{seed}/ics/local_labels.csv"


def local_labels_table(exp, seed):
    """The experiment's local labels in one table (a fixed path: no checkpoint lookup, so that a
    round's group job knows its inputs): stage 1's clusters, or the ICS annotations."""
    if EXPERIMENTS[exp]["local_labels"] == "annotations":
        return ics_labels_table(seed)
    return f"{intra_dir(seed)}/local_labels.csv"


# the global clusterers and loss terms that need the local labels (Clusterer.local_labels in
# pipeline/cluster/clusterers.py and LossTerm.needs_local_labels in pipeline/train/terms.py;
# tests/test_methods.py keeps them equal): their jobs get the table, the others do not depend
# on it (so CA-UReID's experiments never wait for stage 1)
LOCAL_LABEL_CLUSTERERS = ("association",)
LOCAL_LABEL_TERMS = ("icdl", "gid", "ical")


def clustering_local_labels(wildcards):
    name = EXPERIMENTS[wildcards.exp]["clusterer"]["name"]
    needed = name in LOCAL_LABEL_CLUSTERERS
    return [local_labels_table(wildcards.exp, wildcards.seed)] if needed else []


def training_local_labels(wildcards):
    losses = EXPERIMENTS[wildcards.exp]["losses"]
    needed = any(losses[name]["enabled"] for name in LOCAL_LABEL_TERMS)
    return [local_labels_table(wildcards.exp, wildcards.seed)] if needed else []


def local_labels_option(wildcards, input):
    """``--local-labels <table>`` when the job's input has the table, else nothing."""
    return f"--local-labels {quoted(*input.local_labels)}" if input.local_labels else ""


# ---------------------------------------------------------------- rounds of stage 2
def n_rounds(exp):
    settings = EXPERIMENTS[exp]
    return math.ceil(settings["epochs"] / settings["epochs_per_round"])


def first_epoch(exp, r):
    return int(r) * EXPERIMENTS[exp]["epochs_per_round"]


def round_epochs(exp, r):
    settings = EXPERIMENTS[exp]
    return min(settings["epochs_per_round"], settings["epochs"] - first_epoch(exp, r))


def run_dir(exp, seed):
    return f"{RESULTS}/{exp}/seed{seed}"


def round_model(exp, seed, r):
    """Checkpoint (without .pt) that round r trains."""
    return f"{run_dir(exp, seed)}/round{r}/model"


def model_before_round(exp, seed, r):
    """Checkpoint (without .pt) that round r starts from: the initial model, or round r-1's."""
    r = int(r)
    return f"{SHARED}/model_init" if r == 0 else round_model(exp, seed, r - 1)


def final_model(exp, seed):
    return round_model(exp, seed, n_rounds(exp) - 1)


def round_metrics(wildcards):
    """With evaluate.every_round, the metrics of each round's model before the last (rule
    evaluate), for the report's retrieval curve; else none, and no job evaluates them."""
    if not config["evaluate"]["every_round"]:
        return []
    return [
        f"{round_model(wildcards.exp, wildcards.seed, r)}.metrics.csv"
        for r in range(n_rounds(wildcards.exp) - 1)
    ]


def round_features(wildcards):
    return f"{model_before_round(wildcards.exp, wildcards.seed, wildcards.r)}.train.h5"


def refine_local_labels(wildcards):
    """Stage 1's labels of all cameras in one table (a fixed path: no checkpoint lookup here,
    so that the refinement's inputs are known when its round's group job is formed)."""
    mode = EXPERIMENTS[wildcards.exp]["refine"]["mode"]
    return [] if mode == "none" else [local_labels_table(wildcards.exp, wildcards.seed)]


def round_files(name):
    def files(wildcards):
        return [
            f"{run_dir(wildcards.exp, wildcards.seed)}/round{r}/{name}"
            for r in range(n_rounds(wildcards.exp))
        ]

    return files


def clusterer_options(exp):
    """The chosen global clusterer and its own settings only (so that changing another
    clusterer's settings reruns nothing)."""
    clusterer = EXPERIMENTS[exp]["clusterer"]
    name = clusterer["name"]
    options = cli(clusterer[name], "inter", "clusterer", name)
    return f"--method {name} {options}"


def refine_options(exp, seed, r):
    """Options of round r's refinement; without refinement only the mode (so that changing the
    unused refinement settings of such an experiment reruns nothing), and the weight floor only
    when the cluster weights are used."""
    settings = EXPERIMENTS[exp]
    refine = dict(settings["refine"])
    contrastive = settings["losses"]["contrastive"]
    if not (contrastive["enabled"] and contrastive["cluster_weights"]):
        refine.pop("weight_floor")
    if refine["mode"] == "none":
        return cli(refine, "inter", "refine", only=("mode", "weight_floor"))
    return " ".join(
        [
            cli(refine, "inter", "refine"),
            cli({"knn": settings["knn"]}, "inter"),
            cli({"seed": int(seed) + int(r)}),
            f"--epoch {first_epoch(exp, r)} --total-epochs {settings['epochs']}",
        ]
    )


def loss_options(exp):
    """Each loss term's settings (pipeline/train/terms.py), from its section of the config; of a
    term switched off only that (so that changing its unused settings reruns nothing)."""
    losses = EXPERIMENTS[exp]["losses"]
    return " ".join(
        cli(values, "inter", "losses", name, only=None if values["enabled"] else ("enabled",))
        for name, values in losses.items()
    )


def print_comparison():
    """The comparison's console text (`pipeline compare --text`), at the end of a run."""
    if Path(COMPARISON_TEXT).is_file():
        print(f"\nResults ({COMPARISON}):\n{Path(COMPARISON_TEXT).read_text()}")
