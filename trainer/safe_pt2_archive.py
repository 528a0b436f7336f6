"""The safe .pt2 loader, steps 1-4: read an UNTRUSTED torch.export archive, check its entries and JSON, and rebuild
a new archive from the checked pieces only. TRUSTED CODE (baked into the trial image).

The contract (trainer/safe_pt2.py states the whole loader's): nothing here unpickles, imports or executes anything
from the archive; the bytes are read once, size-capped; the zip is opened by this module (stored entries, one root
folder, only the entry names one `torch.export.save` model holds); the program JSON and the payload configs are
checked key by key (plain names, no pickled payloads, no symbolic shapes, no subgraphs or custom objects, every
node target an allowlisted aten/prims op: trainer/graph_ops.py); and only the rebuilt archive, with node metadata,
guards code and sample inputs emptied and every device set to the eval device, ever reaches torch's loader. Any
failure raises InvalidModel with a one-line reason.
"""
from __future__ import annotations

import io
import json
import os
import re
import stat
import zipfile

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
MODEL_NAME = "model"                # the one program a torch.export.save archive of one model holds
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


def invalid(msg: str) -> InvalidModel:
    """An InvalidModel with `msg` on one line, at most 500 characters."""
    return InvalidModel(" ".join(str(msg).split())[:500])


# --------------------------------------------------------------------------- 1-2: the file and the zip

