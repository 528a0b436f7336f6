"""Training script: a small modern GPT, trained for a fixed time budget. THE ONE FILE THE AGENT EDITS.

UNTRUSTED CODE. Every experiment is an edit to this file; it runs in a locked-down container (no network,
read-only filesystem, no validation data) and is scored afterwards by a trusted evaluator it cannot touch.

What you may change: anything in this file — the model, the optimizer, the schedule, the hyperparameters, the
batch size, even the model scale (the preset's values below are only defaults).

What stays fixed (it lives in the trusted harness, trainer/harness/, which this file only calls):
- the data: train only on batches from run.train_loader(...); the validation split is not in this container;
- the budget: stop when run.progress(step) reaches 1 (the container is killed a little after the budget anyway);
- the deliverable: run.save_model(model) exports model(idx) -> logits (eval_batch_size, seq_len, vocab_size);
  the model must be causal (position t sees tokens <= t only) and treat each row on its own: the evaluator probes
  both and gives a `violation`, not a score, to a model that cheats;
- the score: validation bits per byte, computed by the evaluator from model.pt2 alone. It is not this file's to
  compute or report; run.report(...) carries informational statistics only.

Layout: hyperparameters (UPPER_CASE constants, one per line with a comment), the model, the optimizer, the
schedule, the training loop. CUDA gets bf16 autocast and torch.compile; the CPU runs in fp32 without compiling.
"""
import contextlib
import math
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

run = harness.setup()  # reads the environment, seeds every RNG
PRESET = run.preset

# ---------------------------------------------------------------------------------------------------------------
# Model shape
# ---------------------------------------------------------------------------------------------------------------
DEPTH = PRESET["depth"]  # transformer blocks
MODEL_DIM = PRESET["model_dim"]  # residual stream width
HEAD_DIM = PRESET["head_dim"]  # width of one attention head (MODEL_DIM must be a multiple)
MLP_RATIO = 4  # MLP hidden width / MODEL_DIM
ROPE_BASE = 10000  # rotary embedding base frequency
LOGIT_SOFTCAP = 15  # logits are squashed into (-cap, cap) with tanh
VALUE_EMBED_EVERY = 2  # value embeddings mixed into v on every n-th layer counting back from the last; 0: none
VE_GATE_CHANNELS = 32  # residual channels that drive the value-embedding gate
WINDOW_PATTERN = "L"  # per-layer attention span, repeated over depth: L = full causal, S = short sliding window
SHORT_WINDOW_FRAC = 0.5  # S window length as a fraction of seq_len (the last layer is always L)
X0_LAMBDA_INIT = 0.1  # initial weight of the embedding skip into every block's input

# ---------------------------------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------------------------------
DEVICE_BATCH_SIZE = PRESET["device_batch_size"]  # rows per forward/backward pass
TOTAL_BATCH_TOKENS = PRESET["total_batch_tokens"]  # tokens per optimizer step (gradient accumulation fills it)

# ---------------------------------------------------------------------------------------------------------------
# Optimizer: Muon for the 2-D matrices inside the blocks, AdamW for embeddings, unembedding and scalars
# ---------------------------------------------------------------------------------------------------------------
MATRIX_LR = 0.04  # Muon learning rate (block matrices)
MUON_MOMENTUM = 0.95  # Muon Nesterov momentum after warmup
MUON_MOMENTUM_START = 0.85  # Muon momentum at the start of training
MUON_MOMENTUM_WARMUP = 0.1  # fraction of the budget over which Muon momentum ramps up
MUON_STEPS = 5  # Polar Express iterations for the orthogonalization
EMBEDDING_LR = 0.6  # AdamW learning rate for the token and value embeddings
UNEMBEDDING_LR = 0.008  # AdamW learning rate for the output head
SCALAR_LR = 0.5  # AdamW learning rate for the per-layer residual scalars
LR_DIM_REF = 768  # AdamW rates scale with (MODEL_DIM / LR_DIM_REF) ** -0.5
ADAM_BETA1 = 0.8  # AdamW first-moment decay
ADAM_BETA2 = 0.95  # AdamW second-moment decay
ADAM_EPS = 1e-10  # AdamW epsilon
WEIGHT_DECAY = 0.0  # decoupled weight decay on the Muon matrices (decays to 0 with progress)

