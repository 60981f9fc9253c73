"""PLACEHOLDER (to be replaced by its owner): stage index."""

from pipeline.errors import PipelineError


def add_arguments(parser):
    pass


def run(args):
    raise PipelineError("stage index is not implemented yet")
