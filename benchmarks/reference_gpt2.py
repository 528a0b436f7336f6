"""Reference model for the benchmark: a plain GPT-2-style trainer, a drop-in replacement for trainer/train.py.

Not part of the product and not trusted: it is another candidate train.py, run through the same harness, data,
budget and evaluator, so that `trainer/train.py` has a fixed, well-known baseline to beat. It is GPT-2 as
nanoGPT writes it: learned absolute positions, pre-LayerNorm blocks with biases, GELU MLP, tied input/output
embeddings, N(0, 0.02) init with scaled residual projections, AdamW with linear warmup and a cosine decay to 10%
over the time budget. Model scale comes from the preset like train.py's (same depth, width and batch).
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

run = harness.setup()
PRESET = run.preset

# ---------------------------------------------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------------------------------------------
DEPTH = PRESET["depth"]  # transformer blocks
MODEL_DIM = PRESET["model_dim"]  # residual stream width
HEAD_DIM = PRESET["head_dim"]  # width of one attention head
DEVICE_BATCH_SIZE = PRESET["device_batch_size"]  # rows per forward/backward pass
TOTAL_BATCH_TOKENS = PRESET["total_batch_tokens"]  # tokens per optimizer step
LEARNING_RATE = 2e-3  # AdamW peak learning rate
MIN_LR_FRAC = 0.1  # cosine decays to this fraction of the peak
WARMUP_FRAC = 0.05  # linear warmup, as a fraction of the budget
WEIGHT_DECAY = 0.1  # AdamW decoupled weight decay on the 2-D weights
ADAM_BETA1 = 0.9  # AdamW first-moment decay
ADAM_BETA2 = 0.95  # AdamW second-moment decay
GRAD_CLIP = 1.0  # global gradient-norm clip
LOG_EVERY = 10  # optimizer steps between progress lines


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(MODEL_DIM), nn.LayerNorm(MODEL_DIM)
        self.qkv = nn.Linear(MODEL_DIM, 3 * MODEL_DIM)
        self.attn_proj = nn.Linear(MODEL_DIM, MODEL_DIM)
        self.fc = nn.Linear(MODEL_DIM, 4 * MODEL_DIM)
        self.mlp_proj = nn.Linear(4 * MODEL_DIM, MODEL_DIM)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, C // HEAD_DIM, HEAD_DIM).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, vocab_size, seq_len):
        super().__init__()
        self.vocab_size = vocab_size
        self.wte = nn.Embedding(vocab_size, MODEL_DIM)
        self.wpe = nn.Embedding(seq_len, MODEL_DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.ln_f = nn.LayerNorm(MODEL_DIM)
        self.lm_head = nn.Linear(MODEL_DIM, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * DEPTH) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x)).float()
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, self.vocab_size), targets.reshape(-1))


def lr_at(progress):
    if progress < WARMUP_FRAC:
        return LEARNING_RATE * (progress + 1e-3) / WARMUP_FRAC
    t = (progress - WARMUP_FRAC) / (1 - WARMUP_FRAC)
    return LEARNING_RATE * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


on_cuda = run.device == "cuda"
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
raw_model = GPT2(run.vocab_size, run.seq_len).to(run.device)
model = torch.compile(raw_model, dynamic=False) if on_cuda else raw_model
decay = [p for p in raw_model.parameters() if p.dim() >= 2]
no_decay = [p for p in raw_model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=WEIGHT_DECAY), dict(params=no_decay, weight_decay=0.0)],
                              lr=LEARNING_RATE, betas=(ADAM_BETA1, ADAM_BETA2), **(dict(fused=True) if on_cuda else {}))
num_params = sum(p.numel() for p in raw_model.parameters())
grad_accum = max(1, TOTAL_BATCH_TOKENS // (DEVICE_BATCH_SIZE * run.seq_len))
tokens_per_step = grad_accum * DEVICE_BATCH_SIZE * run.seq_len
print(f"reference GPT-2: preset={run.preset_name} params={num_params / 1e6:.2f}M depth={DEPTH} dim={MODEL_DIM} "
      f"tokens/step={tokens_per_step} budget_s={run.budget_seconds:g}", flush=True)

loader = run.train_loader(DEVICE_BATCH_SIZE)
step, t_start = 0, None
while (progress := run.progress(step)) < 1.0:
    for group in optimizer.param_groups:
        group["lr"] = lr_at(progress)
    for _ in range(grad_accum):
        x, y = next(loader)
        t_start = t_start or time.perf_counter()
        with autocast:
            loss = model(x, y)
        (loss / grad_accum).backward()
    loss_f = loss.item()
    if not math.isfinite(loss_f):
        sys.exit(f"training diverged at step {step}: loss={loss_f}; lower LEARNING_RATE")
    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step += 1
    if step % LOG_EVERY == 0 or step == 1:
        run.log_step(step, loss_f, lr=f"{lr_at(progress):.2e}")

training_seconds = time.perf_counter() - (t_start or time.perf_counter())
peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if on_cuda
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
run.save_model(raw_model)
run.report(training_seconds=round(training_seconds, 1), num_steps=step, num_params_M=round(num_params / 1e6, 3),
           peak_memory_mb=round(peak_mb, 1), tokens_per_second=round(step * tokens_per_step / max(training_seconds, 1e-9)),
           mfu_percent=None, depth=DEPTH)
