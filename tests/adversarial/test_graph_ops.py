"""Exported graphs that read memory they never wrote: a model whose forward adds torch.empty(...) gets whatever the
evaluator's allocator hands back (freed buffers that held validation tokens), so its score would depend on the
evaluator's heap. The evaluator loads only graphs whose every op is on the allowlist of pure deterministic ops
(trainer/graph_ops.py); this one is `export_failed`, and the reason names the op."""
from __future__ import annotations

import pytest

from tests.sandbox_kit import candidate, trial

pytestmark = pytest.mark.docker

READS_THE_HEAP = """
import torch, torch.nn as nn, torch.nn.functional as F
from trainer import harness
run = harness.setup()
V = run.vocab_size

class ReadsTheHeap(nn.Module):
    # an untrained bigram table, plus whatever torch.empty hands back in the evaluator's process
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(V, V))

    def forward(self, idx):
        heap = torch.empty(idx.shape[0], idx.shape[1], V)
        return F.embedding(idx, self.table) + heap.nan_to_num().clamp(-1.0, 1.0)

run.save_model(ReadsTheHeap())
print("exported a model that reads torch.empty", flush=True)
"""


def test_a_candidate_whose_model_reads_uninitialised_memory_is_export_failed_naming_the_op(
        tmp_path, trial_image, sandbox_data):
    out, _ = trial(tmp_path, trial_image.tag, candidate(tmp_path, READS_THE_HEAP), sandbox_data)
    assert "exported a model that reads torch.empty" in out.log_tail, out.log_tail[-2000:]   # it really tried
    assert out.status == "export_failed", (out.status, out.error, out.log_tail[-2000:])
    assert "aten.empty.memory_format, which is not on the allowlist" in out.error, out.error
    assert out.val_bpb is None
