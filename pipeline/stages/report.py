"""Write one experiment's report: curves, cluster quality, t-SNE by camera, retrieval, summary.

Reads the training logs and refine summaries of every round, the training features before and
after training, the final query and gallery features and metrics.csv (with --round-metrics also
the metrics of earlier rounds' models, plotted for monitoring only), and writes into --out-dir
(each file atomically): curves.png, cluster_quality.png and .csv, tsne_cameras.png,
retrieval.png, epochs.csv and summary.md. Optional log columns and summary keys that are absent
make their panel say "not available"; a missing input file is an error.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import settings
from pipeline.errors import PipelineError
from pipeline.features.store import FeatureSet
from pipeline.runtime import Seed
from pipeline.settings import setting

if TYPE_CHECKING:  # the report modules import matplotlib: only inside run(), for a fast --help
    import pandas as pd

    from pipeline.report.embedding import CameraBias
    from pipeline.report.retrieval import RetrievalRow

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = (64, 128)  # width, height of the images in the retrieval grid


@dataclass(frozen=True)
class ReportOptions:
    """The per-experiment report's figures."""

    tsne_points: int = setting(
        2000, "training images sampled for the t-SNE plots and the camera bias", minimum=10
    )
    retrieval_queries: int = setting(6, "queries shown in the retrieval grid", minimum=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", required=True, help="experiment name (titles, metrics)")
    parser.add_argument("--index", required=True, type=Path, help="dataset index table")
    parser.add_argument(
        "--train-logs",
        required=True,
        nargs="+",
        type=Path,
        help="train_log.csv of every round, in round order",
    )
    parser.add_argument(
        "--refine-summaries",
        nargs="*",
        default=[],
        type=Path,
        help="refine.json of every round, in round order (none: refinement did not run)",
    )
    parser.add_argument(
        "--features-before", required=True, type=Path, help="train features, initial model"
    )
    parser.add_argument(
        "--features-after", required=True, type=Path, help="train features, final model"
    )
    parser.add_argument("--query", required=True, type=Path, help="query features, final model")
    parser.add_argument("--gallery", required=True, type=Path, help="gallery features, final model")
    parser.add_argument("--metrics", required=True, type=Path, help="the experiment's metrics.csv")
    parser.add_argument(
        "--round-metrics",
        nargs="*",
        default=[],
        type=Path,
        help="metrics.csv of each round's model before the last, plotted against its epoch for "
        "monitoring only (the summary reports the delivered model, the last epoch's)",
    )
    parser.add_argument("--out-dir", required=True, type=Path, help="folder of the report files")
    settings.add_arguments(parser, ReportOptions, "report")
    settings.add_arguments(parser, Seed, "seed (samples, t-SNE)")


def read_summary(path: Path) -> dict:
    """A refine summary (JSON object), or a PipelineError naming the file."""
    if not path.is_file():
        raise PipelineError(f"{path}: refine summary not found; run `pipeline refine` first")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc}); rerun `pipeline refine`") from exc
    if not isinstance(summary, dict):
        raise PipelineError(
            f"{path}: a refine summary is a JSON object, found {type(summary).__name__}; "
            "rerun `pipeline refine`"
        )
    return summary


def experiment_rows(
    metrics: pd.DataFrame, experiment: str, source: Path, option: str
) -> pd.DataFrame:
    """The rows of ``experiment`` in a metrics table read from ``source`` (passed with
    ``option``); an error when the table holds only other experiments' rows."""
    own = metrics[metrics["experiment"].astype(str) == experiment]
    if len(metrics) and own.empty:
        raise PipelineError(
            f"{source}: no row for experiment {experiment!r} (found "
            f"{', '.join(sorted(metrics['experiment'].astype(str).unique()))}); pass this "
            f"experiment's metrics.csv (option {option})"
        )
    return own


