"""Extraction: embeddings in the order of the paths, flip averaging, the `pipeline extract`
stage's row alignment with the index (demo set and real images), its errors, and a killed
extraction that leaves nothing a later stage would accept."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import build_parser
from pipeline.data.images import (
    ResizedImageDataset,
    eval_transform,
    load_rgb,
    normalize_batch,
)
from pipeline.errors import PipelineError
from pipeline.features.extract import (
    default_num_workers,
    extract_embeddings,
    prefetched_batches,
    resolve_amp,
    resolve_device,
)
from pipeline.features.store import read_features
from pipeline.io import read_table, write_table
from pipeline.models import build_model
from pipeline.models.checkpoint import file_sha256, load_checkpoint, save_checkpoint

HEIGHT, WIDTH = 64, 32  # small inputs keep the CPU forward passes short

# `python -c PAUSED_EXTRACT <moment> extract ...`: `pipeline extract`, stopped for a minute at
# <moment>, so that a test can kill it there: "extracting" once the first batch is embedded,
# "writing" once the feature file is half-written (features stored, the row datasets not yet)
PAUSED_EXTRACT = """
import sys, time, h5py
import pipeline.features.extract as extraction
from pipeline.cli import main

def pause(moment):
    print(f"paused while {moment}", flush=True)
    time.sleep(60)

moment = sys.argv.pop(1)
embed_batch, create_dataset = extraction.embed_batch, h5py.Group.create_dataset

def pausing_embed_batch(*args):
    embeddings = embed_batch(*args)
    if moment == "extracting":
        pause(moment)
    return embeddings

def pausing_create_dataset(group, name, *args, **kwargs):
    dataset = create_dataset(group, name, *args, **kwargs)
    if moment == "writing" and name == "features":
        pause(moment)
    return dataset

extraction.embed_batch = pausing_embed_batch
h5py.Group.create_dataset = pausing_create_dataset
main(sys.argv[1:])
"""


def run_stage(*argv: str) -> None:
    args = build_parser().parse_args(list(argv))
    args._run(args)


def write_pngs(folder: Path, images: list[np.ndarray]) -> list[str]:
    """Lossless files, so that a mirrored file decodes to exactly the mirrored pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in enumerate(images):
        path = folder / f"{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def random_images(count: int, height: int = HEIGHT, width: int = WIDTH) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("resnet18")


def embed(model, paths, **kwargs) -> np.ndarray:
    options = {"height": HEIGHT, "width": WIDTH, "num_workers": 0, "progress": False}
    return extract_embeddings(model, paths, **{**options, **kwargs})


# --- extract_embeddings ----------------------------------------------------------------------


def test_rows_follow_the_paths_and_match_a_plain_forward(model, tmp_path):
    paths = write_pngs(tmp_path, random_images(5, 80, 40))
    embeddings = embed(model, paths, batch_size=2)
    assert embeddings.shape == (5, 512) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(embed(model, paths[::-1], batch_size=3), embeddings[::-1], atol=1e-5)
    transform = eval_transform(HEIGHT, WIDTH)
    with torch.no_grad():
        plain = model.eval()(torch.stack([transform(load_rgb(p)) for p in paths]))
    np.testing.assert_allclose(embeddings, plain.numpy(), atol=1e-5)


def test_loader_workers_give_the_same_rows(model, tmp_path):
    paths = write_pngs(tmp_path, random_images(7))
    in_process = embed(model, paths, batch_size=3)
    np.testing.assert_array_equal(embed(model, paths, batch_size=3, num_workers=2), in_process)