# ---------------------------------------------------------------------------------------------------------------
# Schedule (driven by run.progress: the fraction of the time budget used)
# ---------------------------------------------------------------------------------------------------------------
WARMUP_FRAC = 0.0  # linear warmup, as a fraction of the budget
WARMDOWN_FRAC = 0.5  # linear decay to FINAL_LR_FRAC over this last fraction of the budget
FINAL_LR_FRAC = 0.0  # learning-rate multiplier at the end

# ---------------------------------------------------------------------------------------------------------------
# Bookkeeping
# ---------------------------------------------------------------------------------------------------------------
LOG_EVERY = 10  # optimizer steps between progress lines
LOSS_EMA = 0.9  # smoothing of the logged training loss
DIVERGE_FACTOR = 2.5  # stop if the loss exceeds this many times the uniform-guess loss ln(vocab_size)

# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, base):
    """cos/sin tables of shape (1, seq_len, 1, head_dim / 2) for rotary position embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


def apply_rotary(x, cos, sin):
    """Rotate pairs (x1, x2) of each head's channels by a position-dependent angle. x: (B, T, H, D)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).type_as(x)


def sliding_window_mask(seq_len, window, device):
    """Boolean (T, T) mask, True where query i may attend key j: j <= i and i - j < window."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & (i - j < window)


def has_value_embed(layer, depth):
    return VALUE_EMBED_EVERY > 0 and (depth - 1 - layer) % VALUE_EMBED_EVERY == 0


class Attention(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.n_head = MODEL_DIM // HEAD_DIM
        self.q = nn.Linear(MODEL_DIM, MODEL_DIM, bias=False)
        self.k = nn.Linear(MODEL_DIM, MODEL_DIM, bias=False)
        self.v = nn.Linear(MODEL_DIM, MODEL_DIM, bias=False)
        self.proj = nn.Linear(MODEL_DIM, MODEL_DIM, bias=False)
        self.gate_channels = min(VE_GATE_CHANNELS, MODEL_DIM)
        self.ve_gate = nn.Linear(self.gate_channels, self.n_head, bias=False) if has_value_embed(layer, DEPTH) else None

    def forward(self, x, ve, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, HEAD_DIM)
        k = self.k(x).view(B, T, self.n_head, HEAD_DIM)
        v = self.v(x).view(B, T, self.n_head, HEAD_DIM)
        if ve is not None:  # value embedding, gated per head by the current token's residual stream
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., : self.gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, HEAD_DIM)
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))  # QK-norm
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, MODEL_DIM))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(MODEL_DIM, MLP_RATIO * MODEL_DIM, bias=False)
        self.proj = nn.Linear(MLP_RATIO * MODEL_DIM, MODEL_DIM, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.attn = Attention(layer)
        self.mlp = MLP()

    def forward(self, x, ve, cos, sin, mask):
        x = x + self.attn(rms_norm(x), ve, cos, sin, mask)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, seq_len):
        super().__init__()
        assert MODEL_DIM % HEAD_DIM == 0, f"MODEL_DIM={MODEL_DIM} must be a multiple of HEAD_DIM={HEAD_DIM}"
        self.vocab_size = vocab_size
        self.wte = nn.Embedding(vocab_size, MODEL_DIM)
        self.blocks = nn.ModuleList(Block(i) for i in range(DEPTH))
        self.lm_head = nn.Linear(MODEL_DIM, vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(DEPTH))
        self.x0_lambdas = nn.Parameter(torch.full((DEPTH,), float(X0_LAMBDA_INIT)))
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(vocab_size, MODEL_DIM) for i in range(DEPTH) if has_value_embed(i, DEPTH)})
        pattern = WINDOW_PATTERN.upper()
        assert pattern and set(pattern) <= set("SL"), f"WINDOW_PATTERN={WINDOW_PATTERN!r} may hold only S and L"
        short = max(1, int(seq_len * SHORT_WINDOW_FRAC))
        self.windows = [short if pattern[i % len(pattern)] == "S" else seq_len for i in range(DEPTH)]
        self.windows[-1] = seq_len
        cos, sin = rotary_tables(seq_len, HEAD_DIM, ROPE_BASE)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        bound = 3**0.5 * MODEL_DIM**-0.5  # uniform with std MODEL_DIM ** -0.5
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.q, block.attn.k, block.attn.v, block.mlp.fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate starts at 1
        for emb in self.value_embeds.values():
            nn.init.uniform_(emb.weight, -bound, bound)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        masks = {w: None if w >= T else sliding_window_mask(T, w, idx.device) for w in set(self.windows)}
        x = x0 = rms_norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, masks[self.windows[i]])
        logits = self.lm_head(rms_norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, self.vocab_size), targets.reshape(-1))

    def matmul_flops_per_token(self, seq_len):
        """Approximate training FLOPs per token: 6 per weight of every matmul + causal attention scores."""
        n = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))  # embeddings are lookups
        attn = sum(6 * MODEL_DIM * min(w, seq_len) for w in self.windows)  # QK^T and AV, fwd + bwd, causal half
        return 6 * n + attn


# ---------------------------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------------------------

# Polar Express coefficients (Amsel et al. 2025, arXiv:2505.16932): a per-iteration odd quintic a*X + b*X^3 + c*X^5
# that drives every singular value of X towards 1 faster than the fixed Newton-Schulz quintic.
POLAR_EXPRESS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def orthogonalize(g, steps):
    """Approximately replace G = U S V^T by U V^T (batched over the leading dimension)."""
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)  # spectral norm <= 1, with a safety margin
    for a, b, c in POLAR_EXPRESS[:steps]:
        s = x @ x.mT
        x = a * x + (b * s + c * (s @ s)) @ x
    if tall:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz: the Nesterov-momentum update, orthogonalized, for 2-D weights.

    Each param group holds matrices of one shape, so their updates are orthogonalized together in one batch.
    """

    def __init__(self, groups, lr, momentum, steps, weight_decay):
        super().__init__(groups, dict(lr=lr, momentum=momentum, steps=steps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = torch.stack([p.grad for p in params])
            state = self.state[params[0]]
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(grads)
            buf = state["momentum"]
            buf.lerp_(grads, 1 - group["momentum"])
            update = orthogonalize(grads.lerp_(buf, group["momentum"]), group["steps"])
            rows, cols = params[0].shape
            lr = group["lr"] * max(1.0, rows / cols) ** 0.5  # keep the RMS update size independent of aspect
            for p, u in zip(params, update.unbind(0)):
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(u, alpha=-lr)


def build_optimizers(model):
    """Muon for the block matrices; AdamW (per-kind learning rates) for everything else."""
    adam_scale = (MODEL_DIM / LR_DIM_REF) ** -0.5
    by_shape = {}
    for p in model.blocks.parameters():
        if p.dim() == 2:
            by_shape.setdefault(tuple(p.shape), []).append(p)
    block_matrices = {id(p) for ps in by_shape.values() for p in ps}
    adam_groups = [
        dict(params=[model.wte.weight, *[e.weight for e in model.value_embeds.values()]], lr=EMBEDDING_LR * adam_scale),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * adam_scale),
        dict(params=[model.resid_lambdas, model.x0_lambdas], lr=SCALAR_LR),
    ]
    leftover = [p for n, p in model.named_parameters() if id(p) not in block_matrices
                and not any(p is q for g in adam_groups for q in g["params"])]
    assert not leftover, "every parameter needs an optimizer group"
    fused = dict(fused=True) if run.device == "cuda" else {}
    adamw = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=ADAM_EPS, weight_decay=0.0, **fused)
    muon = Muon([dict(params=ps) for _, ps in sorted(by_shape.items())], lr=MATRIX_LR, momentum=MUON_MOMENTUM,
                steps=MUON_STEPS, weight_decay=WEIGHT_DECAY)
    for opt in (adamw, muon):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return adamw, muon


