"""Errors the CLI turns into one line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message names what is wrong and how to fix it."""


class ConfigError(UserError):
    """A config field is wrong; ``field`` is its dotted path."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        msg = f"config field '{field}': {problem}"
        if fix:
            msg += f"; {fix}"
        super().__init__(msg)
