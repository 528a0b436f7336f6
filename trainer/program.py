"""The exported model as the evaluator sees it: an UNTRUSTED `.pt2` archive, checked before and after loading.

TRUSTED CODE (baked into the trial image). The archive it reads was written by the agent's train.py and is
hostile input: nothing in it may run as Python, read files, or keep state between calls.

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
import json
import operator
import os
import re
import stat
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import graph_ops

MAX_MODEL_BYTES = 8 << 30           # a .pt2 larger than this is refused before it is read
MAX_JSON_BYTES = 64 << 20           # a GPT's program JSON is well under 1 MiB; a huge one is refused unparsed
ALLOWED_NAMESPACES = ("aten", "prims")
DENIED_OPS = {"from_file", "_print", "save", "load"}   # I/O: reading the val shards, printing
_SAFE = re.compile(r"^[A-Za-z0-9_.]*$")
_VERSION = re.compile(r"^[A-Za-z0-9_.+\-]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FQN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
_STRING_ARG = re.compile(r"^[A-Za-z0-9_., >-]*$")  # string op arguments: modes ("tanh") and einsum equations
_NONFINITE = {"Infinity", "-Infinity", "NaN"}      # how the serializer writes non-finite float arguments
_TARGET = re.compile(r"^torch\.ops\.(aten|prims)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")
_FORBIDDEN_KEYS = {"expr_str", "as_expr", "as_name", "as_graph", "as_custom_obj", "as_sym_bool", "as_sym_bools",
                   "as_sym_float", "as_sym_floats", "as_complex", "as_operator", "as_sym_int"}
_NAME_KEYS = {"name", "forward_arg_names"}
_FQN_KEYS = {"parameter_name", "buffer_name", "tensor_constant_name", "fqn"}
_EMPTY_REQUIRED = ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values")
_INPUT_KINDS = {"user_input", "parameter", "buffer", "tensor_constant"}
_MODEL = "model"
_JSON = "models/model.json"
_WCONF = "data/weights/model_weights_config.json"
_CCONF = "data/constants/model_constants_config.json"
_SAMPLE = "data/sample_inputs/model.pt"
_WEIGHT = re.compile(r"^data/weights/weight_\d+$")
_CONST = re.compile(r"^data/constants/tensor_\d+$")
_KEEP = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
         _JSON, _WCONF, _CCONF, _SAMPLE}


class InvalidModel(Exception):
    """The archive is not an acceptable exported model. str(e) is one line: what is wrong and what was expected."""


def _fail(msg: str) -> InvalidModel:
    return InvalidModel(" ".join(str(msg).split())[:500])


# --------------------------------------------------------------------------- 1-2: the file and the zip

def read_archive(path: str | os.PathLike, max_bytes: int = MAX_MODEL_BYTES) -> bytes:
    """The model file's bytes: a regular file (not a link, not a device), at most max_bytes."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise _fail(f"model file {path} cannot be read ({e.strerror}); the training run must write model.pt2")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(f"model file {path} is not a regular file; a plain .pt2 file is needed")
    if st.st_size > max_bytes:
        raise _fail(f"model file {path} is {st.st_size} bytes, over the {max_bytes}-byte limit; export a smaller model")
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


