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
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.cli import main as pipeline
from pipeline.config import deep_merge

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_round1(tmp_path_factory):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    dataset, model, size = config["dataset"], config["model"], config["input"]
    intra = config["intra"]
    out = tmp_path_factory.mktemp("demo_fig4")
    data, index, init = out / "demo-data", out / "index.csv", out / "model_init.pt"
    pipeline(
        ["demo-data", "--out", str(data), "--seed", str(dataset["demo_seed"])]
        + ["--identities", str(dataset["demo_identities"])]
        + ["--cameras", str(dataset["demo_cameras"])]
    )
    pipeline(["index", "--dataset", "market1501", "--root", str(data), "--out", str(index)])
    input_size = ["--height", str(size["height"]), "--width", str(size["width"])]
    pipeline(
        ["init-model", "--arch", model["arch"], "--pooling", model["pooling"]]
        + ["--pretrained", model["pretrained"], "--seed", str(model["seed"]), "--out", str(init)]
        + (
            ["--calibrate-index", str(index), "--device", "cpu"]
            + ["--calibration-images", str(model["calibration_images"])]
            + ["--batch-size", str(config["extract"]["batch_size"])]
            + input_size
            if model["calibrate_bn"]
            else []
        )
    )
    features = out / "model_init.train.h5"
    pipeline(
        ["extract", "--index", str(index), "--checkpoint", str(init), "--split", "train"]
        + input_size
        + ["--device", "cpu", "--workers", "0", "--out", str(features)]
    )
    train = intra["train"]
    local_tables = []
    cameras = sorted(pd.read_csv(index).query("split == 'train'")["camid"].unique())
    for cam in map(str, cameras):
        initial, local = out / f"cam{cam}.initial.csv", out / f"cam{cam}.local.csv"
        pipeline(
            ["cluster-intra", "--features", str(features), "--camera", cam]
            + ["--ratio", str(intra["ratio"]), "--distance", intra["distance"]]
            + ["--out", str(initial)]
        )
        pipeline(
            ["train-intra", "--index", str(index), "--camera", cam, "--init", str(init)]
            + ["--initial-labels", str(initial), "--epochs", str(intra["epochs"])]
            + ["--ratio", str(intra["ratio"]), "--distance", intra["distance"]]
            + ["--batch-size", str(train["batch_size"]), "--instances", str(train["instances"])]
            + ["--iters", str(train["iters"]), "--lr", str(train["lr"])]
            + ["--weight-decay", str(train["weight_decay"]), "--step-size", str(train["step_size"])]
            + ["--momentum", str(train["momentum"]), "--temperature", str(train["temperature"])]
            + input_size
            + ["--device", "cpu", "--workers", "0", "--seed", str(model["seed"])]
            + ["--out-checkpoint", str(out / f"cam{cam}.pt"), "--out-labels", str(local)]
            + ["--log", str(out / f"cam{cam}.log.csv")]
        )
        local_tables.append(str(local))
    inter = deep_merge(config["inter"], config["experiments"]["calr"])
    per_round = inter["epochs_per_round"]
    assert inter["epochs"] > per_round, "config.yaml's stage 2 has no round 1"

    def cluster_and_refine(r: int, features: Path) -> Path:
        clusters, neighbours = out / f"round{r}.clusters.csv", out / f"round{r}.neighbours.npz"
        pipeline(
            ["cluster-global", "--features", str(features), "--method", inter["clusterer"]]
            + ["--knn", inter["knn"], "--k", str(inter["k"]), "--min-sim", str(inter["min_sim"])]
            + ["--min-size", str(inter["min_size"])]
            + ["--tune-iterations", str(inter["tune_iterations"])]
            + ["--seed", str(model["seed"]), "--out", str(clusters)]
            + ["--summary", str(out / f"round{r}.clusters.json")]
            + ["--out-neighbours", str(neighbours)]
        )
        refine = inter["refine"]
        pipeline(
            ["refine", "--clusters", str(clusters), "--features", str(features)]
            + ["--neighbours", str(neighbours), "--local-labels", *local_tables]
            + ["--mode", refine["mode"], "--schedule", refine["schedule"]]
            + ["--p0", str(refine["p0"]), "--pivot-k", str(refine["pivot_k"])]
            + ["--weight-floor", str(inter["weight_floor"])]
            + ["--epoch", str(r * per_round), "--total-epochs", str(inter["epochs"])]
            + ["--seed", str(model["seed"] + r), "--out", str(out / f"round{r}.refined.csv")]
            + ["--summary", str(out / f"round{r}.refine.json")]
        )
        return out / f"round{r}.refine.json"

    cluster_and_refine(0, features)
    stage2 = inter["train"]
    round0 = out / "round0.pt"
    pipeline(
        ["train-inter", "--index", str(index), "--labels", str(out / "round0.refined.csv")]
        + ["--refine-summary", str(out / "round0.refine.json"), "--init", str(init)]
        + ["--epochs", str(per_round), "--total-epochs", str(inter["epochs"])]
        + ["--beta", str(inter["beta"]), "--grl-lambda", str(inter["grl_lambda"])]
        + ["--camera-loss" if inter["camera_loss"] else "--no-camera-loss"]
        + ["--cluster-weights" if inter["cluster_weights"] else "--no-cluster-weights"]
        + ["--batch-size", str(stage2["batch_size"]), "--instances", str(stage2["instances"])]
        + ["--iters", str(stage2["iters"]), "--lr", str(stage2["lr"])]
        + ["--weight-decay", str(stage2["weight_decay"])]
        + ["--step-size", str(stage2["step_size"]), "--momentum", str(stage2["momentum"])]
        + ["--temperature", str(stage2["temperature"])]
        + input_size
        + ["--device", "cpu", "--workers", "0", "--seed", str(model["seed"])]
        + ["--out-checkpoint", str(round0), "--log", str(out / "round0.log.csv")]
    )
    round1_features = out / "round0.train.h5"
    pipeline(
        ["extract", "--index", str(index), "--checkpoint", str(round0), "--split", "train"]
        + input_size
        + ["--device", "cpu", "--workers", "0", "--out", str(round1_features)]
    )
    summary = cluster_and_refine(1, round1_features)
    return json.loads(summary.read_text())


def test_refined_clusters_are_purer_and_less_spread_than_global_ones(demo_round1):
    quality = demo_round1["quality"]
    glob, refined = quality["global"], quality["refined"]
    assert demo_round1["n_discarded"] > 0, "refinement discarded nothing: no test of Eq. 5"
    assert refined["precision"] > glob["precision"], quality
    assert refined["expansion"] < glob["expansion"], quality
