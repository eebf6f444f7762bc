"""The same networks from the TF/Keras side: the seed's two-layer net and a MobileNetV2-style CNN.

The two-layer net is the PyTorch sample's twin (Dense(100, relu), Dense(10), N=64, D_in=1000),
trained on random data with an optimizer, as in CS231n lecture 8's Keras example. The CNN is
the PyTorch MobileNetV2 sample layer for layer, NHWC, carrying the weights that sample learned
on the shapes task: one trained network, written in both frameworks.
"""
from __future__ import annotations

import numpy as np

N, D_IN, H, D_OUT = 64, 1000, 100, 10
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


def _keras():
    from deploykit.frameworks import import_tensorflow

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
    padding = "same"
    if stride == 2:
        # PyTorch pads one pixel on every side; Keras "same" would pad only bottom/right at even sizes.
        x, padding = keras.layers.ZeroPadding2D(kernel // 2)(x), "valid"
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False)(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5)(x)    # PyTorch's epsilon, for the shared weights
    return keras.layers.ReLU(6.0)(x) if act else x


def mobilenet_v2(image_size: int = 224, classes: int = 10):
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


def weights_from_torch_twin(model) -> dict:
    """Copy the trained PyTorch MobileNetV2 sample into this twin (needs torch), then check they agree."""
    try:
        import torch
    except ImportError:
        raise RuntimeError("keras_mobilenet_v2 takes its trained weights from the PyTorch sample: install torch "
                           "(pip install -e .[torch])") from None
    from sample_models import mobilenet, shapes

    twin = mobilenet.mobilenet_v2()
    info = mobilenet.train(twin)
    _copy_weights(twin, model)
    images, labels = shapes.dataset(8, model.inputs[0].shape[1], seed=3)
    with torch.no_grad():
        expected = twin(torch.from_numpy(images)).numpy()
    got = np.asarray(model(images.transpose(0, 2, 3, 1)))
    return {**info, "max_abs_vs_torch_twin": float(f"{np.abs(got - expected).max():.3g}")}


def calibrate_batchnorm(model, batches: int = 2, batch_size: int = 8) -> dict:
    """BatchNorm moving statistics from shapes images (momentum 0 = take the batch's), for Keras models
    built elsewhere (keras.applications) whose random-weight BN would otherwise be the identity."""
    from sample_models import shapes

    keras = _keras()
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    size = model.inputs[0].shape[1]
    for layer in layers:
        layer.momentum = 0.0
    for index in range(batches):
        model(shapes.dataset(batch_size, size, seed=700 + index, channels_first=False)[0], training=True)
    for layer in layers:
        layer.momentum = 0.99
    return {"batchnorm_calibration_batches": batches}


def _copy_weights(torch_model, model) -> None:
    """Layer for layer in creation order: Conv2d/BatchNorm2d/Linear to Conv2D|DepthwiseConv2D/BN/Dense."""
    keras = _keras()
    from torch import nn

    sources = [m for m in torch_model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization, keras.layers.Dense)
    targets = [layer for layer in model.layers if isinstance(layer, kinds)]
    assert len(sources) == len(targets), (len(sources), len(targets))
    for source, target in zip(sources, targets):
        weights = {k: v.detach().numpy() for k, v in source.state_dict().items() if k != "num_batches_tracked"}
        if isinstance(source, nn.BatchNorm2d):
            target.set_weights([weights["weight"], weights["bias"], weights["running_mean"], weights["running_var"]])
        elif isinstance(source, nn.Linear):
            target.set_weights([weights["weight"].T, weights["bias"]])
        elif isinstance(target, keras.layers.DepthwiseConv2D):
            target.set_weights([weights["weight"].transpose(2, 3, 0, 1)])     # [C,1,kh,kw] -> [kh,kw,C,1]
        else:
            target.set_weights([weights["weight"].transpose(2, 3, 1, 0)])     # [O,I,kh,kw] -> [kh,kw,I,O]


def example_inputs(model) -> dict:
    """Seeded example inputs: N=64 rows for the two-layer net, one shapes image for the CNN."""
    from sample_models import shapes

    rng = np.random.default_rng(7)
    feeds = {}
    for tensor in model.inputs:
        shape = [N if d is None else d for d in tensor.shape]
        if len(shape) == 4:
            feeds[tensor.name] = shapes.dataset(1, shape[1], seed=7, channels_first=False)[0]
        else:
            feeds[tensor.name] = rng.standard_normal(shape).astype("float32")
    return feeds
