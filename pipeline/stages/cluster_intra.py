"""PLACEHOLDER (to be replaced by its owner): stage cluster_intra."""

from pipeline.errors import PipelineError


def add_arguments(parser):
    pass


def run(args):
    raise PipelineError("stage cluster_intra is not implemented yet")
