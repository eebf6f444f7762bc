"""A MobileNetV2-style CNN written here: inverted residuals, depthwise convs, BatchNorm, ReLU6.

Width 1.0, 1000 classes, 1x3x224x224 input: about 3.5 M parameters, as in the paper.
"""
from __future__ import annotations

import torch
from torch import nn

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
        return self.classifier(features.mean(dim=(2, 3)))

    def example_inputs(self):
        size = self.image_size
        return (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(7)),)


def mobilenet_v2() -> MobileNetV2:
    torch.manual_seed(0)
    return MobileNetV2().eval()


def calibrate_batchnorm(model: MobileNetV2, batches: int = 4, batch_size: int = 8) -> dict:
    """Set BatchNorm running statistics from random images, so activations keep a sane scale.

    Without it, eval-mode BN is the identity and the random-weight logits drift to huge or
    tiny values, which makes parity numbers meaningless.
    """
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None      # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(batch_size, 3, model.image_size, model.image_size, generator=generator))
    model.eval()
    return {"batchnorm_calibration_batches": batches}
