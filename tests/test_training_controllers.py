"""Update rules of the entropy and PAR controllers, and their saved state."""

from __future__ import annotations

import json

import pytest
import torch

from polymath.errors import TrainingError
from training.config import EntropySettings, ParSettings
from training.controllers import (
    STATE_FILE,
    Controllers,
    EntropyController,
    ParController,
)
from training.entropy_modes import ENTROPY_MODES, difficulty_weights


def test_entropy_modes_are_listed_once_and_an_unknown_one_is_named_with_the_choices():
    from pydantic import ValidationError

    assert ENTROPY_MODES.names() == ("none", "fixed", "adaptive", "aer")
    with pytest.raises(ValidationError, match=r"unknown 'adaptve'; did you mean 'adaptive'\? \(choose from: none, fixed"):
        EntropySettings(mode="adaptve")
    # a target is kept only by the modes that move toward one
    assert EntropyController(EntropySettings(mode="fixed", coef=0.01)).target is None
    assert EntropyController(EntropySettings(mode="adaptive", target=0.3)).target == 0.3
    assert EntropyController(EntropySettings(mode="aer", target=0.3)).target is None


def test_none_and_fixed_modes():
    none = EntropyController(EntropySettings(mode="none", coef=0.5))
    assert not none.enabled and none.applied_coef(0.0) == 0.0
    fixed = EntropyController(EntropySettings(mode="fixed", coef=0.01))
    for h in (0.01, 5.0):
        fixed.update(h)
        assert fixed.applied_coef(h) == 0.01


def test_adaptive_follows_skywork_rule_with_clamp():
    ctl = EntropyController(EntropySettings(mode="adaptive", coef=0.0, target=0.5, delta=0.002, c_min=0.0, c_max=0.005))
    history = []
    for h in (0.3, 0.3, 0.3, 0.3, 0.9, 0.5):
        ctl.update(h)
        history.append(ctl.coef)
    # +delta while H < target, capped at c_max; -delta above; unchanged exactly at target (sign 0)
    assert history == pytest.approx([0.002, 0.004, 0.005, 0.005, 0.003, 0.003])
    for _ in range(5):
        ctl.update(2.0)
    assert ctl.coef == 0.0  # floored at c_min


def test_adaptive_bonus_applies_only_below_target():
    ctl = EntropyController(EntropySettings(mode="adaptive", coef=0.004, target=0.5))
    assert ctl.applied_coef(0.49) == 0.004
    assert ctl.applied_coef(0.5) == 0.0
    assert ctl.applied_coef(1.2) == 0.0


def test_adaptive_without_a_target_anchors_it_to_the_initial_entropy_and_keeps_its_gate():
    ctl = EntropyController(EntropySettings(mode="adaptive", coef=0.01, target=None, target_fraction=0.6, delta=0.01,
                                            c_max=0.5))
    assert ctl.target is None and ctl.applied_coef(0.01) == 0.0  # no target yet: no bonus
    ctl.observe_initial(0.2)
    assert ctl.target == pytest.approx(0.12)
    assert ctl.applied_coef(0.1) == 0.01 and ctl.applied_coef(0.13) == 0.0
    ctl.update(0.1)
    assert ctl.coef == pytest.approx(0.02)


def test_aer_anchors_target_to_initial_entropy_once():
    ctl = EntropyController(EntropySettings(mode="aer", coef=0.001, target_fraction=0.4, delta=0.001, c_max=0.01))
    assert ctl.target is None
    ctl.update(3.0)  # no target yet: nothing to steer toward
    assert ctl.coef == 0.001
    ctl.observe_initial(2.5)
    ctl.observe_initial(0.1)  # later batches do not move the anchor
    assert ctl.initial_entropy == 2.5 and ctl.target == pytest.approx(1.0)
    ctl.update(0.8)
    assert ctl.coef == pytest.approx(0.002)
    ctl.update(1.4)
    assert ctl.coef == pytest.approx(0.001)
    assert ctl.applied_coef(5.0) == pytest.approx(0.001)  # no gate: the controller itself drives c down


