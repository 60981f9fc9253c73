"""BatchNorm calibration of the initial encoder: the formula on hand-built batches, and
`pipeline init-model --calibrate-index` on the demo data (exact statistics of the first layer,
weights untouched, bad input named)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.cli import build_parser
from pipeline.data.images import ResizedImageDataset, normalize_batch
from pipeline.errors import PipelineError
from pipeline.io import read_table, write_table
from pipeline.models.calibration import batchnorm_layers, calibrate_batchnorm
from pipeline.models.checkpoint import load_checkpoint, model_from_checkpoint

BATCH_1 = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # means (1, 2), unbiased variances (2, 8)
BATCH_2 = torch.tensor([[1.0, 1.0], [1.0, 3.0]])  # means (1, 2), unbiased variances (0, 2)


def test_running_statistics_are_the_average_batch_statistics():
    bn = nn.BatchNorm1d(2)
    weight = bn.weight.detach().clone()
    bn.eval()
    assert calibrate_batchnorm(bn, [BATCH_1, BATCH_2]) == 4
    assert bn.running_mean.tolist() == [1.0, 2.0]
    assert bn.running_var.tolist() == [1.0, 5.0]
    assert bn.num_batches_tracked.item() == 2
    assert bn.momentum == 0.1 and not bn.training
    assert torch.equal(bn.weight, weight)


def test_later_layers_see_the_train_mode_normalised_output():
    """Each batch is normalised by its own statistics before the next layer, as in a training
    step: channel 0 of BATCH_2 is constant (normalised to 0, variance 0), the others become
    (-1, 1) (unbiased variance 2)."""
    first, second = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    model = nn.Sequential(first, second)
    calibrate_batchnorm(model, [BATCH_1, BATCH_2])
    assert torch.allclose(second.running_mean, torch.zeros(2), atol=1e-6)
    assert torch.allclose(second.running_var, torch.tensor([1.0, 2.0]), atol=1e-4)
    assert model.training  # the mode it had


def test_previous_statistics_are_replaced_not_blended():
    bn = nn.BatchNorm1d(2)
    bn.running_mean.fill_(100.0)
    bn.running_var.fill_(100.0)
    bn.num_batches_tracked.fill_(50)
    calibrate_batchnorm(bn, [BATCH_1])
    assert bn.running_mean.tolist() == [1.0, 2.0]
    assert bn.running_var.tolist() == [2.0, 8.0]


@pytest.mark.parametrize(
    ("batches", "message"),
    [([], "no images"), ([torch.ones(1, 2)], "batch of 1 image")],
)
def test_no_batch_or_a_single_image_batch_is_an_error(batches, message):
    bn = nn.BatchNorm1d(2)
    with pytest.raises(ValueError, match=message):
        calibrate_batchnorm(bn, batches)
    assert bn.momentum == 0.1


def test_layers_without_running_statistics_are_left_out():
    model = nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm1d(2, track_running_stats=False))
    assert batchnorm_layers(model) == [model[0]]


# --- pipeline init-model --calibrate-index ---------------------------------------------------

HEIGHT, WIDTH = 32, 16


def run_stage(*argv: str) -> None:
    args = build_parser().parse_args(list(argv))
    args._run(args)


@pytest.fixture(scope="module")
def demo_index(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration") / "index.csv"
    run_stage("index", "--dataset", "market1501", "--root", str(demo_root), "--out", str(out))
    return out


def init_model(out, *options: str) -> dict:
    run_stage(
        "init-model",
        *("--arch", "resnet18", "--pretrained", "none", "--seed", "3", "--out", str(out)),
        *options,
    )
    return load_checkpoint(out)


def calibrated(index, out, images=32, batch_size=16) -> dict:
    return init_model(
        out,
        *("--calibrate-bn", "--calibrate-index", str(index)),
        *("--calibration-images", str(images), "--calibration-batch-size", str(batch_size)),
        *("--height", str(HEIGHT), "--width", str(WIDTH)),
        *("--device", "cpu"),
    )


def test_init_model_calibrates_on_a_seeded_sample_of_training_images(demo_index, tmp_path):
    plain = init_model(tmp_path / "plain.pt")
    state = calibrated(demo_index, tmp_path / "calibrated.pt")
    assert plain["bn_calibration"] is None
    assert state["bn_calibration"] == {"images": 32, "height": HEIGHT, "width": WIDTH}
    for key, value in plain["model"].items():
        if "running_" in key or "num_batches_tracked" in key:
            assert not torch.equal(value, state["model"][key]), key
        else:
            assert torch.equal(value, state["model"][key]), key  # same random weights

    # two equal batches: the first BatchNorm's running mean is the mean of conv1's output over
    # the 32 images, whichever they are; recompute it from the images the seed picks
    index = read_table(demo_index)
    paths = index.loc[index["split"] == "train", "path"].to_numpy()
    chosen = paths[np.random.default_rng(3).permutation(len(paths))[:32]].tolist()
    dataset = ResizedImageDataset(chosen, HEIGHT, WIDTH)
    images = normalize_batch(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    model = model_from_checkpoint(plain)
    with torch.no_grad():
        conv1 = model.body[0](images)
    assert torch.allclose(
        state["model"]["body.1.running_mean"], conv1.mean(dim=(0, 2, 3)), atol=1e-5
    )
    again = calibrated(demo_index, tmp_path / "again.pt")
    for key, value in state["model"].items():
        assert torch.equal(value, again["model"][key]), key  # reproducible


def test_a_last_batch_of_one_image_is_left_out(demo_index, tmp_path):
    state = calibrated(demo_index, tmp_path / "odd.pt", images=17, batch_size=8)
    assert state["bn_calibration"]["images"] == 16


def test_zero_calibration_images_means_all_training_images(demo_index, tmp_path):
    index = read_table(demo_index)
    n_train = int((index["split"] == "train").sum())
    state = calibrated(demo_index, tmp_path / "all.pt", images=0, batch_size=n_train)
    assert state["bn_calibration"]["images"] == n_train


def test_calibration_bad_input_is_named(demo_index, tmp_path):
    out = tmp_path / "bad.pt"
    with pytest.raises(PipelineError, match="--calibration-images must be 0"):
        calibrated(demo_index, out, images=-1)
    with pytest.raises(PipelineError, match="--calibration-batch-size must be 2 or more"):
        calibrated(demo_index, out, batch_size=1)
    index = read_table(demo_index)
    no_train = tmp_path / "no-train.csv"
    write_table(index[index["split"] != "train"], no_train)
    with pytest.raises(PipelineError, match=f"{no_train}: 0 training image"):
        calibrated(no_train, out)
    moved = tmp_path / "moved.csv"
    write_table(index.assign(path=index["path"] + ".moved"), moved)
    with pytest.raises(PipelineError, match="image file"):
        calibrated(moved, out)
    assert not out.exists()
