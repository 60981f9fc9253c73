"""Build the initial encoder (ImageNet or random weights) and save it as a checkpoint.

Every later stage starts from this file: stage 1 initialises each camera's encoder from it and
stage 2 the global encoder (Algorithm 1, "Initialize f^c with f"), so all of them start from
the same weights even when they are random.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="resnet50", help="resnet18 | resnet50 | resnet50_ibn_a")
    parser.add_argument("--pooling", default="avg", help="avg | gem")
    parser.add_argument("--last-stride", type=int, default=1)
    parser.add_argument("--pretrained", default="imagenet", help="imagenet | none")
    parser.add_argument(
        "--weights-path", default=None, help="local ImageNet weights file (default: torch cache)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--out", required=True, help="checkpoint to write (.pt)")


def run(args: argparse.Namespace) -> None:
    import torch

    from pipeline.models import build_model
    from pipeline.models.checkpoint import save_checkpoint

    torch.manual_seed(args.seed)
    model = build_model(
        arch=args.arch,
        pooling=args.pooling,
        pretrained=args.pretrained,
        weights_path=args.weights_path,
        last_stride=args.last_stride,
    )
    save_checkpoint(
        args.out,
        {
            "model_config": model.config,
            "model": model.state_dict(),
            "pretrained": args.pretrained,
            "epoch": 0,
        },
    )
    log.info(
        "initial %s encoder (pretrained: %s) written to %s", args.arch, args.pretrained, args.out
    )