def test_prefetched_batches_come_in_order_with_a_short_last_batch():
    dataset = [(torch.full((2,), float(i)), i) for i in range(7)]
    batches = list(prefetched_batches(dataset, batch_size=3, depth=1))
    assert [positions.tolist() for _, positions in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    torch.testing.assert_close(batches[2][0], torch.full((1, 2), 6.0))


def test_prefetched_batches_pass_on_a_decoding_error():
    class Failing(list):
        def __getitem__(self, i):
            if i == 4:
                raise PipelineError("image 4 is broken")
            return super().__getitem__(i)

    batches = prefetched_batches(Failing([(torch.zeros(1), i) for i in range(6)]), batch_size=2)
    assert next(batches)[1].tolist() == [0, 1]
    with pytest.raises(PipelineError, match="image 4 is broken"):
        list(batches)


def test_default_workers_thread_on_cpu_processes_on_gpu(monkeypatch):
    assert default_num_workers(torch.device("cpu")) == 0
    for cores, workers in ((1, 1), (2, 1), (6, 5), (64, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _, n=cores: set(range(n)))
        assert default_num_workers(torch.device("cuda")) == workers


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_is_restored_and_batch_statistics_untouched(model, tmp_path, training):
    paths = write_pngs(tmp_path, random_images(3))
    model.train(training)
    running_mean = model.neck.running_mean.clone()
    embed(model, paths)
    assert model.training is training
    assert torch.equal(model.neck.running_mean, running_mean)


def test_model_still_trains_after_extraction(model, tmp_path):
    """Extraction runs under inference_mode: no parameter may become an inference tensor."""
    embed(model, write_pngs(tmp_path, random_images(2)))
    model.train()
    model(torch.randn(2, 3, HEIGHT, WIDTH)).sum().backward()
    assert model.body[0].weight.grad is not None


def test_flip_averages_image_and_mirror(model, tmp_path):
    image = random_images(1)[0]
    paths = write_pngs(tmp_path, [image, np.ascontiguousarray(image[:, ::-1])])
    plain = embed(model, paths)
    flipped = embed(model, paths, flip=True)
    # an image and its mirror get the same flip-averaged embedding ...
    np.testing.assert_allclose(flipped[0], flipped[1], atol=1e-6)
    # ... the re-normalised mean of the two plain embeddings
    mean = plain.sum(axis=0)
    np.testing.assert_allclose(flipped[0], mean / np.linalg.norm(mean), atol=1e-6)
    assert np.abs(plain[0] - plain[1]).max() > 1e-3  # the image is not symmetric


def test_no_paths_give_an_empty_matrix(model):
    assert embed(model, []).shape == (0, 512)


def test_missing_image_files_are_named(model, tmp_path):
    paths = write_pngs(tmp_path, random_images(2))
    with pytest.raises(
        PipelineError, match=r"1 of 3 image file\(s\) not found:\n  \S+gone\.png\n.*pipeline index"
    ):
        embed(model, [paths[0], str(tmp_path / "gone.png"), paths[1]])


@pytest.mark.parametrize("workers", [0, 1])
def test_an_undecodable_image_is_named(model, tmp_path, workers):
    paths = write_pngs(tmp_path, random_images(2))
    Path(paths[1]).write_bytes(b"\x89PNG truncated")
    with pytest.raises(PipelineError, match=r"001\.png: cannot decode image"):
        embed(model, paths, num_workers=workers)


def test_bad_batch_size_and_workers_are_refused(model):
    with pytest.raises(PipelineError, match="batch size must be at least 1, got 0"):
        embed(model, [], batch_size=0)
    with pytest.raises(PipelineError, match="loader workers must be 0 or more, got -1"):
        embed(model, [], num_workers=-1)


def test_device_and_amp_resolution():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    cpu = torch.device("cpu")
    assert [resolve_amp(mode, cpu) for mode in ("auto", "bf16", "fp16", "off")] == [None] * 4
    with pytest.raises(PipelineError, match="unknown amp mode 'fp8'"):
        resolve_amp("fp8", cpu)
    with pytest.raises(PipelineError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(PipelineError, match="unsupported device 'meta'"):
        resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(PipelineError, match="'cuda' asked for but no CUDA GPU is visible"):
        resolve_device("cuda")


def test_both_decoding_routes_give_the_same_pixels(tmp_path):
    paths = write_pngs(tmp_path, random_images(2, 100, 45))
    image, position = ResizedImageDataset(paths, HEIGHT, WIDTH)[1]
    assert image.dtype == torch.uint8 and image.shape == (3, HEIGHT, WIDTH) and position == 1
    expected = eval_transform(HEIGHT, WIDTH)(load_rgb(paths[1]))
    torch.testing.assert_close(normalize_batch(image[None])[0], expected, atol=1e-6, rtol=0)


def test_large_jpegs_are_decoded_at_a_reduced_scale_no_smaller_than_the_target(tmp_path):
    path = tmp_path / "large.jpg"
    Image.fromarray(random_images(1, 512, 256)[0]).save(path, quality=90)
    assert load_rgb(str(path)).size == (256, 512)
    assert load_rgb(str(path), min_size=(HEIGHT, WIDTH)).size == (WIDTH, HEIGHT)  # 1/8 scale
    assert load_rgb(str(path), min_size=(100, 50)).size == (64, 128)  # 1/4: 1/8 is too small


# --- pipeline extract ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("checkpoint") / "init.pt"
    run_stage("init-model", "--arch", "resnet18", "--pretrained", "none", "--out", str(out))
    return out


@pytest.fixture(scope="module")
def demo_index(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "index.csv"
    run_stage("index", "--dataset", "market1501", "--root", str(demo_root), "--out", str(out))
    return out


def extract(index: Path, checkpoint: Path, out: Path, *options: str) -> None:
    run_stage(
        "extract",
        *("--index", str(index), "--checkpoint", str(checkpoint), "--out", str(out)),
        *("--height", str(HEIGHT), "--width", str(WIDTH), "--workers", "1"),
        *options,
    )


def test_extract_stage_rows_line_up_with_the_index(demo_index, checkpoint, tmp_path, caplog):
    index = read_table(demo_index)
    train = index[index["split"] == "train"]
    out = tmp_path / "train.h5"
    with caplog.at_level(logging.INFO, logger="pipeline.stages.extract"):
        extract(demo_index, checkpoint, out, "--split", "train", "--dtype", "float16")
    assert f"extracting {len(train)} train images (all cameras)" in caplog.text
    assert "decoding in 1 loader process(es)" in caplog.text
    assert "started from RANDOM weights (pretrained: none)" in caplog.text
    assert re.search(
        rf"wrote {re.escape(str(out))}: {len(train)} x 512 float16 .* images/s", caplog.text
    )
    fs = read_features(out, index)
    np.testing.assert_array_equal(fs.index_row, train.index.to_numpy())
    np.testing.assert_array_equal(fs.camid, train["camid"].to_numpy())
    np.testing.assert_array_equal(fs.pid, train["pid"].to_numpy())
    assert list(fs.path) == train["path"].tolist()
    assert fs.attrs["model"] == file_sha256(checkpoint)
    assert {k: fs.attrs[k] for k in ("pretrained", "arch", "split", "camera", "flip")} == {
        "pretrained": "none",
        "arch": "resnet18",
        "split": "train",
        "camera": -1,
        "flip": False,
    }
    assert (fs.attrs["height"], fs.attrs["width"], fs.attrs["dtype"]) == (HEIGHT, WIDTH, "float16")

    # one camera's file holds the same embeddings, under the same index rows
    camera = int(train["camid"].iloc[-1])
    camera_out = tmp_path / "camera.h5"
    extract(demo_index, checkpoint, camera_out, "--split", "train", "--camera", str(camera))
    part = read_features(camera_out, index)
    assert part.attrs["camera"] == camera and set(part.camid) == {camera}
    rows_in_full = np.searchsorted(fs.index_row, part.index_row)
    np.testing.assert_array_equal(fs.index_row[rows_in_full], part.index_row)
    np.testing.assert_allclose(part.features, fs.features[rows_in_full], atol=2e-3)


def test_extract_stage_on_real_images(market_subset_root, checkpoint, tmp_path):
    index_path = tmp_path / "index.csv"
    run_stage(
        "index",
        "--dataset",
        "market1501",
        "--root",
        str(market_subset_root),
        "--out",
        str(index_path),
    )
    index = read_table(index_path)
    out = tmp_path / "query-c5.h5"
    run_stage(
        "extract",
        *("--index", str(index_path), "--checkpoint", str(checkpoint), "--out", str(out)),
        *("--split", "query", "--camera", "5", "--flip"),
    )
    fs = read_features(out, index)
    expected = index[(index["split"] == "query") & (index["camid"] == 5)]
    assert len(fs) == len(expected) > 0
    np.testing.assert_array_equal(fs.index_row, expected.index.to_numpy())
    assert all(re.search(r"/query/\d{4}_c5s\d_\d+_\d+\.jpg$", p) for p in fs.path)
    assert (fs.attrs["height"], fs.attrs["width"], fs.attrs["flip"]) == (256, 128, True)
    np.testing.assert_allclose(np.linalg.norm(fs.features, axis=1), 1.0, rtol=1e-5)


def test_empty_split_says_what_the_index_has(demo_index, checkpoint, tmp_path):
    index = read_table(demo_index)
    no_query = tmp_path / "index.csv"
    write_table(index[index["split"] != "query"], no_query)
    counts = index["split"].value_counts()
    with pytest.raises(
        PipelineError,
        match=rf"split 'query' has no rows \(option --split\); the index has "
        rf"train \({counts['train']}\), gallery \({counts['gallery']}\)$",
    ):
        extract(no_query, checkpoint, tmp_path / "q.h5", "--split", "query")


def test_unknown_camera_lists_the_split_cameras(demo_index, checkpoint, tmp_path):
    with pytest.raises(
        PipelineError,
        match=r"camera 5 has no query rows \(option --camera\); "
        r"cameras in split query: 1, 2, 3, 4$",
    ):
        extract(demo_index, checkpoint, tmp_path / "q.h5", "--split", "query", "--camera", "5")


def test_missing_image_of_the_index_is_named(demo_index, checkpoint, tmp_path):
    index = read_table(demo_index)
    gone = tmp_path / "0001_c1s1_000001_00.jpg"
    index.loc[index.index[index["split"] == "query"][0], "path"] = str(gone)
    stale = tmp_path / "index.csv"
    write_table(index, stale)
    with pytest.raises(
        PipelineError, match=rf"image file\(s\) not found:\n  {re.escape(str(gone))}"
    ):
        extract(stale, checkpoint, tmp_path / "q.h5", "--split", "query")
    assert not (tmp_path / "q.h5").exists()


def test_output_must_be_hdf5(demo_index, checkpoint, tmp_path):
    with pytest.raises(PipelineError, match=r"q\.csv: feature files are HDF5, name them \.h5"):
        extract(demo_index, checkpoint, tmp_path / "q.csv", "--split", "query")


def test_input_size_must_be_positive(demo_index, checkpoint, tmp_path):
    with pytest.raises(PipelineError, match="--height must be 16 or more, got 0"):
        extract(demo_index, checkpoint, tmp_path / "q.h5", "--split", "query", "--height", "0")


def test_checkpoint_without_its_initialisation_is_refused(demo_index, checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    del state["pretrained"]
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, state)
    with pytest.raises(PipelineError, match=r"bare\.pt: checkpoint does not record 'pretrained'"):
        extract(demo_index, bare, tmp_path / "q.h5", "--split", "query")


# --- a killed extraction ---------------------------------------------------------------------


def kill_when_logged(process: subprocess.Popen, log: Path, pattern: str) -> None:
    """SIGKILL the process group as soon as ``pattern`` appears in ``log``."""
    deadline = time.monotonic() + 120
    try:
        while not re.search(pattern, log.read_text()):
            assert process.poll() is None, f"finished before the kill:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{pattern!r} never logged:\n{log.read_text()}"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


@pytest.mark.parametrize(
    ("moment", "left_behind"), [("extracting", []), ("writing", [".tmp-query-"])]
)
def test_a_killed_extraction_leaves_nothing_a_later_stage_accepts(
    moment, left_behind, demo_index, checkpoint, tmp_path
):
    out = tmp_path / "features" / "query.h5"
    argv = ["--index", str(demo_index), "--checkpoint", str(checkpoint), "--out", str(out)]
    argv += ["--split", "query", "--height", str(HEIGHT), "--width", str(WIDTH)]
    argv += ["--batch-size", "2", "--workers", "1"]
    log = tmp_path / "log"
    with open(log, "w") as handle:
        # its own process group, so that the kill takes the loader worker too, as a scheduler's
        process = subprocess.Popen(
            [sys.executable, "-c", PAUSED_EXTRACT, moment, "extract", *argv],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    kill_when_logged(process, log, f"paused while {moment}\n")
    leftovers = sorted(out.parent.glob("*")) if out.parent.exists() else []
    assert [p.name[:11] for p in leftovers] == left_behind
    with pytest.raises(PipelineError, match="feature file not found"):
        read_features(out)  # later stages read --out, never a temporary name
    for leftover in leftovers:
        with pytest.raises(PipelineError, match="not a readable HDF5 file|not a feature file"):
            read_features(leftover)
