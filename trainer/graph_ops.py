"""The ATen ops an exported model's graph may call: an ALLOWLIST of pure, deterministic ops. TRUSTED CODE.

What it protects against: the evaluator runs the agent's graph in a process whose heap held (and holds) validation
data. An op whose output is memory it never wrote (aten.empty, empty_like, empty_strided, new_empty, resize, a
padded or unused output of an attention kernel) lets a model read that memory: the score would depend on the
evaluator's heap, change from run to run, and could carry the very tokens being scored. An op that draws random
numbers gives a score that is luck. A deny list misses the op nobody thought of; so every op a graph calls must be
on this list, and anything else is refused (`invalid_model`, which the runner shows as `export_failed`), by name.

"Pure and deterministic" here means: the op's outputs are a function of its input values and arguments alone.
- No random numbers: rand*, randn*, randint*, randperm, bernoulli, multinomial, normal, uniform, rrelu, and any
  dropout that is on (dropout ops pass only with train=False, attention only with dropout_p=0). In eval mode,
  nn.Dropout exports as aten.dropout(train=False), an identity, and passes.
- No memory the op did not write: the empty family and resize are out, even when the graph then overwrites them
  (torch.zeros, torch.full or torch.cat do the same job, and a check that an overwrite is complete is not worth
  its risk); as_strided is out (it can reach storage outside the tensor's own elements). Functionalizing the
  in-place writes of the honest graphs in tests/test_graph_ops.py introduces no empty op: an in-place write
  becomes copy / fill / index_put / slice_scatter / select_scatter of an already defined tensor, all listed.
  Attention kernels and the native norm and dropout ops return auxiliary outputs for a backward pass (logsumexp
  padded to a block size, RNG seeds, debug masks, saved statistics) that may be uninitialised: of those ops only
  output 0 may be used (OUTPUT_0_ONLY).
- No result that depends on which of several writes lands last or on atomic accumulation order: index_put passes
  only with accumulate=False and boolean mask indices (no position written twice); scatter, scatter_add,
  scatter_reduce, index_add, index_copy, index_reduce, put, embedding_bag, histc and bincount are out (torch
  documents them as nondeterministic on CUDA, where the evaluator may run); cumsum passes on integer and bool
  tensors only (a floating cumsum on CUDA is documented nondeterministic). A model that needs a scatter-add can
  multiply by a one-hot matrix instead.
- Floating-point results of the same kernel on the same inputs (matmul, conv, sums) are deterministic run to run
  on one device; differences between devices or kernels are rounding, carry no outside information, and are what
  the probes' tolerance absorbs.
- No state: in-place and out= forms are not on the list; the loader functionalizes a graph that holds them and
  checks the functional graph (ops of mutable schema are refused there). batch_norm passes only with
  training=False (with training=True it updates the running statistics although its schema says nothing).

Entries are "name" (every overload of aten.name) or "name.overload" (that overload only). Only the aten namespace;
no prims op is on the list. The list covers every op of the real train.py's export (tiny and cpu presets), of the
train.py variants the mutate proposer can produce, of the test models and of common edits (GELU, SiLU/SwiGLU,
softmax, layer/RMS norm, manual and grouped-query attention, ALiBi, complex rotary, top-k routing, convolutions).
"""
from __future__ import annotations

import operator

import torch

LIST_FILE = "trainer/graph_ops.py"   # named in every refusal, so the reader knows where the list lives

