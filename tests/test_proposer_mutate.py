"""The mutate proposer: one UPPER_CASE number per trial, inside sane ranges, deterministic per seed."""
import random
from pathlib import Path

import pytest

import trainer
from runner.errors import ProposerError
from runner.patch import check
from runner.policy import PatchRules
from runner.proposers.base import Context
from runner.proposers.mutate import Knob, MutateProposer, knobs, perturb

TRAIN = (Path(trainer.__file__).parent / "train.py").read_text()
SMALL = ("import torch\n\nMATRIX_LR = 0.04  # Muon lr\nDEPTH = 4  # blocks\nADAM_BETA2 = 0.95  # beta2\n"
         "FLAG = 1  # on/off\nWEIGHT_DECAY = 0.0  # none\nOFFSET = -3  # negative\nLOG_EVERY = 10  # logging\n"
         "SEED = 7  # seed\nTOTAL = 2**19  # an expression\n    INDENTED = 5  # not top level\n")


def ctx(text=SMALL, trial=1, seed=1337, history=(), parent="p"):
    return Context(trial_id=trial, seed=seed, files={"train.py": text}, allowed_files=["train.py"],
                   history=list(history), parent=parent)


def test_only_positive_top_level_numeric_constants_are_knobs():
    assert [k.name for k in knobs(SMALL)] == ["MATRIX_LR", "DEPTH", "ADAM_BETA2"]


def test_the_default_train_py_has_knobs_and_every_proposal_passes_the_patch_policy():
    names = {k.name for k in knobs(TRAIN)}
    assert {"MATRIX_LR", "EMBEDDING_LR", "WARMDOWN_FRAC", "ADAM_BETA1"} <= names
    for trial in range(30):
        p = MutateProposer().propose(ctx(TRAIN, trial))
        result = check(p, PatchRules(), {"train.py": "100644"}, {"train.py": TRAIN})
        assert result.ok and result.diff_lines == 2, (p.description, result.reason)


def test_a_proposal_changes_exactly_one_number_and_says_which():
    p = MutateProposer().propose(ctx())
    name, old, arrow, new = p.description.split()
    assert arrow == "->" and old != new
    before, after = SMALL.split("\n"), p.files["train.py"].split("\n")
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith(f"{name} = {new}  #")


def test_proposals_are_deterministic_per_seed_and_trial():
    a = [MutateProposer().propose(ctx(TRAIN, t, seed=1)).description for t in range(10)]
    b = [MutateProposer().propose(ctx(TRAIN, t, seed=1)).description for t in range(10)]
    c = [MutateProposer().propose(ctx(TRAIN, t, seed=2)).description for t in range(10)]
    assert a == b and a != c and len(set(a)) > 3


@pytest.mark.parametrize("name, literal, lo, hi", [
    ("MATRIX_LR", "0.04", 0.02, 0.08),        # learning rates: x0.5 .. x2
    ("ADAM_BETA2", "0.95", 0.925, 0.975),     # above 0.5: distance to 1 scaled, stays below 1
    ("WARMDOWN_FRAC", "0.5", 0.25, 0.75),     # fractions stay inside (0, 1)
    ("ADAM_EPS", "1e-10", 5e-11, 2e-10),
    ("DEPTH", "4", 3, 5),                     # small ints: +-1
    ("VE_GATE_CHANNELS", "32", 16, 64),       # powers of two: x2 or /2
    ("ROPE_BASE", "10000", 5000, 20000),
    ("MLP_RATIO", "2", 1, 3),                 # never 0
])
def test_perturbations_stay_in_sane_ranges_and_positive(name, literal, lo, hi):
    k = Knob(0, name, literal, float(literal), not any(c in literal for c in ".e"))
    rng = random.Random(0)
    seen = {float(perturb(k, rng)) for _ in range(200)}
    assert all(lo <= v <= hi and v > 0 for v in seen), (name, sorted(seen))
    assert len(seen) >= 2


def test_a_change_already_tried_on_the_same_parent_is_not_proposed_again():
    first = MutateProposer().propose(ctx(trial=5)).description
    again = MutateProposer().propose(ctx(trial=5, history=[{"parent": "p", "description": first}])).description
    assert again != first
    other_parent = MutateProposer().propose(ctx(trial=5, history=[{"parent": "q", "description": first}]))
    assert other_parent.description == first


def test_a_file_without_knobs_is_a_one_line_proposer_error():
    with pytest.raises(ProposerError, match="no `NAME = <positive number>"):
        MutateProposer().propose(ctx("print('hi')\n"))
