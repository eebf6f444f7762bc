import zipfile

import pytest

from deploykit.errors import ModelLoadError, UnsupportedModelError
from deploykit.formats import Format, detect, is_factory_reference


def test_factory_references_and_missing_files(tmp_path):
    assert is_factory_reference("sample_models.two_layer:two_layer_net")
    assert detect("pkg.mod:build") == Format.PYTHON_FACTORY
    with pytest.raises(ModelLoadError, match="no such file"):
        detect(tmp_path / "missing.pt")


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\x00\x01garbage-bytes-here", "unknown model format"),
    (b"PK\x03\x04" + b"\x00" * 40, "truncated or corrupt"),
])
def test_bad_files_are_named_precisely(tmp_path, content, message):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        detect(path)


def test_legacy_pickle_and_plain_directory(tmp_path):
    (tmp_path / "old.pt").write_bytes(b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19.")
    with pytest.raises(UnsupportedModelError, match="legacy"):
        detect(tmp_path / "old.pt")
    with pytest.raises(ModelLoadError, match="saved_model.pb"):
        detect(tmp_path)


def test_tflite_hdf5_savedmodel_by_magic(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 8)
    assert detect(tmp_path / "m.bin") == Format.TFLITE
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 8)
    assert detect(tmp_path / "m.h5") == Format.KERAS_H5
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"\x08\x01")
    assert detect(tmp_path / "sm") == Format.SAVED_MODEL


@pytest.mark.torch
def test_torch_files_by_content_not_extension(tmp_path, samples_dir):
    import torch

    assert detect(samples_dir / "two_layer_net.pt") == Format.TORCHSCRIPT
    assert detect(samples_dir / "two_layer_net.pt2") == Format.EXPORTED_PROGRAM
    assert detect(samples_dir / "two_layer_net.weights.pt") == Format.STATE_DICT
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    torch.save(model, tmp_path / "whole.bin")
    assert detect(tmp_path / "whole.bin") == Format.TORCH_PICKLE
    renamed = tmp_path / "actually_torchscript.onnx"
    renamed.write_bytes((samples_dir / "two_layer_net.pt").read_bytes())
    assert detect(renamed) == Format.TORCHSCRIPT


@pytest.mark.torch
def test_truncated_torchscript_is_reported_as_corrupt(tmp_path, samples_dir):
    data = (samples_dir / "two_layer_net.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        detect(tmp_path / "cut.pt")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ModelLoadError, match="holds no known model"):
        detect(tmp_path / "empty.zip")
