"""The safe .pt2 loader, steps 5-6: check a loaded ExportedProgram and run it. TRUSTED CODE (baked into the image).

`check_program` takes what torch's loader built from the rebuilt archive (trainer/safe_pt2_archive.py) and
returns a `Program` only if: every node is a placeholder, an allowlisted aten/prims op call (trainer/graph_ops.py,
arguments included) or the output; no op of mutable schema and no mutation output remains (a graph with an
in-place op is functionalized first, so a write to a buffer or to the input shows in the signature); every state
tensor is a plain dense tensor; and the static shapes match the TRUSTED preset and tokenizer: idx
(eval_batch_size, seq_len) int64 -> logits (eval_batch_size, seq_len, vocab_size) float32. A `Program` runs the
graph with an FX Interpreter that re-checks every call target, under inference mode, never through
`ExportedProgram.module()` (no guards code). Any failure raises InvalidModel with a one-line reason.
"""
from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field

import torch

from . import graph_ops
from .safe_pt2_archive import ALLOWED_NAMESPACES, DENIED_OPS, InvalidModel, invalid


def _allowed_target(target, allow_mutable: bool = False) -> str | None:
    """None if a graph call target is allowed, else why not (one line). With allow_mutable, an in-place or out= op
    passes when its functional form is on the allowlist (the loader then functionalizes the graph)."""
    if target is operator.getitem:
        return None
    forbidden = "model graph calls a forbidden op:"
    if not isinstance(target, torch._ops.OpOverload):
        return f"{forbidden} {target!r} is not a torch operator"
    if target.namespace not in ALLOWED_NAMESPACES:
        return f"{forbidden} {target} is outside the {'/'.join(ALLOWED_NAMESPACES)} namespaces"
    if target._schema.name.split("::")[-1] in DENIED_OPS:
        return f"{forbidden} {target} does I/O"
    if target._schema.is_mutable and not allow_mutable:
        return f"{forbidden} {target} mutates its arguments"
    return graph_ops.target_refusal(target)


class _CheckedInterpreter(torch.fx.Interpreter):
    def call_function(self, target, args, kwargs):
        why = _allowed_target(target)
        if why:
            raise InvalidModel(why)
        return super().call_function(target, args, kwargs)


@dataclass
class Program:
    """A checked exported model: call it with idx (batch, seq_len) int64 to get logits (batch, seq_len, vocab)."""
    graph_module: torch.fx.GraphModule
    state: list[torch.Tensor]
    user_index: int
    batch: int
    seq_len: int
    vocab_size: int
    device: str
    num_params: int
    ops: list[str] = field(default_factory=list)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if tuple(idx.shape) != (self.batch, self.seq_len) or idx.dtype != torch.int64:
            raise ValueError(f"evaluator bug: idx must be ({self.batch}, {self.seq_len}) int64, got "
                             f"{tuple(idx.shape)} {idx.dtype}")
        args = list(self.state)
        args.insert(self.user_index, idx.to(self.device))
        with torch.inference_mode():
            out = _CheckedInterpreter(self.graph_module).run(*args, enable_io_processing=False)
        if isinstance(out, (list, tuple)):
            out = out[0] if len(out) == 1 else None
        want = (self.batch, self.seq_len, self.vocab_size)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want or out.dtype != torch.float32:
            got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidModel(f"model returned {got}, expected logits {want} torch.float32")
        return out


def _meta_shape(node) -> tuple[tuple[int, ...], torch.dtype] | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(int(s) for s in val.shape), val.dtype


