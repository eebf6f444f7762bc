"""A small Transformer encoder written here: token embedding + attention + layer norm.

Input: token ids [1, 32] (int64, vocabulary 1000). Output: 10 class scores. Trained
briefly on a toy task (how many ids fall below 100, clipped to 9) so that its outputs
are not those of a random network.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

VOCAB, SEQ, D_MODEL, HEADS, LAYERS, CLASSES = 1000, 32, 64, 4, 2, 10


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, seq, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(batch, seq, dim))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, D_MODEL)
        self.position = nn.Parameter(torch.randn(1, SEQ, D_MODEL) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(D_MODEL, HEADS) for _ in range(LAYERS))
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, CLASSES)

    def forward(self, ids):
        x = self.embedding(ids) + self.position[:, : ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(dim=1))

    def example_inputs(self):
        return (torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(7)),)


def tiny_transformer() -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer().eval()


def task_ids(count: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids of the toy task, skewed toward small values so that every class occurs."""
    return (torch.rand(count, SEQ, generator=generator) ** 3 * VOCAB).long().clamp(max=VOCAB - 1)


def write_calibration(out_dir, force: bool = False, count: int = 132) -> dict:
    """<out_dir>/tiny_transformer.calibration.npz: ids [count, 1, 32] from the task's distribution
    (100 calibrate by default, the rest are held out). Kept as is when present, unless forced."""
    import numpy as np

    from deploykit import fsutil

    path = Path(out_dir) / "tiny_transformer.calibration.npz"
    if path.exists() and not force:
        return {"calibration": str(path), "count": count}
    ids = task_ids(count, torch.Generator().manual_seed(2000)).numpy()[:, None, :]
    with fsutil.staging_dir(Path(out_dir)) as stage:
        np.savez(stage / path.name, ids=ids)
        fsutil.publish([(stage / path.name, path)])
    return {"calibration": str(path), "count": count}


def train(model: TinyTransformer, steps: int = 150, batch: int = 32) -> dict:
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _step in range(steps):
        ids = task_ids(batch, generator)
        labels = (ids < 100).sum(dim=1).clamp(max=CLASSES - 1)
        loss = nn.functional.cross_entropy(model(ids), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return {"loss_first": round(losses[0], 3), "loss_last": round(sum(losses[-10:]) / 10, 3), "steps": steps}
