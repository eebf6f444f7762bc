"""Nothing printed from a model file can drive the terminal: control characters are escaped, markup is text."""
import pytest

from deploykit.text import printable
from tests.conftest import assert_clean_error, run_cli

EVIL = "in\x1b[31mput\x1b]0;pwned\x07\u202e"


def test_printable_escapes_control_and_bidi_characters():
    assert printable(EVIL) == "in\\x1b[31mput\\x1b]0;pwned\\x07\\u202e"
    assert printable("plain name_1 ü\tok\n") == "plain name_1 ü\tok\n"


@pytest.mark.onnxruntime
def test_a_hostile_onnx_file_cannot_write_escapes_to_the_terminal(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", [EVIL], ["out[/red]"])], "g",
                              [helper.make_tensor_value_info(EVIL, TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("out[/red]", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, producer_name="\x1b]0;owned\x07tool", opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "evil.onnx"
    onnx.save(model, str(path))
    proc = run_cli("inspect", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout and "\u202e" not in proc.stdout
    assert "\\x1b[31m" in proc.stdout and "out[/red]" in proc.stdout
    proc = run_cli("inspect", str(path), "--input", "nosuch:1x4")
    assert_clean_error(proc, 2, "--input names nosuch")
    assert "\x1b" not in proc.stderr and "\\x1b[31m" in proc.stderr
    proc = run_cli("inspect", str(path), "--json")
    assert proc.returncode == 0 and "\x1b" not in proc.stdout     # JSON escapes it as \\u001b


def test_json_is_printed_for_an_internal_error_too(monkeypatch, capsys):
    """--json promises JSON on stdout: a bug (exit 5) is reported as JSON as well, without a traceback."""
    import json
    import sys

    from deploykit import api

    from deploykit.cli import commands as cli

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(api, "doctor", broken)
    monkeypatch.setattr(sys, "argv", ["deploykit", "doctor", "--json"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    assert exit_.value.code == 5
    data = json.loads(out)
    assert data["exit_code"] == 5 and data["error"] == "InternalError" and "RuntimeError: a bug" in data["message"]
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("failure, said", [
    (MemoryError(), "out of memory"),
    (OSError(28, "No space left on device"), "no space left on device"),
    (OSError(27, "File too large", "/out/model.onnx"), "writing /out/model.onnx: the file-size limit"),
])
def test_running_out_is_said_as_such_not_as_an_internal_error(monkeypatch, capsys, failure, said):
    import sys

    from deploykit import api

    from deploykit.cli import commands as cli

    def exhausted(*args, **kwargs):
        raise failure

    monkeypatch.setattr(api, "doctor", exhausted)
    monkeypatch.setattr(sys, "argv", ["deploykit", "doctor"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    _out, err = capsys.readouterr()
    assert exit_.value.code == 2 and err.startswith(f"error: {said}") and " — " in err and "internal" not in err


def test_an_unreadable_model_file_is_exit_2_not_a_crash(monkeypatch, tmp_path):
    """Root reads any file, so the permission error is simulated where detect opens the file."""
    from deploykit import formats
    from deploykit.errors import ModelLoadError

    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x08")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(formats, "open", denied, raising=False)
    with pytest.raises(ModelLoadError, match="cannot read the file \\(Permission denied\\)"):
        formats.detect(model)