def _graph_ops(gm: torch.fx.GraphModule, allow_mutable: bool) -> tuple[list, set[str], bool]:
    """(placeholders, op names, whether an op of mutable schema was let through) of a graph whose every node is a
    placeholder, an allowed op call or the output. Every op must be on the allowlist (trainer/graph_ops.py). With
    allow_mutable, in-place and out= ops are let through; without, the graph is the functional one that will run,
    and each call's arguments are checked too (dropout off, no auxiliary attention output, ...)."""
    if any(isinstance(m, torch.fx.GraphModule) for name, m in gm.named_modules() if name):
        raise invalid("model graph holds subgraphs (higher-order ops); export plain tensor ops")
    placeholders, ops, mutable = [], set(), False
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            placeholders.append(node)
        elif node.op == "call_function":
            why = _allowed_target(node.target, allow_mutable) or (
                None if allow_mutable else graph_ops.argument_refusal(node))
            if why:
                raise invalid(why)
            mutable = mutable or (node.target is not operator.getitem and node.target._schema.is_mutable)
            ops.add(str(node.target))
        elif node.op != "output":
            raise invalid(f"model graph has a {node.op} node; only tensor op calls are allowed")
    return placeholders, ops, mutable


def check_program(ep, batch: int, seq_len: int, vocab_size: int, device: str) -> Program:
    """Check a loaded ExportedProgram against the trusted shapes; return a runnable Program. Raises InvalidModel.

    torch.export's default (training) IR keeps in-place ops. Harmless on intermediates, they would hide a mutation
    of a buffer or of the input, so once every op is known to be an allowed aten/prims op, a program that holds any
    op with a mutable schema is functionalized (run_decompositions with an empty table: in-place ops become
    functional, and any mutation of state shows up in the signature). A program with no such op is already
    functional and is not traced again (docs/benchmarks.md: what that saves). Either way the result must hold no
    mutable op and no mutation output.
    """
    from torch.export.graph_signature import InputKind, OutputKind
    if _graph_ops(ep.graph_module, allow_mutable=True)[2]:      # an in-place or out= op: it could write to state
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)   # torch-internal deprecation noise (LeafSpec)
                ep = ep.run_decompositions({})
        except Exception as e:  # noqa: BLE001 - a graph torch cannot functionalize is the model's problem
            raise invalid(f"model graph cannot be functionalized ({type(e).__name__}: {e}); export plain tensor ops")
    sig = ep.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate or getattr(sig, "parameters_to_mutate", None):
        what = "its buffers" if sig.buffers_to_mutate else "its input" if sig.user_inputs_to_mutate else "parameters"
        raise invalid(f"model mutates {what}; forward must be a pure function idx -> logits")
    if any(s.kind != OutputKind.USER_OUTPUT for s in sig.output_specs):
        raise invalid("model returns state mutations or gradients; forward must return only logits")
    gm = ep.graph_module
    placeholders, ops, _ = _graph_ops(gm, allow_mutable=False)
    if len(placeholders) != len(sig.input_specs):
        raise invalid("model graph inputs do not match its signature")
    state, user_index, num_params = [], None, 0
    sources = {**ep.state_dict, **ep.constants}
    for i, spec in enumerate(sig.input_specs):
        if spec.kind == InputKind.USER_INPUT:
            user_index = i
            continue
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            raise invalid(f"model graph has a {spec.kind.name} input; only tensors are allowed")
        t = sources.get(spec.target)
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.layout != torch.strided or t.is_quantized:
            raise invalid(f"model state {spec.target!r} is not a plain dense tensor")
        if spec.kind == InputKind.PARAMETER:
            num_params += t.numel()
        state.append(t.detach().to(device))
    got = _meta_shape(placeholders[user_index])
    if got != ((batch, seq_len), torch.int64):
        raise invalid(f"model input is {got}, expected idx ({batch}, {seq_len}) torch.int64 (eval_batch_size and "
                    "seq_len of the preset); export with the harness's save_model")
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    out = outs[0] if isinstance(outs, (list, tuple)) and len(outs) == 1 else outs
    got = _meta_shape(out) if isinstance(out, torch.fx.Node) else None
    if got != ((batch, seq_len, vocab_size), torch.float32):
        raise invalid(f"model output is {got}, expected logits ({batch}, {seq_len}, {vocab_size}) torch.float32 "
                    "(vocab_size from tokenizer.json)")
    return Program(gm, state, user_index, batch, seq_len, vocab_size, device, num_params, sorted(ops))
