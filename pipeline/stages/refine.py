"""PLACEHOLDER (to be replaced by its owner): stage refine."""

from pipeline.errors import PipelineError


def add_arguments(parser):
    pass


def run(args):
    raise PipelineError("stage refine is not implemented yet")
