"""PLACEHOLDER (to be replaced by its owner): stage cluster_global."""

from pipeline.errors import PipelineError


def add_arguments(parser):
    pass


def run(args):
    raise PipelineError("stage cluster_global is not implemented yet")
