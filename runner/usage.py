"""LLM usage of a run: token totals, their cost, and the caps that stop a run. TRUSTED CODE; the numbers are input.

Every trial's record carries the usage of the proposal it was built from (`TrialRecord.llm_usage`, filled by the
openai proposer: calls, prompt_tokens, completion_tokens, total_tokens, seconds, retries, backoffs, model; the
mutate proposer leaves it empty). A ledger is a file on disk and an endpoint's reply is not ours, so the numbers
are not trusted to be numbers:

    totals(records) -> Usage      the sum over records (TrialRecords, or their dicts as in trials.jsonl) of each
                                  `llm_usage`; a missing key counts 0, and so does a value that is not a number
                                  from 0 to MAX_COUNT (a string, a bool, None, NaN, inf, a negative, 10**400): it
                                  never raises, and every sum and cost stays finite
    of(raw) -> Usage              one usage dict (a Proposal's `usage`) read the same way
    add(usage, raw) -> Usage      usage + of(raw) (a proposal taken but not yet in the ledger)
    cost(usage, prices) -> float | None
                                  dollars: prompt_tokens x input_per_million / 1e6 + completion_tokens x
                                  output_per_million / 1e6; None when prices is None (cost unknown)
    cap_reached(usage, prices, max_tokens=, max_cost=) -> str
                                  "" while under both caps, else one line saying which cap stopped the run
    describe(usage, prices), run_line(records, prices, caps)
                                  one line for a person (status, the end of `run`, the report)

The tokens a cap counts are `total_tokens`, or prompt + completion where an endpoint reported no total (whichever
is larger), so a server that omits the total cannot spend without limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

INT_KEYS = ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "retries", "backoffs")  # whole counts
TOKENS_PER_PRICE_UNIT = 1_000_000        # prices are dollars per million tokens
MAX_COUNT = 10**15                       # above any real count or seconds of one trial: a larger value is nonsense


@dataclass(frozen=True)
class Usage:
    """LLM usage summed over a run's trials (or any set of them)."""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    seconds: float = 0.0
    retries: int = 0
    backoffs: int = 0

    @property
    def tokens(self) -> int:
        """The tokens a cap counts: the reported total, or prompt + completion when that is larger."""
        return max(self.total_tokens, self.prompt_tokens + self.completion_tokens)

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in (*INT_KEYS, "seconds")})


def _count(value) -> float:
    """A number from 0 to MAX_COUNT, else 0 (bool, str, None, NaN, inf, negatives and huge values count nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return value if 0 <= value <= MAX_COUNT else 0


def of(raw) -> Usage:
    """One usage dict (a record's `llm_usage`, a Proposal's `usage`) as a Usage; anything odd counts 0."""
    if not isinstance(raw, dict):
        return Usage()
    ints = {k: int(_count(raw.get(k))) for k in INT_KEYS}
    return Usage(**ints, seconds=float(_count(raw.get("seconds"))))


def add(usage: Usage, raw) -> Usage:
    """`usage` plus one more usage dict."""
    return usage + of(raw)


def totals(records) -> Usage:
    """The sum of every record's `llm_usage` (TrialRecord objects or ledger dicts)."""
    total = Usage()
    for rec in records or ():
        raw = rec.get("llm_usage") if isinstance(rec, dict) else getattr(rec, "llm_usage", None)
        total = total + of(raw)
    return total


def _price(prices, name: str) -> float:
    value = prices.get(name) if isinstance(prices, dict) else getattr(prices, name, None)
    return float(_count(value))


def cost(usage: Usage, prices) -> float | None:
    """Dollars spent by `usage` at `prices` (policy `proposer.prices`, or a dict of the same keys); None when
    prices is None."""
    if prices is None:
        return None
    return (usage.prompt_tokens * _price(prices, "input_per_million")
            + usage.completion_tokens * _price(prices, "output_per_million")) / TOKENS_PER_PRICE_UNIT


def cap_reached(usage: Usage, prices=None, *, max_tokens: int | None = None, max_cost: float | None = None) -> str:
    """Why a run must stop for its caps ("" while it may go on)."""
    if max_tokens is not None and usage.tokens >= max_tokens:
        return f"--max-tokens {max_tokens} reached ({usage.tokens} used)"
    spent = cost(usage, prices)
    if max_cost is not None and spent is not None and spent >= max_cost:
        return f"--max-cost {fmt_dollars(max_cost)} reached ({fmt_dollars(spent)} spent)"
    return ""


def fmt_dollars(x: float) -> str:
    """$1.23, or $0.0042 for small sums (four significant decimals under a cent)."""
    return f"${x:.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def run_line(records, prices=None, caps: dict | None = None) -> str:
    """A run's LLM line for a person: describe() of its totals, then its caps (run.json's max_tokens and
    max_cost) with what was used of them; "" when it made no calls and has no caps."""
    spent, caps = totals(records), caps if isinstance(caps, dict) else {}
    shown = []
    max_tokens, max_cost = caps.get("max_tokens"), caps.get("max_cost")
    if _count(max_tokens):
        shown.append(f"--max-tokens {max_tokens} ({spent.tokens:,} used)")
    if _count(max_cost) and (dollars := cost(spent, prices)) is not None:
        shown.append(f"--max-cost {fmt_dollars(max_cost)} ({fmt_dollars(dollars)} spent)")
    if not spent.calls and not spent.tokens and not shown:
        return ""
    return describe(spent, prices) + (f"; caps {', '.join(shown)}" if shown else "")


def describe(usage: Usage, prices=None) -> str:
    """One line for a person: 'LLM: 12 calls, 34,567 tokens (30,000 in / 4,567 out), $0.05'."""
    if usage.calls == 0 and usage.tokens == 0:
        return "LLM: no calls"
    spent = cost(usage, prices)
    money = f", {fmt_dollars(spent)}" if spent is not None else ""
    extra = "".join(f", {n} {k}" for k, n in (("retries", usage.retries), ("backoffs", usage.backoffs)) if n)
    return (f"LLM: {usage.calls} calls, {usage.tokens:,} tokens ({usage.prompt_tokens:,} in / "
            f"{usage.completion_tokens:,} out){money}{extra}")
