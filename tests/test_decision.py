"""The decision: keep only a gain larger than min_delta and the measured noise; confirm wins when asked; a policy
that can keep a no-op says so; a step-limited run cut short by the time budget is named."""
import subprocess

import pytest
import yaml

from runner import decision
from runner.decision import noop_warning, short_of_steps
from runner.policy import DecisionRules, Policy, load_policy
from runner.workspace import init_repo


def test_a_lower_bpb_is_kept_and_a_tie_or_a_loss_is_discarded():
    rules = DecisionRules(min_delta=0.0)
    assert decision.judge(0.99, 1.0, 0.0, rules).action == "keep"
    assert decision.judge(1.0, 1.0, 0.0, rules).action == "discard"
    assert decision.judge(1.01, 1.0, 0.0, rules).action == "discard"


def test_a_gain_of_min_delta_or_less_is_discarded():
    rules = DecisionRules(min_delta=0.002)
    t = decision.threshold(rules, None)
    assert t == 0.002
    assert decision.judge(0.999, 1.0, t, rules).action == "discard"
    assert decision.judge(0.998, 1.0, t, rules).action == "discard"   # exactly min_delta: not more than it
    v = decision.judge(0.9979, 1.0, t, rules)
    assert v.action == "keep" and "0.997900" in v.reason


def test_baseline_repeats_set_the_noise_floor():
    std = decision.noise_std([1.00, 1.02, 0.98])
    assert std == pytest.approx(0.02)
    rules = DecisionRules(min_delta=0.001, baseline_repeats=3, noise_sigmas=2.0)
    t = decision.threshold(rules, std)
    assert t == pytest.approx(0.04)
    assert decision.judge(0.97, 1.0, t, rules).action == "discard"   # a gain inside the noise
    assert decision.judge(0.95, 1.0, t, rules).action == "keep"


def test_a_single_baseline_has_no_noise_estimate():
    assert decision.noise_std([1.0]) is None
    assert decision.noise_std([1.0, float("nan")]) is None
    assert decision.threshold(DecisionRules(min_delta=0.003), None) == 0.003


def test_an_apparent_win_is_confirmed_before_it_is_kept():
    rules = DecisionRules(confirm_wins=True)
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


# --------------------------------------------------------------------------- a policy that can keep a no-op

NOOP_KEEPER = {"decision": {"min_delta": 0.0, "baseline_repeats": 1}, "train": {"budget_seconds": 8}}


def test_a_policy_with_no_bar_and_no_step_limit_says_loudly_that_it_can_keep_a_no_op():
    warning = noop_warning(Policy.model_validate(NOOP_KEEPER))
    assert warning.startswith("WARNING: this policy can keep a change that does nothing") and "\n" not in warning
    for key in ("decision.min_delta", "decision.baseline_repeats", "train.max_steps"):
        assert key in warning
    gpu = {**NOOP_KEEPER, "flavour": "cuda", "gpu": "all", "train": {"budget_seconds": 8, "max_steps": 20}}
    assert "on a GPU" in noop_warning(Policy.model_validate(gpu))          # CUDA runs are not bit-reproducible


@pytest.mark.parametrize("change", [
    {"train": {"budget_seconds": 8, "max_steps": 20}},                      # bit-reproducible: a no-op ties
    {"decision": {"min_delta": 0.001, "baseline_repeats": 1}},              # a bar
    {"decision": {"min_delta": 0.0, "baseline_repeats": 3}},                # a noise estimate
])
def test_a_policy_with_a_bar_or_reproducible_runs_gets_no_warning(change):
    assert noop_warning(Policy.model_validate({**NOOP_KEEPER, **change})) is None


def test_the_shipped_policies_cannot_keep_a_no_op():
    for name in ("tiny", "default", "h100"):
        assert noop_warning(load_policy(name)) is None, name


def test_run_and_baseline_print_the_warning_first(tmp_path):
    policy = tmp_path / "noisy.yaml"
    policy.write_text(yaml.safe_dump({**NOOP_KEEPER, "preset": "tiny"}))
    init_repo(tmp_path / "exp", {"train.py": "x = 1\n"})
    for command in ("run", "baseline"):
        p = subprocess.run(["autoresearch", command, "--repo", tmp_path / "exp", "--policy", policy, "--data",
                            tmp_path / "no-data"], capture_output=True, text=True, timeout=120)
        first = p.stderr.splitlines()[0]
        assert first.startswith("autoresearch: WARNING: this policy can keep a change that does nothing"), p.stderr


def test_a_run_short_of_its_step_limit_is_named_and_a_full_one_is_not():
    assert short_of_steps(20, 12).startswith("trained 12 of train.max_steps 20 steps before the time budget")
    assert short_of_steps(20, 20) is None and short_of_steps(None, 3) is None and short_of_steps(20, None) is None


# --------------------------------------------------------------------------- comparisons on a machine of one speed
def run(calibration_s=None, cpu_share=None):
    from types import SimpleNamespace
    return SimpleNamespace(calibration_s=calibration_s, cpu_share=cpu_share)


def test_a_run_on_a_machine_faster_than_the_bests_by_more_than_the_drift_got_more_compute():
    why = decision.more_compute(run(0.40), run(0.50), 0.10)           # the best's machine was 25% slower
    assert why.startswith("its calibration took 0.400 s against 0.500 s in the best's run, a machine 25% faster")
    assert decision.more_compute(run(0.46), run(0.50), 0.10) is None   # 8.7% faster: within the drift
    assert decision.more_compute(run(0.60), run(0.50), 0.10) is None   # slower: it got less, not more
    assert decision.more_compute(run(0.40), run(0.50), None) is None   # the policy turned the rule off


def test_a_larger_share_of_the_cpu_quota_than_the_bests_is_more_compute():
    why = decision.more_compute(run(0.5, 0.95), run(0.5, 0.50), 0.10)
    assert why.startswith("its train container got 95% of its CPU quota against 50% in the best's run")
    assert decision.more_compute(run(0.5, 0.95), run(0.5, 0.90), 0.10) is None
    assert decision.more_compute(run(0.5, 0.50), run(0.5, 0.95), 0.10) is None   # less CPU: no basis to doubt


def test_without_a_measure_on_both_sides_nothing_is_claimed():
    assert decision.more_compute(run(None, None), run(0.5, 0.5), 0.10) is None
    assert decision.more_compute(run(0.4, None), run(None, 0.5), 0.10) is None


def test_a_rerun_is_comparable_only_at_the_candidates_speed_either_way():
    assert decision.speed_differs(run(0.40), run(0.42), 0.10) is None
    assert decision.speed_differs(run(0.40), run(0.60), 0.10).startswith("the machine's speed changed again: "
                                                                        "calibration 0.600 s in the re-run")
    assert decision.speed_differs(run(0.60), run(0.40), 0.10) is not None
    assert decision.speed_differs(run(0.40), run(None), 0.10) is None


def test_a_step_limited_run_that_reached_its_steps_is_compared_step_for_step():
    assert decision.compared_by_steps(20, 20) and decision.compared_by_steps(20, 21)
    assert not decision.compared_by_steps(20, 12) and not decision.compared_by_steps(None, 50)
    assert not decision.compared_by_steps(20, None)


def test_the_drift_is_a_policy_value_that_can_be_turned_off():
    assert DecisionRules().max_speed_drift == 0.10
    assert DecisionRules(max_speed_drift=None).max_speed_drift is None
    with pytest.raises(ValueError):
        DecisionRules(max_speed_drift=0)
