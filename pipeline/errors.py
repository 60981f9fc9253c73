"""The one exception type that reaches the user as a message instead of a traceback."""


class PipelineError(Exception):
    """Bad input or configuration.

    The message must say what is wrong, where (file, row, camera, config key) and what to do.
    `pipeline` prints it and exits with status 2; nothing half-written is left behind because
    every writer goes through :func:`pipeline.io.atomic_output`.

    An error raised in a DataLoader worker process reaches the main process as a new instance
    that torch builds from the text ``Caught <class> in DataLoader worker process <n>.`` followed
    by the worker's whole traceback; the constructor keeps only the original message, which is
    all the user needs.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(_worker_message(message, type(self)))


def _worker_message(message: str, cls: type) -> str:
    """The original message inside torch's re-raised worker text, else ``message`` itself."""
    if not (message.startswith(f"Caught {cls.__name__} in DataLoader worker") and "\n" in message):
        return message
    # the traceback ends with the line "<module>.<class>: <message>" (the message may span lines)
    marker = f"\n{cls.__module__}.{cls.__qualname__}: "
    before, found, original = message.rpartition(marker)
    return original.rstrip("\n") if found else message
