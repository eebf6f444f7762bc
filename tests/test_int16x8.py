"""The int8 repair's 16x8 step (int16 activations, int8 weights) on a constructed Keras attention block: where plain
full-integer int8 fails its preset, the whole model in 16x8 passes before any layer is given up to float, and the
result says which ops run 16x8, int8 and float. The real encoder (all-MiniLM-L6-v2) is a bench:
bench/quantize_encoder.py --tflite."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SEQ, WIDTH = 16, 32


def _attention_block(folder: Path) -> tuple:
    """Self-attention with a HuggingFace-style mask (float32's lowest added to the padded keys' scores), then an FFN
    whose hidden layer has one unit 300 above the rest that the output ignores: per-tensor int8 activations keep the
    outlier and round away the units that matter (as in an LLM's outlier features); int16 resolves both."""
    import tensorflow as tf

    keras, ops = tf.keras, tf.keras.ops      # keras.ops on symbolic tensors: saved without a Python lambda
    keras.utils.set_random_seed(0)
    tokens = keras.Input((SEQ, WIDTH), batch_size=1, name="tokens")
    mask = keras.Input((SEQ,), batch_size=1, name="mask")
    query, key, value = (keras.layers.Dense(WIDTH, name=n)(tokens) for n in ("query", "key", "value"))
    scores = ops.matmul(query, ops.transpose(key, (0, 2, 1))) / WIDTH ** 0.5
    fill = ops.where(ops.expand_dims(mask, 1) > 0.5, 0.0, float(np.finfo(np.float32).min))   # HF's masked_fill
    weights = keras.layers.Softmax()(scores + fill)
    attended = ops.matmul(weights, value)
    hidden_layer = keras.layers.Dense(64, activation="relu", name="ffn_in")
    output_layer = keras.layers.Dense(WIDTH, name="ffn_out")
    outputs = output_layer(hidden_layer(keras.layers.Dense(WIDTH, name="attn_out")(attended)))
    model = keras.Model([tokens, mask], outputs)
    kernel, bias = hidden_layer.get_weights()
    kernel[:, 0], bias[0] = 0.0, 300.0
    hidden_layer.set_weights([kernel, bias])
    out_kernel, out_bias = output_layer.get_weights()
    out_kernel[0, :] = 0.0
    output_layer.set_weights([out_kernel, out_bias])
    source = folder / "attention.keras"
    model.save(source)
    rng = np.random.default_rng(0)
    count = 48
    lengths = rng.integers(4, SEQ + 1, count)
    calibration = folder / "attention.calibration.npz"
    np.savez(calibration, tokens=rng.standard_normal((count, 1, SEQ, WIDTH)).astype(np.float32),
             mask=(np.arange(SEQ)[None, None, :] < lengths[:, None, None]).astype(np.float32))
    return source, calibration


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.litert
def test_an_attention_block_that_fails_plain_int8_passes_in_16x8(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from deploykit import api

    pytest.importorskip("ai_edge_quantizer")
    source, calibration = _attention_block(tmp_path)
    result = api.export(str(source), "tflite", str(tmp_path / "m.tflite"),
                        quantize=api.QuantizeOptions("int8", calibration=str(calibration)))
    assert result.passed
    hop = json.loads(Path(result.manifest).read_text())["route"][-1]
    # a repair runs only after the plain full-int8 model failed (here LiteRT aborts loading it: the mask's scale)
    assert any(n.startswith("int8 repaired after 2 quantization(s)") and "16x8" in n for n in hop["notes"])
    repairs = [a for a in hop["attempts"] if a["tool"].startswith("int8 repair")]
    assert [a["ok"] for a in repairs] == [True] and "16x8" in repairs[0]["tool"]   # the first repair step, no float
    precisions = next(n for n in hop["notes"] if n.startswith("layers by precision"))
    assert "16x8:" in precisions and "FULLY_CONNECTED" in precisions and "SOFTMAX" in precisions  # the masked one
    assert not hop.get("kept_float")
    interpreter = Interpreter(model_path=result.artifact)
    dtypes = {t["dtype"] for t in interpreter.get_tensor_details()}
    assert np.int16 in dtypes and np.int8 in dtypes          # int16 activations, int8 weights
