"""Converter edges that fail in each typed way, to test the route outcomes without converting a model."""
from deploykit.conversion import ConversionResult, accept
from deploykit.errors import ConversionError, MissingDependency

SPEC = {"inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 2], "dtype": "float32"}]}


def _described(out_path) -> dict:
    out_path.write_bytes(b"\x08\x07")      # never read: the description stands for the file
    return {"path": str(out_path), "format": "onnx", "spec": SPEC, "details": {}}


def raises(model, out_path, options, check):
    raise ConversionError("the tool gave up", "try another route")


def missing(model, out_path, options, check):
    raise MissingDependency("somepackage is not installed", "pip install somepackage")


def writes_garbage(model, out_path, options, check):
    out_path.write_bytes(b"garbage, not a model")
    return accept(ConversionResult(out_path, "fake", "fake"), check, options, "fake", "the fake tool", "none")


def writes_ok(model, out_path, options, check):
    result = ConversionResult(out_path, "fake", "fake", description=_described(out_path))
    return accept(result, check, options, "fake", "the fake tool", "none")


def copies(model, out_path, options, check):
    """A converter that writes the source ONNX file unchanged: a whole export with no tool behind it."""
    import shutil

    shutil.copyfile(model.path, out_path)
    return accept(ConversionResult(out_path, "fake", "fake copy"), check, options, "fake", "the fake tool", "none")
