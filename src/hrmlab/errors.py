"""User-facing errors: the CLI prints them as one line and exits with code 2 (no traceback)."""


class UserError(Exception):
    """A mistake the user can fix (unknown preset, bad config key, missing checkpoint, ...)."""


class TrainingDiverged(UserError):
    """Training produced only non-finite losses for too long. A learning-rate search treats it as a result
    (that rate loses); everywhere else it is a one-line error."""


def choose(kind: str, value: str, choices) -> str:
    """Return `value` if it is one of `choices`, else raise a UserError naming the valid ones."""
    choices = sorted(choices)
    if value not in choices:
        raise UserError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")
    return value


class InvalidValue(UserError, ValueError):
    """A value out of its range (a config key, an env argument): one line in the CLI, and a ValueError to a
    Python caller such as a Gymnasium user (the convention for a bad argument)."""


class InvalidType(UserError, TypeError):
    """A value of the wrong kind: one line in the CLI, and a TypeError to a Python caller."""


class RaisedError(UserError):
    """Outside code (a `--policy`) raised: one line naming where; `detail` (its traceback) is logged with
    `hrmlab -v`. It pickles with its detail, so a worker process's traceback reaches the CLI."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail

    def __reduce__(self):
        return type(self), (str(self), self.detail)
