"""Sample models built in code from fixed seeds. This registry imports no framework.

Each sample has a factory (``sample_models.<module>:<function>``, usable directly as a
deploykit source with ``--weights``) and, where it matters, a short training step. A "causal_lm" sample is
built as a Hugging Face folder (its module's ``write_folder``), the source that ``deploykit export`` reads for
a decoder; its factory only builds the untrained model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class SampleModel:
    name: str
    framework: str
    factory: str                   # "module:function" returning an untrained nn.Module
    prepare: Optional[str]         # "module:function(model) -> dict" training or calibration
    description: str
    exportable: bool = True        # False: torch.export cannot capture it (data-dependent control flow)
    torchscript: bool = True       # False: TorchScript cannot serialize it (a Python autograd.Function)
    tolerance: str = "fp32"
    data: Optional[str] = None     # "module:function(out_dir, force) -> dict" writing calibration data


SAMPLES = (
    SampleModel("two_layer_net", "torch", "sample_models.two_layer:two_layer_net", "sample_models.two_layer:train",
                "the seed's two-layer ReLU net, N=64 D_in=1000 H=100 D_out=10, trained on random data"),
    SampleModel("two_layer_custom_relu", "torch", "sample_models.two_layer:two_layer_custom_relu",
                "sample_models.two_layer:train",
                "the same net with the seed's custom autograd.Function ReLU (no TorchScript file: TorchScript "
                "cannot serialize a Python autograd.Function)", torchscript=False),
    SampleModel("mobilenet_v2", "torch", "sample_models.mobilenet:mobilenet_v2", "sample_models.mobilenet:train",
                "MobileNetV2-style CNN, 1x3x224x224, 2.2 M params, trained on the synthetic 10-class shapes task",
                data="sample_models.shapes:write_images"),
    SampleModel("tiny_transformer", "torch", "sample_models.transformer:tiny_transformer",
                "sample_models.transformer:train",
                "Transformer encoder (embedding, attention, layer norm) on token ids 1x32, trained on a toy task",
                data="sample_models.transformer:write_calibration"),
    SampleModel("dynamic_gate", "torch", "sample_models.dynamic:dynamic_gate", None,
                "data-dependent control flow (`if x.sum() > 0`): the dynamic-graph case", exportable=False),
    SampleModel("keras_two_layer_net", "tensorflow", "sample_models.keras_models:two_layer_net",
                "sample_models.keras_models:train_two_layer",
                "the seed's two-layer net in Keras (Dense(100, relu), Dense(10)), trained on random data (Adam)"),
    SampleModel("keras_mobilenet_v2", "tensorflow", "sample_models.keras_models:mobilenet_v2",
                "sample_models.keras_models:weights_from_torch_twin",
                "the MobileNetV2 sample in Keras, 1x224x224x3 (NHWC), with the weights the PyTorch twin learned",
                data="sample_models.shapes:write_images"),
    SampleModel("tiny_llama", "causal_lm", "sample_models.tiny_llama:tiny_llama", "sample_models.tiny_llama:train",
                "Llama decoder (3 layers, hidden 128, 4 heads sharing 2 key/value heads, BPE vocabulary 512) trained "
                "~1 min on the Gettysburg Address and the Declaration's opening; a Hugging Face folder"),
)


def names(framework: "str | None" = None) -> list:
    return [s.name for s in SAMPLES if framework is None or s.framework == framework]


def get(name: str) -> SampleModel:
    for sample in SAMPLES:
        if sample.name == name:
            return sample
    raise KeyError(name)
