"""Nothing of the user's is destroyed: --force replaces only what deploykit wrote, never a device or a folder
holding the source, and two exports to the same name cannot both succeed without --force."""
import os

import pytest

from deploykit import fsutil
from deploykit.errors import OutputExistsError, UsageError
from tests.conftest import assert_clean_error, run_cli

FACTORY = "sample_models.two_layer:two_layer_net"


def test_force_never_replaces_a_fifo_or_device(tmp_path):
    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        fsutil.prepare_output(fifo, force=True)
    assert_clean_error(run_cli("export", FACTORY, "-o", str(fifo), "--force"), 2, "not a regular file")
    assert fifo.is_fifo()


def test_force_never_deletes_a_folder_deploykit_did_not_write(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    proc = run_cli("export", FACTORY, "--to", "saved_model", "-o", str(folder), "--force")
    assert_clean_error(proc, 2, "a directory deploykit did not write")
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_the_output_may_not_hold_or_be_the_source(tmp_path):
    source = tmp_path / "model.onnx"
    assert fsutil.overlaps(tmp_path, source) and fsutil.overlaps(source, tmp_path) and fsutil.overlaps(source, source)
    assert not fsutil.overlaps(tmp_path / "a.onnx", tmp_path / "b.onnx")


def test_publish_without_force_never_clobbers_a_file_that_appeared_meanwhile(tmp_path):
    staged, target = tmp_path / "staged.onnx", tmp_path / "m.onnx"
    staged.write_text("ours")
    target.write_text("theirs")          # another export published first
    with pytest.raises(OutputExistsError, match="appeared while exporting"):
        fsutil.publish([(staged, target)], force=False)
    assert target.read_text() == "theirs"
    fsutil.publish([(staged, tmp_path / "new.onnx")], force=False)
    assert (tmp_path / "new.onnx").read_text() == "ours" and not staged.exists()
