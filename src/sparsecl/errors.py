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


class RunFailed(Exception):
    """A run failed in a way its message fully explains: the CLI prints the line alone and exits 1."""


class Diverged(RunFailed):
    """The training loss (or an evaluation) stopped being finite; the last good checkpoint is kept."""

    def __init__(self, step: int, phase: int, loss: float, where: str = "loss") -> None:
        self.step, self.phase, self.loss = step, phase, loss
        super().__init__(f"diverged at step {step} of phase {phase} ({where} {loss}); lower train.lr or set "
                         f"train.grad_clip")
