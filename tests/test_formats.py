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


@pytest.mark.parametrize("text", ['"quoted"\n', "(x)\n", "2 apples\n", ": colon\n", "Bonjour\n", "readme\n", "zebra\n",
                                  "runs:\n  - model: m.onnx\n", "B" * 5000])
def test_text_that_starts_with_a_modelproto_tag_is_no_onnx(tmp_path, text):
    """Each first byte is an onnx.ModelProto tag (the old test of the first byte alone took these for ONNX)."""
    (tmp_path / "m.onnx").write_text(text)
    with pytest.raises(ModelLoadError, match="unknown model format"):
        detect(tmp_path / "m.onnx")


@pytest.mark.parametrize("content, onnx", [
    (b"\x08", True),                              # cut inside ir_version: a truncated model (the loader says so)
    (b"\x08\x80", True),
    (b"\x08\x08" + b"\x00" * 64, True),           # damaged after ir_version: the loader names it corrupt
    (b"\x12\x03abc\x08\x07", True),               # fields out of number order, ir_version among the first
    (b"\x08\x00", False),                         # ir_version 0 is none ONNX defines
    (b"\x08\x80\x80\x04", False),                 # ir_version 65536: a random varint, no IR version
    (b"\x12\x03a\xff\xfe\x08\x07", False),        # producer_name that is no UTF-8
    (b"\x12\x40abc\x08\x07", False),              # a length past the end before any ir_version
    (b"\x12\x03abc", False),                      # whole fields, but no ir_version
    (b"\x78\x01\x08\x07", False),                 # field 15 is no ModelProto field
])
def test_onnx_is_recognised_by_walking_its_fields(tmp_path, content, onnx):
    (tmp_path / "m.bin").write_bytes(content)
    if onnx:
        assert detect(tmp_path / "m.bin") == Format.ONNX
    else:
        with pytest.raises(ModelLoadError, match="unknown model format"):
            detect(tmp_path / "m.bin")


@pytest.mark.onnxruntime
def test_a_real_onnx_cut_anywhere_is_still_onnx_and_a_huge_one_is_not_read(tmp_path):
    """Truncated real models keep their "not a valid ONNX" message (the loader's); a 3 GB file is detected from a
    few bytes (a sparse file: reading it whole would take seconds and the memory)."""
    from tests.hostile.builders import sparse_file, tiny_onnx

    data = tiny_onnx(tmp_path / "tiny.onnx").read_bytes()
    assert detect(tmp_path / "tiny.onnx") == Format.ONNX
    for cut in range(1, len(data)):
        (tmp_path / "cut.onnx").write_bytes(data[:cut])
        assert detect(tmp_path / "cut.onnx") == Format.ONNX, cut
    big = sparse_file(tmp_path / "big.onnx", data[:40], 3 * 1024**3)
    assert detect(big) == Format.ONNX