def read_archive(path: str | os.PathLike, max_bytes: int = MAX_MODEL_BYTES) -> bytes:
    """The model file's bytes: a regular file (not a link, not a device), at most max_bytes."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise invalid(f"model file {path} cannot be read ({e.strerror}); the training run must write model.pt2")
    if not stat.S_ISREG(st.st_mode):
        raise invalid(f"model file {path} is not a regular file; a plain .pt2 file is needed")
    if st.st_size > max_bytes:
        raise invalid(f"model file {path} is {st.st_size} bytes, over the {max_bytes}-byte limit; export a smaller model")
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


def _entries(raw: bytes) -> dict[str, bytes]:
    """{name relative to the archive's root folder: bytes} for a torch.export.save archive, strictly checked."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as e:
        raise invalid(f"model file is not a .pt2 archive (not a readable zip: {e}); save it with torch.export.save")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise invalid("model archive has duplicate entry names; save it with torch.export.save")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise invalid(f"model archive must hold one root folder, found {sorted(roots)[:3]}; "
                    "save it with torch.export.save")
    total = 0
    out: dict[str, bytes] = {}
    for info in infos:
        rel = info.filename.split("/", 1)[1]
        if info.compress_type != zipfile.ZIP_STORED:
            raise invalid(f"model archive entry {rel} is compressed; torch.export.save writes stored entries only")
        total += info.file_size
        if total > len(raw):
            raise invalid("model archive entries are larger than the file itself; the archive is malformed")
        if rel.startswith("data/aotinductor/") or rel.startswith("data/executorch/") or rel.startswith("data/mtia"):
            raise invalid(f"model archive holds compiled native code ({rel}); the evaluator loads exported graphs only")
        if rel.startswith("extra/"):
            continue  # extra files are free text; dropped, never read by the evaluator
        if rel.endswith(".json") and info.file_size > MAX_JSON_BYTES:
            raise invalid(f"model archive entry {rel} is {info.file_size} bytes, over the {MAX_JSON_BYTES}-byte limit "
                        "for a program description")
        if rel not in _KEEP and not _WEIGHT.match(rel) and not _CONST.match(rel):
            raise invalid(f"model archive has an unexpected entry {rel!r}; only one model saved with "
                        "torch.export.save (no pickled, custom or legacy payloads) is accepted")
        try:
            out[rel] = zf.read(info)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise invalid(f"model archive entry {rel} cannot be read ({e}); the file is corrupt")
    for need in (_JSON, _WCONF, _CCONF, "archive_format"):
        if need not in out:
            raise invalid(f"model archive lacks {need}; it must hold one program named 'model' (torch.export.save)")
    if out["archive_format"] != b"pt2":
        raise invalid("model archive's archive_format is not 'pt2'; save it with torch.export.save")
    return out


# --------------------------------------------------------------------------- 3-4: the JSON

def _loads(blob: bytes, what: str):
    try:
        return json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise invalid(f"model archive's {what} is not valid JSON ({type(e).__name__}); save it with torch.export.save")


def _walk(obj, where: str, key: str | None = None) -> None:
    """Every key and string in a (metadata-free) program JSON must be plain; sym exprs and subgraphs refused."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in _FORBIDDEN_KEYS:
                raise invalid(f"model graph uses {k!r} in {where}: symbolic shapes, subgraphs and custom objects are "
                            "not accepted; export with static shapes and plain tensor ops")
            if not _SAFE.match(k):
                raise invalid(f"model graph has a key {k[:40]!r} with characters outside [A-Za-z0-9_.] in {where}")
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
            raise invalid(f"model graph has a {key or 'value'} string {obj[:40]!r} that is not a plain name "
                        f"(pattern {rule.pattern}) in {where}")
    elif obj is not None and not isinstance(obj, (int, float, bool)):
        raise invalid(f"model graph holds an unexpected JSON value in {where}")


def _check_payloads(conf, what: str, pattern: re.Pattern, entries: dict[str, bytes], device: str) -> dict:
    if not isinstance(conf, dict) or not isinstance(conf.get("config"), dict) or len(conf) != 1:
        raise invalid(f"model archive's {what} config is malformed; save it with torch.export.save")
    folder = "data/weights/" if what == "weights" else "data/constants/"
    for fqn, meta in conf["config"].items():
        if not isinstance(meta, dict) or not _FQN.match(str(fqn)):
            raise invalid(f"model archive's {what} config has a bad entry {str(fqn)[:40]!r}")
        if meta.get("use_pickle") is not False:
            raise invalid(f"model {what} entry {fqn!r} is pickled (use_pickle); only plain tensors are loaded, "
                        "never pickles: export plain dense tensors")
        path = meta.get("path_name")
        if not isinstance(path, str) or not pattern.match(folder + path) or folder + path not in entries:
            raise invalid(f"model {what} entry {fqn!r} points at {str(path)[:40]!r}, which is not a tensor payload "
                        "in the archive")
        tm = meta.get("tensor_meta")
        if not isinstance(tm, dict):
            raise invalid(f"model {what} entry {fqn!r} has no tensor metadata")
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
        raise invalid("model archive's program JSON has no graph_module; save it with torch.export.save")
    gm = prog["graph_module"]
    graph, sig = gm.get("graph"), gm.get("signature")
    if not isinstance(graph, dict) or not isinstance(sig, dict) or not isinstance(graph.get("nodes"), list):
        raise invalid("model archive's program JSON lacks a graph or signature; save it with torch.export.save")
    for node in graph["nodes"]:
        if not isinstance(node, dict):
            raise invalid("model graph has a malformed node")
        node["metadata"] = {}  # stack traces, module stacks: free text, never needed to run
        target = node.get("target")
        m = _TARGET.match(target) if isinstance(target, str) else None
        if m is None:
            raise invalid(f"model graph calls {str(target)[:60]!r}; only torch.ops.aten/prims operators are allowed "
                        "(no higher-order ops, custom ops or Python callables)")
        if m.group(2) in DENIED_OPS:
            raise invalid(f"model graph calls {target}, which does I/O; models may only compute on their input")
        why = graph_ops.refusal(m.group(1), m.group(2), m.group(3))
        if why:
            raise invalid(why)
    for key in _EMPTY_REQUIRED:
        if graph.get(key):
            raise invalid(f"model graph has {key} (symbolic values or custom objects); export with static shapes")
    if prog.get("range_constraints"):
        raise invalid("model has range constraints (dynamic shapes); export with static shapes")
    if gm.get("treespec_namedtuple_fields"):
        raise invalid("model signature uses namedtuples; forward must take idx and return one logits tensor")
    kinds_in = [next(iter(s)) for s in sig.get("input_specs", []) if isinstance(s, dict) and len(s) == 1]
    kinds_out = [next(iter(s)) for s in sig.get("output_specs", []) if isinstance(s, dict) and len(s) == 1]
    if len(kinds_in) != len(sig.get("input_specs", [])) or len(kinds_out) != len(sig.get("output_specs", [])):
        raise invalid("model graph signature is malformed")
    bad = sorted(set(kinds_in) - _INPUT_KINDS)
    if bad:
        raise invalid(f"model graph signature has {bad[0]} inputs; only parameters, buffers, tensor constants and "
                    "one user input are allowed")
    if any(k != "user_output" for k in kinds_out):
        mutation = next(k for k in kinds_out if k != "user_output")
        raise invalid(f"model graph signature has a {mutation} output: the model mutates state or computes "
                    "gradients; forward must be a pure function idx -> logits")
    if kinds_in.count("user_input") != 1 or kinds_out.count("user_output") != 1:
        raise invalid(f"model takes {kinds_in.count('user_input')} inputs and returns {kinds_out.count('user_output')} "
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
