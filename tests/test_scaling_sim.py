"""benchmarks/scaling_sim.py: the simulator's invariants (plain Python, no Docker, well under a second)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from scaling_sim import MODES, Params, main, simulate

NO_OVERHEADS = {name: 0 for name in ("start_s", "rest_s", "eval_s", "other_s", "jitter", "head_context_s",
                                      "head_context_per_record_s", "head_commit_s", "head_record_s",
                                      "head_record_per_record_s", "head_advance_s", "llm_median_s")}


@pytest.mark.parametrize("mode", MODES)
def test_one_slot_without_overheads_trains_back_to_back(mode):
    row = simulate(Params(slots=1, mode=mode, hours=1, budget_s=300, **NO_OVERHEADS))
    assert row["trials_h"] == 3600 / 300
    assert row["idle"] == pytest.approx(0, abs=1e-9)
    assert row["in_budget"] == pytest.approx(1)
    assert row["head"] == 0


def test_same_seed_same_result_and_another_seed_differs():
    p = Params(slots=8, mode="pipelined", hours=2, seed=3)
    assert simulate(p) == simulate(Params(slots=8, mode="pipelined", hours=2, seed=3))
    assert simulate(p) != simulate(Params(slots=8, mode="pipelined", hours=2, seed=4))


@pytest.mark.parametrize("slots", [1, 4])
def test_asking_ahead_removes_the_idle_time_of_a_slow_proposer(slots):
    rows = {m: simulate(Params(slots=slots, mode=m, hours=4, llm_median_s=20)) for m in MODES}
    assert rows["on-demand"]["idle"] > 0.04                 # ~20 s of every ~350 s
    for m in ("pipelined", "jit"):
        assert rows[m]["idle"] < rows["on-demand"]["idle"] / 10
        assert rows[m]["trials_h"] > rows["on-demand"]["trials_h"]


def test_stale_share_grows_with_the_slots():
    stale = [simulate(Params(slots=s, mode="on-demand", p_keep=0.05))["stale"] for s in (1, 4, 16, 64)]
    assert stale[0] == 0                                    # one slot asking on demand: the best never moves
    assert stale == sorted(stale) and len(set(stale)) == 4
    # asking ahead makes a candidate older at its decision, so more of them are stale
    assert simulate(Params(slots=16, mode="pipelined"))["stale"] > simulate(Params(slots=16, mode="on-demand"))["stale"]


def test_the_endpoint_bounds_the_rate_of_candidates():
    row = simulate(Params(slots=64, mode="pipelined", hours=1, llm_concurrency=1, llm_sigma=0, llm_median_s=20))
    assert row["candidates_h"] <= 3600 / 20 + 1
    assert row["llm"] > 0.95
    assert row["idle"] > 0.5


def test_the_head_is_busier_with_more_slots():
    heads = [simulate(Params(slots=s, mode="pipelined", hours=2))["head"] for s in (1, 8, 64)]
    assert heads == sorted(heads) and heads[0] < 0.001


def test_the_command_line_prints_a_markdown_table(capsys):
    assert main(["--slots", "1,2", "--modes", "on-demand,jit", "--hours", "1", "--seed", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "python benchmarks/scaling_sim.py --slots 1,2 --modes on-demand,jit --hours 1 --seed 5"
    rows = [line for line in out if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 4 and all(line.count("|") == out[2].count("|") for line in rows)
