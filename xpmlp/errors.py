"""The project's own exceptions: each names the problem and, where there is one, the fix."""


class XpmlpError(Exception):
    """Base class of every error xpmlp raises on purpose."""


class ConfigError(XpmlpError, ValueError):
    """A setting (CLI flag, environment variable, function argument) is invalid."""


class BackendError(XpmlpError, RuntimeError):
    """A backend is unknown, not installed, or installed but unusable here."""


class DataError(XpmlpError, ValueError):
    """A data file is missing, corrupt, truncated or inconsistent."""


class InputError(XpmlpError, ValueError):
    """Arrays passed to a public function have the wrong shape, dtype, range or namespace."""


class ModelFileError(XpmlpError, ValueError):
    """A saved model or checkpoint is missing arrays, has wrong shapes/dtypes, or is unreadable."""


class DivergenceError(XpmlpError, FloatingPointError):
    """Training blew up: a non-finite loss or parameter, or a loss saturated at the clip."""

    def __init__(self, message: str, epoch: int = 0):
        super().__init__(message)
        self.epoch = epoch