def test_difficulty_weights_favour_hard_prompts_and_keep_mean_one():
    acc = torch.tensor([0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 0.75, 0.75])
    w = difficulty_weights(acc, 1.0)
    assert w.mean().item() == pytest.approx(1.0)
    # brute force: (1 - acc) / mean(1 - acc)
    expected = [(1 - a) / (sum(1 - b for b in acc.tolist()) / 8) for a in acc.tolist()]
    assert w.tolist() == pytest.approx(expected)
    assert w[0] > w[2] > w[6] > w[4] == 0
    w2 = difficulty_weights(acc, 2.0)
    assert w2[0] / w2[2] == pytest.approx(4.0)
    assert difficulty_weights(torch.ones(4), 1.0).tolist() == [1.0] * 4
    assert difficulty_weights(acc, 0.0).tolist() == [1.0] * 8
    aer = EntropyController(EntropySettings(mode="aer"))
    fixed = EntropyController(EntropySettings(mode="fixed", coef=0.1))
    torch.testing.assert_close(aer.sequence_weights(acc), w)
    assert fixed.sequence_weights(acc).tolist() == [1.0] * 8


def test_par_constant_and_staged_schedules():
    const = ParController(ParSettings(schedule="constant", lambda0=0.3), total_steps=5)
    for step in range(1, 5):
        const.update(step, 0.0)
        assert const.value == 0.3
    staged = ParController(ParSettings(schedule="staged", staged_fraction=0.5), total_steps=10)
    values = [staged.value]
    for step in range(1, 10):
        staged.update(step, 1.0)
        values.append(staged.value)
    assert values == pytest.approx([0, 0, 0, 0, 0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_par_entropy_guided_moves_by_step_and_clips():
    ctl = ParController(ParSettings(schedule="entropy-guided", lambda0=0.0, step=0.3, delta=0.2), total_steps=10)
    trace = []
    for h in (0.5, 0.5, 0.5, 0.5, 0.1, 0.1):
        ctl.update(len(trace) + 1, h)
        trace.append(ctl.value)
    assert trace == pytest.approx([0.3, 0.6, 0.9, 1.0, 0.7, 0.4])
    for _ in range(5):
        ctl.update(1, 0.0)
    assert ctl.value == 0.0


def test_par_threshold_relative_to_the_initial_entropy_waits_for_it():
    settings = ParSettings(schedule="entropy-guided", lambda0=1.0, step=0.25, delta_fraction=0.8)
    ctl = Controllers(EntropySettings(), settings, total_steps=10)
    assert ctl.need_initial and ctl.par.threshold is None
    ctl.observe_initial(0.5)  # measured before training: threshold 0.4
    ctl.observe_initial(9.0)  # a later call does not move it
    assert ctl.par.threshold == pytest.approx(0.4)
    trace = []
    for h in (0.45, 0.39, 0.3, 0.5):
        ctl.end_step(h)
        trace.append(ctl.par.value)
    assert trace == pytest.approx([1.0, 0.75, 0.5, 0.75])
    # without a measurement before training, the first step's entropy sets it
    late = Controllers(EntropySettings(), settings, total_steps=10)
    late.end_step(1.0)
    assert late.par.threshold == pytest.approx(0.8) and late.par.value == 1.0
    # restored from a checkpoint with its threshold
    fresh = Controllers(EntropySettings(), settings, total_steps=10)
    fresh.load_state_dict(ctl.state_dict())
    assert fresh.par.threshold == pytest.approx(0.4)
    assert not Controllers(EntropySettings(), ParSettings(), total_steps=3).need_initial


def test_controllers_end_step_and_state_roundtrip(tmp_path):
    ctl = Controllers(
        EntropySettings(mode="aer", coef=0.01, delta=0.005, c_max=0.1, target_fraction=0.5),
        ParSettings(schedule="entropy-guided", lambda0=0.5, step=0.1, delta=0.2),
        total_steps=20,
    )
    for h in (2.0, 1.5, 0.1):
        ctl.end_step(h)
    assert ctl.initial_entropy == 2.0 and ctl.entropy.target == 1.0
    assert ctl.steps_done == 3
    ctl.save(tmp_path)
    fresh = Controllers(ctl.entropy.settings, ctl.par.settings, total_steps=20)
    fresh.load(tmp_path)
    assert fresh.state_dict() == ctl.state_dict()
    assert json.loads((tmp_path / STATE_FILE).read_text())["entropy"]["coef"] == pytest.approx(ctl.entropy.coef)


def test_controller_state_errors_name_the_file(tmp_path):
    ctl = Controllers(EntropySettings(), ParSettings(), total_steps=3)
    with pytest.raises(TrainingError, match=STATE_FILE):
        ctl.load(tmp_path)
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(TrainingError, match="not valid JSON"):
        ctl.load(tmp_path)
    (tmp_path / STATE_FILE).write_text(json.dumps({"version": 99}))
    with pytest.raises(TrainingError, match="version"):
        ctl.load(tmp_path)
    with pytest.raises(TrainingError):
        ParController(ParSettings(), total_steps=0)
