"""The error type for bad input: the launcher prints its message without a traceback."""


class UserError(ValueError):
    """A configuration value, file or data folder that cannot work; the message names the fix."""
