"""Loading an untrusted .pt2: nothing in the archive runs as Python; anything but a plain exported graph is refused.

The first tests show what stock torch.export.load would execute (the reason for the safe .pt2 loader, trainer/safe_pt2.py); if they start
failing on a new torch, re-read the loader and update the docstring of trainer/safe_pt2.py and docs/result-schema.md.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import evalkit as K
from trainer.evaluate import evaluate
from trainer.safe_pt2 import InvalidModel, load_program, sanitize_archive

REPO = Path(__file__).resolve().parent.parent

VOCAB = 30


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(5)
    return K.make_data(tmp_path_factory.mktemp("load-data"), K.random_docs(rng, 40, VOCAB, hi=80), VOCAB)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    return K.export(K.Bigram(torch.randn(VOCAB, VOCAB)), tmp_path_factory.mktemp("good") / "m.pt2", 8, 64)


def stock_load(path) -> subprocess.CompletedProcess:
    code = f"import torch\ntry:\n    torch.export.load({str(path)!r})\nexcept Exception:\n    pass\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def inject_name(evil: str):
    def edit(prog):
        import json
        text = json.dumps(prog).replace('"idx"', json.dumps(evil))
        prog.clear()
        prog.update(json.loads(text))
    return edit


def test_stock_torch_export_load_runs_a_pickle_planted_in_the_sample_inputs(good, tmp_path):
    marker = tmp_path / "pwned"
    bad = K.rebuild(good, tmp_path / "bad.pt2", replace={"data/sample_inputs/model.pt": K.pickle_payload(marker)})
    stock_load(bad)
    assert marker.exists(), "torch.export.load no longer unpickles sample inputs: update trainer/safe_pt2.py docs"


def test_stock_torch_export_load_runs_code_injected_through_an_input_name(good, tmp_path):
    marker = tmp_path / "pwned"
    evil = f'idx=__import__("os").system("touch {marker}")'
    bad = K.rebuild(good, tmp_path / "bad.pt2", edit_model=inject_name(evil))
    stock_load(bad)
    assert marker.exists(), "FX codegen no longer pastes placeholder names: update trainer/safe_pt2.py docs"


def test_the_evaluator_drops_a_pickle_planted_in_the_sample_inputs_and_never_runs_it(good, data, tmp_path):
    marker = tmp_path / "pwned"
    bad = K.rebuild(good, tmp_path / "bad.pt2", replace={"data/sample_inputs/model.pt": K.pickle_payload(marker)})
    res = evaluate(bad, data, "tiny", probe_seed=0)
    assert not marker.exists()
    assert res["status"] == "ok"          # the rest of the archive is a fine model; the pickle was never read


def test_the_evaluator_refuses_code_injected_through_an_input_name(good, data, tmp_path):
    marker = tmp_path / "pwned"
    evil = f'idx=__import__("os").system("touch {marker}")'
    bad = K.rebuild(good, tmp_path / "bad.pt2", edit_model=inject_name(evil))
    res = evaluate(bad, data, "tiny", probe_seed=0)
    assert not marker.exists()
    assert res["status"] == "invalid_model" and "not a plain name" in res["error"]


def test_the_evaluator_refuses_pickled_weights_without_unpickling_them(good, data, tmp_path):
    marker = tmp_path / "pwned"

    def pickled(conf):
        for meta in conf["config"].values():
            meta["use_pickle"] = True

    bad = K.rebuild(good, tmp_path / "bad.pt2", edit_weights=pickled,
                    replace={"data/weights/weight_0": K.pickle_payload(marker)})
    res = evaluate(bad, data, "tiny", probe_seed=0)
    assert not marker.exists()
    assert res["status"] == "invalid_model" and "pickled" in res["error"]


def set_first_target(target):
    def edit(prog):
        prog["graph_module"]["graph"]["nodes"][0]["target"] = target
    return edit


def add_sym_expr(prog):
    meta = next(iter(prog["graph_module"]["graph"]["tensor_values"].values()))
    meta["sizes"][0] = {"as_expr": {"expr_str": "__import__('os').system('true')", "hint": {"as_int": 8}}}


@pytest.mark.parametrize("kwargs, reason", [
    (dict(add={"data/aotinductor/model/model.so": b"\x7fELF"}), "native code"),
    (dict(add={"data/constants/opaque_obj_0": b"x"}), "unexpected entry"),
    (dict(add={"data/weights/model.pt": b"x"}), "unexpected entry"),
    (dict(edit_model=set_first_target("torch.ops.aten.from_file.default")), "does I/O"),
    (dict(edit_model=set_first_target("torch.ops.higher_order.cond")), "only torch.ops.aten/prims"),
    (dict(edit_model=set_first_target("builtins.eval")), "only torch.ops.aten/prims"),
    (dict(edit_model=add_sym_expr), "symbolic shapes"),
    (dict(drop=("models/model.json",)), "lacks models/model.json"),
    (dict(replace={"models/model.json": b"{not json"}), "not valid JSON"),
    (dict(replace={"models/model.json": b"[" * 100000 + b"]" * 100000}), "not valid JSON"),
], ids=["aotinductor", "opaque-object", "legacy-weights", "from_file", "higher-order-op", "python-callable",
        "sympy-expression", "no-program", "bad-json", "deep-json"])
def test_tampered_archives_are_invalid_models_with_a_one_line_reason(good, data, tmp_path, kwargs, reason):
    bad = K.rebuild(good, tmp_path / "bad.pt2", **kwargs)
    res = evaluate(bad, data, "tiny", probe_seed=0)
    assert res["status"] == "invalid_model", res["error"]
    assert reason in res["error"] and "\n" not in res["error"]
    assert res["val_bpb"] is None


def test_a_compressed_archive_is_refused_before_any_entry_is_inflated(good, data, tmp_path):
    bad = tmp_path / "deflated.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    res = evaluate(bad, data, "tiny", probe_seed=0)
    assert res["status"] == "invalid_model" and "compressed" in res["error"]


def assert_computes_like(prog, *models) -> None:
    x = torch.randint(0, VOCAB, (8, 64))
    with torch.no_grad():
        for model in models:
            assert torch.allclose(prog(x), model(x), atol=1e-5, rtol=0)


def test_the_loaded_program_computes_what_the_model_computes(tmp_path):
    model = K.CausalAttention(VOCAB, 64).eval()
    path = K.export(model, tmp_path / "attn.pt2", 8, 64)
    prog = load_program(path, 8, 64, VOCAB)
    assert_computes_like(prog, model)
    assert prog.num_params == sum(p.numel() for p in model.parameters())
    assert all(op.startswith("aten.") or "getitem" in op for op in prog.ops)


def refuse_to_functionalize(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise RuntimeError("functionalization was asked for")
    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", refuse)


def test_a_program_without_in_place_ops_is_not_traced_again(tmp_path, monkeypatch):
    model = K.CausalAttention(VOCAB, 64).eval()
    path = K.export(model, tmp_path / "attn.pt2", 8, 64)
    refuse_to_functionalize(monkeypatch)
    assert_computes_like(load_program(path, 8, 64, VOCAB), model)


def test_in_place_ops_on_intermediates_are_functionalized_and_compute_the_same(tmp_path, monkeypatch):
    model = K.InPlaceAttention(VOCAB, 64).eval()
    path = K.export(model, tmp_path / "inplace.pt2", 8, 64)
    prog = load_program(path, 8, 64, VOCAB)
    assert_computes_like(prog, model, K.CausalAttention(VOCAB, 64).eval())
    assert not any(op.endswith("_.Tensor") for op in prog.ops), prog.ops
    refuse_to_functionalize(monkeypatch)          # the in-place graph does need functionalizing
    with pytest.raises(InvalidModel, match="cannot be functionalized"):
        load_program(path, 8, 64, VOCAB)


def test_sanitizing_keeps_only_the_checked_entries(good):
    clean = sanitize_archive(good.read_bytes())
    with zipfile.ZipFile(__import__("io").BytesIO(clean)) as zf:
        rel = sorted(n.split("/", 1)[1] for n in zf.namelist())
        sample = [n for n in zf.namelist() if n.endswith("data/sample_inputs/model.pt")]
        assert zf.read(sample[0]) == b""
    assert "models/model.json" in rel and not any(r.startswith(("extra/", "data/aotinductor")) for r in rel)


@pytest.mark.parametrize("make", [
    lambda p: p.write_text("print('hello')\n"),
    lambda p: p.write_bytes(b""),
    lambda p: p.mkdir(),
    lambda p: None,
], ids=["python-source", "empty-file", "directory", "missing"])
def test_a_file_that_is_not_a_pt2_archive_is_an_invalid_model_not_a_traceback(make, tmp_path):
    path = tmp_path / "model.pt2"
    make(path)
    with pytest.raises(InvalidModel) as e:
        load_program(path, 8, 64, VOCAB)
    assert "\n" not in str(e.value) and "model" in str(e.value)


def test_a_truncated_archive_is_an_invalid_model(good, tmp_path):
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InvalidModel):
        load_program(cut, 8, 64, VOCAB)


def test_a_symlinked_model_is_refused(good, tmp_path):
    link = tmp_path / "link.pt2"
    link.symlink_to(good)
    with pytest.raises(InvalidModel, match="not a regular file"):
        load_program(link, 8, 64, VOCAB)


def test_an_archive_over_the_size_cap_is_refused_before_it_is_read(good):
    with pytest.raises(InvalidModel, match="limit"):
        load_program(good, 8, 64, VOCAB, max_bytes=1000)


class ArangePositions(torch.nn.Module):
    """Creates a tensor inside forward, so the graph itself names a device (aten.arange(..., device=...))."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, VOCAB)
        self.pos = torch.nn.Embedding(64, VOCAB)

    def forward(self, idx):
        return self.emb(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))