ARITHMETIC = {  # elementwise arithmetic, comparison, logic and math on tensors and scalars
    "add", "sub", "rsub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod", "neg", "abs", "sign",
    "sgn", "reciprocal", "pow", "square", "sqrt", "rsqrt", "exp", "exp2", "expm1", "log", "log1p", "log2", "log10",
    "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh", "atanh", "erf", "erfc",
    "erfinv", "floor", "ceil", "round", "trunc", "frac", "clamp", "clamp_min", "clamp_max", "clip", "maximum",
    "minimum", "fmax", "fmin", "lerp", "addcmul", "addcdiv", "hypot", "logaddexp", "logaddexp2", "xlogy",
    "copysign", "nan_to_num", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not",
    "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "__and__", "__or__", "__xor__",
    "isnan", "isinf", "isfinite", "isposinf", "isneginf", "signbit", "masked_fill", "where.self",
    "where.ScalarSelf", "where.ScalarOther", "where.Scalar",
}
LINEAR_ALGEBRA = {  # products and convolutions (one kernel per shape: same bits run to run on one device)
    "mm", "bmm", "matmul", "addmm", "baddbmm", "addmv", "mv", "dot", "outer", "linear", "einsum", "tensordot",
    "conv1d", "conv2d", "convolution",
}
REDUCTIONS = {  # reductions, scans over integers, sorting and selection
    "sum", "mean", "prod", "amax", "amin", "max", "min", "aminmax", "argmax", "argmin", "logsumexp", "var", "std",
    "var_mean", "std_mean", "norm", "linalg_vector_norm", "all", "any", "cumsum", "topk", "sort", "argsort",
}
SHAPE = {  # views, reshapes, joins and splits (every output element is an input element)
    "view", "_unsafe_view", "reshape", "view_as", "reshape_as", "expand", "expand_as", "permute", "transpose", "t",
    "squeeze", "unsqueeze", "flatten", "unflatten", "movedim", "swapaxes", "narrow", "select", "slice", "diagonal",
    "split", "split_with_sizes", "tensor_split", "chunk", "unbind", "cat", "concat", "stack", "repeat",
    "repeat_interleave", "tile", "roll", "flip", "pad", "constant_pad_nd", "unfold", "tril", "triu", "alias",
    "detach", "clone", "contiguous", "_to_copy", "to", "type_as", "_assert_tensor_metadata",
    "view_as_real", "view_as_complex", "real", "imag", "complex", "polar",
}
INDEXING = {  # reads at computed positions, and writes of whole slices or masks into a defined tensor
    "embedding", "index.Tensor", "index_select", "gather", "take_along_dim", "one_hot", "slice_scatter",
    "select_scatter", "diagonal_scatter", "index_put", "copy", "fill", "zero",
}
ACTIVATIONS = {  # activation functions and softmax
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "softplus", "elu", "selu", "celu", "leaky_relu",
    "hardtanh", "hardswish", "hardsigmoid", "mish", "glu", "log_sigmoid", "prelu", "threshold", "softshrink",
    "hardshrink", "logit", "softmax", "log_softmax", "_softmax", "_log_softmax", "_safe_softmax",
}
NORMALIZATION = {  # normalization layers (batch norm in inference form only, see RULES)
    "layer_norm", "native_layer_norm", "rms_norm", "group_norm", "native_group_norm", "batch_norm",
    "_native_batch_norm_legit_no_training",
}
ATTENTION = {  # scaled dot-product attention: the composite op and the kernels it dispatches to on CPU and CUDA
    "scaled_dot_product_attention", "_scaled_dot_product_attention_math.default",
    "_scaled_dot_product_flash_attention_for_cpu.default", "_scaled_dot_product_flash_attention.default",
    "_scaled_dot_product_efficient_attention.default", "_scaled_dot_product_cudnn_attention.default",
}
DROPOUT = {  # dropout, allowed only when off (train=False): an identity
    "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout",
}
CREATION = {  # new tensors whose every element the op writes (never the empty family)
    "zeros", "ones", "full", "arange", "scalar_tensor", "zeros_like", "ones_like", "full_like", "new_zeros",
    "new_ones", "new_full", "linspace", "logspace", "eye", "tril_indices", "triu_indices", "lift_fresh",
    "lift_fresh_copy",
}
# Multi-output ops of which only output 0 may be used: the others are kept for a backward pass (logsumexp padded to
# a block size, RNG seeds and offsets, debug masks, saved statistics) and some kernels leave them uninitialised.
OUTPUT_0_ONLY = {a.split(".")[0] for a in ATTENTION} - {"scaled_dot_product_attention"} | {
    "native_layer_norm", "native_group_norm", "_native_batch_norm_legit_no_training", "native_dropout"}
ALLOWED = frozenset().union(ARITHMETIC, LINEAR_ALGEBRA, REDUCTIONS, SHAPE, INDEXING, ACTIVATIONS, NORMALIZATION,
                            ATTENTION, DROPOUT, CREATION)

# Why some ops are not on the list: named in the refusal, so the agent knows what to write instead.
_UNINITIALISED = ("its output is uninitialised memory; allocate with torch.zeros or torch.full, or build the "
                  "tensor with torch.cat")
