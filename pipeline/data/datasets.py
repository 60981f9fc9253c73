"""Dataset readers: one function per on-disk layout, each returning the dataset index.

The index (docs/formats.md) has one row per image with columns ``path`` (absolute), ``camid``
(the camera as the dataset names it, never remapped), ``pid`` (-1 = junk or unknown) and
``split`` (``train``, ``query``, ``gallery``), ordered by split then path, with a RangeIndex:
the row number is the image's ``index_row``. Adding a dataset is one reader registered with
:func:`register`; camera ids always come from the data.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.tables import INDEX, SPLITS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_NAMED = 5  # offending files or rows named in an error message
INT64 = np.iinfo(np.int64)
INT64_DIGITS = len(str(INT64.max))  # a shorter decimal always fits
ID_NAMES = {"pid": "person id", "camid": "camera id"}  # in messages

# <pid>_c<camera>...: Market-1501 0002_c1s1_000451_03.jpg, DukeMTMC-reID 0001_c2_f0046182.jpg,
# VeRi-776 0002_c002_00030600_0.jpg; pid -1 marks junk, 0000 distractors
PID_CAMERA_NAME = r"^(?P<pid>-1|\d+)_c(?P<camid>\d+)"
# MSMT17 0000_000_01_0303morning_0015_0.jpg: the camera is the third underscore field
MSMT_CAMERA_NAME = r"(?:^|/)[^/_]+_[^/_]+_(?P<camid>\d+)_[^/]*$"
# MSMT17 list line: <path relative to the split's image folder> <pid>
MSMT_LIST_LINE = r"^\s*(?P<relpath>\S+)\s+(?P<pid>-?\d+)\s*$"
MSMT_LAYOUTS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}
# split -> list files, each with the position of its image folder in MSMT_LAYOUTS' pair
MSMT_LISTS = {
    "train": (("list_train.txt", 0), ("list_val.txt", 0)),
    "query": (("list_query.txt", 1),),
    "gallery": (("list_gallery.txt", 1),),
}
MANIFEST_COLUMNS = ("path", "camera", "pid", "split")
# split -> folder in the Market-1501 layout (also DukeMTMC-reID's and the demo dataset's)
MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

Reader = Callable[[Path], pd.DataFrame]
DATASETS: dict[str, Reader] = {}


def register(name: str) -> Callable[[Reader], Reader]:
    """Add a reader to :data:`DATASETS` under ``name`` (the ``--dataset`` value)."""

    def decorator(reader: Reader) -> Reader:
        DATASETS[name] = reader
        return reader

    return decorator


def read_dataset(name: str, root: Path) -> pd.DataFrame:
    """Read dataset ``name`` at ``root`` (a folder; for ``manifest`` the CSV file)."""
    if name not in DATASETS:
        raise PipelineError(
            f"unknown dataset {name!r} (option --dataset); known datasets: "
            f"{', '.join(sorted(DATASETS))}"
        )
    root = Path(os.path.abspath(root))
    if not _is_utf8(str(root)):
        raise PipelineError(
            f"{_shown(str(root))}: the dataset root's path is not valid UTF-8, which the index "
            "(a UTF-8 table) cannot hold; rename the folder (option --root)"
        )
    if not root.exists():
        raise PipelineError(f"{root}: dataset root not found (option --root); check the path")
    return DATASETS[name](root)


def summarize_index(index: pd.DataFrame) -> str:
    """Images and identities (pid >= 0) per split, then images per camera per split."""
    splits = [s for s in SPLITS if (index["split"] == s).any()]
    lines = []
    for split in splits:
        rows = index[index["split"] == split]
        identities = rows.loc[rows["pid"] >= 0, "pid"].nunique()
        lines.append(f"{split}: {len(rows)} images, {identities} identities")
    per_camera = pd.crosstab(index["camid"], index["split"]).reindex(columns=splits, fill_value=0)
    lines.append("images per camera and split:")
    lines.append(per_camera.to_string())
    return "\n".join(lines)


def _finish(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-split frames into the index: typed columns, ordered, RangeIndex; the
    same image file reached through two paths (symbolic links) is an error."""
    index = pd.concat(frames, ignore_index=True)
    order = index["split"].map({s: i for i, s in enumerate(SPLITS)})
    index = index.assign(_order=order).sort_values(["_order", "path"], kind="stable")
    index = index.drop(columns="_order").reset_index(drop=True)
    extra = [c for c in index.columns if c not in INDEX.required]
    index = index[[*INDEX.required, *extra]]
    index = index.astype({c: t for c, t in INDEX.dtypes.items() if c in index})
    _check_aliases(index)
    return index