def _entries(raw: bytes) -> dict[str, bytes]:
    """{name relative to the archive's root folder: bytes} for a torch.export.save archive, strictly checked."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as e:
        raise _fail(f"model file is not a .pt2 archive (not a readable zip: {e}); save it with torch.export.save")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise _fail("model archive has duplicate entry names; save it with torch.export.save")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise _fail(f"model archive must hold one root folder, found {sorted(roots)[:3]}; "
                    "save it with torch.export.save")
    total = 0
    out: dict[str, bytes] = {}
    for info in infos:
        rel = info.filename.split("/", 1)[1]
        if info.compress_type != zipfile.ZIP_STORED:
            raise _fail(f"model archive entry {rel} is compressed; torch.export.save writes stored entries only")
        total += info.file_size
        if total > len(raw):
            raise _fail("model archive entries are larger than the file itself; the archive is malformed")
        if rel.startswith("data/aotinductor/") or rel.startswith("data/executorch/") or rel.startswith("data/mtia"):
            raise _fail(f"model archive holds compiled native code ({rel}); the evaluator loads exported graphs only")
        if rel.startswith("extra/"):
            continue  # extra files are free text; dropped, never read by the evaluator
        if rel.endswith(".json") and info.file_size > MAX_JSON_BYTES:
            raise _fail(f"model archive entry {rel} is {info.file_size} bytes, over the {MAX_JSON_BYTES}-byte limit "
                        "for a program description")
        if rel not in _KEEP and not _WEIGHT.match(rel) and not _CONST.match(rel):
            raise _fail(f"model archive has an unexpected entry {rel!r}; only one model saved with "
                        "torch.export.save (no pickled, custom or legacy payloads) is accepted")
        try:
            out[rel] = zf.read(info)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise _fail(f"model archive entry {rel} cannot be read ({e}); the file is corrupt")
    for need in (_JSON, _WCONF, _CCONF, "archive_format"):
        if need not in out:
            raise _fail(f"model archive lacks {need}; it must hold one program named 'model' (torch.export.save)")
    if out["archive_format"] != b"pt2":
        raise _fail("model archive's archive_format is not 'pt2'; save it with torch.export.save")
    return out


# --------------------------------------------------------------------------- 3-4: the JSON

def _loads(blob: bytes, what: str):
    try:
        return json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(f"model archive's {what} is not valid JSON ({type(e).__name__}); save it with torch.export.save")


def _walk(obj, where: str, key: str | None = None) -> None:
    """Every key and string in a (metadata-free) program JSON must be plain; sym exprs and subgraphs refused."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in _FORBIDDEN_KEYS:
                raise _fail(f"model graph uses {k!r} in {where}: symbolic shapes, subgraphs and custom objects are "
                            "not accepted; export with static shapes and plain tensor ops")
            if not _SAFE.match(k):
                raise _fail(f"model graph has a key {k[:40]!r} with characters outside [A-Za-z0-9_.] in {where}")
            _walk(v, where, k)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, where, key)
    elif isinstance(obj, str):
        if key in ("as_float", "as_floats") and obj in _NONFINITE:
            return
        rule = _IDENT if key in _NAME_KEYS else _FQN if key in _FQN_KEYS else _VERSION if key == "torch_version" \
            else _STRING_ARG if key in ("as_string", "as_strings") else _SAFE
        if not rule.match(obj):
            raise _fail(f"model graph has a {key or 'value'} string {obj[:40]!r} that is not a plain name "
                        f"(pattern {rule.pattern}) in {where}")
    elif obj is not None and not isinstance(obj, (int, float, bool)):
        raise _fail(f"model graph holds an unexpected JSON value in {where}")


def _check_payloads(conf, what: str, pattern: re.Pattern, entries: dict[str, bytes], device: str) -> dict:
    if not isinstance(conf, dict) or not isinstance(conf.get("config"), dict) or len(conf) != 1:
        raise _fail(f"model archive's {what} config is malformed; save it with torch.export.save")
    folder = "data/weights/" if what == "weights" else "data/constants/"
    for fqn, meta in conf["config"].items():
        if not isinstance(meta, dict) or not _FQN.match(str(fqn)):
            raise _fail(f"model archive's {what} config has a bad entry {str(fqn)[:40]!r}")
        if meta.get("use_pickle") is not False:
            raise _fail(f"model {what} entry {fqn!r} is pickled (use_pickle); only plain tensors are loaded, "
                        "never pickles: export plain dense tensors")
        path = meta.get("path_name")
        if not isinstance(path, str) or not pattern.match(folder + path) or folder + path not in entries:
            raise _fail(f"model {what} entry {fqn!r} points at {str(path)[:40]!r}, which is not a tensor payload "
                        "in the archive")
        tm = meta.get("tensor_meta")
        if not isinstance(tm, dict):
            raise _fail(f"model {what} entry {fqn!r} has no tensor metadata")
        _walk(tm, f"{what} config")
        tm["device"] = {"type": device, "index": None}
        tm["requires_grad"] = False
    return conf


def _canonical_call_graph() -> list:
    from torch.utils._pytree import treespec_dumps, tree_structure
    x = torch.zeros(1)
    return [{"fqn": "", "signature": {"inputs": [], "outputs": [],
                                      "in_spec": treespec_dumps(tree_structure(((x,), {}))),
                                      "out_spec": treespec_dumps(tree_structure(x)),
                                      "forward_arg_names": ["idx"]}}]


def _set_devices(obj, device: str) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("device", "as_device") and isinstance(v, dict) and set(v) <= {"type", "index"}:
                obj[k] = {"type": device, "index": None}
            else:
                _set_devices(v, device)
    elif isinstance(obj, list):
        for v in obj:
            _set_devices(v, device)


