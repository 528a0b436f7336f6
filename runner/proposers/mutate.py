"""The `mutate` proposer: no LLM, it nudges one UPPER_CASE numeric hyperparameter of train.py. TRUSTED CODE.

It reads top-level lines of the form `NAME = <number>  # comment` and changes one number within a sane range:
- learning rates (a name with LR in it): x0.5 .. x2;
- fractions in (0, 1): scaled, and values above 0.5 (momenta, betas) scaled towards 1 by their distance to 1,
  so the result stays inside (0, 1);
- other floats: x0.5 .. x2;
- small ints (2..16): +-1; powers of two above 16: x2 or /2; other ints: x0.5 .. x2, rounded.
It never makes a positive value zero or negative, leaves zeros, negatives, the int 1 (often an on/off flag) and
logging/safety knobs (LOG_*, *_EVERY, *SEED*, DIVERGE*, *_EMA) alone, and does not repeat a change already tried
on the same parent. The choice is a pure function of (run seed, trial id, the file, the history), so a resumed
run proposes exactly what the dead one would have. It is the offline default and the bar an LLM must clear.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..errors import ProposerError
from .base import Context, Proposal

LINE = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)(?P<eq>\s*=\s*)(?P<num>(?:\d[\d_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
                  r"(?P<rest>\s*(?:#.*)?)$")
SKIP = re.compile(r"^LOG_|_LOG$|SEED|EVERY|DIVERGE|_EMA$")
FACTORS = (0.5, 0.67, 0.8, 1.25, 1.5, 2.0)
FRACTION_FACTORS = (0.5, 0.67, 0.8, 1.25, 1.5)
MAX_DRAWS = 64


@dataclass
class Knob:
    line_no: int
    name: str
    literal: str
    value: float
    is_int: bool


def knobs(text: str) -> list[Knob]:
    """The perturbable constants of a file, in file order."""
    out = []
    for i, line in enumerate(text.split("\n")):
        m = LINE.match(line)
        if not m or SKIP.search(m["name"]):
            continue
        lit = m["num"]
        is_int = not any(c in lit for c in ".eE")
        value = float(lit.replace("_", ""))
        if value <= 0 or (is_int and value == 1):
            continue
        out.append(Knob(i, m["name"], lit, value, is_int))
    return out


def perturb(k: Knob, rng: random.Random) -> str:
    """A new literal for one knob (may equal the old one after rounding; the caller draws again)."""
    v = k.value
    if k.is_int:
        n = int(v)
        if n <= 16:
            return str(n + rng.choice((-1, 1)))  # n >= 2 here, so the result stays >= 1
        if n & (n - 1) == 0:
            return str(n * 2 if rng.random() < 0.5 else n // 2)
        return str(max(1, round(n * rng.choice(FACTORS))))
    if "LR" in k.name.split("_") or "LEARNING_RATE" in k.name:
        new = v * rng.choice(FACTORS)
    elif v < 1:
        f = rng.choice(FRACTION_FACTORS)
        new = 1 - (1 - v) * f if v > 0.5 else v * f
    else:
        new = v * rng.choice(FACTORS)
    return _fmt_float(new)


def _fmt_float(x: float) -> str:
    s = f"{x:.3g}"
    return s if any(c in s for c in ".e") else s + ".0"


class MutateProposer:
    name = "mutate"
    instant = True          # answers at once: the loop asks on demand (runner.proposals), nothing to hide

    def __init__(self, path: str = "train.py"):
        self.path = path

    def propose(self, ctx: Context) -> Proposal:
        path = self.path if self.path in ctx.files else next(iter(sorted(ctx.files)), None)
        if path is None:
            raise ProposerError(f"no allowed file to mutate (allowed: {', '.join(ctx.allowed_files)}); "
                                "commit train.py to the experiment repository")
        text = ctx.files[path]
        candidates = knobs(text)
        if not candidates:
            raise ProposerError(f"{path} has no `NAME = <positive number>  # comment` constants to perturb; "
                                "use the openai proposer or add UPPER_CASE hyperparameters")
        tried = {r.get("description") for r in ctx.history if r.get("parent") == ctx.parent}
        rng = random.Random(f"mutate:{ctx.seed}:{ctx.trial_id}")
        for _ in range(MAX_DRAWS):
            k = rng.choice(candidates)
            new = perturb(k, rng)
            if new == k.literal or float(new) <= 0:
                continue
            description = f"{k.name} {k.literal} -> {new}"
            if description in tried:
                continue
            lines = text.split("\n")
            m = LINE.match(lines[k.line_no])
            lines[k.line_no] = f"{m['name']}{m['eq']}{new}{m['rest']}"
            return Proposal(files={path: "\n".join(lines)}, description=description)
        raise ProposerError(f"mutate found no untried change of {path} in {MAX_DRAWS} draws; "
                            "every nearby value was tried from this commit: stop the run or switch proposer")
