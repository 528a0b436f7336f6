"""trainer.direct, the unsandboxed development trial: real train.py subprocesses, the real evaluator, clear failures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evalkit as K
from trainer.direct import TrialFailed, direct_trial

REPO = Path(__file__).resolve().parent.parent
VOCAB = 24

BIGRAM_TRAIN = '''
import torch, torch.nn as nn, torch.nn.functional as F
from trainer import harness
run = harness.setup()
SHAVE = {shave}
class Bigram(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.t = nn.Embedding(v, v)
    def forward(self, idx):
        out = self.t(idx)
        return out[:, :-1] if SHAVE else out
model = Bigram(run.vocab_size)
opt = torch.optim.Adam(model.parameters(), lr=0.1)
loader = iter(run.train_loader(8))
step = 0
while run.progress(step) < 1:
    x, y = next(loader)
    logits = model.t(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    opt.zero_grad(); loss.backward(); opt.step(); step += 1
    run.log_step(step, loss.item())
run.save_model(model)
run.report(num_steps=step)
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(9)
    docs = [[K.BOS] + (1 + (int(rng.integers(VOCAB)) + np.arange(int(rng.integers(5, 60)))) % (VOCAB - 1)).tolist()
            for _ in range(80)]
    return K.make_data(tmp_path_factory.mktemp("direct-data"), docs, VOCAB, bpb_floor=0.05)


def script(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "train.py"
    p.write_text(text)
    return p


def test_the_cli_warns_that_it_is_unsandboxed_trains_evaluates_and_prints_the_ratio_to_the_floor(data, tmp_path):
    train_py = script(tmp_path, BIGRAM_TRAIN.format(shave=False))
    p = subprocess.run([sys.executable, "-m", "trainer.direct", "--train-py", str(train_py), "--data", str(data),
                        "--preset", "tiny", "--max-steps", "30", "--budget", "60", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "DEVELOPMENT ONLY" in p.stderr and "unsandboxed" in p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("val_bpb: ") and "ratio to floor: " in last
    assert "step=30 " in p.stdout                           # train.py's progress lines are streamed through
    assert {"train.log", "eval.log", "model.pt2", "result.json"} <= {f.name for f in (tmp_path / "out").iterdir()}


def test_direct_trial_returns_the_evaluator_result_and_passes_the_harness_environment(data, tmp_path):
    train_py = script(tmp_path, BIGRAM_TRAIN.format(shave=False))
    lines = []
    res = direct_trial(train_py, data, preset="tiny", budget=60, max_steps=10, seed=5, out=tmp_path / "o",
                       on_line=lines.append)
    assert res["status"] == "ok" and res["preset"] == "tiny" and res["seq_len"] == 64
    assert any(line.startswith("step=10 ") for line in lines)


def test_a_crashing_train_py_is_a_one_line_failure_naming_the_exit_code_and_its_last_line(data, tmp_path):
    train_py = script(tmp_path, "import os, sys\n"
                                "print('env', os.environ['AUTORESEARCH_PRESET'], os.environ['AUTORESEARCH_SEED'],"
                                " os.environ['AUTORESEARCH_MAX_STEPS'], os.environ['AUTORESEARCH_BUDGET_S'])\n"
                                "sys.exit(3)\n")
    with pytest.raises(TrialFailed) as e:
        direct_trial(train_py, data, preset="tiny", budget=7, max_steps=4, seed=11, out=tmp_path / "o")
    msg = str(e.value)
    assert "exited with code 3" in msg and "env tiny 11 4 7" in msg and "train.log" in msg and "\n" not in msg


def test_a_model_that_fails_to_export_is_reported_as_an_export_failure(data, tmp_path):
    train_py = script(tmp_path, BIGRAM_TRAIN.format(shave=True))
    with pytest.raises(TrialFailed, match=r"export failed \(exit 86\)"):
        direct_trial(train_py, data, preset="tiny", budget=60, max_steps=2, out=tmp_path / "o")


def test_missing_data_or_script_fails_before_anything_runs(data, tmp_path):
    with pytest.raises(TrialFailed, match="no prepared data"):
        direct_trial(REPO / "trainer" / "train.py", tmp_path / "nothing", out=tmp_path / "o")
    with pytest.raises(TrialFailed, match="no training script"):
        direct_trial(tmp_path / "missing.py", data, out=tmp_path / "o")
