"""save_model: a torch.export program with the fixed eval shape, or export_error.txt and exit code 86."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from harness_fixtures import VOCAB, make_data
from trainer.harness.export import (EXPORT_FAILED, EXPORTING_LINE, ExportError, export_model,
                                    without_canonical_form_test)


class TinyLM(torch.nn.Module):
    def __init__(self, vocab=VOCAB, dim=16, dtype=torch.float32):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim, dtype=dtype)
        self.head = torch.nn.Linear(dim, vocab, dtype=dtype)

    def forward(self, idx, targets=None):
        return self.head(torch.cumsum(self.emb(idx), dim=1))


def test_save_model_writes_a_program_that_torch_export_load_runs_with_the_right_shapes(tmp_path):
    model = TinyLM()
    path = export_model(model, batch_size=3, seq_len=12, vocab_size=VOCAB, device="cpu", out_dir=tmp_path)
    assert path == tmp_path / "model.pt2" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]
    program = torch.export.load(path)
    idx = torch.randint(0, VOCAB, (3, 12))
    logits = program.module()(idx)
    assert logits.shape == (3, 12, VOCAB) and logits.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(logits, model(idx))
    assert model.training, "the model's train/eval mode is restored"


def _entries(path) -> dict[str, bytes]:
    """An archive's entries by name, without the top folder (torch names it after the file)."""
    with zipfile.ZipFile(path) as z:
        return {i.filename.split("/", 1)[-1]: z.read(i) for i in z.infolist()}


def test_saving_skips_only_torchs_discarded_self_test_and_writes_the_same_entries(tmp_path, monkeypatch):
    from torch._export.serde import serialize as serde
    calls = []
    real = serde.canonicalize
    monkeypatch.setattr(serde, "canonicalize", lambda *a, **k: calls.append(1) or real(*a, **k))
    program = torch.export.export(TinyLM().eval(), (torch.zeros(2, 8, dtype=torch.int64),))
    torch.export.save(program, tmp_path / "plain.pt2")
    assert calls == [1], "torch.export.save no longer runs its canonical-form test: update harness/export.py"
    with without_canonical_form_test():
        torch.export.save(program, tmp_path / "fast.pt2")
    assert calls == [1], "the self-test ran anyway"
    plain, fast = _entries(tmp_path / "plain.pt2"), _entries(tmp_path / "fast.pt2")
    assert plain.keys() == fast.keys() and all(plain[k] == fast[k] for k in plain)
    with pytest.raises(RuntimeError), without_canonical_form_test():
        raise RuntimeError("a failed save")
    torch.export.save(program, tmp_path / "again.pt2")
    assert calls == [1, 1], "torch's function is back after the context, also after an error"


def test_a_bf16_model_exports_float32_logits(tmp_path):
    path = export_model(TinyLM(dtype=torch.bfloat16), batch_size=2, seq_len=8, vocab_size=VOCAB, device="cpu",
                        out_dir=tmp_path)
    assert torch.export.load(path).module()(torch.zeros(2, 8, dtype=torch.int64)).dtype == torch.float32


def test_a_model_with_the_wrong_output_shape_is_refused(tmp_path):
    class LastOnly(TinyLM):
        def forward(self, idx, targets=None):
            return super().forward(idx)[:, -1]

    with pytest.raises(ExportError, match=r"returns shape \(2, 64\), needed \(2, 8, 64\)"):
        export_model(LastOnly(), batch_size=2, seq_len=8, vocab_size=VOCAB, device="cpu", out_dir=tmp_path)
    assert not (tmp_path / "model.pt2").exists()


SCRIPT = """
import torch
from trainer import harness
run = harness.setup()
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(run.vocab_size, 8)
    def forward(self, idx):
        {body}
run.save_model(Model())
print("not reached")
"""


@pytest.mark.parametrize("body", [
    "return self.emb(idx).sum()",                                             # wrong shape
    "return self.emb(idx) if idx.sum().item() > 0 else -self.emb(idx)",       # data-dependent control flow
    "raise RuntimeError('boom')",
])
def test_export_failure_writes_one_line_export_error_and_exits_86(tmp_path, body):
    data = make_data(tmp_path / "data", n_docs=20)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT).replace("{body}", body))
    env = dict(os.environ, AUTORESEARCH_DATA=str(data), AUTORESEARCH_OUT=str(tmp_path / "out"),
               AUTORESEARCH_PRESET="tiny", AUTORESEARCH_BUDGET_S="60")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXPORT_FAILED == 86, proc.stderr[-2000:]
    assert "not reached" not in proc.stdout
    lines = (tmp_path / "out" / "export_error.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].strip()
    assert not (tmp_path / "out" / "model.pt2").exists()
    assert "harness: export failed" in proc.stderr
    assert proc.stdout.splitlines()[-1] == EXPORTING_LINE      # said before trying, so the runner can schedule


def test_the_line_the_runner_schedules_the_next_slot_on_is_the_line_the_harness_prints():
    from runner.sandbox import containers
    assert containers.EXPORTING_LINE == EXPORTING_LINE
