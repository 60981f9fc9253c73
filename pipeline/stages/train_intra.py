"""PLACEHOLDER (to be replaced by its owner): stage train_intra."""

from pipeline.errors import PipelineError


def add_arguments(parser):
    pass


def run(args):
    raise PipelineError("stage train_intra is not implemented yet")
