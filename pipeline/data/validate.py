"""Checks on a dataset index before it is written: cameras large enough, images decodable."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from PIL import Image

from pipeline.errors import PipelineError

MAX_UNREADABLE_NAMED = 20


def small_training_cameras(index: pd.DataFrame, min_images: int) -> pd.Series:
    """Training images per camera, for the cameras with fewer than ``min_images``."""
    counts = index.loc[index["split"] == "train", "camid"].value_counts().sort_index()
    return counts[counts < min_images]


def check_training_cameras(index: pd.DataFrame, min_images: int) -> None:
    """Fail if a camera has too few training images for intra-camera clustering and training."""
    small = small_training_cameras(index, min_images)
    if small.empty:
        return
    names = (
        index.drop_duplicates("camid").set_index("camid")["camera_name"]
        if "camera_name" in index
        else pd.Series(dtype=str)
    )
    described = ", ".join(
        f"camera {camid}" + (f" ({names[camid]})" if camid in names else "") + f": {count}"
        for camid, count in small.items()
    )
    raise PipelineError(
        f"{len(small)} camera(s) have fewer than {min_images} training images, too few for the "
        f"intra-camera stage (images per camera: {described}); lower --min-images-per-camera, "
        "or use a manifest without that camera"
    )


def check_intra_settings(min_images_per_camera: int, ratio: int) -> None:
    """Fail when a camera that the index admits (``min_images_per_camera`` training images)
    could not be split into two local clusters of ``ratio`` images on average
    (:func:`pipeline.cluster.agglomerative.n_local_clusters`): without this check the setting
    fails only in the intra-camera stage, after the index and the initial features were built.
    A check of the configuration alone, for the workflow's start-up."""
    if min_images_per_camera < 2 * ratio:
        lower = (
            f" or lower intra.clustering.ratio to {min_images_per_camera // 2}"
            if min_images_per_camera >= 2
            else ""
        )
        raise PipelineError(
            f"dataset.min_images_per_camera {min_images_per_camera} admits cameras that "
            f"intra.clustering.ratio {ratio} cannot split into 2 local clusters (that needs "
            f"2 x {ratio} = {2 * ratio} images); raise min_images_per_camera to {2 * ratio}{lower}"
        )


def decode_error(path: str) -> str | None:
    """Why the image at ``path`` cannot be fully decoded, or None if it can."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL reports broken files as OSError, and some corrupt PNG chunks as SyntaxError
        return f"{type(exc).__name__}: {exc}"
    return None


def unreadable_images(paths: Sequence[str], workers: int | None = None) -> list[tuple[str, str]]:
    """``(path, reason)`` for each image that does not decode, in the order of ``paths``.

    Decoding is mostly file I/O, so a thread pool of ``workers`` threads (Python's default when
    None) reads the images in parallel.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = list(pool.map(decode_error, paths))
    return [(path, error) for path, error in zip(paths, errors, strict=True) if error is not None]


def check_images_readable(paths: Sequence[str], workers: int | None = None) -> None:
    """Fail listing the first unreadable images (and how many there are) if any."""
    bad = unreadable_images(paths, workers)
    if not bad:
        return
    listed = "\n".join(f"  {path} ({error})" for path, error in bad[:MAX_UNREADABLE_NAMED])
    more = (
        f"\n  ... and {len(bad) - MAX_UNREADABLE_NAMED} more"
        if len(bad) > MAX_UNREADABLE_NAMED
        else ""
    )
    raise PipelineError(
        f"{len(bad)} of {len(paths)} images cannot be decoded:\n{listed}{more}\n"
        "re-download or remove them (for a manifest, drop their rows); no index was written"
    )
