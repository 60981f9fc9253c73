"""PLACEHOLDER (to be replaced by its owner): stage train_inter."""

from pipeline.errors import PipelineError


def add_arguments(parser):
    pass


def run(args):
    raise PipelineError("stage train_inter is not implemented yet")
