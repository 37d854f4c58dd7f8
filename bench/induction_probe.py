"""How many tokens until a small attention model learns to copy (forms induction heads)?

Issue 11's question before any NIAH gate can be earned on CPU: retrieval needs the copy step
(attend to the token after an earlier match). This is a plain-PyTorch reference model with
K-EXAONE's attention shape (sliding-window RoPE layers, NoPE global layers in an LLLG pattern,
QK norm, SwiGLU), NOT the framework's model: it isolates the optimisation question from
megatron's overheads. Task: `seq/2` uniform random tokens from `--content` token types,
repeated once; copy accuracy is measured on the second half of 64 held-out sequences.

    OMP_NUM_THREADS=1 python bench/induction_probe.py --steps 1000 --bs 32 --seq 64 \
        --window 8 --hidden 64 --content 64 --tie 1 --opt muon --mlr 0.02

prints `step loss copy_acc seconds` every 25 steps; figures in docs/EVAL.md ("Session 5").
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--bs", type=int, default=32, help="sequences per step")
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence (two halves)")
    p.add_argument("--window", type=int, default=8, help="sliding window of the L layers")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--pattern", default="LLLG", help="L = sliding RoPE, G = global NoPE")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--content", type=int, default=64, help="token types the halves use")
    p.add_argument("--opt", choices=["adamw", "muon"], default="muon")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW LR (all params, or non-matrix)")
    p.add_argument("--mlr", type=float, default=0.02, help="Muon LR (hidden matrices)")
    p.add_argument("--tie", type=int, default=1, help="tie input and output embeddings")
    return p.parse_args()


def _rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    freq = pos[:, None].float() / (10000 ** (torch.arange(0, d, 2).float() / d))[None]
    c, s = freq.cos(), freq.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1)


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, is_global: bool) -> None:
        super().__init__()
        self.is_global, self.heads, self.hd = is_global, heads, hidden // heads
        self.n1, self.n2 = nn.RMSNorm(hidden), nn.RMSNorm(hidden)
        self.qn, self.kn = nn.RMSNorm(self.hd), nn.RMSNorm(self.hd)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.o = nn.Linear(hidden, hidden, bias=False)
        self.up = nn.Linear(hidden, 4 * hidden, bias=False)
        self.down = nn.Linear(2 * hidden, hidden, bias=False)

    def forward(self, x, local_mask, global_mask, pos):
        b, t, h = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.heads, self.hd).unbind(2)
        q, k, v = self.qn(q).transpose(1, 2), self.kn(k).transpose(1, 2), v.transpose(1, 2)
        if not self.is_global:
            q, k = _rope(q, pos), _rope(k, pos)
        mask = global_mask if self.is_global else local_mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.o(y.transpose(1, 2).reshape(b, t, h))
        up, gate = self.up(self.n2(x)).chunk(2, -1)
        return x + self.down(F.silu(gate) * up)


class Model(nn.Module):
    def __init__(self, a: argparse.Namespace) -> None:
        super().__init__()
        self.window = a.window
        self.emb = nn.Embedding(a.vocab, a.hidden)
        self.blocks = nn.ModuleList(
            Block(a.hidden, a.heads, a.pattern[i % len(a.pattern)] == "G")
            for i in range(a.layers))
        self.norm = nn.RMSNorm(a.hidden)
        self.out = nn.Linear(a.hidden, a.vocab, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
        if a.tie:
            self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1])
        i, j = pos[:, None], pos[None, :]
        neg = torch.tensor(float("-inf"))
        global_mask = torch.where(j <= i, 0.0, neg)
        local_mask = torch.where((j <= i) & (j > i - self.window), 0.0, neg)
        h = self.emb(x)
        for blk in self.blocks:
            h = blk(h, local_mask, global_mask, pos)
        return self.out(self.norm(h))


def _optimizers(model: Model, a: argparse.Namespace) -> list[tuple[torch.optim.Optimizer, float]]:
    if a.opt == "adamw":
        return [(torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95),
                                   weight_decay=0.0), a.lr)]
    hidden = [p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks")]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and n.startswith("blocks"))]
    return [(torch.optim.Muon(hidden, lr=a.mlr, weight_decay=0.0), a.mlr),
            (torch.optim.AdamW(rest, lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0), a.lr)]


def _batch(a: argparse.Namespace, n: int, gen: torch.Generator) -> torch.Tensor:
    half = torch.randint(0, a.content, (n, a.seq // 2), generator=gen)
    return torch.cat([half, half], 1)


def main() -> None:
    a = _args()
    torch.manual_seed(0)
    model = Model(a)
    opts = _optimizers(model, a)
    gen, held_out = torch.Generator().manual_seed(1), _batch(a, 64, torch.Generator().manual_seed(2))
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f}M parameters; "
          f"{a.bs * a.seq} tokens per step", flush=True)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        for opt, lr in opts:
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, step / 20)
        x = _batch(a, a.bs, gen)
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        for opt, _ in opts:
            opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt, _ in opts:
            opt.step()
        if step % 25 == 0:
            with torch.no_grad():
                pred = model(held_out[:, :-1]).argmax(-1)
            h = a.seq // 2
            acc = (pred[:, h:] == held_out[:, h + 1:]).float().mean().item()
            print(f"{step} loss {loss.item():.3f} copy_acc {acc:.3f} {time.time() - t0:.0f}s",
                  flush=True)


if __name__ == "__main__":
    main()
