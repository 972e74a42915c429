"""`hrmlab run PRESET --backend modal`: check what Modal needs, run the pipeline there, say how to fetch results.

modal is imported only inside functions: without the optional extra the CLI still works and
`--backend modal` says how to install it; without a token it says how to authenticate.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from hrmlab.cloud.orchestrate import resolve_config, run_in_app
from hrmlab.errors import UserError


def require_modal():
    """The modal module, or a one-line UserError naming the install command."""
    try:
        import modal
    except ImportError:
        raise UserError("the Modal backend needs the modal package; "
                        "install it with pip install 'hrmlab[modal]'") from None
    return modal


def modal_config_path() -> Path:
    return Path(os.environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")


def has_modal_token() -> bool:
    """A token in the environment or in Modal's config file (any profile); checked before anything starts."""
    if os.environ.get("MODAL_TOKEN_ID"):
        return True
    try:
        profiles = tomllib.loads(modal_config_path().read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return any(isinstance(profile, dict) and profile.get("token_id") for profile in profiles.values())


def require_token() -> None:
    if not has_modal_token():
        raise UserError("no Modal token found; run `modal setup` (or set MODAL_TOKEN_ID/MODAL_TOKEN_SECRET)")


def run_on_modal(preset: str, overrides=(), smoke: bool = False, out: str | Path | None = None) -> int:
    """Run the preset's pipeline on Modal (the CLI's `--backend modal`); returns the exit code."""
    resolve_config(preset, overrides, smoke)  # a bad preset or key fails here, before anything starts
    modal, modal_app = modal_ready()
    with modal.enable_output(), modal_app.app.run():
        return run_in_app(modal_app.run_pipeline, preset, overrides, smoke, out)


def modal_ready():
    """(modal, hrmlab.cloud.modal_app) once the extra, a token and the project's pyproject (the image is built
    from it) are there; otherwise the one-line UserError that says what to do."""
    modal = require_modal()
    require_token()
    from hrmlab.cloud import modal_app

    if not modal_app.PYPROJECT.is_file():
        raise UserError(f"the Modal image is built from the project's pyproject.toml, not found at "
                        f"{modal_app.PYPROJECT}; run from a source checkout (pip install -e '.[modal]')")
    return modal, modal_app


class ModalStudyEngine:
    """`hrmlab study --backend modal`'s engine: each world runs in the app's study orchestrator
    (`modal_app.run_study_world`), which fans its runs out to containers; the record comes back here, where
    `run_study` writes the results, episodes and document files as for a local study.

    world_function: the Modal function (inside a running app) or any object with its `.remote`."""

    label = "modal"

    def __init__(self, world_function, retries: int = 1):
        self.world_function, self.retries = world_function, retries

    def run_world(self, world: str, study, opts, overrides=(), smoke: bool = False, progress=None) -> tuple[dict, dict]:
        """progress is not sent: the app's Volume keeps every finished stage, and any machine reaches it."""
        return self.world_function.remote(world, study, list(overrides), smoke, self.retries)


def study_on_modal(retries: int = 1, **run_study_args) -> str:
    """`hrmlab study --backend modal`: checks what Modal needs, then `run_study` with every world on Modal."""
    from hrmlab.experiments.study.run import check_study, run_study

    check_study(run_study_args["study"])  # a bad setting fails here, before Modal is asked for anything
    modal, modal_app = modal_ready()
    with modal.enable_output(), modal_app.app.run():
        return run_study(engine=ModalStudyEngine(modal_app.run_study_world, retries), **run_study_args)
