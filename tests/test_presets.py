"""Presets: every seed experiment is a data file whose models have the SPEC's exact parameter counts."""

import pytest

from hrmlab.errors import UserError
from hrmlab.forecast.models import build_model, count_parameters
from hrmlab.presets import load_preset, preset_names

# SPEC §4: (HRM params, LSTM params) per preset
SPEC_COUNTS = {
    "hrm-cloud": (1_550_082, 793_090),
    "hrm-cloud-v2": (1_550_082, 793_090),
    "hrm-cloud-v3": (388_226, 199_938),
    "hrm-cloud-boosted": (388_226, 199_938),
    "hrm-cloud-mid": (3_624_194, 793_090),
    "hrm-cloud-fullscale": (24_771_074, 3_159_042),
    "hrm-cloud-robustfix": (28_969_474, 3_159_042),
    "hrm-cloud-split": (28_969_474, 3_159_042),
    "hrm-cloud-8gpu": (28_969_474, 3_159_042),
    "hrm-cloud-8gpu-v2": (29_411_842, 793_090),
}


def test_every_seed_experiment_is_a_preset():
    names = set(preset_names())
    assert set(SPEC_COUNTS) <= names and "quick" in names


@pytest.mark.parametrize("name", sorted(SPEC_COUNTS))
def test_preset_parameter_counts_match_the_spec(name):
    cfg = load_preset(name)
    hrm, lstm = SPEC_COUNTS[name]
    assert count_parameters(build_model(cfg.hrm)) == hrm
    assert count_parameters(build_model(cfg.lstm)) == lstm
    assert cfg.description and cfg.provenance and cfg.published


def test_recipes_follow_the_spec():
    v3 = load_preset("hrm-cloud-v3")
    assert (v3.train_hrm.schedule, v3.train_hrm.lr, v3.train_hrm.batch_size, v3.train_hrm.epochs) == ("onecycle", 1e-3, 2048, 60)
    assert v3.seed_protocol == "seed-v3" and v3.data.train_episodes == 30_000
    gpu8 = load_preset("hrm-cloud-8gpu")
    assert gpu8.hardware.gpus == 8 and gpu8.train_hrm.batch_size == 16_384
    v2 = load_preset("hrm-cloud-8gpu-v2")
    assert v2.train_hrm.optimizer == "lamb-torch-optimizer" and v2.seed_protocol == "seed-v4" and v2.hrm.rmsnorm == "standard"
    assert load_preset("hrm-cloud-v2").data.history == 10


def test_unknown_preset_and_keys_are_user_errors():
    with pytest.raises(UserError, match="valid choices"):
        load_preset("hrm-cloud-v9")
    with pytest.raises(UserError, match="valid keys"):
        load_preset("quick", ["train_hrm.learning_rate=1"])
    assert load_preset("quick", ["train_hrm.epochs=7"]).train_hrm.epochs == 7


def test_explicit_settings_win_over_smoke_sizes_in_both_families():
    from hrmlab.presets import resolve

    assert resolve("quick", [], smoke=True).eval.episodes != 7
    assert resolve("quick", ["eval.episodes=7"], smoke=True).eval.episodes == 7
    assert resolve("diffusion-cpu", [], smoke=True).eval.test_episodes != 5
    assert resolve("diffusion-cpu", ["eval.test_episodes=5"], smoke=True).eval.test_episodes == 5


def test_a_preset_extends_a_base_and_overrides_nested_keys(tmp_path, monkeypatch):
    import pytest

    from hrmlab import presets
    from hrmlab.errors import UserError
    from hrmlab.presets import store

    (tmp_path / "_base.yaml").write_text("hrm: {d_model: 64, block: gated}\ndata: {train_episodes: 10}\n")
    (tmp_path / "child.yaml").write_text("extends: _base\nhrm: {d_model: 32}\n")
    (tmp_path / "loop.yaml").write_text("extends: loop2\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop\n")
    monkeypatch.setattr(store, "PRESET_DIR", tmp_path)
    assert presets.preset_names() == ["child", "loop", "loop2"]  # `_base` is not an experiment
    assert presets.preset_data("child") == {"hrm": {"d_model": 32, "block": "gated"}, "data": {"train_episodes": 10}}
    with pytest.raises(UserError, match="extends itself"):
        presets.preset_data("loop")


def test_suite_worlds_are_defined_once_in_their_preset_files():
    """Each suite's world is its preset file's `world` section: the preset trains on it, protocol suite-NAME
    evaluates on it, and the shared model/recipe blocks come from the `_suite` base, not pasted copies."""
    from hrmlab.config import load_yaml
    from hrmlab.evaluate.protocols import SUITE_WORLDS, get_protocol
    from hrmlab.presets import PRESET_DIR

    from hrmlab.presets import suite_names

    suites = [n for n in preset_names() if n.startswith("suite-")]
    assert sorted(SUITE_WORLDS) == suites == suite_names() and len(suites) == 5
    for name in suites:
        raw = load_yaml(PRESET_DIR / f"{name}.yaml")
        assert raw["extends"] == "_suite" and "hrm" not in raw and "world" in raw
        cfg = load_preset(name)
        assert cfg.world == SUITE_WORLDS[name] == get_protocol(name).world
        assert cfg.eval.protocol == name and cfg.hrm.d_model == 64 and cfg.lstm.hidden == 96
    assert load_preset("suite-mixed").train_hrm.lr == 1e-3 and load_preset("suite-rush").train_hrm.lr == 3e-3
    assert "_suite" not in preset_names()  # a base, not an experiment
    # a preset without a world of its own, evaluated on a suite's protocol, runs in that suite's world
    assert load_preset("quick", ["eval.protocol=suite-rush"]).world == SUITE_WORLDS["suite-rush"]
