"""CA-UReID and CCAFL-ICS end to end on the demo data (one training job per experiment, two
epochs, tiny images), the ICS labels stage, and the workflow's lists of what needs local labels
against the registries."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cluster.clusterers import CLUSTERERS
from pipeline.data.datasets import read_dataset
from pipeline.errors import PipelineError
from pipeline.io import read_table, write_table
from pipeline.models import build_model
from pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.tables import LOCAL_LABELS
from pipeline.train.terms import LOSSES
from tests.test_train_stages import TINY, run_stage

COMMON = Path(__file__).resolve().parents[1] / "workflow" / "rules" / "common.smk"

CA_UREID = {
    "css": True,
    "contrastive_loss": False,
    "camera_loss": False,
    "instance_loss": True,
    "separation_loss": True,
    "cacc_loss": True,
}
CCAFL = {
    "contrastive_loss": True,
    "cluster_weights": False,
    "contrastive_first_epoch": 2,
    "camera_loss": False,
    "icdl_loss": True,
    "icdl_last_epoch": 1,
    "gid_loss": True,
    "ical_loss": True,
    "ical_first_epoch": 2,
    "momentum": 0.1,
    "temperature": 0.05,
}


def workflow_names(constant: str) -> set[str]:
    match = re.search(rf"^{constant} = (\(.*?\))$", COMMON.read_text(), re.MULTILINE)
    return set(ast.literal_eval(match.group(1)))


def test_workflow_passes_local_labels_to_exactly_the_clusterers_and_terms_that_need_them():
    assert workflow_names("LOCAL_LABEL_CLUSTERERS") == {
        name for name, clusterer in CLUSTERERS.items() if clusterer.local_labels
    }
    assert workflow_names("LOCAL_LABEL_TERMS") == {
        name for name, term in LOSSES.items() if term.needs_local_labels
    }


@pytest.fixture(scope="module")
def methods_inputs(demo_root, tmp_path_factory):
    """The demo index, its ICS local labels (`pipeline ics-labels`), labels that join nothing
    across cameras (each camera's identity its own cluster, as an association without an edge
    gives), and an initial ResNet-18 checkpoint without the CSS module."""
    folder = tmp_path_factory.mktemp("methods-inputs")
    index = read_dataset("market1501", demo_root)
    write_table(index, folder / "index.csv")
    run_stage("ics-labels", index=folder / "index.csv", seed=3, out=folder / "ics.csv")
    ics = LOCAL_LABELS.read(folder / "ics.csv")
    first = ics.iloc[:60]  # some cameras' images: the job trains on a subset of the table
    labels = np.unique(
        np.stack([first["camid"], first["local_label"]]), axis=1, return_inverse=True
    )
    table = pd.DataFrame(
        {"index_row": first["index_row"], "camid": first["camid"], "label": labels[1].ravel()}
    )
    write_table(table, folder / "labels.csv")
    torch.manual_seed(0)
    model = build_model("resnet18")
    save_checkpoint(
        folder / "init.pt",
        {"model_config": model.config, "model": model.state_dict(), "pretrained": "none"},
    )
    return folder


def train(inputs: Path, out: Path, epochs: int = 2, total: int = 2, init=None, **options):
    run_stage(
        "train-inter",
        index=inputs / "index.csv",
        labels=inputs / "labels.csv",
        init=init or inputs / "init.pt",
        out_checkpoint=out / "model.pt",
        log=out / "log.csv",
        epochs=epochs,
        total_epochs=total,
        **TINY,
        **options,
    )
    return read_table(out / "log.csv"), load_checkpoint(out / "model.pt")


def test_ics_labels_stage_numbers_each_cameras_identities_apart(methods_inputs):
    index = read_table(methods_inputs / "index.csv")
    ics = LOCAL_LABELS.read(methods_inputs / "ics.csv")
    train = index[index["split"] == "train"]
    assert ics["index_row"].tolist() == train.index.tolist()
    per_camera = train.groupby("camid")["pid"].nunique()
    assert (ics.groupby("camid")["local_label"].max() + 1).to_dict() == per_camera.to_dict()
    # the identities given to training: one per person and camera, never one per person
    assert per_camera.sum() > train["pid"].nunique()


@pytest.mark.slow
def test_ca_ureid_round_trains_css_and_its_losses_and_carries_on(methods_inputs, tmp_path):
    log, state = train(methods_inputs, tmp_path / "r0", epochs=1, total=2, **CA_UREID)
    assert state["model_config"]["css"] is True
    assert any(key.startswith("css.attention") for key in state["model"])
    assert list(state["losses"]) == ["instance", "separation", "cacc"]
    assert log[["loss_instance", "loss_separation", "loss_cacc"]].notna().all().all()
    expected = log["loss_instance"] + 0.4 * log["loss_separation"] + log["loss_cacc"]
    assert np.allclose(log["loss_total"], expected)
    # the next round continues the module (and refuses to drop it)
    log, state = train(
        methods_inputs,
        tmp_path / "r1",
        epochs=1,
        total=2,
        init=tmp_path / "r0/model.pt",
        **CA_UREID,
    )
    assert state["epoch"] == 2 and log["epoch"].tolist() == [1, 2]
    with pytest.raises(PipelineError, match="camera style separation module"):
        train(
            methods_inputs,
            tmp_path / "r2",
            epochs=1,
            total=3,
            init=tmp_path / "r1/model.pt",
            **(CA_UREID | {"css": False, "separation_loss": False}),
        )


@pytest.mark.slow
def test_ccafl_round_follows_its_schedule_on_the_ics_labels(methods_inputs, tmp_path):
    log, state = train(methods_inputs, tmp_path, local_labels=methods_inputs / "ics.csv", **CCAFL)
    first, second = log.iloc[0], log.iloc[1]
    assert not np.isnan(first["loss_icdl"]) and np.isnan(first["loss_contrastive"])
    assert np.isnan(first["loss_ical"]) and not np.isnan(second["loss_ical"])
    assert np.isnan(second["loss_icdl"]) and not np.isnan(second["loss_contrastive"])
    assert log["loss_gid"].notna().all()
    # the classifier knows every identity of the ICS table, not only the job's 60 images'
    ics = LOCAL_LABELS.read(methods_inputs / "ics.csv")
    n_ids = len(ics.groupby(["camid", "local_label"]))
    assert state["losses"]["gid"]["weights"].shape[0] == n_ids


def test_ccafl_terms_without_local_labels_name_the_option(methods_inputs, tmp_path):
    with pytest.raises(PipelineError, match="--local-labels"):
        train(methods_inputs, tmp_path, **CCAFL)


def test_an_epoch_without_an_active_term_is_refused_before_training(methods_inputs, tmp_path):
    gap = CCAFL | {"gid_loss": False, "ical_loss": False, "contrastive_first_epoch": 3}
    with pytest.raises(PipelineError, match=r"no loss term trains in epoch\(s\) \[2\]"):
        train(methods_inputs, tmp_path, local_labels=methods_inputs / "ics.csv", **gap)
    assert not (tmp_path / "model.partial.pt").exists()
