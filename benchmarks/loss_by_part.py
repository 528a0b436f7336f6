"""Analysis: where in a synthetic story each exported model loses its bits, next to what the floor charges there.

    python benchmarks/loss_by_part.py DATA MODEL.pt2 [MODEL.pt2 ...]      # e.g. models kept by
    python benchmarks/trainer_vs_reference.py --keep DIR                  # ... DIR/<script>-<budget>/model.pt2

It regenerates the val stories of DATA (synthetic only: same grammar version, seed and count as its manifest),
tags every character with the part of the grammar that said it (the grammar function, with later mentions of a
character split out as `mention:name`, `mention:the-animal`, `mention:pronoun`, and the deterministic result of
the arithmetic as `count:result`), scores each story alone through the trusted loader, and prints bits per story
by part. A token belongs to the part that said its last character. The floor column charges each decision to the
part said right after it; sentence openings blur (the event choice is paid on the sentence's first token, whichever
part said it), so compare models with each other row by row, and with the floor only in total.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from trainer.bpb import token_nll  # noqa: E402
from trainer.evaluate import load_preset  # noqa: E402
from trainer.prepare import synthetic  # noqa: E402
from trainer.prepare.tokenizer import load_encoding  # noqa: E402
from trainer.safe_pt2 import load_program  # noqa: E402


class _Tagger(synthetic.Sampler):
    """The grammar's own sampler, also recording (start, end, part) for each `say` and the bits of each part."""

    def __init__(self, rng):
        super().__init__(rng)
        self.spans: list[tuple[int, int, str]] = []
        self.part_bits: collections.Counter = collections.Counter()
        self._pending = 0.0

    def pick(self, dist, exclude=()):
        before = self.bits
        i = super().pick(dist, exclude)
        self._pending += self.bits - before
        return i

    def say(self, text):
        frame = sys._getframe(1)
        part = frame.f_code.co_name.lstrip("_")
        state = frame.f_locals.get("state")
        if part in ("subject", "object") and state is not None:
            if any(text == c.name for c in state.chars):
                part = "mention:name"
            elif text.lower().startswith("the "):
                part = "mention:the-animal"
            else:
                part = "mention:pronoun"
        elif part == "count" and text.startswith(" Now"):
            part = "count:result"
        self.spans.append((self.n_chars, self.n_chars + len(text), part))
        self.part_bits[part] += self._pending
        self._pending = 0.0
        super().say(text)


def tagged_stories(data: Path):
    """[(token ids, part of each token)], and the floor's bits per part, for the val split of DATA."""
    manifest = json.loads((data / "manifest.json").read_text())
    params = manifest["params"]
    if manifest.get("source") != "synthetic" or params.get("grammar") != synthetic.GRAMMAR_VERSION:
        raise SystemExit(f"{data} is not synthetic data of grammar {synthetic.GRAMMAR_VERSION}; prepare it again")
    enc = load_encoding(data)
    rng = random.Random(f"{synthetic.GRAMMAR_VERSION}|val|{params['seed']}")
    stories, floor = [], collections.Counter()
    for _ in range(params["val_docs"]):
        t = _Tagger(rng)
        synthetic.story(t)
        floor.update(t.part_bits)
        owner = [""] * t.n_chars
        for start, end, part in t.spans:
            owner[start:end] = [part] * (end - start)
        ids, parts, pos = enc.encode_ordinary("".join(t.parts)), [], 0
        for tok in ids:
            pos += len(enc.decode_single_token_bytes(tok).decode("utf-8"))
            parts.append(owner[pos - 1])
        stories.append((ids, parts))
    return stories, floor


def bits_by_part(model: Path, stories, preset: dict, vocab: int, bos: int) -> collections.Counter:
    batch, seq_len = preset["eval_batch_size"], preset["seq_len"]
    program = load_program(model, batch, seq_len, vocab, "cpu")
    rows = [[bos, *ids] + [bos] * (seq_len - len(ids)) for ids, _ in stories]
    if any(len(r) > seq_len + 1 for r in rows):
        raise SystemExit(f"a val story is longer than the preset's seq_len {seq_len}")
    out: collections.Counter = collections.Counter()
    for s in range(0, len(rows), batch):
        chunk = rows[s:s + batch]
        x = torch.tensor(chunk + [[bos] * (seq_len + 1)] * (batch - len(chunk)))
        with torch.no_grad():
            nll = token_nll(program(x[:, :-1]), x[:, 1:]) / math.log(2)
        for k, (_, parts) in enumerate(stories[s:s + len(chunk)]):
            for j, part in enumerate(parts):
                out[part] += float(nll[k, j])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--preset", default="cpu", help="the preset the models were exported with (fixes their shape)")
    args = ap.parse_args()
    meta = json.loads((args.data / "tokenizer" / "tokenizer.json").read_text())
    stories, floor = tagged_stories(args.data)
    preset = load_preset(args.preset)
    results = [bits_by_part(m, stories, preset, meta["vocab_size"], meta["bos_id"]) for m in args.models]
    n = len(stories)
    names = [m.parent.name or m.name for m in args.models]
    print(f"Bits per story by part of the grammar ({n} val stories; floor charged approximately by part).\n")
    print("| part | floor | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for part in sorted(set(floor).union(*results), key=lambda p: -max(r[p] for r in results)):
        print(f"| {part} | {floor[part] / n:.2f} | " + " | ".join(f"{r[part] / n:.2f}" for r in results) + " |")
    print(f"| **total** | {sum(floor.values()) / n:.2f} | "
          + " | ".join(f"{sum(r.values()) / n:.2f}" for r in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