def _check_aliases(index: pd.DataFrame) -> None:
    """Fail if two index paths are the same file (through a symbolic link to a file or to a
    folder): the image would be counted twice, possibly in two splits."""
    paths = index["path"]
    folders = {folder: os.path.realpath(folder) for folder in paths.map(os.path.dirname).unique()}
    real = paths.map(
        lambda p: (
            os.path.realpath(p)
            if os.path.islink(p)
            else os.path.join(folders[os.path.dirname(p)], os.path.basename(p))
        )
    )
    repeated = real.duplicated(keep=False)
    if repeated.any():
        listed = (
            (paths + " (" + index["split"] + ")")[repeated]
            .groupby(real[repeated])
            .agg(" and ".join)
        )
        aliases = [f"{target} is listed as {names}" for target, names in listed.items()]
        raise PipelineError(
            f"{len(aliases)} image file(s) are listed more than once through symbolic links: "
            f"{_named(aliases)}; list each image once (remove the link, or the file it points "
            "to, from the dataset)"
        )


def _is_utf8(text: str) -> bool:
    """Whether ``text`` (a name from the file system) is valid UTF-8: Python keeps the bytes
    of an invalid name as lone surrogates, which no UTF-8 table can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    """A file name for a message, its invalid bytes as escapes (b'...\\xff...')."""
    return name if _is_utf8(name) else repr(os.fsencode(name))


def _integers(values: pd.Series, where: Path, what: str, named: pd.Series) -> pd.Series:
    """Decimal text -> int64; fail naming ``named`` (the files or lines) where a value does
    not fit in 64 bits."""
    digits = values.str.lstrip("+-").str.lstrip("0").str.len()
    suspect = values[digits >= INT64_DIGITS]
    too_large = suspect.map(lambda v: not INT64.min <= int(v) <= INT64.max)
    if too_large.any():
        bad = too_large.index[too_large.to_numpy()]
        raise PipelineError(
            f"{where}: {len(bad)} {what} value(s) too large for a 64-bit integer: "
            f"{_named(named[bad])}; renumber them"
        )
    return values.astype("int64")


def _named(items: Sequence[str], limit: int = MAX_NAMED) -> str:
    """``a, b, c`` for the first ``limit`` items, with how many there are in all."""
    items = list(items)
    shown = ", ".join(map(str, items[:limit]))
    return f"{shown}, ... ({len(items)} in all)" if len(items) > limit else shown


def _parse(values: pd.Series, pattern: str, where: Path, expected: str) -> pd.DataFrame:
    """Extract ``pattern``'s named groups as integers; fail naming the values that don't match
    or don't fit in 64 bits."""
    parts = values.str.extract(pattern)
    bad = values[parts.isna().any(axis=1)]
    if len(bad):
        raise PipelineError(
            f"{where}: {len(bad)} file name(s) do not parse as {expected}: {_named(bad)}; "
            "rename or remove them"
        )
    return parts.apply(lambda column: _integers(column, where, ID_NAMES[column.name], values))


def _require_folder(root: Path, what: str) -> None:
    if not root.is_dir():
        raise PipelineError(f"{root}: not a folder; --root must be the {what} dataset folder")


def _list_images(folder: Path) -> list[str]:
    """Names of the image files directly in ``folder`` (others, such as Thumbs.db, ignored).

    An entry with an image suffix that is a symbolic link loop, a dangling symbolic link, or
    a name that is not valid UTF-8 is an error naming it: skipping it would drop an image
    without a word.
    """
    names, problems = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            problem = _entry_problem(entry)
            if problem:
                problems.append(f"{_shown(entry.name)} ({problem})")
            elif entry.is_file():
                names.append(entry.name)
    if problems:
        raise PipelineError(
            f"{folder}: {len(problems)} image entr(ies) cannot be indexed: "
            f"{_named(sorted(problems))}; fix or remove them"
        )
    return sorted(names)


def _entry_problem(entry: os.DirEntry) -> str | None:
    """Why a directory entry with an image suffix cannot be indexed, or None."""
    if not _is_utf8(entry.name):
        return "the name is not valid UTF-8: rename it"
    try:
        entry.stat()  # follows symbolic links
    except FileNotFoundError:
        return f"dangling symbolic link to {os.readlink(entry.path)}"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot be read: {exc.strerror}"
    return None


