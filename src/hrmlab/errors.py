"""User-facing errors: the CLI prints them as one line and exits with code 2 (no traceback)."""


class UserError(Exception):
    """A mistake the user can fix (unknown preset, bad config key, missing checkpoint, ...)."""


def choose(kind: str, value: str, choices) -> str:
    """Return `value` if it is one of `choices`, else raise a UserError naming the valid ones."""
    choices = sorted(choices)
    if value not in choices:
        raise UserError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")
    return value