def _check_program_json(prog, device: str) -> dict:
    if not isinstance(prog, dict) or not isinstance(prog.get("graph_module"), dict):
        raise _fail("model archive's program JSON has no graph_module; save it with torch.export.save")
    gm = prog["graph_module"]
    graph, sig = gm.get("graph"), gm.get("signature")
    if not isinstance(graph, dict) or not isinstance(sig, dict) or not isinstance(graph.get("nodes"), list):
        raise _fail("model archive's program JSON lacks a graph or signature; save it with torch.export.save")
    for node in graph["nodes"]:
        if not isinstance(node, dict):
            raise _fail("model graph has a malformed node")
        node["metadata"] = {}  # stack traces, module stacks: free text, never needed to run
        target = node.get("target")
        m = _TARGET.match(target) if isinstance(target, str) else None
        if m is None:
            raise _fail(f"model graph calls {str(target)[:60]!r}; only torch.ops.aten/prims operators are allowed "
                        "(no higher-order ops, custom ops or Python callables)")
        if m.group(2) in DENIED_OPS:
            raise _fail(f"model graph calls {target}, which does I/O; models may only compute on their input")
        why = graph_ops.refusal(m.group(1), m.group(2), m.group(3))
        if why:
            raise _fail(why)
    for key in _EMPTY_REQUIRED:
        if graph.get(key):
            raise _fail(f"model graph has {key} (symbolic values or custom objects); export with static shapes")
    if prog.get("range_constraints"):
        raise _fail("model has range constraints (dynamic shapes); export with static shapes")
    if gm.get("treespec_namedtuple_fields"):
        raise _fail("model signature uses namedtuples; forward must take idx and return one logits tensor")
    kinds_in = [next(iter(s)) for s in sig.get("input_specs", []) if isinstance(s, dict) and len(s) == 1]
    kinds_out = [next(iter(s)) for s in sig.get("output_specs", []) if isinstance(s, dict) and len(s) == 1]
    if len(kinds_in) != len(sig.get("input_specs", [])) or len(kinds_out) != len(sig.get("output_specs", [])):
        raise _fail("model graph signature is malformed")
    bad = sorted(set(kinds_in) - _INPUT_KINDS)
    if bad:
        raise _fail(f"model graph signature has {bad[0]} inputs; only parameters, buffers, tensor constants and "
                    "one user input are allowed")
    if any(k != "user_output" for k in kinds_out):
        mutation = next(k for k in kinds_out if k != "user_output")
        raise _fail(f"model graph signature has a {mutation} output: the model mutates state or computes "
                    "gradients; forward must be a pure function idx -> logits")
    if kinds_in.count("user_input") != 1 or kinds_out.count("user_output") != 1:
        raise _fail(f"model takes {kinds_in.count('user_input')} inputs and returns {kinds_out.count('user_output')} "
                    "outputs; forward must take exactly idx and return exactly logits")
    gm["module_call_graph"] = []
    gm["metadata"] = {}
    prog["guards_code"] = []
    _walk(prog, "the program JSON")
    _set_devices(prog, device)
    gm["module_call_graph"] = _canonical_call_graph()
    return prog


def sanitize_archive(raw: bytes, device: str = "cpu") -> bytes:
    """Check an untrusted .pt2 and rebuild it from its checked parts only. Raises InvalidModel."""
    from torch.export.pt2_archive._package import PT2ArchiveWriter
    entries = _entries(raw)
    prog = _check_program_json(_loads(entries[_JSON], _JSON), device)
    wconf = _check_payloads(_loads(entries[_WCONF], _WCONF), "weights", _WEIGHT, entries, device)
    cconf = _check_payloads(_loads(entries[_CCONF], _CCONF), "constants", _CONST, entries, device)
    buf = io.BytesIO()
    with PT2ArchiveWriter(buf) as w:
        w.write_string("archive_format", "pt2")
        w.write_string("byteorder", "little")
        w.write_string(_JSON, json.dumps(prog))
        w.write_string(_WCONF, json.dumps(wconf))
        w.write_string(_CCONF, json.dumps(cconf))
        w.write_bytes(_SAMPLE, b"")  # sample inputs are a pickle: never passed on
        for folder, conf in (("data/weights/", wconf), ("data/constants/", cconf)):
            for path in sorted({m["path_name"] for m in conf["config"].values()}):
                w.write_bytes(folder + path, entries[folder + path])
    return buf.getvalue()


# --------------------------------------------------------------------------- 5-6: the loaded program

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
        raise _fail("model graph holds subgraphs (higher-order ops); export plain tensor ops")
    placeholders, ops, mutable = [], set(), False
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            placeholders.append(node)
        elif node.op == "call_function":
            why = _allowed_target(node.target, allow_mutable) or (
                None if allow_mutable else graph_ops.argument_refusal(node))
            if why:
                raise _fail(why)
            mutable = mutable or (node.target is not operator.getitem and node.target._schema.is_mutable)
            ops.add(str(node.target))
        elif node.op != "output":
            raise _fail(f"model graph has a {node.op} node; only tensor op calls are allowed")
    return placeholders, ops, mutable


