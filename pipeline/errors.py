"""The one exception type that reaches the user as a message instead of a traceback."""


class PipelineError(Exception):
    """Bad input or configuration.

    The message must say what is wrong, where (file, row, camera, config key) and what to do.
    `pipeline` prints it and exits with status 2; nothing half-written is left behind because
    every writer goes through :func:`pipeline.io.atomic_output`.
    """