def to_cuda(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("device", "as_device") and isinstance(v, dict):
                obj[k] = {"type": "cuda", "index": 0}
            else:
                to_cuda(v)
    elif isinstance(obj, list):
        for v in obj:
            to_cuda(v)


def test_a_program_exported_on_a_gpu_is_scored_on_the_cpu_evaluator(data, tmp_path):
    model = ArangePositions().eval()
    path = K.export(model, tmp_path / "m.pt2", 8, 64)
    assert '"as_device"' in zipfile.ZipFile(path).read("m/models/model.json").decode()
    gpu = K.rebuild(path, tmp_path / "gpu.pt2", edit_model=to_cuda, edit_weights=to_cuda)
    x = torch.randint(0, VOCAB, (8, 64))
    out = load_program(gpu, 8, 64, VOCAB, device="cpu")(x)
    with torch.no_grad():
        assert out.device.type == "cpu" and torch.equal(out, model(x))
    assert evaluate(gpu, data, "tiny", probe_seed=0)["status"] == "ok"


def test_an_oversized_program_description_is_refused_unparsed(good, monkeypatch):
    import trainer.safe_pt2_archive as archive
    monkeypatch.setattr(archive, "MAX_JSON_BYTES", 1000)
    with pytest.raises(InvalidModel, match="models/model.json is .* over the 1000-byte limit"):
        load_program(good, 8, 64, VOCAB)


def test_the_warm_up_model_passes_every_check_of_the_real_loader():
    # The waiting evaluator warms up on this tiny trusted model; if the loader refused it, every trial would pay
    # the full loading cost after training again (and only a line on stderr would say so).
    from trainer import safe_pt2
    safe_pt2.warm_up()
    safe_pt2.load_archive(safe_pt2.warm_up_archive(), 2, 4, 16, "cpu")


def test_the_image_build_writes_a_warm_up_archive_the_loader_accepts(tmp_path):
    dest = tmp_path / "warm_up.pt2"
    p = subprocess.run([sys.executable, "-m", "trainer.safe_pt2", "--write-warm-up", str(dest)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    from trainer import safe_pt2
    safe_pt2.load_archive(dest.read_bytes(), 2, 4, 16, "cpu")