def check_program(ep, batch: int, seq_len: int, vocab_size: int, device: str) -> Program:
    """Check a loaded ExportedProgram against the trusted shapes; return a runnable Program. Raises InvalidModel.

    torch.export's default (training) IR keeps in-place ops. Harmless on intermediates, they would hide a mutation
    of a buffer or of the input, so once every op is known to be an allowed aten/prims op, a program that holds any
    op with a mutable schema is functionalized (run_decompositions with an empty table: in-place ops become
    functional, and any mutation of state shows up in the signature). A program with no such op is already
    functional and is not traced again (that took 0.6 s of a CPU for the cpu preset's GPT, a seventh of the
    evaluation). Either way the result must hold no mutable op and no mutation output.
    """
    from torch.export.graph_signature import InputKind, OutputKind
    if _graph_ops(ep.graph_module, allow_mutable=True)[2]:      # an in-place or out= op: it could write to state
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)   # torch-internal deprecation noise (LeafSpec)
                ep = ep.run_decompositions({})
        except Exception as e:  # noqa: BLE001 - a graph torch cannot functionalize is the model's problem
            raise _fail(f"model graph cannot be functionalized ({type(e).__name__}: {e}); export plain tensor ops")
    sig = ep.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate or getattr(sig, "parameters_to_mutate", None):
        what = "its buffers" if sig.buffers_to_mutate else "its input" if sig.user_inputs_to_mutate else "parameters"
        raise _fail(f"model mutates {what}; forward must be a pure function idx -> logits")
    if any(s.kind != OutputKind.USER_OUTPUT for s in sig.output_specs):
        raise _fail("model returns state mutations or gradients; forward must return only logits")
    gm = ep.graph_module
    placeholders, ops, _ = _graph_ops(gm, allow_mutable=False)
    if len(placeholders) != len(sig.input_specs):
        raise _fail("model graph inputs do not match its signature")
    state, user_index, num_params = [], None, 0
    sources = {**ep.state_dict, **ep.constants}
    for i, spec in enumerate(sig.input_specs):
        if spec.kind == InputKind.USER_INPUT:
            user_index = i
            continue
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            raise _fail(f"model graph has a {spec.kind.name} input; only tensors are allowed")
        t = sources.get(spec.target)
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.layout != torch.strided or t.is_quantized:
            raise _fail(f"model state {spec.target!r} is not a plain dense tensor")
        if spec.kind == InputKind.PARAMETER:
            num_params += t.numel()
        state.append(t.detach().to(device))
    got = _meta_shape(placeholders[user_index])
    if got != ((batch, seq_len), torch.int64):
        raise _fail(f"model input is {got}, expected idx ({batch}, {seq_len}) torch.int64 (eval_batch_size and "
                    "seq_len of the preset); export with the harness's save_model")
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    out = outs[0] if isinstance(outs, (list, tuple)) and len(outs) == 1 else outs
    got = _meta_shape(out) if isinstance(out, torch.fx.Node) else None
    if got != ((batch, seq_len, vocab_size), torch.float32):
        raise _fail(f"model output is {got}, expected logits ({batch}, {seq_len}, {vocab_size}) torch.float32 "
                    "(vocab_size from tokenizer.json)")
    return Program(gm, state, user_index, batch, seq_len, vocab_size, device, num_params, sorted(ops))


class _WarmUp(torch.nn.Module):
    """A tiny TRUSTED model of the same kind as the agent's (embedding, matmul, attention, norm). It has no in-place
    op, like the default train.py's graph, so the loader does not functionalize it: warming that path up cost
    0.45 s of a CPU in every eval container, and saves a model that does take it about 0.3 s."""

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
    trainer.program --write-warm-up PATH`); elsewhere it is exported here. On CPU, whatever the eval device (no
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
            if _MODEL not in eps:
                raise _fail("model archive holds no program named 'model'; save it with torch.export.save")
            ep = eps[_MODEL]
        else:
            ep = torch.export.load(io.BytesIO(clean))
    except InvalidModel:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure is the model's
        raise _fail(f"torch could not load the checked program ({type(e).__name__}: {e}); "
                    "export it with torch.export.save from the same torch version")
    return check_program(ep, batch, seq_len, vocab_size, device)


if __name__ == "__main__":          # image build: python -m trainer.program --write-warm-up PATH
    import argparse
    ap = argparse.ArgumentParser(prog="python -m trainer.program")
    ap.add_argument("--write-warm-up", type=Path, required=True, metavar="PATH", help="write the warm-up archive")
    dest = ap.parse_args().write_warm_up
    dest.write_bytes(warm_up_archive())
    load_archive(dest.read_bytes(), 2, 4, 16, "cpu")       # the loader must accept it, or the build fails
