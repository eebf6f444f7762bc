"""A MobileNetV2-style CNN written here: inverted residuals, depthwise convs, BatchNorm, ReLU6.

Width 1.0 and 1x3x224x224 input as in the paper; 10 classes, trained on the synthetic shapes
task (sample_models/shapes.py) so that quantization has real features to keep: 2.2 M
parameters (3.5 M with the paper's 1000-class head).
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deploykit.progress import Progress
from sample_models import shapes

# (expansion t, output channels c, repeats n, first stride s) from the MobileNetV2 paper
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


def _conv_bn(inp: int, out: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expansion: int):
        super().__init__()
        hidden = inp * expansion
        layers = [_conv_bn(inp, hidden, 1, 1)] if expansion != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, out, 1, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, image_size: int = 224):
        super().__init__()
        self.image_size = image_size
        layers, channels = [_conv_bn(3, 32, 3, 2)], 32
        for expansion, out, repeats, stride in _SETTINGS:
            for index in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if index == 0 else 1, expansion))
                channels = out
        layers.append(_conv_bn(channels, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, image):
        features = self.features(image)
        # Global average pooling as torchvision writes it (keepdim, then flatten): XNNPACK's mean takes only that form.
        return self.classifier(features.mean(dim=(2, 3), keepdim=True).flatten(1))

    def example_inputs(self):
        image, _label = shapes.dataset(1, self.image_size, seed=7)
        return (torch.from_numpy(image),)


def mobilenet_v2() -> MobileNetV2:
    torch.manual_seed(0)
    return MobileNetV2(num_classes=len(shapes.CLASSES)).eval()


# Measured on a quiet 2-core x86-64 VM (torch 2.13 CPU): 3.5 min; a busy host took 20.
TRAINING_TIME = "about 3.5 min on 2 quiet cores"

_TRAINED: dict = {}   # (steps, batch, size) -> (state_dict, info): the Keras twin reuses the training


def train(model: MobileNetV2, steps: int = 500, batch: int = 8) -> dict:
    """Train on the shapes task at the model's own 224-pixel size: about 3.5 min on two CPU cores.

    (Training on small canvases first was tried: the features did not carry over to 224 pixels,
    and refitting BatchNorm did not bring the accuracy back.) The weights are kept in process
    (the Keras twin reuses them) and on disk under $DEPLOYKIT_CACHE_DIR (default
    ~/.cache/deploykit), keyed by this file, shapes.py, the torch version and the settings, so
    a later build on the same machine reuses them; DEPLOYKIT_CACHE_DIR="" turns that off.
    """
    key = (steps, batch, model.image_size)
    if key not in _TRAINED:
        cache = _cache_file(*key)
        _TRAINED[key] = _load(cache) if cache and cache.exists() else None
        if _TRAINED[key] is None:
            _TRAINED[key] = _train(model, steps, batch)
            if cache:
                _save(cache, {"state": _TRAINED[key][0], "info": _TRAINED[key][1]})
    state, info = _TRAINED[key]
    model.load_state_dict(state)
    return dict(info)


def is_trained_here(steps: int = 500, batch: int = 8, size: int = 224) -> bool:
    """Whether training would be skipped: the weights are in this process or in the machine's cache."""
    cache = _cache_file(steps, batch, size)
    return (steps, batch, size) in _TRAINED or bool(cache and cache.exists())


def _cache_file(steps: int, batch: int, size: int) -> "Path | None":
    root = os.environ.get("DEPLOYKIT_CACHE_DIR", str(Path.home() / ".cache" / "deploykit"))
    if not root:
        return None
    code = Path(__file__).read_text() + Path(shapes.__file__).read_text()
    digest = hashlib.sha256(f"{code}|{torch.__version__}|{steps}|{batch}|{size}".encode()).hexdigest()[:16]
    return Path(root) / "trained" / f"mobilenet_v2-{digest}.pt"


def _load(path: Path) -> "tuple | None":
    """A cache entry that does not load (truncated, another format) is ignored and rewritten."""
    try:
        saved = torch.load(path, weights_only=True)
        return saved["state"], {**saved["info"], "from_cache": str(path)}
    except Exception:  # noqa: BLE001 - any unreadable entry means: train again
        return None


def _save(path: Path, payload: dict) -> None:
    """Written to a temporary name and renamed: a crash never leaves half a cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, partial)
    os.replace(partial, path)


def _train(model: MobileNetV2, steps: int, batch: int) -> tuple:
    started = time.perf_counter()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=steps, pct_start=0.15)
    model.train()
    losses = []
    with Progress("training mobilenet_v2", total=steps,
                  intro=f"once per machine, then cached; {TRAINING_TIME}") as bar:
        for step in range(steps):
            images, labels = shapes.dataset(batch, model.image_size, seed=1000 + step)
            loss = nn.functional.cross_entropy(model(torch.from_numpy(images)), torch.from_numpy(labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(step + 1, loss=float(np.mean(losses[-10:])))
    model.eval()
    info = {"task": "shapes (10 classes, synthetic)", "steps": steps, "batch": batch,
            "loss_first": round(losses[0], 3), "loss_last": round(float(np.mean(losses[-10:])), 3),
            "accuracy": accuracy(model), "seconds": round(time.perf_counter() - started, 1)}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, info


def accuracy(model: MobileNetV2, count: int = 200) -> float:
    """Top-1 accuracy on held-out shapes images at the model's own size."""
    images, labels = shapes.dataset(count, model.image_size, seed=99)
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(torch.from_numpy(images[i:i + 50])) for i in range(0, count, 50)])
    return round(float((scores.argmax(dim=1).numpy() == labels).mean()), 3)
