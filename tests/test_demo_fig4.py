"""The paper's Fig. 4 effect on the demo set, through the stages the workflow runs.

The demo dataset of ``config.yaml`` (same seed, identities, cameras, input size, backbone,
BatchNorm calibration, stage-1 and stage-2 settings of the ``calr`` experiment) goes through
``demo-data``, ``index``, ``init-model``, ``extract``, stage 1 (``cluster-intra`` and
``train-intra`` for every camera), round 0 of stage 2 (``cluster-global``, ``refine``,
``train-inter``) and the clustering and refinement of round 1, with the commands and options the
workflow gives them. Round 1 is where the effect shows: at round 0 the random encoder's clusters
are few, small and dense, nearly every member is a pivot, and the paper's refinement there
(p = 1) discarded nothing on this demo. The refined clusters of round 1 must be purer (higher
pairwise precision) and split each identity over fewer clusters (lower expansion) than the
global Infomap clusters they come from. The stages run in this process
(``pipeline.cli.main``), so the test costs no interpreter start-ups.
"""

import json
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.cli import main as pipeline
from pipeline.config import command_line, deep_merge, load_schema, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def options(values: dict, *path: str, only=None) -> list[str]:
    """The options the workflow passes for the config section at ``path`` (as its rules do)."""
    section = SCHEMA
    for key in path:
        section = section["properties"][key]
    return shlex.split(command_line(values, section, only))


@pytest.fixture(scope="module")
def demo_round1(tmp_path_factory):
    config = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()), SCHEMA)
    seed = config["seed"]
    # the rounds decode images in the test process itself (the workflow's jobs use 1 worker)
    cpu = ["--device", "cpu"]
    input_size = options(config["input"], "input")
    out = tmp_path_factory.mktemp("demo_fig4")
    data, index, init = out / "demo-data", out / "index.csv", out / "model_init.pt"
    pipeline(["demo-data", "--out", str(data), *options(config["demo"], "demo")])
    pipeline(["index", "--dataset", "demo", "--root", str(data), "--out", str(index)])
    pipeline(
        ["init-model", *options(config["model"], "model"), "--seed", str(seed), "--out", str(init)]
        + (
            ["--calibrate-index", str(index), *input_size, *cpu]
            if config["model"]["calibrate_bn"]
            else []
        )
    )
    features = out / "model_init.train.h5"
    pipeline(
        ["extract", "--index", str(index), "--checkpoint", str(init), "--split", "train"]
        + [*input_size, *cpu, "--workers", "0", "--out", str(features)]
    )
    intra = config["intra"]
    clustering = options(intra["clustering"], "intra", "clustering")
    local_tables = []
    cameras = sorted(pd.read_csv(index).query("split == 'train'")["camid"].unique())
    for cam in map(str, cameras):
        initial, local = out / f"cam{cam}.initial.csv", out / f"cam{cam}.local.csv"
        pipeline(
            ["cluster-intra", "--features", str(features), "--camera", cam, *clustering]
            + ["--out", str(initial)]
        )
        pipeline(
            ["train-intra", "--index", str(index), "--camera", cam, "--init", str(init)]
            + ["--initial-labels", str(initial), "--epochs", str(intra["epochs"]), *clustering]
            + options({**intra["train"], "workers": 0}, "intra", "train")
            + [*input_size, *cpu, "--seed", str(seed)]
            + ["--out-checkpoint", str(out / f"cam{cam}.pt"), "--out-labels", str(local)]
            + ["--log", str(out / f"cam{cam}.log.csv")]
        )
        local_tables.append(str(local))
    inter = deep_merge(config["inter"], config["experiments"]["calr"])
    per_round = inter["epochs_per_round"]
    assert inter["epochs"] > per_round, "config.yaml's stage 2 has no round 1"

    def cluster_and_refine(r: int, features: Path) -> Path:
        clusters, neighbours = out / f"round{r}.clusters.csv", out / f"round{r}.neighbours.npz"
        name = inter["clusterer"]["name"]
        pipeline(
            ["cluster-global", "--features", str(features), "--method", name]
            + options(inter["clusterer"][name], "inter", "clusterer", name)
            + ["--knn", inter["knn"], "--seed", str(seed), "--out", str(clusters)]
            + ["--summary", str(out / f"round{r}.clusters.json")]
            + ["--out-neighbours", str(neighbours)]
        )
        pipeline(
            ["refine", "--clusters", str(clusters), "--features", str(features)]
            + ["--neighbours", str(neighbours), "--local-labels", *local_tables]
            + options(inter["refine"], "inter", "refine")
            + ["--knn", inter["knn"], "--seed", str(seed + r)]
            + ["--epoch", str(r * per_round), "--total-epochs", str(inter["epochs"])]
            + ["--out", str(out / f"round{r}.refined.csv")]
            + ["--summary", str(out / f"round{r}.refine.json")]
        )
        return out / f"round{r}.refine.json"

    cluster_and_refine(0, features)
    round0 = out / "round0.pt"
    pipeline(
        ["train-inter", "--index", str(index), "--labels", str(out / "round0.refined.csv")]
        + ["--refine-summary", str(out / "round0.refine.json"), "--init", str(init)]
        + ["--experiment", "calr", "--epochs", str(per_round)]
        + ["--total-epochs", str(inter["epochs"])]
        + [word for name, values in inter["losses"].items()
           for word in options(values, "inter", "losses", name)]
        + options({**inter["train"], "workers": 0}, "inter", "train")
        + [*input_size, *cpu, "--seed", str(seed)]
        + ["--out-checkpoint", str(round0), "--log", str(out / "round0.log.csv")]
    )  # fmt: skip
    round1_features = out / "round0.train.h5"
    pipeline(
        ["extract", "--index", str(index), "--checkpoint", str(round0), "--split", "train"]
        + [*input_size, *cpu, "--workers", "0", "--out", str(round1_features)]
    )
    summary = cluster_and_refine(1, round1_features)
    return json.loads(summary.read_text())


def test_refined_clusters_are_purer_and_less_spread_than_global_ones(demo_round1):
    quality = demo_round1["quality"]
    glob, refined = quality["global"], quality["refined"]
    assert demo_round1["n_discarded"] > 0, "refinement discarded nothing: no test of Eq. 5"
    assert refined["precision"] > glob["precision"], quality
    assert refined["expansion"] < glob["expansion"], quality
