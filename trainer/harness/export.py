"""Export of the trained model for the evaluator: torch.export of its forward pass at the fixed evaluation shape.

TRUSTED CODE, part of the harness baked into the trial image; not the agent's to edit.

The exported program maps idx (eval_batch_size, seq_len) int64 -> logits (eval_batch_size, seq_len, vocab_size)
float32 with static shapes, and is written with torch.export.save to OUT/model.pt2 (via a temporary name, so a
crash never leaves a file that looks complete). The evaluator loads it with its safe .pt2 loader (trainer/safe_pt2.py)
and never imports the agent's Python. The export runs in eval mode under no_grad, and the model's output is cast to
float32 (a bf16 model still exports). EXPORTING_LINE is printed as the export starts; any failure writes
OUT/export_error.txt (one line) and exits with EXPORT_FAILED (86), which the runner reports as `export_failed`
(both in trainer.contract).

CPU is the tested path. On CUDA the program is exported on the GPU as is (untested on the development machines,
which have no GPU); the evaluator can move it to another device if it needs to.
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path

import torch

from trainer.contract import EXPORT_ERROR_FILE as ERROR_FILE
from trainer.contract import EXPORT_FAILED, EXPORTING_LINE, MODEL_FILE


class ExportError(Exception):
    """The model could not be exported in the required form. The message is one line."""


class _LogitsOnly(torch.nn.Module):
    """Calls the model with token ids only and returns its output as float32 logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx).float()


def export_model(model: torch.nn.Module, *, batch_size: int, seq_len: int, vocab_size: int, device: str,
                 out_dir: str | Path) -> Path:
    """Export and save; returns the path of model.pt2. Raises on any failure (see save_or_exit for the exit)."""
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"save_model needs a torch.nn.Module, got {type(model).__name__}")
    model = getattr(model, "_orig_mod", model)            # unwrap torch.compile
    want = (batch_size, seq_len, vocab_size)
    gen = torch.Generator(device=device).manual_seed(0)
    idx = torch.randint(0, vocab_size, (batch_size, seq_len), dtype=torch.int64, device=device, generator=gen)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            program = torch.export.export(_LogitsOnly(model), (idx,))
    finally:
        model.train(was_training)
    out = _traced_output(program)
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"the model must return one logits tensor, got {type(out).__name__}")
    if tuple(out.shape) != want:
        raise ExportError(f"exported model returns shape {tuple(out.shape)}, needed {want} "
                          "(eval_batch_size, seq_len, vocab_size): forward(idx) must return logits for every position")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / MODEL_FILE
    tmp = out_dir / f".tmp-{os.getpid()}-{MODEL_FILE}"
    try:
        with without_canonical_form_test():
            torch.export.save(program, tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


@contextlib.contextmanager
def without_canonical_form_test():
    """torch.export.save, minus a self-test whose result it throws away (0.1-0.3 s of every export here).

    torch 2.13's serializer calls `canonicalize(serialized_ep, ...)` under the comment "Test canonical form is
    well defined" and discards what it returns; canonicalize starts with a deep copy of the whole serialized
    program (about 100k objects for the cpu preset's GPT). The archive's entries are byte for byte the same
    without it (tests/test_harness_export.py checks that against a plain torch.export.save). The module's name
    is swapped back afterwards, also on an error; a torch without that name is left alone.
    """
    from torch._export.serde import serialize as serde

    original = getattr(serde, "canonicalize", None)
    if original is None:
        yield
        return
    serde.canonicalize = lambda ep, constants=None: ep
    try:
        yield
    finally:
        serde.canonicalize = original


def _traced_output(program):
    """What the exported program returns, as traced (a fake tensor with the real shape and dtype): the check needs
    no forward pass over the real weights (that took ~0.2 s after every training on a CPU)."""
    outputs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 1:
        return outputs
    return getattr(outputs[0], "meta", {}).get("val")


def one_line(exc: BaseException, limit: int = 400) -> str:
    text = str(exc).strip().splitlines()
    msg = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


def save_or_exit(model: torch.nn.Module, **kwargs) -> Path:
    """export_model, but on failure write export_error.txt (one line) and exit with code 86."""
    out_dir = Path(kwargs["out_dir"])
    print(EXPORTING_LINE, flush=True)           # a scheduling hint only: train.py can print it too, or never
    try:
        return export_model(model, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure of the agent's model to export is an export failure
        line = one_line(e)
        traceback.print_exc(file=sys.stderr)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / ERROR_FILE).write_text(line + "\n")
        except OSError as write_err:
            print(f"harness: could not write {out_dir / ERROR_FILE}: {write_err}", file=sys.stderr)
        print(f"harness: export failed: {line}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        sys.exit(EXPORT_FAILED)
