"""The decision: keep only a gain larger than min_delta and the measured noise; confirm wins when asked."""
import pytest

from runner import decision
from runner.policy import Decision


def test_a_lower_bpb_is_kept_and_a_tie_or_a_loss_is_discarded():
    rules = Decision(min_delta=0.0)
    assert decision.judge(0.99, 1.0, 0.0, rules).action == "keep"
    assert decision.judge(1.0, 1.0, 0.0, rules).action == "discard"
    assert decision.judge(1.01, 1.0, 0.0, rules).action == "discard"


def test_a_gain_of_min_delta_or_less_is_discarded():
    rules = Decision(min_delta=0.002)
    t = decision.threshold(rules, None)
    assert t == 0.002
    assert decision.judge(0.999, 1.0, t, rules).action == "discard"
    assert decision.judge(0.998, 1.0, t, rules).action == "discard"   # exactly min_delta: not more than it
    v = decision.judge(0.9979, 1.0, t, rules)
    assert v.action == "keep" and "0.997900" in v.reason


def test_baseline_repeats_set_the_noise_floor():
    std = decision.noise_std([1.00, 1.02, 0.98])
    assert std == pytest.approx(0.02)
    rules = Decision(min_delta=0.001, baseline_repeats=3, noise_sigmas=2.0)
    t = decision.threshold(rules, std)
    assert t == pytest.approx(0.04)
    assert decision.judge(0.97, 1.0, t, rules).action == "discard"   # a gain inside the noise
    assert decision.judge(0.95, 1.0, t, rules).action == "keep"


def test_a_single_baseline_has_no_noise_estimate():
    assert decision.noise_std([1.0]) is None
    assert decision.noise_std([1.0, float("nan")]) is None
    assert decision.threshold(Decision(min_delta=0.003), None) == 0.003


def test_an_apparent_win_is_confirmed_before_it_is_kept():
    rules = Decision(confirm_wins=True)
    assert decision.judge(0.9, 1.0, 0.0, rules).action == "confirm"
    assert decision.judge_confirmation(0.9, "ok", 0.95, 1.0, 0.0).action == "keep"
    lucky = decision.judge_confirmation(0.9, "ok", 1.01, 1.0, 0.0)
    assert lucky.action == "discard" and "noise" in lucky.reason
    assert decision.judge_confirmation(0.9, "crash", None, 1.0, 0.0).action == "discard"


def test_repeats_and_confirmations_use_seeds_no_other_trial_uses():
    repeats = decision.repeat_seeds(1337, 3)
    assert repeats == [1337, 1338, 1339]
    confirms = {decision.confirm_seed(1337, n) for n in range(1, 200)}
    assert len(confirms) == 199 and not confirms & set(repeats)
