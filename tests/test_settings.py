"""One source of truth per setting: every `--set` takes effect where it applies or is refused; cache keys
hash exactly what changes a stage's result; commands a family does not support say so in one line."""

import numpy as np
import pytest

from hrmlab.cli import main
from hrmlab.evaluate.episodes import make_episodes
from hrmlab.evaluate.protocols import get_protocol
from hrmlab.errors import UserError
from hrmlab.experiments.grid.stages import train_key
from hrmlab.presets import resolve


@pytest.mark.parametrize("smoke", [False, True])
def test_world_overrides_apply_on_top_of_a_suite_protocols_world(smoke):
    cfg = resolve("suite-rush", ["world.speed=2.0"], smoke=smoke)
    assert cfg.world.speed == 2.0
    assert cfg.world.num_obstacles == get_protocol("suite-rush").world.num_obstacles  # the rest is the suite's
    state = make_episodes(get_protocol("suite-rush"), cfg.world, np.arange(5))  # evaluation uses the run's world
    assert np.allclose(np.linalg.norm(state.vel, axis=-1), 2.0)


def test_a_smoke_run_records_the_overridden_world(tmp_path):
    out = tmp_path / "run"
    args = ["run", "suite-rush", "--smoke", "--set", "world.speed=2.0", "--set", "physics_forecasters=[oracle]",
            "--set", "models=[]", "--out", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert main(args) == 0
    assert "speed: 2.0" in (out / "config.yaml").read_text()


def test_cache_keys_ignore_logging_and_checkpoint_cadence_but_not_the_recipe():
    base = resolve("quick", smoke=True)
    assert train_key(resolve("quick", ["train_hrm.log_every_steps=7", "train_hrm.checkpoint_every_steps=3"],
                             smoke=True), "hrm") == train_key(base, "hrm")
    assert train_key(resolve("quick", ["train_hrm.lr=0.5"], smoke=True), "hrm") != train_key(base, "hrm")


@pytest.mark.parametrize("override", ["train_hrm.gpus=4", "train_lstm.device=cpu"])
def test_per_recipe_device_and_gpu_settings_are_refused(override):
    with pytest.raises(UserError, match="hardware.gpus"):
        resolve("quick", [override])


@pytest.mark.parametrize("command", [["evaluate", "--preset", "diffusion-v2"], ["train", "diffusion-v2", "--model", "hrm"],
                                     ["collect", "diffusion-cpu"]])
def test_commands_a_family_does_not_support_fail_in_one_line(command, capsys):
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "diffusion family" in err
