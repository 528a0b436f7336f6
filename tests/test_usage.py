"""LLM usage of a run (runner.usage): totals and cost that a hostile or odd ledger value cannot crash or inflate,
the policy's prices checked strictly, and --max-tokens / --max-cost stopping a real loop run cleanly and
resumably: with the real openai client against the scripted server on loopback, and with several slots, where a
proposal taken but not yet recorded counts once."""
from __future__ import annotations

import math

import pytest

from runner import usage
from runner.errors import UserError
from runner.ledger import Ledger, TrialRecord
from runner.loop import Loop
from runner.policy import Policy, Prices, load_policy
from runner.runs import RunConfig
from tests.llm_server import MODEL, search_replace
from tests.loop_fakes import FakeExecutor, Scripted, bonus, make_exp, with_usage

PRICES = {"input_per_million": 0.15, "output_per_million": 0.6}
LR_UP = search_replace("train.py", "LR = 0.04  # lr\n", "LR = 0.05  # lr\n", "raise the learning rate")


def rec(n, llm_usage):
    return TrialRecord(trial=n, kind="candidate", status="discard", description="d", llm_usage=llm_usage)


# --------------------------------------------------------------------------- totals and cost

def test_totals_sum_every_record_and_count_missing_keys_as_zero():
    recs = [rec(0, {}),
            rec(1, {"calls": 2, "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "seconds": 1.5,
                    "retries": 1, "backoffs": 0, "model": "m"}),
            {"llm_usage": {"calls": 1, "prompt_tokens": 10, "seconds": 0.25, "backoffs": 3}}]   # a ledger row
    assert usage.totals(recs) == usage.Usage(calls=3, prompt_tokens=110, completion_tokens=20, total_tokens=120,
                                             seconds=1.75, retries=1, backoffs=3)
    assert usage.totals([]) == usage.Usage() and usage.totals(None) == usage.Usage()


@pytest.mark.parametrize("odd", ["12", -5, float("nan"), float("inf"), -float("inf"), True, None, [3], {"n": 1},
                                 10**400, 1e300])
def test_an_odd_value_in_a_record_counts_zero_and_never_raises(odd):
    good = {"calls": 1, "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "seconds": 2.0}
    bad = {k: odd for k in ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "seconds", "retries",
                            "backoffs")}
    got = usage.totals([rec(1, good), rec(2, bad)])
    assert got == usage.Usage(calls=1, prompt_tokens=7, completion_tokens=3, total_tokens=10, seconds=2.0)
    assert math.isfinite(usage.cost(got, PRICES))


@pytest.mark.parametrize("odd", ["a string", None, [1, 2], 42, float("nan")])
def test_a_usage_that_is_not_a_mapping_counts_nothing(odd):
    assert usage.totals([rec(1, odd), {"llm_usage": odd}, {"no": "usage"}, object()]) == usage.Usage()


def test_cost_is_dollars_per_million_tokens_in_and_out_and_none_without_prices():
    u = usage.Usage(calls=3, prompt_tokens=2_000_000, completion_tokens=500_000, total_tokens=2_500_000)
    assert usage.cost(u, Prices(**PRICES)) == pytest.approx(2 * 0.15 + 0.5 * 0.6)
    assert usage.cost(u, PRICES) == pytest.approx(0.6)                      # a plain mapping works the same
    assert usage.cost(u, None) is None
    assert usage.cost(usage.Usage(), PRICES) == 0.0
    assert usage.cost(u, {"input_per_million": "0.15", "output_per_million": -1}) == 0.0   # odd prices: 0


def test_a_cap_counts_the_larger_of_the_total_and_prompt_plus_completion():
    no_total = usage.Usage(calls=1, prompt_tokens=400, completion_tokens=200)      # a server that omits the total
    assert no_total.tokens == 600
    assert usage.cap_reached(no_total, max_tokens=601) == ""
    assert usage.cap_reached(no_total, max_tokens=600) == "--max-tokens 600 reached (600 used)"
    assert usage.cap_reached(usage.Usage(total_tokens=51234), max_tokens=50000) == \
        "--max-tokens 50000 reached (51234 used)"


def test_a_cost_cap_stops_at_the_price_and_never_without_one():
    u = usage.Usage(calls=1, prompt_tokens=1_000_000, completion_tokens=1_000_000, total_tokens=2_000_000)
    assert usage.cap_reached(u, PRICES, max_cost=0.76) == ""
    assert usage.cap_reached(u, PRICES, max_cost=0.75) == "--max-cost $0.75 reached ($0.75 spent)"
    assert usage.cap_reached(u, None, max_cost=0.01) == ""          # the caller refuses a cost cap without prices
    assert usage.cap_reached(u, PRICES) == ""


def test_the_run_line_shows_totals_cost_and_caps_for_a_person():
    recs = [rec(1, {"calls": 2, "prompt_tokens": 30_000, "completion_tokens": 4_567, "total_tokens": 34_567,
                    "backoffs": 1})]
    assert usage.run_line(recs, PRICES) == \
        "LLM: 2 calls, 34,567 tokens (30,000 in / 4,567 out), $0.0072, 1 backoffs"
    assert usage.run_line(recs, None, {"max_tokens": 50000, "max_cost": 1.0}) == \
        "LLM: 2 calls, 34,567 tokens (30,000 in / 4,567 out), 1 backoffs; caps --max-tokens 50000 (34,567 used)"
    assert usage.run_line([rec(1, {})], PRICES) == ""                               # mutate: nothing to say
    assert usage.run_line([], PRICES, {"max_tokens": "hostile", "max_cost": float("nan")}) == ""