def _read_split_folders(root: Path, what: str, folders: dict[str, str]) -> pd.DataFrame:
    """One folder per split, file names ``<pid>_c<camera>...``; junk (-1) dropped from train."""
    _require_folder(root, what)
    frames = []
    for split, folder in folders.items():
        directory = root / folder
        if not directory.is_dir():
            expected = ", ".join(f"{f}/" for f in folders.values())
            raise PipelineError(
                f"{root}: split folder {folder}/ ({split}) not found; a {what} root holds "
                f"{expected}. Is --root the right folder?"
            )
        names = pd.Series(_list_images(directory), dtype=str)
        parsed = _parse(names, PID_CAMERA_NAME, directory, "<pid>_c<camera>_... (e.g. 0002_c1_...)")
        paths = f"{directory}{os.sep}" + names
        frame = pd.DataFrame({"path": paths, "camid": parsed["camid"], "pid": parsed["pid"]})
        if split == "train":
            frame = frame[frame["pid"] != -1]
        if frame.empty:
            raise PipelineError(
                f"{directory}: no usable images ({', '.join(IMAGE_SUFFIXES)}, junk -1_* excluded "
                f"from train) in the {split} split; check the download is complete"
            )
        frames.append(frame.assign(split=split))
    return _finish(frames)


@register("market1501")
@register("demo")  # the generated demo dataset (`pipeline demo-data`) is in this layout
def read_market1501(root: Path) -> pd.DataFrame:
    """Market-1501: bounding_box_train/, query/, bounding_box_test/ (the gallery)."""
    return _read_split_folders(root, "Market-1501", MARKET_FOLDERS)


@register("dukemtmc")
def read_dukemtmc(root: Path) -> pd.DataFrame:
    """DukeMTMC-reID: the Market-1501 layout, names like 0001_c2_f0046182.jpg."""
    return _read_split_folders(root, "DukeMTMC-reID", MARKET_FOLDERS)


@register("veri776")
def read_veri776(root: Path) -> pd.DataFrame:
    """VeRi-776: image_train/, image_query/, image_test/ (the gallery)."""
    return _read_split_folders(
        root,
        "VeRi-776",
        {"train": "image_train", "query": "image_query", "gallery": "image_test"},
    )


def _read_msmt_list(list_file: Path, folder: Path) -> pd.DataFrame:
    """An MSMT17 list file -> ``path`` (absolute), ``camid``, ``pid``; every file must exist."""
    if not list_file.is_file():
        raise PipelineError(
            f"{list_file}: MSMT17 list file not found; the dataset root must hold "
            f"{', '.join(name for lists in MSMT_LISTS.values() for name, _ in lists)}"
        )
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError(
            f"{list_file}: not valid UTF-8 text (byte {exc.start}); fix the list file"
        ) from exc
    lines = pd.Series(text.splitlines(), dtype=str)
    lines = lines[lines.str.strip() != ""]
    numbers = "line " + pd.Series(lines.index + 1, index=lines.index).astype(str)
    parts = lines.str.extract(MSMT_LIST_LINE)
    bad = parts["pid"].isna()
    if bad.any():
        raise PipelineError(
            f"{list_file}: {int(bad.sum())} line(s) are not '<image path> <pid>': "
            f"{_named(numbers[bad])}; fix or remove them"
        )
    pid = _integers(parts["pid"], list_file, ID_NAMES["pid"], numbers)
    camid = _parse(parts["relpath"], MSMT_CAMERA_NAME, list_file, "<pid>_<n>_<camera>_...")
    paths = (str(folder) + "/" + parts["relpath"]).map(os.path.normpath)
    missing = paths[~paths.map(os.path.isfile)]
    if len(missing):
        raise PipelineError(
            f"{list_file}: {len(missing)} listed image(s) not found under {folder}/: "
            f"{_named(missing)}; the download is incomplete or the list belongs to another layout"
        )
    return pd.DataFrame({"path": paths, "camid": camid["camid"], "pid": pid})


@register("msmt17")
def read_msmt17(root: Path) -> pd.DataFrame:
    """MSMT17 V1 (train/, test/) or V2 (mask_train_v2/, mask_test_v2/) with list_*.txt.

    Train is list_train + list_val, as in the standard protocol.
    """
    _require_folder(root, "MSMT17")
    layouts = [
        folders
        for folders in MSMT_LAYOUTS.values()
        if all((root / folder).is_dir() for folder in folders)
    ]
    if not layouts:
        expected = " or ".join(
            f"{version} ({', '.join(f'{f}/' for f in folders)})"
            for version, folders in MSMT_LAYOUTS.items()
        )
        raise PipelineError(
            f"{root}: no MSMT17 image folders found; expected {expected}. "
            "Is --root the MSMT17 folder?"
        )
    folders = layouts[0]
    frames = []
    for split, lists in MSMT_LISTS.items():
        frame = pd.concat(
            [_read_msmt_list(root / name, root / folders[which]) for name, which in lists],
            ignore_index=True,
        )
        if frame.empty:
            listed = ", ".join(name for name, _ in lists)
            raise PipelineError(f"{root}: no images listed in {listed} (the {split} split)")
        frames.append(frame.assign(split=split))
    return _finish(frames)


