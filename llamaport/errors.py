"""Errors that name the file or field at fault and say how to fix it.

Every error a user can cause derives from ``LlamaportError`` so the CLI can print it as one clean line and exit
non-zero instead of showing a traceback.
"""


class LlamaportError(Exception):
    """Base class for errors caused by user input (files, flags, configs)."""


class ConfigError(LlamaportError, ValueError):
    """A config field is missing, unknown or inconsistent with another one."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config field '{field}': {message}")


class CheckpointError(LlamaportError):
    """A checkpoint file is missing, unreadable, or holds tensors that do not fit the config."""


class MissingDependency(LlamaportError):
    """An optional package this command needs is not installed (TensorRT, a GPU build of a library).

    The message names what to install. The CLI exits 2 for it, not 1: the input was fine, the machine is not.
    """

    exit_code = 2