def load_thumbnail(path: str) -> np.ndarray:
    """The image at ``path`` as (128, 64, 3) uint8 RGB, for the retrieval grid."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(
                image.convert("RGB").resize(THUMBNAIL_SIZE, Image.Resampling.BILINEAR)
            )
    except OSError as exc:
        raise PipelineError(
            f"{path}: cannot read the image ({exc}); the feature files name images that are no "
            "longer there, re-run `pipeline index` and `pipeline extract` on the moved dataset"
        ) from exc


def camera_panels(
    before: FeatureSet, after: FeatureSet, sample: np.ndarray, seed: int
) -> tuple[list[tuple[str, np.ndarray]], dict[str, CameraBias]]:
    """t-SNE panels and camera bias of the ``sample`` rows of the features before and after
    training (FeatureSets with the same rows)."""
    from pipeline.report.embedding import camera_bias, tsne_2d

    panels, biases = [], {}
    for name, features in (("before training", before), ("after training", after)):
        points = features.subset(sample)
        bias = camera_bias(points.features, points.camid, points.pid)
        biases[name] = bias
        log.info("t-SNE of %d %s features", len(sample), name)
        title = (
            f"{name}\ncamera bias gap {bias.gap:.3f} "
            f"(same camera {bias.same_camera:.3f}, cross camera {bias.cross_camera:.3f})"
        )
        panels.append((title, tsne_2d(points.features, seed)))
    return panels, biases


def retrieval_rows(
    query: FeatureSet, gallery: FeatureSet, count: int, seed: int
) -> list[RetrievalRow]:
    """The retrieval grid's rows: ``count`` seeded queries with their top-10 gallery images."""
    from pipeline.report.retrieval import RetrievalRow, choose_queries, rank_gallery

    chosen = query.subset(choose_queries(query, gallery, count, seed))
    ranking = rank_gallery(chosen, gallery)
    rows = []
    for q, (ranked, correct) in enumerate(zip(ranking.gallery_rows, ranking.correct, strict=True)):
        shown = ranked[ranked >= 0]
        rows.append(
            RetrievalRow(
                query_image=load_thumbnail(chosen.path[q]),
                query_pid=int(chosen.pid[q]),
                query_camid=int(chosen.camid[q]),
                gallery_images=[load_thumbnail(gallery.path[g]) for g in shown],
                gallery_pids=gallery.pid[shown].tolist(),
                gallery_camids=gallery.camid[shown].tolist(),
                correct=correct[ranked >= 0].tolist(),
            )
        )
    return rows


def run(args: argparse.Namespace) -> None:
    from pipeline.features.store import read_features
    from pipeline.io import atomic_output, write_table
    from pipeline.report.curves import concat_train_logs, plot_curves, retrieval_curve
    from pipeline.report.embedding import plot_camera_embedding, sample_rows
    from pipeline.report.figures import save_figure
    from pipeline.report.refinement import cluster_quality_table, plot_cluster_quality, round_table
    from pipeline.report.retrieval import plot_retrieval
    from pipeline.report.summary import summary_markdown
    from pipeline.report.tables import final_metrics
    from pipeline.tables import INDEX, METRICS, TRAINING_LOG

    options = settings.from_args(ReportOptions, args)
    seed = settings.from_args(Seed, args).seed

    index = INDEX.read(args.index)
    epochs = concat_train_logs(
        [TRAINING_LOG.read(path) for path in args.train_logs],
        [str(path) for path in args.train_logs],
    )
    summaries = [read_summary(path) for path in args.refine_summaries]
    own = experiment_rows(METRICS.read(args.metrics), args.experiment, args.metrics, "--metrics")
    final = final_metrics(own, str(args.metrics)) if len(own) else None
    rounds = [
        experiment_rows(METRICS.read(path), args.experiment, path, "--round-metrics")
        for path in args.round_metrics
    ]
    curve = retrieval_curve([*rounds, own], [str(p) for p in (*args.round_metrics, args.metrics)])
    before = read_features(args.features_before, index)
    after = read_features(args.features_after, index)
    if not np.array_equal(before.index_row, after.index_row):
        raise PipelineError(
            f"{args.features_before} and {args.features_after} hold different images "
            f"({len(before)} and {len(after)} rows); extract both from the same split of the "
            "same index"
        )
    query = read_features(args.query, index)
    gallery = read_features(args.gallery, index)

    out = args.out_dir
    title = f"experiment {args.experiment}"
    write_table(epochs, out / "epochs.csv")
    save_figure(plot_curves(epochs, curve, f"{title}: training"), out / "curves.png")

    quality = cluster_quality_table(summaries)
    write_table(quality, out / "cluster_quality.csv")
    figure = plot_cluster_quality(quality, f"{title}: global, refined and local cluster quality")
    save_figure(figure, out / "cluster_quality.png")

    sample = sample_rows(len(before), options.tsne_points, seed)
    panels, biases = camera_panels(before, after, sample, seed)
    figure = plot_camera_embedding(
        panels, before.camid[sample], f"{title}: t-SNE of {len(sample)} training images"
    )
    save_figure(figure, out / "tsne_cameras.png")

    rows = retrieval_rows(query, gallery, options.retrieval_queries, seed)
    save_figure(plot_retrieval(rows, f"{title}: top-10 gallery images"), out / "retrieval.png")

    text = summary_markdown(args.experiment, final, epochs, round_table(summaries), quality, biases)
    with atomic_output(out / "summary.md") as tmp:
        tmp.write_text(text)
    log.info("report of %s written to %s", args.experiment, out)
