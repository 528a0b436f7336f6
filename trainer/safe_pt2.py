"""The safe .pt2 loader: the exported model as the evaluator sees it, an UNTRUSTED archive checked before and after
loading. `load_program(path, batch, seq_len, vocab_size, device) -> Program`, or InvalidModel (one line).

TRUSTED CODE (baked into the trial image). The archive it reads was written by the agent's train.py and is
hostile input: nothing in it may run as Python, read files, or keep state between calls. Steps 1-4 below are
trainer/safe_pt2_archive.py, steps 5-6 trainer/safe_pt2_graph.py; this module joins them and warms them up.

What `torch.export.load` does in torch 2.13 (read from torch/export/__init__.py, torch/export/pt2_archive/_package.py
and torch/_export/serde/serialize.py; tests/test_evaluate_load.py demonstrates the first point):

* It is NOT safe on untrusted input; its own docstring says "uses pickle under the hood ... never load data from an
  untrusted source". Concretely, inside `load_pt2`:
  - `data/sample_inputs/<model>.pt` goes through `deserialize_torch_artifact`, which tries
    `torch.load(weights_only=True)` and, on ANY failure, retries with `torch.load(weights_only=False)`: a crafted
    pickle there runs arbitrary Python (os.system, ...) during load.
  - weights or constants whose payload config says `use_pickle: true` are read with `torch.load(weights_only=False)`;
    constants named `custom_obj_*` go through `torch._C._pickle_load_obj` (TorchScript objects) and `opaque_obj_*`
    through plain `pickle.loads`.
  - entries under `data/aotinductor/` are loaded as AOTInductor packages: compiled native shared libraries.
  - if the new-format load raises, it falls back to a legacy zip layout whose state dict is `torch.load`ed.
* The graph itself is JSON (`models/<model>.json`), parsed with `json.loads`. Call targets are resolved by name
  (`torch.ops.<ns>.<op>.<overload>`, `_operator.*`, `math.*`) and only OpOverloads, higher-order ops and symbolic
  ops become graph calls, so the archive cannot name an arbitrary Python callable as a node. But:
  - symbolic shape expressions (`expr_str`) are parsed with `sympy.sympify`, which calls `eval`;
  - names in the JSON become FX node targets, and FX generates Python source from them and `exec`s it when the
    GraphModule is built (a placeholder's target is pasted verbatim into `def forward(self, ...)`);
  - `guards_code` strings are `exec`ed by `ExportedProgram.module()`.

Defences here, in order:
1. Read the file once into memory (a regular file, size-capped); every later step works on those bytes.
2. Open it as a zip ourselves: only uncompressed entries, one root folder, and only the entry names an
   `torch.export.save` archive of one model holds. AOTInductor code, legacy files, extra files and custom or
   opaque objects are refused or dropped.
3. Check the JSON: every payload has `use_pickle: false`; every string and key uses only [A-Za-z0-9_.] (string op
   arguments may also hold ", ->" for einsum equations; float arguments may be Infinity/-Infinity/NaN); names are
   identifiers; every node target is an aten op on the allowlist of pure deterministic ops (trainer/graph_ops.py:
   no uninitialised memory such as aten.empty, no random op, nothing else; an in-place op counts as its
   functional form), named in the refusal; no symbolic shapes (no `expr_str`, no sym values), no custom objects,
   no subgraphs (no higher-order ops), no range constraints; the signature has one user input, one user output,
   and no mutation outputs.
4. Rebuild a NEW archive from the checked pieces: node metadata removed, `module_call_graph` replaced by a
   canonical one, `guards_code` emptied, sample inputs emptied (never unpickled), devices set to the eval device.
   Only this rebuilt archive reaches torch's loader (`load_pt2`, i.e. `torch.export.load` minus the legacy path).
5. After loading, check the FX graph again (node kinds, OpOverload namespaces, no file or print ops), functionalize
   it if it holds an in-place op (`run_decompositions({})`: in-place writes to buffers or to the input become
   signature outputs) and check that no mutable op schema and no mutation output remain, that every op of the
   functional graph is on the allowlist with arguments that keep it pure (dropout off, no auxiliary attention
   output, no accumulating index_put: graph_ops.argument_refusal), that state tensors are plain dense tensors,
   and the static input/output shapes against the TRUSTED preset and tokenizer: idx (eval_batch_size, seq_len)
   int64 -> logits (eval_batch_size, seq_len, vocab_size) float32.
6. Run the graph with an FX Interpreter that re-checks every call target (allowlist included), under inference
   mode, never through `ExportedProgram.module()` (no guards code).
Any failure raises InvalidModel with a one-line reason; the evaluator turns it into status "invalid_model".
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from .safe_pt2_archive import (MAX_MODEL_BYTES, MODEL_NAME, InvalidModel, invalid, read_archive,  # noqa: F401
                               sanitize_archive)
from .safe_pt2_graph import Program, check_program  # noqa: F401


class _WarmUp(torch.nn.Module):
    """A tiny TRUSTED model of the same kind as the agent's (embedding, matmul, attention, norm). Like the default
    train.py's graph it has no in-place op, so the warm-up leaves the functionalizing path cold (docs/benchmarks.md
    says why)."""

    def __init__(self, vocab: int = 16, dim: int = 8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        h = self.emb(idx)
        h = h + torch.nn.functional.scaled_dot_product_attention(h[:, None], h[:, None], h[:, None],
                                                                 is_causal=True)[:, 0]
        h = h * 0.5
        return self.head(torch.nn.functional.rms_norm(h, (h.shape[-1],)))


WARM_UP_ARCHIVE = Path(__file__).resolve().parent / "warm_up.pt2"   # written into the trial image when it is built


def warm_up_archive() -> bytes:
    """The tiny trusted model, exported and saved as torch.export.save would (the bytes of a .pt2)."""
    ep = torch.export.export(_WarmUp().eval(), (torch.zeros(2, 4, dtype=torch.int64),))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def warm_up() -> None:
    """Pay the loader's one-time costs (lazy imports of torch.export, torch._dynamo and the deserializer)
    on a tiny trusted model, before the untrusted one exists: send it through the same sanitize, load and check
    steps as a real model. The trial image carries the model's archive (made at build time: `python -m
    trainer.safe_pt2 --write-warm-up PATH`); elsewhere it is exported here. On CPU, whatever the eval device (no
    CUDA context is made here)."""
    raw = WARM_UP_ARCHIVE.read_bytes() if WARM_UP_ARCHIVE.is_file() else warm_up_archive()
    load_archive(raw, 2, 4, 16, "cpu")


def load_program(path: str | os.PathLike, batch: int, seq_len: int, vocab_size: int, device: str = "cpu",
                 max_bytes: int = MAX_MODEL_BYTES) -> Program:
    """Read, check, rebuild, load and re-check an untrusted .pt2. Raises InvalidModel with a one-line reason."""
    return load_archive(read_archive(path, max_bytes), batch, seq_len, vocab_size, device)


def load_archive(raw: bytes, batch: int, seq_len: int, vocab_size: int, device: str = "cpu") -> Program:
    """`load_program` on archive bytes already read (size-capped) into memory."""
    clean = sanitize_archive(raw, device)
    try:
        from torch.export.pt2_archive._package import load_pt2
    except ImportError:  # pragma: no cover - other torch versions: same loader behind the public name
        load_pt2 = None
    try:
        if load_pt2 is not None:
            eps = load_pt2(io.BytesIO(clean)).exported_programs
            if MODEL_NAME not in eps:
                raise invalid("model archive holds no program named 'model'; save it with torch.export.save")
            ep = eps[MODEL_NAME]
        else:
            ep = torch.export.load(io.BytesIO(clean))
    except InvalidModel:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure is the model's
        raise invalid(f"torch could not load the checked program ({type(e).__name__}: {e}); "
                    "export it with torch.export.save from the same torch version")
    return check_program(ep, batch, seq_len, vocab_size, device)


if __name__ == "__main__":          # image build: python -m trainer.safe_pt2 --write-warm-up PATH
    import argparse
    ap = argparse.ArgumentParser(prog="python -m trainer.safe_pt2")
    ap.add_argument("--write-warm-up", type=Path, required=True, metavar="PATH", help="write the warm-up archive")
    dest = ap.parse_args().write_warm_up
    dest.write_bytes(warm_up_archive())
    load_archive(dest.read_bytes(), 2, 4, 16, "cpu")       # the loader must accept it, or the build fails
