"""The paper's Fig. 4 effect on the demo set, through the stages the workflow runs.

The demo dataset of ``config.yaml`` (same seed, identities, cameras, input size, backbone and
stage-1 settings) goes through ``demo-data``, ``index``, ``init-model``, ``extract``, stage 1
(``cluster-intra`` and ``train-intra`` for every camera), then round 0 of stage 2:
``cluster-global`` and ``refine`` with the paper's refinement at its first epoch (p = p0 = 1).
The refined clusters must be purer (higher pairwise precision) and split each identity over
fewer clusters (lower expansion) than the global Infomap clusters they come from. The stages
run in this process (``pipeline.cli.main``), so the test costs no interpreter start-ups.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.cli import main as pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_round0(tmp_path_factory):
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
    clusters, summary = out / "clusters.csv", out / "refine.json"
    inter = config["inter"]
    pipeline(
        ["cluster-global", "--features", str(features), "--method", "infomap"]
        + ["--k", str(inter["k"]), "--min-sim", str(inter["min_sim"])]
        + ["--min-size", str(inter["min_size"]), "--tune-iterations", str(inter["tune_iterations"])]
        + ["--seed", str(model["seed"]), "--out", str(clusters)]
        + ["--summary", str(out / "clusters.json")]
    )
    pipeline(
        ["refine", "--clusters", str(clusters), "--features", str(features)]
        + ["--local-labels", *local_tables, "--mode", "paper", "--p0", "1.0"]
        + ["--epoch", "0", "--total-epochs", str(inter["epochs"])]
        + ["--pivot-k", str(inter["refine"]["pivot_k"])]
        + ["--seed", str(model["seed"]), "--out", str(out / "refined.csv")]
        + ["--summary", str(summary)]
    )
    return json.loads(summary.read_text())


def test_refined_clusters_are_purer_and_less_spread_than_global_ones(demo_round0):
    quality = demo_round0["quality"]
    glob, refined = quality["global"], quality["refined"]
    assert demo_round0["n_discarded"] > 0, "refinement discarded nothing: no test of Eq. 5"
    assert refined["precision"] > glob["precision"], quality
    assert refined["expansion"] < glob["expansion"], quality
