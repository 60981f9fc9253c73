"""PLACEHOLDER (to be replaced by its owner): stage demo_data."""

from pipeline.errors import PipelineError


def add_arguments(parser):
    pass


def run(args):
    raise PipelineError("stage demo_data is not implemented yet")
