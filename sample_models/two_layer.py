"""The seed's running example (CS231n lecture 8): a two-layer ReLU net on random data.

N=64, D_in=1000, H=100, D_out=10, trained with ``nn`` + ``optim``, once with nn.ReLU and
once with the lecture's custom ``torch.autograd.Function`` ReLU.
"""
from __future__ import annotations

import torch
from torch import nn

N, D_IN, H, D_OUT = 64, 1000, 100, 10


class MyReLU(torch.autograd.Function):
    """The lecture's hand-written ReLU: forward clamps, backward masks the gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[x < 0] = 0
        return grad_input


class TwoLayerNet(nn.Module):
    def __init__(self, custom_relu: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(D_IN, H)
        self.linear2 = nn.Linear(H, D_OUT)
        self.custom_relu = custom_relu

    def forward(self, x):
        hidden = self.linear1(x)
        hidden = MyReLU.apply(hidden) if self.custom_relu else torch.relu(hidden)
        return self.linear2(hidden)

    def example_inputs(self):
        return (torch.randn(N, D_IN, generator=torch.Generator().manual_seed(7)),)


def two_layer_net() -> TwoLayerNet:
    torch.manual_seed(0)
    return TwoLayerNet()


def two_layer_custom_relu() -> TwoLayerNet:
    torch.manual_seed(0)
    return TwoLayerNet(custom_relu=True)


def train(model: TwoLayerNet, steps: int = 500) -> dict:
    """Fit random targets from random data, as in the lecture (MSE loss, Adam, lr 1e-4)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=generator)
    y = torch.randn(N, D_OUT, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.MSELoss(reduction="sum")
    first = None
    model.train()
    for _step in range(steps):
        loss = loss_fn(model(x), y)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return {"loss_first": float(f"{first:.4g}"), "loss_last": float(f"{loss.item():.4g}"), "steps": steps}
