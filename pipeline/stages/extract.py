"""PLACEHOLDER (to be replaced by its owner): stage extract."""

from pipeline.errors import PipelineError


def add_arguments(parser):
    pass


def run(args):
    raise PipelineError("stage extract is not implemented yet")
