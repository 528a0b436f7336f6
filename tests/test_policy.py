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


def test_budget_must_leave_room_under_the_hard_timeout(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train:\n  budget_seconds: 300\n  timeout_seconds: 300\n")
    with pytest.raises(UserError, match="budget_seconds"):
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