@register("manifest")
def read_manifest(csv_path: Path) -> pd.DataFrame:
    """A CSV with columns ``path``, ``camera`` and optionally ``pid`` and ``split``.

    ``path`` is absolute or relative to the CSV's folder. ``camera`` holds integers (kept as
    they are) or names, which become 1..C in sorted order with the name kept in
    ``camera_name``. An empty or absent ``pid`` is -1 (unknown); an empty or absent ``split``
    is ``train``. A manifest without query and gallery rows is a training-only dataset.
    """
    if not csv_path.is_file():
        raise PipelineError(f"{csv_path}: not a file; for --dataset manifest, --root is a CSV")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{csv_path}: cannot read the manifest CSV ({exc})") from exc
    table.columns = table.columns.str.strip()
    missing = [c for c in ("path", "camera") if c not in table.columns]
    unknown = [c for c in table.columns if c not in MANIFEST_COLUMNS]
    if missing or unknown:
        raise PipelineError(
            f"{csv_path}: manifest columns must be path, camera and optionally pid, split; "
            + "; ".join(
                f"{what} {', '.join(cols)}"
                for what, cols in (("missing", missing), ("unknown", unknown))
                if cols
            )
        )
    if table.empty:
        raise PipelineError(f"{csv_path}: the manifest has no rows")
    table = table.apply(lambda column: column.str.strip())
    # CSV line of each row: the header is line 1
    lines = "line " + pd.Series(table.index + 2, index=table.index).astype(str)

    def fail_rows(bad: pd.Series, problem: str, remedy: str, named: pd.Series = lines) -> None:
        if bad.any():
            raise PipelineError(
                f"{csv_path}: {int(bad.sum())} row(s) {problem}: {_named(named[bad])}; {remedy}"
            )

    fail_rows(table["path"] == "", "have no path", "fill in the image path")
    fail_rows(table["camera"] == "", "have no camera", "fill in the camera of every image")
    pid = table["pid"] if "pid" in table else pd.Series("", index=table.index)
    fail_rows(
        ~pid.str.fullmatch(r"(-?\d+)?"), "have a pid that is not an integer", "use -1 for unknown"
    )
    split = table["split"] if "split" in table else pd.Series("", index=table.index)
    split = split.mask(split == "", "train")
    fail_rows(~split.isin(SPLITS), "have a split other than train, query or gallery", "fix them")

    paths = table["path"].map(lambda p: os.path.normpath(os.path.join(csv_path.parent, p)))
    located = paths + " (" + lines + ")"
    fail_rows(
        paths.duplicated(keep=False),
        "repeat an image path",
        "list every image once",
        located,
    )
    fail_rows(
        ~paths.map(os.path.isfile),
        "name an image that does not exist",
        "relative paths are relative to the manifest's folder",
        located,
    )

    pid = _integers(pid.mask(pid == "", "-1"), csv_path, ID_NAMES["pid"], lines)
    index = pd.DataFrame({"path": paths, "pid": pid, "split": split})
    camera = table["camera"]
    integer = camera.str.fullmatch(r"-?\d+")
    with_camera = lines + " (" + camera + ")"
    fail_rows(
        pd.to_numeric(camera, errors="coerce").notna() & ~integer,
        "have a camera that is a number but not an integer",
        "a camera is an integer (kept as it is) or a name (numbered 1..C)",
        with_camera,
    )
    if integer.any() and not integer.all():
        # the fewer kind is the odd one out: a name among integers, or an integer among names
        odd, kind = (~integer, "a name") if integer.mean() >= 0.5 else (integer, "an integer")
        fail_rows(
            odd,
            f"have {kind} as camera while the other rows have "
            + ("integers" if kind == "a name" else "names"),
            "use integers for every camera or names for every camera",
            with_camera,
        )
    if integer.all():
        index["camid"] = _integers(camera, csv_path, ID_NAMES["camid"], lines)
    else:
        numbers = {name: i + 1 for i, name in enumerate(sorted(camera.unique()))}
        index["camid"] = camera.map(numbers)
        index["camera_name"] = camera
    has = {s: (index["split"] == s).any() for s in SPLITS}
    if not has["train"]:
        raise PipelineError(f"{csv_path}: no train rows; the training split cannot be empty")
    if has["query"] != has["gallery"]:
        present, absent = ("query", "gallery") if has["query"] else ("gallery", "query")
        raise PipelineError(
            f"{csv_path}: {present} rows but no {absent} rows; evaluation needs both, "
            "or neither for a training-only dataset"
        )
    return _finish([index])
