"""The exported-graph op allowlist (trainer/graph_ops.py): honest programs load and compute as the model does;
a graph that allocates uninitialised memory, draws random numbers or calls any op not on the list is refused,
naming the op, before anything of it runs."""
from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import evalkit as K
from harness_fixtures import VOCAB as TRAIN_VOCAB, make_data
from trainer import graph_ops, harness, safe_pt2
from trainer.safe_pt2 import InvalidModel, load_archive, load_program

REPO = Path(__file__).resolve().parent.parent
V, B, T, D, H = 30, 4, 16, 32, 4


def archive(model: nn.Module) -> bytes:
    model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, (torch.zeros(B, T, dtype=torch.long),))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def refusal(model: nn.Module) -> str:
    with pytest.raises(InvalidModel) as e:
        load_archive(archive(model), B, T, V)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) <= 300, msg        # one line, whole in the trial's error (300 chars)
    return msg


# --------------------------------------------------------------------------- honest models: every one loads

class Edit(nn.Module):
    """A small GPT-like model; `kind` picks the forward an LLM's edit of train.py might plausibly write."""

    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.wte = nn.Embedding(V, D)
        self.q, self.k, self.v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.fc, self.proj = nn.Linear(D, 4 * D), nn.Linear(2 * D, D)
        self.ln, self.rms, self.drop = nn.LayerNorm(D), nn.RMSNorm(D), nn.Dropout(0.2)
        self.conv = nn.Conv1d(D, D, 3, groups=D)
        self.router = nn.Linear(D, 4)
        self.experts = nn.ModuleList(nn.Linear(D, D) for _ in range(4))
        self.head = nn.Linear(D, V, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def heads(self, x):
        return [z.view(B, T, H, D // H).transpose(1, 2) for z in (self.q(x), self.k(x), self.v(x))]

    def merge(self, y):
        return y.transpose(1, 2).reshape(B, T, D)

    def forward(self, idx):
        x = self.drop(self.wte(idx))
        q, k, v = self.heads(x)
        if self.kind == "manual_attention":     # GPT-2 style: masked_fill(-inf), softmax, dropout (off in eval)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(D // H)
            att = self.drop(F.softmax(att.masked_fill(self.tril == 0, float("-inf")), dim=-1))
            y = self.merge(att @ v)
        elif self.kind == "gelu_layernorm":
            h = F.gelu(self.fc(x)) + F.gelu(self.fc(x), approximate="tanh")
            y = self.ln(h[..., :D] + h[..., D:2 * D])
        elif self.kind == "swiglu_rmsnorm":
            a, b = self.fc(x).chunk(2, dim=-1)
            y = self.rms(self.proj(F.silu(a) * b))
        elif self.kind == "complex_rotary":     # LLaMA style rotary embedding through complex numbers
            freqs = 1.0 / (10000 ** (torch.arange(0, D // H, 2).float() / (D // H)))
            rot = torch.polar(torch.ones(T, D // H // 2), torch.outer(torch.arange(T).float(), freqs))

            def rotate(z):
                zc = torch.view_as_complex(z.float().reshape(*z.shape[:-1], -1, 2))
                return torch.view_as_real(zc * rot).flatten(3).type_as(z)
            y = self.merge(F.scaled_dot_product_attention(rotate(q), rotate(k), v, is_causal=True))
        elif self.kind == "grouped_query":
            k2, v2 = k[:, :2], v[:, :2]
            y = self.merge(F.scaled_dot_product_attention(q, k2.repeat_interleave(2, 1), v2.repeat_interleave(2, 1),
                                                          is_causal=True)
                           + F.scaled_dot_product_attention(q, k2, v2, is_causal=True, enable_gqa=True))
        elif self.kind == "alibi":
            pos = torch.arange(T, device=idx.device)
            slopes = torch.tensor([2 ** (-8 * (i + 1) / H) for i in range(H)])
            bias = slopes[:, None, None] * (pos[None, :] - pos[:, None]).abs().neg().float()
            bias = bias.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
            y = self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
        elif self.kind == "topk_experts":       # dense mixture of experts: top-k routing, one-hot gates, einsum
            w, sel = torch.topk(self.router(x).softmax(-1), 2, dim=-1)
            gates = (F.one_hot(sel, 4).to(x.dtype) * w.unsqueeze(-1)).sum(-2)
            y = torch.einsum("bte,bted->btd", gates, torch.stack([e(x) for e in self.experts], dim=-2))
        elif self.kind == "token_shift_conv":
            shifted = F.pad(x, (0, 0, 1, -1))
            c = self.conv(F.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2)
            y = F.normalize(torch.lerp(x, shifted, 0.5), dim=-1) + F.relu(c) ** 2 + F.hardswish(c) + F.mish(c)
        elif self.kind == "in_place_writes":    # functionalized by the loader into copy/fill/*_scatter
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
            y = y.clone()
            y += 1.0
            y[:, 0] = 0.0
            y[idx == 0] = 0.5
            z = torch.zeros_like(x)
            z[:, :, : D // 2] = x[:, :, : D // 2]
            y = y + z + x.new_zeros(x.shape) + torch.full_like(x, 0.5) + F.softplus(x) + F.elu(x)
            y = y + torch.where(x > 0, x, 0.01 * x) + idx.cumsum(1)[..., None].float() * 0
        else:
            raise ValueError(self.kind)
        return self.head(x + y)


EDITS = ["manual_attention", "gelu_layernorm", "swiglu_rmsnorm", "complex_rotary", "grouped_query", "alibi",
         "topk_experts", "token_shift_conv", "in_place_writes"]


@pytest.mark.parametrize("kind", EDITS)
def test_a_plausible_edit_of_the_model_loads_and_computes_what_the_model_computes(kind):
    model = Edit(kind).eval()
    prog = load_archive(archive(model), B, T, V)
    x = torch.randint(0, V, (B, T))
    with torch.no_grad():
        assert torch.allclose(prog(x), model(x), atol=1e-5, rtol=0)
    assert not any("empty" in op for op in prog.ops), prog.ops


TEST_MODELS = {   # tests/evalkit.py: the honest ones, and the cheats the probes (not the loader) must catch
    "Uniform": lambda: K.Uniform(V), "Bigram": lambda: K.Bigram(torch.randn(V, V)),
    "Unigram": lambda: K.Unigram(torch.randn(V).log_softmax(0)), "CausalConv": lambda: K.CausalConv(V),
    "CausalAttention": lambda: K.CausalAttention(V, T), "InPlaceAttention": lambda: K.InPlaceAttention(V, T),
    "PeekNext": lambda: K.PeekNext(V), "BatchMean": lambda: K.BatchMean(V), "NaNs": lambda: K.NaNs(V),
    "NaNOnPadding": lambda: K.NaNOnPadding(V),
    "PeekOnContent": lambda: K.PeekOnContent(V, {0: 3, 1: 5}), "PeekOnRowSum": lambda: K.PeekOnRowSum(V, 7, 2),
    "PeekInPaddedBatch": lambda: K.PeekInPaddedBatch(V),
}


@pytest.mark.parametrize("name", list(TEST_MODELS))
def test_every_test_model_that_is_not_refused_for_its_state_or_shape_still_loads(name):
    if not hasattr(K, name):
        pytest.skip(f"tests/evalkit.py has no {name} (any more)")
    model = TEST_MODELS[name]().eval()
    prog = load_archive(archive(model), B, T, V)
    x = torch.randint(0, V, (B, T))
    with torch.no_grad():
        assert torch.allclose(prog(x), model(x), atol=1e-5, rtol=0, equal_nan=True)


def test_the_warm_up_model_uses_listed_ops_only():
    ops = safe_pt2.load_archive(safe_pt2.warm_up_archive(), 2, 4, 16, "cpu").ops
    assert "aten.scaled_dot_product_attention.default" in ops and "aten.rms_norm.default" in ops


TRAIN_VARIANTS = {   # (preset, {constant: new value}): the real train.py, and edits that change its graph
    "tiny": ("tiny", {}), "cpu": ("cpu", {}),
    "tiny-no-value-embeds-sliding-window": ("tiny", {"VALUE_EMBED_EVERY": "0", "WINDOW_PATTERN": '"SL"'}),
    "tiny-value-embeds-everywhere-mlp5": ("tiny", {"VALUE_EMBED_EVERY": "1", "MLP_RATIO": "5",
                                                   "VE_GATE_CHANNELS": "16", "LOGIT_SOFTCAP": "14"}),
}

RUN_VARIANTS = """
import os, runpy, sys
for i, path in enumerate(sys.argv[2:]):
    os.environ.update(AUTORESEARCH_OUT=os.path.join(sys.argv[1], str(i)), AUTORESEARCH_PRESET=path.split(".")[-2])
    runpy.run_path(path, run_name="__main__")
"""


def test_the_real_train_py_and_its_variants_export_only_listed_ops(tmp_path):
    """One subprocess runs each variant for one step (runpy: torch is imported once) and exports it."""
    import re
    data = make_data(tmp_path / "data", n_docs=200, seed=2)
    source = (REPO / "trainer" / "train.py").read_text()
    paths = []
    for name, (preset, changes) in TRAIN_VARIANTS.items():
        text = source
        for const, value in changes.items():
            text, n = re.subn(rf"^{const} = [^#\n]*", f"{const} = {value}  ", text, flags=re.M)
            assert n == 1, const
        paths.append(tmp_path / f"{name}.{preset}.py")
        paths[-1].write_text(text)
    env = dict(os.environ, AUTORESEARCH_DATA=str(data), AUTORESEARCH_MAX_STEPS="1", AUTORESEARCH_BUDGET_S="300",
               PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", RUN_VARIANTS, str(tmp_path / "out"), *map(str, paths)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    seen = set()
    for i, (name, (preset, _)) in enumerate(TRAIN_VARIANTS.items()):
        pr = harness.load_presets()[preset]
        prog = load_program(tmp_path / "out" / str(i) / "model.pt2", pr["eval_batch_size"], pr["seq_len"],
                            TRAIN_VOCAB)
        seen |= set(prog.ops)
    print("ops of the real train.py and its variants:", sorted(seen))
    assert "aten.scaled_dot_product_attention.default" in seen and "aten.__and__.Tensor" in seen


# --------------------------------------------------------------------------- refused: named, one line

class Forbidden(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.wte = nn.Embedding(V, D)
        self.head = nn.Linear(D, V)

    def forward(self, idx):
        x = self.wte(idx)
        k = self.kind
        if k == "empty":
            y = x + torch.empty(B, T, D)
        elif k == "empty_like":
            y = x + torch.empty_like(x)
        elif k == "empty_strided":
            y = x + torch.empty_strided((B, T, D), (T * D, D, 1))
        elif k == "new_empty":
            y = x + x.new_empty((B, T, D))
        elif k == "empty_then_overwritten":     # fully overwritten, still refused: zeros/full/cat do the same job
            y = torch.empty_like(x)
            y[..., : D // 2] = x[..., : D // 2]
            y[..., D // 2:] = 0.0
        elif k == "rand":
            y = x + torch.rand(B, T, D)
        elif k == "bernoulli":
            y = x * torch.bernoulli(torch.full_like(x, 0.5))
        elif k == "in_place_uniform":
            y = x.clone().uniform_()
        elif k == "dropout_left_on":
            y = F.dropout(x, 0.1)               # training=True by default, even in eval mode
        elif k == "attention_dropout":
            q = x.view(B, T, H, D // H).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, q, q, dropout_p=0.1, is_causal=True).transpose(1, 2).reshape(B, T, D)
        elif k == "attention_logsumexp":       # an auxiliary output of an attention kernel
            q = x.view(B, T, H, D // H).transpose(1, 2)
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(q, q, q, 0.0, True)
            y = out.transpose(1, 2).reshape(B, T, D) + lse.sum()
        elif k == "scatter_add":
            y = x.scatter_add(1, torch.zeros_like(idx)[..., None].expand(B, T, D), x)
        elif k == "index_put_accumulate":
            y = x.index_put((torch.tensor([0, 0]),), torch.ones(T, D), accumulate=True)
        elif k == "float_cumsum":
            y = x.cumsum(1)
        elif k == "unlisted":                  # pure, but not on the list: refused all the same
            y = torch.logcumsumexp(x, 1)
        else:
            raise ValueError(k)
        return self.head(y)


@pytest.mark.parametrize("kind, names", [
    ("empty", ["aten.empty.memory_format", "uninitialised"]),
    ("empty_like", ["aten.empty_like.default", "uninitialised"]),
    ("empty_strided", ["aten.empty_strided.default", "uninitialised"]),
    ("new_empty", ["aten.new_empty.default", "uninitialised"]),
    ("empty_then_overwritten", ["aten.empty_like.default"]),
    ("rand", ["aten.rand.default", "random"]),
    ("bernoulli", ["aten.bernoulli", "random"]),
    ("in_place_uniform", ["aten.uniform_.default", "random"]),
    ("dropout_left_on", ["aten.dropout.default", "train=True"]),
    ("attention_dropout", ["aten.scaled_dot_product_attention.default", "dropout_p=0.1"]),
    ("attention_logsumexp", ["aten._scaled_dot_product_flash_attention_for_cpu.default", "auxiliary output"]),
    ("scatter_add", ["aten.scatter_add.default", "write order"]),
    ("index_put_accumulate", ["aten.index_put.default", "accumulate=True"]),
    ("float_cumsum", ["aten.cumsum.default", "torch.float32"]),
    ("unlisted", ["aten.logcumsumexp.default", "not on the allowlist"]),
])
def test_a_graph_with_a_forbidden_op_is_refused_naming_the_op(kind, names):
    msg = refusal(Forbidden(kind))
    for name in names:
        assert name in msg, msg
    assert msg.startswith("the exported graph "), msg


def test_the_evaluator_reports_such_a_graph_as_an_invalid_model_naming_the_op(tmp_path):
    from trainer.evaluate import evaluate
    import numpy as np
    data = K.make_data(tmp_path / "data", K.random_docs(np.random.default_rng(0), 20, V, hi=60), V)
    path = K.export(Forbidden("empty_like"), tmp_path / "m.pt2", 8, 64)      # the tiny preset's eval shape
    res = evaluate(path, data, "tiny", probe_seed=0)
    assert res["status"] == "invalid_model" and res["val_bpb"] is None
    assert res["error"].startswith("the exported graph uses aten.empty_like.default, which is not on the allowlist")


def retarget(target: str):
    def edit(prog):
        node = next(n for n in prog["graph_module"]["graph"]["nodes"] if n["target"].endswith("embedding.default"))
        node["target"] = target
    return edit


@pytest.mark.parametrize("target", ["torch.ops.aten.empty_like.default", "torch.ops.prims.empty_strided.default",
                                    "torch.ops.aten.randn_like.default", "torch.ops.aten.resize.default"])
def test_a_hand_edited_archive_naming_an_unlisted_op_is_refused_before_torch_loads_it(tmp_path, monkeypatch, target):
    good = K.export(K.Bigram(torch.randn(V, V)), tmp_path / "good.pt2", B, T)
    bad = K.rebuild(good, tmp_path / "bad.pt2", edit_model=retarget(target))
    from torch.export.pt2_archive import _package

    def never(*args, **kwargs):
        raise AssertionError("torch's loader was reached")
    monkeypatch.setattr(_package, "load_pt2", never)
    with pytest.raises(InvalidModel, match="not on the allowlist") as e:
        load_program(bad, B, T, V)
    assert target.removeprefix("torch.ops.") in str(e.value)


def test_the_interpreter_refuses_an_unlisted_op_even_if_the_graph_changed_after_loading():
    prog = load_archive(archive(K.Bigram(torch.randn(V, V))), B, T, V)
    node = next(n for n in prog.graph_module.graph.nodes if n.op == "call_function")
    node.target = torch.ops.aten.empty_like.default
    node.args = node.args[:1]
    prog.graph_module.recompile()
    with pytest.raises(InvalidModel, match="aten.empty_like.default, which is not on the allowlist"):
        prog(torch.zeros(B, T, dtype=torch.long))


# --------------------------------------------------------------------------- the list itself

def _overloads(entry: str):
    packet, _, overload = entry.partition(".")
    ops = getattr(torch.ops.aten, packet)
    return [getattr(ops, o) for o in ([overload] if overload else ops.overloads())]


def test_every_entry_names_a_real_aten_op():
    missing = []
    for entry in sorted(graph_ops.ALLOWED):
        try:
            _overloads(entry)
        except AttributeError:
            missing.append(entry)
    assert not missing, f"not aten ops in torch {torch.__version__}: {missing}"


def test_no_listed_op_is_random_or_stateful_unless_an_argument_rule_turns_that_off():
    ruled = graph_ops.DROPOUT | {a.split(".")[0] for a in graph_ops.ATTENTION} | {"batch_norm"}
    flagged = []
    for entry in sorted(graph_ops.ALLOWED):
        for op in _overloads(entry):
            if op._schema.is_mutable:
                continue            # in-place and out= forms never run: the loader functionalizes them away
            tags = {torch.Tag.nondeterministic_seeded, torch.Tag.maybe_aliasing_or_mutating}
            if tags & set(op.tags) and entry.split(".")[0] not in ruled:
                flagged.append(str(op))
    assert not flagged, f"random or state-changing ops on the list without an argument rule: {flagged}"


def test_no_uninitialising_random_or_order_dependent_op_is_on_the_list():
    for name in graph_ops.HINTS:
        assert graph_ops.refusal("aten", name, "default"), name
    assert not any(e.split(".")[0] in graph_ops.HINTS or "empty" in e for e in graph_ops.ALLOWED)
    assert graph_ops.refusal("prims", "add", "default"), "only aten ops are listed"
    assert graph_ops.refusal("aten", "add_", "Tensor") is None, "in-place ops are judged by their functional form"
