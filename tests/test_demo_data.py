"""The synthetic demo dataset: its plan, determinism, layout and camera bias."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.data.datasets import read_dataset
from pipeline.data.demo import (
    CAMERAS_PER_IDENTITY,
    IMAGES_PER_CAMERA,
    DemoConfig,
    demo_cameras,
    demo_people,
    draw_crop,
    plan_demo,
)
from pipeline.errors import PipelineError
from pipeline.stages import demo_data
from pipeline.stages.demo_data import write_demo_dataset

TINY = DemoConfig(seed=3, identities=6, cameras=3, height=48, width=24)


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_default_plan_structure():
    plan = plan_demo(DemoConfig())
    assert 900 <= len(plan) <= 1300
    per_identity = plan.groupby("pid")["camid"].nunique()
    assert per_identity.between(*CAMERAS_PER_IDENTITY).all()
    assert plan.groupby(["pid", "camid"]).size().between(*IMAGES_PER_CAMERA).all()
    assert plan["name"].is_unique
    assert sorted(plan["camid"].unique()) == [1, 2, 3, 4, 5, 6]
    splits = plan.groupby("pid")["split"].agg(set)
    train_ids = splits[splits.map(lambda s: s == {"train"})].index
    test_ids = splits[splits.map(lambda s: s == {"query", "gallery"})].index
    assert len(train_ids) == len(test_ids) == 60


def test_every_query_is_the_first_camera_and_has_a_cross_camera_match():
    plan = plan_demo(DemoConfig(seed=5, identities=40, cameras=4))
    query, gallery = plan[plan["split"] == "query"], plan[plan["split"] == "gallery"]
    assert query["pid"].is_unique and len(query) == 20
    for pid, camid in zip(query["pid"], query["camid"], strict=True):
        assert camid == plan.loc[plan["pid"] == pid, "camid"].min()
        assert (gallery.loc[gallery["pid"] == pid, "camid"] != camid).any()


def test_plan_names_follow_market1501():
    plan = plan_demo(TINY)
    pattern = r"(bounding_box_train|query|bounding_box_test)/\d{4}_c\d+s1_\d{6}_00\.jpg"
    assert plan["name"].str.fullmatch(pattern).all()
    pids = plan["name"].str.extract(r"/(\d{4})_c(\d)").astype(int)
    assert (pids[0] == plan["pid"]).all() and (pids[1] == plan["camid"]).all()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (DemoConfig(identities=1), r"--identities must be 2 or more, got 1"),
        (DemoConfig(cameras=1, height=20), r"--cameras must be 2 or more.*--height must be"),
        (DemoConfig(cameras=10), r"at most 9999 identities and 9 cameras"),
    ],
)
def test_config_errors(config, message):
    with pytest.raises(PipelineError, match=message):
        plan_demo(config)


def test_cameras_differ_in_background_and_people_in_clothing():
    cameras = demo_cameras(DemoConfig())
    backgrounds = np.array([c.background for c in cameras.values()])
    assert len({c.texture for c in cameras.values()}) == 4
    gaps = np.linalg.norm(backgrounds[:, None] - backgrounds[None], axis=-1)
    assert gaps[np.triu_indices(6, 1)].min() > 0.05
    tops = np.array([p.top for p in demo_people(DemoConfig()).values()])
    assert len(np.unique(tops.round(3), axis=0)) == 120


def test_draw_crop_is_deterministic_given_its_generator():
    person, style = demo_people(TINY)[1], demo_cameras(TINY)[2]
    first = draw_crop(person, style, 48, 24, np.random.default_rng(7))
    again = draw_crop(person, style, 48, 24, np.random.default_rng(7))
    other = draw_crop(person, style, 48, 24, np.random.default_rng(8))
    assert first.shape == (48, 24, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    write_demo_dataset(tmp_path / "a", TINY)
    write_demo_dataset(tmp_path / "b", TINY)
    write_demo_dataset(tmp_path / "c", DemoConfig(**{**TINY.__dict__, "seed": 4}))
    first = file_hashes(tmp_path / "a")
    assert len(first) == len(plan_demo(TINY)) + 1  # images and README.txt
    assert first == file_hashes(tmp_path / "b")
    other = file_hashes(tmp_path / "c")
    shared = first.keys() & other.keys()
    assert first.keys() != other.keys() or any(first[k] != other[k] for k in shared)
    assert sum(first[k] == other[k] for k in shared - {"README.txt"}) == 0


def test_refuses_non_empty_out_unless_forced(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PipelineError, match=r"demo: folder exists and is not empty.*--force"):
        write_demo_dataset(out, TINY)
    assert (out / "keep.txt").exists()
    write_demo_dataset(out, TINY, force=True)
    assert not (out / "keep.txt").exists() and (out / "README.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_empty_out_folder_is_filled(tmp_path):
    (tmp_path / "demo").mkdir()
    assert write_demo_dataset(tmp_path / "demo", TINY) == len(plan_demo(TINY))


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(config):
        yield from []
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(demo_data, "generate_demo", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_demo_dataset(tmp_path / "demo", TINY)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_dataset_and_readme(tmp_path):
    out = tmp_path / "demo"
    main(["demo-data", "--out", str(out), "--seed", "3", "--identities", "6", "--cameras", "3"])
    readme = (out / "README.txt").read_text()
    assert readme.startswith("SYNTHETIC demo dataset")
    assert "--seed 3 --identities 6 --cameras 3 --height 128 --width 64" in readme
    assert "  train: " in readme and "  query: 3 images, 3 identities" in readme


def test_demo_reads_as_market1501(demo_root, demo_config):
    index = read_dataset("market1501", demo_root)
    plan = plan_demo(demo_config)
    assert len(index) == len(plan)
    assert index["split"].value_counts().to_dict() == plan["split"].value_counts().to_dict()
    assert sorted(index["camid"].unique()) == list(range(1, demo_config.cameras + 1))
    train = index[index["split"] == "train"]
    test = index[index["split"] != "train"]
    assert set(train["pid"]).isdisjoint(test["pid"])
    assert (index["pid"] >= 1).all()
    with Image.open(index["path"].iloc[0]) as image:
        assert image.size == (demo_config.width, demo_config.height) and image.mode == "RGB"


def test_naive_features_group_by_camera(demo_root):
    """An untrained network puts different people of one camera closer than one person seen by
    two cameras: the camera bias CALR is built to remove."""
    import torch

    from pipeline.data.images import eval_transform, load_rgb
    from pipeline.models import build_model

    index = read_dataset("market1501", demo_root)
    # one image per person and camera keeps both kinds of pair and the test fast
    index = index.drop_duplicates(["pid", "camid"]).reset_index(drop=True)
    transform = eval_transform(128, 64)
    images = torch.stack([transform(load_rgb(p)) for p in index["path"]])
    torch.manual_seed(0)
    model = build_model(arch="resnet18", pooling="avg", pretrained="none").eval()
    with torch.no_grad():
        features = model(images).numpy()
    distance = 1.0 - features @ features.T
    camid, pid = index["camid"].to_numpy(), index["pid"].to_numpy()
    same_camera = camid[:, None] == camid[None, :]
    same_person = pid[:, None] == pid[None, :]
    assert distance[same_camera & ~same_person].mean() < distance[~same_camera & same_person].mean()