# --------------------------------------------------------------------------- the policy's prices

def test_prices_in_the_policy_are_checked_strictly(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("proposer:\n  prices: {input_per_million: 0.15, output_per_million: 0.6}\n")
    assert load_policy(ok).proposer.prices == Prices(**PRICES)
    assert Policy().proposer.prices is None                                          # default: cost unknown
    for body, key in (("{input_per_million: -1, output_per_million: 0}", "proposer.prices.input_per_million"),
                      ("{input_per_million: .nan, output_per_million: 0}", "proposer.prices.input_per_million"),
                      ("{input_per_million: 1}", "proposer.prices.output_per_million"),
                      ("{input_per_million: 1, output_per_million: 1, currency: eur}", "proposer.prices.currency"),
                      ("0.15", "proposer.prices")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"proposer:\n  prices: {body}\n")
        with pytest.raises(UserError) as e:
            load_policy(bad)
        assert key in str(e.value) and "\n" not in str(e.value), body


# --------------------------------------------------------------------------- caps stopping a real loop

def openai_policy(server, **proposer):
    return Policy(proposer={"kind": "openai", "base_url": server.base_url, "model": MODEL,
                            "api_key_env": "AUTORESEARCH_TEST_NO_SUCH_KEY", "timeout_seconds": 10, **proposer})


def run(exp, *, resume=False, policy=None, executor=None, proposer=None, **caps):
    repo, data = exp
    cfg = RunConfig(repo=repo, tag="t", data_dir=None if resume else data, policy=None if resume else policy,
                    image="img:test", resume=resume, **caps)
    return Loop(cfg, executor=executor or FakeExecutor(), proposer=proposer).run()


def test_max_tokens_stops_a_run_of_the_openai_proposer_and_resume_with_a_higher_cap_continues(tmp_path, llm_server):
    exp = make_exp(tmp_path)
    repo, _ = exp
    llm_server.push(*[{"reply": LR_UP}] * 10)
    ledger = Ledger(repo / "runs" / "t")
    # ahead 0: each proposal is asked for when a slot is free, so the requests made are exact
    summary = run(exp, policy=openai_policy(llm_server, ahead=0), max_tokens=1)
    recs = ledger.records()
    used = usage.totals(recs).tokens
    assert [r.kind for r in recs] == ["baseline", "candidate"] and used > 1 and len(llm_server.requests) == 1
    assert summary.stopped == f"--max-tokens 1 reached ({used} used)"
    assert recs[1].llm_usage["total_tokens"] == used and recs[1].llm_usage["model"] == MODEL

    # --resume keeps the run's cap (run.json): it stops at once and asks the endpoint nothing
    again = run(exp, resume=True)
    assert again.stopped == summary.stopped and ledger.records() == recs and len(llm_server.requests) == 1

    # a higher cap continues: one more candidate, under the next id, the earlier lines untouched
    more = run(exp, resume=True, max_tokens=used + 1)
    after = ledger.records()
    assert after[:2] == recs and [r.trial for r in after] == [0, 1, 2] and len(llm_server.requests) == 2
    total = usage.totals(after).tokens
    assert total > used + 1 and more.stopped == f"--max-tokens {used + 1} reached ({total} used)"


@pytest.mark.parametrize("cap, candidates", [(100, 1), (250, 3)])
def test_with_two_slots_a_proposal_taken_but_not_yet_recorded_counts_once(tmp_path, cap, candidates):
    """cap 100: the second slot must see the first proposal's 100 tokens although its trial still trains, so it
    starts nothing. cap 250: once the first is recorded it is not counted again (200 < 250): a third starts."""
    exp = make_exp(tmp_path)
    repo, _ = exp
    proposer = Scripted(*(with_usage(bonus(k), 100) for k in range(8)))
    summary = run(exp, policy=Policy(slots=2, proposer={"ahead": 1}), max_tokens=cap, proposer=proposer,
                  executor=FakeExecutor(slots=2, seconds=0.3))
    recs = Ledger(repo / "runs" / "t").records()
    assert sum(r.kind == "candidate" for r in recs) == candidates
    assert summary.stopped == f"--max-tokens {cap} reached ({100 * candidates} used)"


def test_max_cost_stops_a_run_at_the_policy_prices(tmp_path):
    exp = make_exp(tmp_path)
    proposer = Scripted(*(with_usage(bonus(k), 1_000_000) for k in range(6)))   # 990,000 in + 10 out each
    policy = Policy(proposer={"ahead": 0, "prices": {"input_per_million": 1.0, "output_per_million": 1.0}})
    summary = run(exp, policy=policy, max_cost=2.5, proposer=proposer)
    assert summary.stopped == "--max-cost $2.50 reached ($3.00 spent)"


def test_a_cost_cap_without_prices_is_refused_by_the_loop_too(tmp_path):
    exp = make_exp(tmp_path)
    with pytest.raises(UserError, match="needs prices.*proposer.prices"):
        run(exp, policy=Policy(), max_cost=1.0, proposer=Scripted())
