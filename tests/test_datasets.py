"""Dataset readers and index checks on small folder trees built in tmp_path."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.data.datasets import DATASETS, read_dataset, summarize_index
from pipeline.data.validate import (
    check_images_readable,
    check_training_cameras,
    small_training_cameras,
    unreadable_images,
)
from pipeline.errors import PipelineError
from pipeline.tables import INDEX

INDEX_COLUMNS = INDEX.required


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 4), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _jpeg()


def make_images(folder: Path, names: list[str], data: bytes = JPEG) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def market_tree(root: Path) -> Path:
    make_images(
        root / "bounding_box_train",
        ["0002_c2s1_000451_03.jpg", "0002_c5s1_000551_01.jpeg", "-1_c2s1_000001_00.jpg"],
    )
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    make_images(root / "query", ["0007_c5s1_000100_00.png"])
    make_images(
        root / "bounding_box_test",
        ["0007_c2s1_000200_00.jpg", "0000_c2s1_000300_00.jpg", "-1_c5s1_000400_00.jpg"],
    )
    return root


def check_index_contract(index: pd.DataFrame) -> None:
    assert list(index.columns[:4]) == list(INDEX_COLUMNS)
    assert isinstance(index.index, pd.RangeIndex) and index.index.start == 0
    assert index["camid"].dtype == "int64" and index["pid"].dtype == "int64"
    order = index["split"].map({"train": 0, "query": 1, "gallery": 2})
    assert (order.diff().dropna() >= 0).all()
    for _, rows in index.groupby("split"):
        assert rows["path"].is_monotonic_increasing
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in index["path"])


# --- Market-1501 / DukeMTMC-reID / VeRi-776 ---


def test_market1501_reader_drops_train_junk_and_keeps_eval_junk_and_distractors(tmp_path):
    index = read_dataset("market1501", market_tree(tmp_path / "market"))
    check_index_contract(index)
    names = index.assign(name=index["path"].map(lambda p: Path(p).name))
    assert names[["name", "camid", "pid", "split"]].values.tolist() == [
        ["0002_c2s1_000451_03.jpg", 2, 2, "train"],
        ["0002_c5s1_000551_01.jpeg", 5, 2, "train"],
        ["0007_c5s1_000100_00.png", 5, 7, "query"],
        ["-1_c5s1_000400_00.jpg", 5, -1, "gallery"],
        ["0000_c2s1_000300_00.jpg", 2, 0, "gallery"],
        ["0007_c2s1_000200_00.jpg", 2, 7, "gallery"],
    ]


def test_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    market_tree(tmp_path / "market")
    monkeypatch.chdir(tmp_path)
    index = read_dataset("market1501", Path("market"))
    assert index["path"].iloc[0] == str(
        tmp_path / "market/bounding_box_train/0002_c2s1_000451_03.jpg"
    )


def test_dukemtmc_reader(tmp_path):
    root = tmp_path / "duke"
    make_images(root / "bounding_box_train", ["0001_c2_f0046182.jpg", "0001_c8_f0000001.jpg"])
    make_images(root / "query", ["0005_c1_f0000100.jpg"])
    make_images(root / "bounding_box_test", ["0005_c7_f0000200.jpg"])
    index = read_dataset("dukemtmc", root)
    check_index_contract(index)
    assert index[["camid", "pid", "split"]].values.tolist() == [
        [2, 1, "train"],
        [8, 1, "train"],
        [1, 5, "query"],
        [7, 5, "gallery"],
    ]


def test_veri776_reader(tmp_path):
    root = tmp_path / "veri"
    make_images(root / "image_train", ["0002_c002_00030600_0.jpg", "0002_c013_00031000_1.jpg"])
    make_images(root / "image_query", ["0010_c020_00000100_0.jpg"])
    make_images(root / "image_test", ["0010_c001_00000200_0.jpg"])
    index = read_dataset("veri776", root)
    check_index_contract(index)
    assert index[["camid", "pid", "split"]].values.tolist() == [
        [2, 2, "train"],
        [13, 2, "train"],
        [20, 10, "query"],
        [1, 10, "gallery"],
    ]


# --- MSMT17 ---


def msmt_tree(root: Path, train_folder: str, test_folder: str) -> Path:
    lists = {
        "list_train.txt": (train_folder, [("0000/0000_000_01_0303morning_0015_0.jpg", 0)]),
        "list_val.txt": (train_folder, [("0001/0001_004_12_0303noon_0100_1.jpg", 1)]),
        "list_query.txt": (test_folder, [("0003/0003_000_05_0303morning_0200_0.jpg", 3)]),
        "list_gallery.txt": (
            test_folder,
            [("0003/0003_001_15_0303afternoon_0300_0.jpg", 3), ("0004/0004_002_02_x_1_0.jpg", 4)],
        ),
    }
    for list_name, (folder, entries) in lists.items():
        make_images(root / folder, [rel for rel, _ in entries])
        (root / list_name).write_text("".join(f"{rel} {pid}\n" for rel, pid in entries))
    return root


@pytest.mark.parametrize(("train", "test"), [("train", "test"), ("mask_train_v2", "mask_test_v2")])
def test_msmt17_reader_v1_and_v2(tmp_path, train, test):
    root = msmt_tree(tmp_path / "msmt", train, test)
    index = read_dataset("msmt17", root)
    check_index_contract(index)
    assert index[["camid", "pid", "split"]].values.tolist() == [
        [1, 0, "train"],
        [12, 1, "train"],
        [5, 3, "query"],
        [15, 3, "gallery"],
        [2, 4, "gallery"],
    ]
    assert index["path"].iloc[1] == str(root / train / "0001/0001_004_12_0303noon_0100_1.jpg")


def test_msmt17_without_image_folders(tmp_path):
    (tmp_path / "msmt" / "train").mkdir(parents=True)
    with pytest.raises(PipelineError, match=r"no MSMT17 image folders.*V1 \(train/, test/\)"):
        read_dataset("msmt17", tmp_path / "msmt")


def test_msmt17_missing_list_file(tmp_path):
    root = msmt_tree(tmp_path / "msmt", "train", "test")
    (root / "list_val.txt").unlink()
    with pytest.raises(PipelineError, match=r"list_val.txt: MSMT17 list file not found"):
        read_dataset("msmt17", root)


def test_msmt17_malformed_list_line(tmp_path):
    root = msmt_tree(tmp_path / "msmt", "train", "test")
    with (root / "list_query.txt").open("a") as f:
        f.write("\n0003/0003_000_05_x_1_0.jpg\n")
    with pytest.raises(PipelineError, match=r"list_query.txt: 1 line\(s\) are not .* line 3"):
        read_dataset("msmt17", root)


def test_msmt17_listed_image_missing(tmp_path):
    root = msmt_tree(tmp_path / "msmt", "train", "test")
    (root / "test/0004/0004_002_02_x_1_0.jpg").unlink()
    with pytest.raises(PipelineError, match=r"list_gallery.txt: 1 listed image\(s\) not found"):
        read_dataset("msmt17", root)


def test_msmt17_name_without_camera(tmp_path):
    root = msmt_tree(tmp_path / "msmt", "train", "test")
    make_images(root / "train", ["0000/badname.jpg"])
    (root / "list_train.txt").write_text("0000/badname.jpg 0\n")
    with pytest.raises(PipelineError, match=r"1 file name\(s\) do not parse.*0000/badname.jpg"):
        read_dataset("msmt17", root)


# --- manifest ---


def write_manifest(path: Path, text: str, images: list[str]) -> Path:
    make_images(path.parent, images)
    path.write_text(text)
    return path


def test_manifest_string_cameras_relative_paths_and_defaults(tmp_path):
    absolute = tmp_path / "elsewhere/x.jpg"
    make_images(absolute.parent, [absolute.name])
    csv = write_manifest(
        tmp_path / "data/manifest.csv",
        "path,camera,pid\n"
        "img/b.jpg,lobby,\n"
        f"{absolute},entrance,4\n"
        "img/a.jpg,lobby,-1\n"
        "./img/c.jpg, yard ,7\n",
        ["img/a.jpg", "img/b.jpg", "img/c.jpg"],
    )
    index = read_dataset("manifest", csv)
    check_index_contract(index)
    assert list(index.columns) == [*INDEX_COLUMNS, "camera_name"]
    assert index.values.tolist() == [
        [str(tmp_path / "data/img/a.jpg"), 2, -1, "train", "lobby"],
        [str(tmp_path / "data/img/b.jpg"), 2, -1, "train", "lobby"],
        [str(tmp_path / "data/img/c.jpg"), 3, 7, "train", "yard"],
        [str(absolute), 1, 4, "train", "entrance"],
    ]


def test_manifest_integer_cameras_are_kept_and_splits_read(tmp_path):
    csv = write_manifest(
        tmp_path / "m.csv",
        "camera,path,split,pid\n3,a.jpg,gallery,1\n10,b.jpg,,2\n3,c.jpg,query,1\n",
        ["a.jpg", "b.jpg", "c.jpg"],
    )
    index = read_dataset("manifest", csv)
    assert list(index.columns) == list(INDEX_COLUMNS)
    assert index[["camid", "pid", "split"]].values.tolist() == [
        [10, 2, "train"],
        [3, 1, "query"],
        [3, 1, "gallery"],
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,cam\na.jpg,1\n", r"must be path, camera .*missing camera; unknown cam"),
        ("path,camera\n", r"the manifest has no rows"),
        ("path,camera\na.jpg,1\n,2\n", r"1 row\(s\) have no path: line 3"),
        ("path,camera\na.jpg,\n", r"1 row\(s\) have no camera: line 2"),
        ("path,camera,pid\na.jpg,1,x\nb.jpg,1,-\n", r"2 row\(s\) have a pid .*line 2, line 3"),
        ("path,camera,split\na.jpg,1,test\n", r"split other than train, query or gallery: line 2"),
        ("path,camera\na.jpg,1\nb.jpg,1\n./a.jpg,2\n", r"2 row\(s\) repeat an image path: .*a.jpg"),
        ("path,camera\na.jpg,1\nmissing.jpg,1\n", r"1 row\(s\) name an image that does not exist"),
        ("path,camera,split\na.jpg,1,query\nb.jpg,1,gallery\n", r"no train rows"),
        ("path,camera,split\na.jpg,1\nb.jpg,1,query\n", r"query rows but no gallery rows"),
    ],
)
def test_manifest_errors(tmp_path, text, message):
    csv = write_manifest(tmp_path / "m.csv", text, ["a.jpg", "b.jpg"])
    with pytest.raises(PipelineError, match=message):
        read_dataset("manifest", csv)


def test_manifest_root_must_be_a_file(tmp_path):
    with pytest.raises(PipelineError, match=r"not a file; for --dataset manifest, --root is a CSV"):
        read_dataset("manifest", tmp_path)


# --- errors common to every reader ---


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(PipelineError, match=r"unknown dataset 'market'.*market1501, msmt17"):
        read_dataset("market", tmp_path)
    assert set(DATASETS) == {"market1501", "demo", "dukemtmc", "msmt17", "veri776", "manifest"}


def test_missing_root(tmp_path):
    with pytest.raises(PipelineError, match=r"nowhere: dataset root not found \(option --root\)"):
        read_dataset("market1501", tmp_path / "nowhere")


def test_missing_split_folder_names_folder_and_root(tmp_path):
    root = market_tree(tmp_path / "market")
    (root / "query" / "0007_c5s1_000100_00.png").unlink()
    (root / "query").rmdir()
    with pytest.raises(PipelineError, match=rf"{root}: split folder query/ \(query\) not found"):
        read_dataset("market1501", root)


def test_split_without_images(tmp_path):
    root = market_tree(tmp_path / "market")
    (root / "query" / "0007_c5s1_000100_00.png").unlink()
    with pytest.raises(PipelineError, match=r"query: no usable images .* in the query split"):
        read_dataset("market1501", root)


def test_train_split_of_junk_only_is_empty(tmp_path):
    root = market_tree(tmp_path / "market")
    for name in ("0002_c2s1_000451_03.jpg", "0002_c5s1_000551_01.jpeg"):
        (root / "bounding_box_train" / name).unlink()
    with pytest.raises(PipelineError, match=r"no usable images .* junk -1_\* excluded"):
        read_dataset("market1501", root)


def test_unparseable_names_name_first_five_and_count(tmp_path):
    root = market_tree(tmp_path / "market")
    bad = [f"img{i}.jpg" for i in range(7)]
    make_images(root / "bounding_box_test", bad)
    with pytest.raises(PipelineError) as error:
        read_dataset("market1501", root)
    message = str(error.value)
    assert "bounding_box_test: 7 file name(s) do not parse as <pid>_c<camera>" in message
    assert "img0.jpg, img1.jpg, img2.jpg, img3.jpg, img4.jpg, ... (7 in all)" in message
    assert "img5.jpg" not in message


def test_market_root_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PipelineError, match=r"not a folder; --root must be the Market-1501"):
        read_dataset("market1501", tmp_path / "file")


# --- summary and checks ---


def small_index(cameras: list[int], splits: list[str], pids: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {"path": [f"/x/{i}.jpg" for i in range(len(cameras))], "camid": cameras, "pid": pids}
    ).assign(split=splits)


def test_summarize_index():
    index = small_index(
        [1, 1, 3, 3, 1], ["train", "train", "train", "query", "gallery"], [5, 6, -1, 5, 5]
    )
    summary = summarize_index(index)
    lines = summary.splitlines()
    assert lines[:3] == [
        "train: 3 images, 2 identities",
        "query: 1 images, 1 identities",
        "gallery: 1 images, 1 identities",
    ]
    assert lines[-2].split() == ["1", "2", "0", "1"]
    assert lines[-1].split() == ["3", "1", "1", "0"]


def test_small_training_cameras_counts_train_images_only():
    index = small_index(
        [1, 1, 2, 2, 2, 3], ["train"] * 2 + ["query", "train", "train", "gallery"], [0] * 6
    )
    assert small_training_cameras(index, 3).to_dict() == {1: 2, 2: 2}
    assert small_training_cameras(index, 2).empty
    check_training_cameras(index, 2)


def test_camera_with_too_few_training_images():
    index = small_index([1, 1, 1, 4, 6], ["train"] * 5, [0] * 5)
    with pytest.raises(
        PipelineError,
        match=r"2 camera\(s\) have fewer than 3 training images.*camera 4: 1, camera 6: 1\); "
        r"lower --min-images-per-camera, or use a manifest without that camera",
    ):
        check_training_cameras(index, 3)


def test_camera_check_names_manifest_cameras():
    index = small_index([1, 2, 2], ["train"] * 3, [0] * 3).assign(
        camera_name=["door", "yard", "yard"]
    )
    with pytest.raises(PipelineError, match=r"camera 1 \(door\): 1\)"):
        check_training_cameras(index, 2)


def test_unreadable_images_are_listed_in_order(tmp_path):
    make_images(tmp_path, ["good.jpg"])
    make_images(tmp_path, ["truncated.jpg"], JPEG[: len(JPEG) // 2])
    make_images(tmp_path, ["text.png"], b"hello")
    paths = [str(tmp_path / n) for n in ("text.png", "good.jpg", "truncated.jpg")]
    bad = unreadable_images(paths, workers=2)
    assert [path for path, _ in bad] == [paths[0], paths[2]]
    assert "UnidentifiedImageError" in bad[0][1] and "Truncated" in bad[1][1]
    check_images_readable([paths[1]])


def test_check_images_readable_names_first_twenty_and_count(tmp_path):
    names = [f"bad{i:02d}.jpg" for i in range(23)]
    make_images(tmp_path, names, b"")
    make_images(tmp_path, ["good.jpg"])
    paths = [str(tmp_path / n) for n in ["good.jpg", *names]]
    with pytest.raises(PipelineError) as error:
        check_images_readable(paths)
    message = str(error.value)
    assert message.startswith("23 of 24 images cannot be decoded")
    assert "bad19.jpg" in message and "bad20.jpg" not in message
    assert "... and 3 more" in message and "no index was written" in message


# --- the real Market-1501 subset ---


def test_real_market_subset(market_subset_root):
    index = read_dataset("market1501", market_subset_root)
    check_index_contract(index)
    assert index["split"].value_counts().to_dict() == {"train": 764, "query": 246, "gallery": 493}
    train = index[index["split"] == "train"]
    assert train["pid"].nunique() == 346
    assert sorted(index["camid"].unique()) == [1, 2, 3, 4, 5, 6]
    assert train["camid"].value_counts().sort_index().tolist() == [154, 116, 168, 54, 142, 130]
