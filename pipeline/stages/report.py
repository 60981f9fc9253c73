"""PLACEHOLDER (to be replaced by its owner): stage report."""

from pipeline.errors import PipelineError


def add_arguments(parser):
    pass


def run(args):
    raise PipelineError("stage report is not implemented yet")
