"""TensorFlow: load Keras (.keras, .h5) models and SavedModels; run them (Keras call / serving signature)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from deploykit.errors import ModelLoadError, UnsupportedModelError
from deploykit.formats import Format
from deploykit.frameworks import import_tensorflow
from deploykit.model import LoadedModel, LoadOptions
from deploykit.quiet import captured_output
from deploykit.runner import RunnerBase, RunnerOptions, first_line
from deploykit.spec import ModelSpec, TensorSpec, merge_user_specs
from deploykit.text import natural_key


def load_model(path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    import_tensorflow()
    if fmt == Format.SAVED_MODEL:
        return _load_saved_model(path, fmt, options)
    import keras

    try:
        with captured_output():
            model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - keras raises ValueError/OSError/... for bad files
        raise ModelLoadError(f"{path}: cannot load this Keras model ({first_line(exc)})",
                             "the file may be truncated, or need custom objects: save it again") from None
    inputs = merge_user_specs([_keras_input_spec(t) for t in model.inputs], options.input_specs)
    spec = _with_outputs(ModelSpec(tuple(inputs)), lambda feeds: _call_keras(model, spec_inputs=inputs, feeds=feeds),
                         lambda: _keras_declared_outputs(model))
    return LoadedModel(path=path, format=fmt, spec=spec, handle=model, details={"keras": keras.__version__})


def _load_saved_model(path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    tf = import_tensorflow()
    try:
        with captured_output():
            loaded = tf.saved_model.load(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load this SavedModel ({first_line(exc)})",
                             "the directory may be incomplete: export it again") from None
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise UnsupportedModelError(f"{path} has no serving_default signature",
                                    "export it with model.export(path) or tf.saved_model.save(..., signatures=...)")
    _args, kwargs = signature.structured_input_signature
    inputs = merge_user_specs([TensorSpec(name, _dims(t.shape), t.dtype.name) for name, t in kwargs.items()],
                              options.input_specs)
    model = _SavedModelCallable(loaded, signature)
    spec = _with_outputs(ModelSpec(tuple(inputs)), model, lambda: _declared_outputs(signature.structured_outputs))
    return LoadedModel(path=path, format=fmt, spec=spec, handle=model, details={"signature": "serving_default"})


class _SavedModelCallable:
    """Keeps the loaded object alive beside its signature function (which only holds a weak reference)."""

    def __init__(self, loaded, signature):
        self.loaded, self.signature = loaded, signature

    def __call__(self, feeds: Mapping) -> dict:
        import tensorflow as tf

        result = self.signature(**{k: tf.constant(v) for k, v in feeds.items()})
        return {k: v.numpy() for k, v in sorted(result.items(), key=lambda kv: natural_key(kv[0]))}


def _keras_input_spec(tensor) -> TensorSpec:
    name = getattr(tensor, "name", "input")
    dtype = np.dtype(str(tensor.dtype).replace("tf.", "")).name
    return TensorSpec(name, _dims(tensor.shape), dtype, "NHWC" if len(tensor.shape) == 4 else None)


def _declared_outputs(outputs: dict) -> tuple:
    """A signature's structured outputs (name -> tf.TensorSpec), in the order the callable returns them."""
    return tuple(TensorSpec(str(k), _dims(v.shape), v.dtype.name)
                 for k, v in sorted(outputs.items(), key=lambda kv: natural_key(str(kv[0]))))


def _keras_declared_outputs(model) -> tuple:
    """A Keras model's outputs, named as _call_keras names them."""
    outputs = list(model.outputs)
    names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    return tuple(TensorSpec(name, _dims(t.shape), np.dtype(str(t.dtype).replace("tf.", "")).name)
                 for name, t in zip(names, outputs))


def _dims(shape) -> tuple:
    dims = list(shape)
    return tuple("batch" if (d is None and i == 0) else ("?" if d is None else int(d)) for i, d in enumerate(dims))


def _call_keras(model, spec_inputs: list, feeds: Mapping) -> dict:
    args = [np.asarray(feeds[t.name]) for t in spec_inputs]
    result = model(args if len(args) > 1 else args[0], training=False)
    values = result if isinstance(result, (list, tuple)) else [result]
    if isinstance(result, dict):
        return {str(k): np.asarray(v) for k, v in result.items()}
    if len(values) == 1:
        return {"output": np.asarray(values[0])}
    return {f"output_{i}": np.asarray(v) for i, v in enumerate(values)}


def _with_outputs(spec: ModelSpec, call, declared) -> ModelSpec:
    """The outputs as one call on random inputs gives them; as the model declares them (``declared()``, dynamic
    dims "?") when an input has a dynamic dim only --input can fix (a SavedModel's height and width): the
    signature is read all the same (`inspect`), and whatever must run the model asks for the shape itself."""
    from deploykit.errors import UsageError
    from deploykit.inputs import random_feeds

    try:
        feeds = random_feeds(spec, 1)[0]
    except UsageError:
        return ModelSpec(spec.inputs, declared())
    outputs = call(feeds)
    return ModelSpec(spec.inputs, tuple(TensorSpec(k, tuple(v.shape), v.dtype.name) for k, v in outputs.items()))


class TensorFlowRunner(RunnerBase):
    """Runs a Keras model (model(x, training=False)) or a SavedModel's serving signature."""

    def __init__(self, model: LoadedModel, options: RunnerOptions = RunnerOptions()):
        self.model, self.options = model, options

    def open(self) -> None:
        tf = import_tensorflow()
        if self.options.threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self.options.threads)
            except RuntimeError:
                pass  # TensorFlow refuses once it has initialized; the runtime keeps its own count

    def run(self, feeds: Mapping) -> dict:
        handle = self.model.handle
        if isinstance(handle, _SavedModelCallable):
            outputs = handle({t.name: feeds[t.name] for t in self.model.spec.inputs})
        else:
            outputs = _call_keras(handle, list(self.model.spec.inputs), feeds)
        return dict(zip(self.model.spec.output_names, outputs.values()))
