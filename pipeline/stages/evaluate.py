"""PLACEHOLDER (to be replaced by its owner): stage evaluate."""

from pipeline.errors import PipelineError


def add_arguments(parser):
    pass


def run(args):
    raise PipelineError("stage evaluate is not implemented yet")
