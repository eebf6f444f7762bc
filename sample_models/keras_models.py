"""The same networks from the TF/Keras side: the seed's two-layer net and a MobileNetV2-style CNN.

The two-layer net is the PyTorch sample's twin (Dense(100, relu), Dense(10), N=64, D_in=1000),
trained on random data with an optimizer, as in CS231n lecture 8's Keras example.
"""
from __future__ import annotations

import numpy as np

N, D_IN, H, D_OUT = 64, 1000, 100, 10
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


def _keras():
    from runtimes.tensorflow import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    return keras


def two_layer_net():
    keras = _keras()
    inputs = keras.Input((D_IN,), name="x")
    hidden = keras.layers.Dense(H, activation="relu", name="linear1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(D_OUT, name="linear2")(hidden), name="two_layer_net")


def train_two_layer(model, epochs: int = 50) -> dict:
    keras = _keras()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D_IN)).astype("float32")
    y = rng.standard_normal((N, D_OUT)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mean_squared_error")
    history = model.fit(x, y, epochs=epochs, batch_size=N, verbose=0).history["loss"]
    return {"loss_first": float(f"{history[0]:.4g}"), "loss_last": float(f"{history[-1]:.4g}"), "epochs": epochs}


def _conv_bn(keras, x, filters: int, kernel: int, stride: int, depthwise: bool = False, act: bool = True):
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.ReLU(6.0)(x) if act else x


def mobilenet_v2(image_size: int = 224, classes: int = 1000):
    keras = _keras()
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x, channels = _conv_bn(keras, inputs, 32, 3, 2), 32
    for expansion, out, repeats, stride in _SETTINGS:
        for index in range(repeats):
            step = stride if index == 0 else 1
            y = _conv_bn(keras, x, channels * expansion, 1, 1) if expansion != 1 else x
            y = _conv_bn(keras, y, 0, 3, step, depthwise=True)
            y = _conv_bn(keras, y, out, 1, 1, act=False)
            x = keras.layers.Add()([x, y]) if step == 1 and channels == out else y
            channels = out
    x = _conv_bn(keras, x, 1280, 1, 1)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="classifier")(x), name="mobilenet_v2")


def calibrate_batchnorm(model, batches: int = 2, batch_size: int = 8) -> dict:
    """BatchNorm moving statistics from random images (momentum 0 = take the batch's), as in the torch twin."""
    keras = _keras()
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    rng = np.random.default_rng(1)
    size = model.inputs[0].shape[1]
    for layer in layers:
        layer.momentum = 0.0
    for _ in range(batches):
        model(rng.random((batch_size, size, size, 3)).astype("float32"), training=True)
    for layer in layers:
        layer.momentum = 0.99
    return {"batchnorm_calibration_batches": batches}


def example_inputs(model) -> dict:
    """Seeded example inputs: N=64 rows for the two-layer net, one image for the CNN."""
    rng = np.random.default_rng(7)
    feeds = {}
    for tensor in model.inputs:
        shape = [N if d is None else d for d in tensor.shape]
        if len(shape) == 4:
            shape[0] = 1
            feeds[tensor.name] = rng.random(shape).astype("float32")
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype("float32")
    return feeds
