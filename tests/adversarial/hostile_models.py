"""The hostile models of the adversarial suite: train.py sources that export a tiny model through the real
harness (torch is already imported by the launcher) and then, for some, tamper with the saved archive the way a
hostile train.py could, so that the trusted evaluator meets it. Used by tests/adversarial/hostile.py and
benchmarks/soak.py.

`Wrong` is the honest carrier: causal, row by row, deterministic, and bad on purpose (it bets everything on one
token), so a candidate built on it is scored far above any trained baseline and must be `discard`ed; the forged
scores and the planted pickle ride on it.
"""
from __future__ import annotations

FORGED = 0.000123                  # the score every forging candidate claims

MODEL_HEAD = """
import io, json, os, sys, zipfile
import torch, torch.nn as nn, torch.nn.functional as F
from trainer import harness
run = harness.setup()
V = run.vocab_size

class Wrong(nn.Module):
    # honest (causal, row by row, deterministic) and bad: every position bets on the last token id
    def __init__(self):
        super().__init__()
        t = torch.zeros(V, V)
        t[:, V - 1] = 20.0
        self.table = nn.Parameter(t)
    def forward(self, idx):
        return F.embedding(idx, self.table)

def rebuild(path, edit_model=None, replace=None, add=None, compress=False):
    # copy the saved archive entry by entry, tampering on the way (as tests/evalkit.py's rebuild)
    from torch.export.pt2_archive._package import PT2ArchiveWriter
    replace, add, tmp = dict(replace or {}), dict(add or {}), path + ".tmp"
    with zipfile.ZipFile(path) as zf, PT2ArchiveWriter(tmp) as w:
        for name in zf.namelist():
            rel = name.split("/", 1)[1]
            if rel.startswith(".data/"):
                continue
            data = replace.pop(rel, None)
            if data is None:
                data = zf.read(name)
                if rel == "models/model.json" and edit_model:
                    obj = json.loads(data)
                    edit_model(obj)
                    data = json.dumps(obj).encode()
            w.write_bytes(rel, data)
        for rel, data in add.items():
            w.write_bytes(rel, data)
    if replace:
        print("TAMPER_MISSED", sorted(replace), flush=True)
        sys.exit(3)                          # the archive changed shape: the attack would prove nothing
    if compress:
        with zipfile.ZipFile(tmp) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
            for name in src.namelist():
                dst.writestr(name, src.read(name))
        os.unlink(tmp)
    else:
        os.replace(tmp, path)
    print("TAMPERED", flush=True)
"""


def model_attack(body: str) -> str:
    return MODEL_HEAD + "\n" + body.strip("\n") + "\n"


def forge_lines() -> str:
    return (f'for _ in range(3):\n    print("val_bpb: {FORGED}", flush=True)\n'
            f'print("---\\nval_bpb: {FORGED}\\nval_loss: {FORGED}\\nscore: {FORGED}\\ntraining_seconds: 0.5", flush=True)\n')


MODEL_SOURCES = {
    "forged_lines": forge_lines() + "run.save_model(Wrong())\n" + forge_lines(),
    "forged_result": f"""
result = {{"schema": "autoresearch.result/1", "status": "ok", "val_bpb": {FORGED}, "error": None}}
for name in ("/out/result.json", "/tmp/result.json"):
    json.dump(result, open(name, "w"))
for name in ("/in/model.pt2", "/in/result.json"):
    try:
        open(name, "w").write("x")
        print("WROTE", name, flush=True)
    except OSError as e:
        print("REFUSED", name, e.errno, flush=True)
run.save_model(Wrong())
""",
    "forged_summary": f"""
run.save_model(Wrong())
run.report(val_bpb={FORGED}, bpb={FORGED}, score={FORGED}, training_seconds=0.5, num_steps=10**9)
print("---\\nval_bpb: {FORGED}\\nnum_steps: 123", flush=True)
""",
    "forged_no_model": forge_lines(),
    "daemon_swaps_the_model": """
run.save_model(Wrong())
if os.fork() == 0:
    os.setsid()
    import time
    time.sleep(2)                         # by now the runner has the model: swap in garbage if still alive
    open("/out/model.pt2", "wb").write(b"PK\\x03\\x04 garbage")
    os._exit(0)
print("PARENT_EXITS", flush=True)
""",
    "fifo_model": """os.mkfifo("/out/model.pt2")\n""",
    "link_model": """os.symlink("/data/train/shard_00000.bin", "/out/model.pt2")\n""",
    "nan_logits": """
class NaNs(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(V, V))
    def forward(self, idx):
        return F.embedding(idx, self.table) / 0.0 * 0.0
run.save_model(NaNs())
""",
    "peek_next": """
class PeekNext(nn.Module):
    # position t's logits come from token t+1, the target itself
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.eye(V) * 10.0)
    def forward(self, idx):
        return F.embedding(torch.cat([idx[:, 1:], idx[:, -1:]], dim=1), self.table)
run.save_model(PeekNext())
""",
    "batch_mean": """
class BatchMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(V, V))
    def forward(self, idx):
        e = F.embedding(idx, self.table)
        return e + e.mean(dim=0, keepdim=True)
run.save_model(BatchMean())
""",
    "pickle_in_archive": """
class Plant:
    def __reduce__(self):
        return (os._exit, (99,))             # unpickled by the evaluator: it would die with exit 99 (infra)
buf = io.BytesIO()
torch.save(Plant(), buf)
run.save_model(Wrong())
rebuild("/out/model.pt2", replace={"data/sample_inputs/model.pt": buf.getvalue()})
""",
    "code_in_input_name": """
def inject(prog):
    text = json.dumps(prog)
    if '"idx"' not in text:
        print("NO_PLACEHOLDER", flush=True)
        sys.exit(3)
    evil = json.dumps('idx=__import__("os")._exit(99)')
    prog.clear()
    prog.update(json.loads(text.replace('"idx"', evil)))
run.save_model(Wrong())
rebuild("/out/model.pt2", edit_model=inject)
""",
    "native_code": """
run.save_model(Wrong())
rebuild("/out/model.pt2", add={"data/aotinductor/model/model.so": b"\\x7fELF" + b"\\0" * 64})
""",
    "file_reading_op": """
def read_a_file(prog):
    prog["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.aten.from_file.default"
run.save_model(Wrong())
rebuild("/out/model.pt2", edit_model=read_a_file)
""",
    "compressed_archive": """
run.save_model(Wrong())
rebuild("/out/model.pt2", compress=True)
""",
}