# ---------------------------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------------------------


def lr_multiplier(progress):
    if WARMUP_FRAC > 0 and progress < WARMUP_FRAC:
        return (progress + 1e-3) / WARMUP_FRAC
    if progress < 1.0 - WARMDOWN_FRAC:
        return 1.0
    decay = (1.0 - progress) / max(WARMDOWN_FRAC, 1e-9)
    return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * decay


def muon_momentum(progress):
    ramp = min(1.0, progress / MUON_MOMENTUM_WARMUP) if MUON_MOMENTUM_WARMUP > 0 else 1.0
    return MUON_MOMENTUM_START + (MUON_MOMENTUM - MUON_MOMENTUM_START) * ramp


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
on_cuda = run.device == "cuda"
if on_cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()

raw_model = GPT(run.vocab_size, run.seq_len).to(run.device)
model = torch.compile(raw_model, dynamic=False) if on_cuda else raw_model
optimizers = build_optimizers(raw_model)
num_params = sum(p.numel() for p in raw_model.parameters())
tokens_per_pass = DEVICE_BATCH_SIZE * run.seq_len
grad_accum = max(1, TOTAL_BATCH_TOKENS // tokens_per_pass)
tokens_per_step = grad_accum * tokens_per_pass
diverged_above = DIVERGE_FACTOR * math.log(run.vocab_size)
print(f"preset={run.preset_name} device={run.device} params={num_params / 1e6:.2f}M depth={DEPTH} dim={MODEL_DIM} "
      f"seq_len={run.seq_len} batch={DEVICE_BATCH_SIZE}x{grad_accum} tokens/step={tokens_per_step} "
      f"budget_s={run.budget_seconds:g}", flush=True)

loader = run.train_loader(DEVICE_BATCH_SIZE)
step, smooth_loss, t_start = 0, 0.0, None
while (progress := run.progress(step)) < 1.0:
    lrm = lr_multiplier(progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
    for group in optimizers[1].param_groups:
        group["momentum"] = muon_momentum(progress)
        group["weight_decay"] = WEIGHT_DECAY * (1 - progress)
    for _ in range(grad_accum):
        x, y = next(loader)
        if t_start is None:
            t_start = time.perf_counter()
        with autocast:
            loss = model(x, y)
        (loss / grad_accum).backward()
    loss_f = loss.item()
    if not math.isfinite(loss_f) or loss_f > diverged_above:
        sys.exit(f"training diverged at step {step}: loss={loss_f:.4g} (needs a finite value below "
                 f"{diverged_above:.3g}); lower the learning rates or check the last change to train.py")
    for opt in optimizers:
        opt.step()
    raw_model.zero_grad(set_to_none=True)
    step += 1
    smooth_loss = LOSS_EMA * smooth_loss + (1 - LOSS_EMA) * loss_f
    if step % LOG_EVERY == 0 or step == 1:
        elapsed = time.perf_counter() - t_start
        run.log_step(step, smooth_loss / (1 - LOSS_EMA**step), lr_mult=round(lrm, 4),
                     tok_s=round(step * tokens_per_step / max(elapsed, 1e-9)))

training_seconds = time.perf_counter() - (t_start or time.perf_counter())
tokens_per_second = step * tokens_per_step / max(training_seconds, 1e-9)
if on_cuda:
    peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    gpu_peak = {"H100": 989.5e12, "H200": 989.5e12, "A100": 312e12}  # dense bf16 FLOP/s
    peak = next((v for k, v in gpu_peak.items() if k in torch.cuda.get_device_name()), None)
    mfu = 100 * raw_model.matmul_flops_per_token(run.seq_len) * tokens_per_second / peak if peak else None
else:
    peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    mfu = None  # no known peak for a CPU

run.save_model(raw_model)
run.report(training_seconds=round(training_seconds, 1), num_steps=step, num_params_M=round(num_params / 1e6, 3),
           peak_memory_mb=round(peak_memory_mb, 1), tokens_per_second=round(tokens_per_second),
           mfu_percent=None if mfu is None else round(mfu, 2), depth=DEPTH)
