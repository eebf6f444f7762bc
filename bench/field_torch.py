"""Field models that ship as a PyTorch state_dict, not as a runnable file: the package's own architecture, written
out here, loaded with the wheel's weights and traced to TorchScript the way a user of that package would export it.

Only resemblyzer today (Resemblyzer 0.1.4, Apache-2.0): its VoiceEncoder is a 3-layer LSTM(40 → 256) over 160 mel
frames, the last layer's final hidden state through Linear(256, 256) + ReLU, L2-normalised — a speaker embedding.
The traced file is written next to the extracted state_dict in the field cache (nothing is committed).
"""
from __future__ import annotations

import os
from pathlib import Path

RESEMBLYZER = "resemblyzer==0.1.4"
RESEMBLYZER_WEIGHTS = "resemblyzer/pretrained.pt"
PARTIAL_FRAMES = 160        # resemblyzer.hparams.partials_n_frames: the sequence length it feeds the LSTM
MEL_CHANNELS = 40


def _voice_encoder():
    """resemblyzer.voice_encoder.VoiceEncoder's layers and forward, without its audio front end."""
    import torch
    from torch import nn

    class VoiceEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(MEL_CHANNELS, 256, 3, batch_first=True)
            self.linear = nn.Linear(256, 256)
            self.relu = nn.ReLU()

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(mels)
            embeds_raw = self.relu(self.linear(hidden[-1]))
            return embeds_raw / torch.norm(embeds_raw, dim=1, keepdim=True)

    return VoiceEncoder()


def build_resemblyzer(weights: Path) -> Path:
    """The traced speaker encoder (input mels [1, 160, 40]) built from the wheel's ``pretrained.pt``; built once."""
    target = weights.with_name("voice_encoder_traced.pt")
    if target.exists():
        return target
    import torch

    encoder = _voice_encoder()
    checkpoint = torch.load(str(weights), map_location="cpu", weights_only=True)
    # strict=False as resemblyzer itself loads it: the checkpoint also holds the GE2E loss's similarity scale.
    missing, _unused = encoder.load_state_dict(checkpoint["model_state"], strict=False)
    if missing:
        raise RuntimeError(f"resemblyzer's checkpoint lacks {missing}: the architecture here no longer matches")
    encoder.eval()
    example = torch.randn(1, PARTIAL_FRAMES, MEL_CHANNELS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        traced = torch.jit.trace(encoder, (example,))
    staged = target.with_suffix(".partial")
    traced.save(str(staged))
    os.replace(staged, target)      # atomic, like tests/field.py's extraction
    return target


FACENET = "facenet-pytorch==2.6.0"       # MIT; MTCNN's three stages ship as state_dicts beside their module code
FACENET_MODULE = "facenet_pytorch/models/mtcnn.py"
MTCNN_INPUTS = {"ONet": (1, 3, 48, 48), "RNet": (1, 3, 24, 24)}


def build_mtcnn(module_file: Path, weights: Path, stage: str = "ONet") -> Path:
    """MTCNN's ``stage`` (ONet: 48×48 face crop → box, 5 landmarks, face probability) from the wheel's own
    ``mtcnn.py`` and its weights, saved as a torch.export program (``<stage>.pt2`` beside the weights); built once.

    The wheel's ``mtcnn.py`` imports its detection utilities, which need torchvision, at module level; the network
    classes never use them, so a stand-in module takes their place while the file is executed (torchvision is not
    one of deploykit's dependencies). The class reads its weights from ``../data/<stage>.pt`` beside the module, as
    the package lays them out."""
    target = weights.with_name(f"{stage.lower()}.pt2")
    if target.exists():
        return target
    import importlib.util
    import sys
    import types

    import torch

    for name in ("facenet_pytorch", "facenet_pytorch.models", "facenet_pytorch.models.utils"):
        sys.modules.setdefault(name, types.ModuleType(name)).__path__ = []
    stand_in = types.ModuleType("facenet_pytorch.models.utils.detect_face")
    stand_in.detect_face = stand_in.extract_face = None
    sys.modules[stand_in.__name__] = stand_in
    spec = importlib.util.spec_from_file_location("facenet_pytorch.models.mtcnn", module_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = getattr(module, stage)(pretrained=False).eval()
    network.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
    example = torch.rand(*MTCNN_INPUTS[stage], generator=torch.Generator().manual_seed(0))
    staged = target.with_name(f"{target.stem}.partial.pt2")      # torch.export.save wants the .pt2 suffix
    torch.export.save(torch.export.export(network, (example,)), str(staged))
    os.replace(staged, target)
    return target
