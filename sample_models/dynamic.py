"""A "dynamic graph" model: which weights run depends on the input's values.

This is what CS231n lecture 8 shows as the strength of dynamic graphs, and exactly what
static-graph exporters cannot capture from eager code: the dynamo exporter refuses it and
the TorchScript exporter silently keeps only the branch its example input took.
"""
from __future__ import annotations

import torch
from torch import nn

FEATURES, HIDDEN, OUT = 64, 32, 4


class DynamicGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.positive = nn.Linear(FEATURES, HIDDEN)
        self.negative = nn.Linear(FEATURES, HIDDEN)
        self.head = nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        if x.sum() > 0:
            hidden = torch.relu(self.positive(x))
        else:
            hidden = torch.tanh(self.negative(x))
        return self.head(hidden)

    def example_inputs(self):
        return (torch.randn(2, FEATURES, generator=torch.Generator().manual_seed(7)),)


def dynamic_gate() -> DynamicGate:
    torch.manual_seed(0)
    return DynamicGate().eval()