HINTS = {
    **{op: _UNINITIALISED for op in ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
                                     "empty_permuted", "resize", "resize_as")},
    **{op: "it draws random numbers; a scored model must be deterministic" for op in (
        "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm", "bernoulli", "multinomial",
        "normal", "uniform", "exponential", "geometric", "cauchy", "log_normal", "poisson", "rrelu", "random")},
    **{op: "it can read storage outside the tensor's own elements; use view, reshape, slice or unfold"
       for op in ("as_strided", "as_strided_copy", "as_strided_scatter")},
    **{op: "its result depends on write order (nondeterministic on CUDA); multiply by a one-hot matrix instead"
       for op in ("scatter", "scatter_add", "scatter_reduce", "index_add", "index_copy", "index_reduce", "put",
                  "embedding_bag", "histc", "bincount")},
}


def op_name(target) -> str:
    """'aten.add.Tensor' for an OpOverload (the form refusals name)."""
    return str(target)


def _functional(packet: str) -> str:
    """The functional op an in-place one becomes: add_ -> add, __iand__ -> __and__."""
    if packet.startswith("__i") and packet.endswith("__"):
        return "__" + packet[3:]
    return packet[:-1] if packet.endswith("_") and not packet.endswith("__") else packet


def refusal(namespace: str, packet: str, overload: str) -> str | None:
    """None if aten.<packet>.<overload> (or, for an in-place op, its functional form) is on the list; else the
    one-line reason, naming the op as the graph spells it."""
    name = _functional(packet)
    if namespace == "aten" and (name in ALLOWED or f"{name}.{overload}" in ALLOWED):
        return None
    why = HINTS.get(name, "")
    return (f"the exported graph uses {namespace}.{packet}.{overload}, which is not on the allowlist of pure "
            f"deterministic ops ({LIST_FILE})" + (f": {why}" if why else "; express the model with listed ops"))


def target_refusal(target) -> str | None:
    """refusal() for an OpOverload."""
    packet = target._schema.name.split("::", 1)[-1]
    return refusal(target.namespace, packet, target._overloadname)


def _arg(node: torch.fx.Node, name: str):
    """The value of a named argument of a call node (positional, keyword, or the schema's default)."""
    for i, a in enumerate(node.target._schema.arguments):
        if a.name != name:
            continue
        if not a.kwarg_only and i < len(node.args):
            return node.args[i]
        if name in node.kwargs:
            return node.kwargs[name]
        return a.default_value if a.has_default_value() else None
    return None


def _dtype(value) -> torch.dtype | None:
    val = value.meta.get("val") if isinstance(value, torch.fx.Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None


def argument_refusal(node: torch.fx.Node) -> str | None:
    """None if a call of a listed op is pure with the arguments it has; else why not (one line). For the
    functional graph only (after the loader has functionalized in-place ops)."""
    target = node.target
    if target is operator.getitem or not isinstance(target, torch._ops.OpOverload):
        return None
    packet = target._schema.name.split("::", 1)[-1]
    name = op_name(target)
    if packet in DROPOUT and _arg(node, "train") is not False:
        return (f"the exported graph uses {name} with train={_arg(node, 'train')}, which draws random numbers; "
                "dropout must be off at evaluation (F.dropout(x, p, training=self.training))")
    if packet == "batch_norm" and _arg(node, "training") is not False:
        return f"the exported graph uses {name} with training=True, which updates state; use the module's eval mode"
    if any(packet == a.split(".")[0] for a in ATTENTION):
        p = _arg(node, "dropout_p")
        if p not in (None, 0, 0.0):
            return (f"the exported graph uses {name} with dropout_p={p}, which draws random numbers; pass "
                    "dropout_p=0.0 when not training")
    if packet in OUTPUT_0_ONLY:
        for user in node.users:
            if user.target is not operator.getitem or (user.args[1] != 0 and user.users):  # unused: harmless
                return (f"the exported graph reads an auxiliary output of {name} (kept for a backward pass, and may "
                        "be uninitialised); only its output 0 may be used")
    if packet == "index_put":
        if _arg(node, "accumulate"):
            return (f"the exported graph uses {name} with accumulate=True, whose result depends on write order on "
                    "CUDA; multiply by a one-hot matrix instead")
        if any(i is not None and _dtype(i) != torch.bool for i in _arg(node, "indices") or ()):
            return (f"the exported graph uses {name} with integer indices, where a repeated index makes the result "
                    "depend on write order; index with a boolean mask, or use torch.where")
    if packet == "cumsum":
        dt = _dtype(node)
        if dt is None or dt.is_floating_point or dt.is_complex:
            return (f"the exported graph uses {name} on {dt} values, which torch documents as nondeterministic on "
                    "CUDA; cumsum is allowed on integer and bool tensors only")
    return None
