"""The policy file: strict keys, one-line errors, a stable hash."""
import pytest
import yaml

from runner.errors import UserError
from runner.policy import POLICY_DIR, Policy, load_policy


@pytest.mark.parametrize("name", sorted(p.stem for p in POLICY_DIR.glob("*.yaml")))
def test_every_shipped_policy_loads(name):
    assert isinstance(load_policy(name), Policy)


def test_an_unknown_key_is_an_error_naming_the_key(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("limits:\n  memroy: 2g\n")
    with pytest.raises(UserError, match=r"unknown key 'limits.memroy'") as e:
        load_policy(p)
    assert "\n" not in str(e.value)


def test_a_bad_value_names_the_key_and_the_file(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("limits:\n  memory: lots\n")
    with pytest.raises(UserError, match=r"p.yaml.*limits.memory"):
        load_policy(p)


def test_an_old_timeout_must_leave_room_above_the_budget(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train:\n  budget_seconds: 300\n  timeout_seconds: 300\n")
    with pytest.raises(UserError, match="budget_seconds"):
        load_policy(p)


def test_the_deadline_is_the_budget_plus_the_start_up_and_export_allowance():
    t = Policy.model_validate({"train": {"budget_seconds": 60, "allowance_seconds": 15}}).train
    assert (t.budget_seconds, t.allowance_seconds, t.deadline_seconds) == (60, 15, 75)
    assert "timeout_seconds" not in t.model_dump()


def test_an_old_train_timeout_seconds_loads_as_the_allowance_so_an_old_run_resumes(tmp_path):
    old = Policy().model_dump()
    old["train"] = {"budget_seconds": 240, "timeout_seconds": 300, "max_steps": None}   # a run.json of before
    p = Policy.model_validate(old)
    assert (p.train.allowance_seconds, p.train.deadline_seconds) == (60, 300)
    assert p.sha256() == Policy.model_validate({**old, "train": {"budget_seconds": 240,
                                                                 "allowance_seconds": 60}}).sha256()
    f = tmp_path / "p.yaml"
    f.write_text("train:\n  timeout_seconds: 100\n  budget_seconds: 40\n")
    assert load_policy(f).train.allowance_seconds == 60
    f.write_text("train:\n  timeout_seconds: 300\n")                    # the default budget, 240
    assert load_policy(f).train.allowance_seconds == 60


def test_the_old_and_the_new_key_together_are_an_error(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train:\n  budget_seconds: 30\n  timeout_seconds: 60\n  allowance_seconds: 30\n")
    with pytest.raises(UserError, match="allowance_seconds or the old train.timeout_seconds"):
        load_policy(p)


def test_invalid_yaml_and_non_mapping_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_policy(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping"):
        load_policy(lst)


def test_a_missing_policy_lists_the_shipped_ones(tmp_path):
    with pytest.raises(UserError, match="default"):
        load_policy(tmp_path / "nope.yaml")


def test_the_hash_is_the_same_from_defaults_from_a_file_and_after_a_round_trip(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("{}\n")
    from_defaults = Policy()
    from_file = load_policy(p)
    round_trip = Policy.model_validate(yaml.safe_load(yaml.safe_dump(from_defaults.model_dump())))
    assert from_defaults.sha256() == from_file.sha256() == round_trip.sha256()
    assert Policy(seed=1).sha256() != from_defaults.sha256()
