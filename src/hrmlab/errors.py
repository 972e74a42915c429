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
