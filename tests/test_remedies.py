"""Every remedy an export prints can apply: its --via names a route the registry offers for this source and target,
and every flag it names is a flag of the CLI.

Was (issue 27, defect 7): "try --via litert" was printed for ONNX and TorchScript sources, where no litert route
exists (`--via litert` then exits 2 with "no route ... goes via 'litert'").
"""
import ast
import itertools
import re
from pathlib import Path

import pytest

from deploykit import errors, registry
from deploykit.conversion import ExportOptions
from deploykit.errors import ConversionError
from deploykit.exporting import routing
from deploykit.formats import Format
from deploykit.model import LoadedModel
from deploykit.registry import ConverterEdge
from deploykit.spec import ModelSpec, TensorSpec

ROOT = Path(__file__).resolve().parents[1]
ERROR_CLASSES = {cls.__name__ for cls in errors._all_subclasses(errors.DeploykitError)}
# Where a remedy is the n-th positional argument (or the keyword): errors, accept, the child's stages.
REMEDY_ARGS = {**{name: (1,) for name in ERROR_CLASSES}, "accept": (5,), "Stage": (3, 4)}
REMEDY_KEYWORDS = ("remedy", "timeout_remedy", "failure_remedy")


def _texts(node) -> list:
    """Every text an expression can be: literals, f-strings (a field is 'X'), + and a if c else b."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [a + b for a, b in itertools.product(_texts(node.left), _texts(node.right))]
    if isinstance(node, ast.IfExp):
        return _texts(node.body) + _texts(node.orelse)
    return []


def _remedies_in(tree) -> list:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            found += [t for i in REMEDY_ARGS.get(name, ()) if i < len(node.args) for t in _texts(node.args[i])]
            found += [t for k in node.keywords if k.arg in REMEDY_KEYWORDS for t in _texts(k.value)]
        elif isinstance(node, ast.Assign) and any("REMEDY" in getattr(t, "id", "") for t in node.targets):
            found += _texts(node.value)
    return found


def remedy_texts() -> list:
    """The remedies the converters, runtimes, the child harness and the core can raise, read from their code."""
    files = [p for folder in ("deploykit", "converters", "runtimes") for p in sorted((ROOT / folder).rglob("*.py"))]
    return sorted({text for path in files for text in _remedies_in(ast.parse(path.read_text()))})


def _offered_by_registry(route: list, via: str) -> bool:
    """The registry's own answer, read from the edges: the route runs that tool or passes that format."""
    return via in {edge.tag for edge in route} or via in {edge.dst.value for edge in route[:-1]}


def _verdicts():
    """Every (source format, target, --quantize, route that failed) an export can end in."""
    sources = sorted({fmt for entry in registry.LOADERS for fmt in entry.formats}, key=lambda f: f.value)
    for src, dst, mode in itertools.product(sources, registry.TARGETS.values(), (None,) + registry.QUANTIZE_MODES):
        offered = routing.offered_routes(src, dst, mode)
        for failed in offered:
            yield src, dst, mode, failed, [r for r in offered if r != failed]


def test_the_code_holds_the_remedies_that_name_routes():
    """The collector finds them (else the tests below would pass on nothing)."""
    texts = remedy_texts()
    vias = [t for t in texts if "--via" in t]
    assert len(texts) > 40 and len(vias) >= 5, vias
    assert any("another route with --via" in t for t in vias)          # the child harness's CONVERT stage


def test_every_printed_remedy_names_only_a_route_this_source_has():
    texts = [t for t in remedy_texts() if "--via" in t]
    checked = 0
    for src, dst, mode, failed, alternatives in _verdicts():
        for text in texts:
            printed = routing.applicable_remedy(text, alternatives, [failed])
            named = re.findall(r"--via(?:[ =]([\w.-]+))?", printed)
            where = f"{src.value} → {dst.value} --quantize {mode}, {[e.name for e in failed]} failed: {printed!r}"
            assert all(named), where                                          # never a bare "--via"
            assert all(any(_offered_by_registry(r, via) for r in alternatives) for via in named), where
            assert printed.strip(), where
            checked += 1
    assert checked > 500


def test_flags_named_in_remedies_are_flags_of_the_cli():
    import typer

    from deploykit.cli.commands import app

    def options(command) -> set:
        found = {opt for p in command.params for opt in p.opts + p.secondary_opts}
        for sub in getattr(command, "commands", {}).values():
            found |= options(sub)
        return found

    cli_flags = options(typer.main.get_command(app)) | {"--help"}
    # Another tool's flags: inside `backticks` (`ray start --head`), or ray start's --resources in a spelled-out command.
    spoken = [re.sub(r"`[^`]*`", "", text).replace("ray start ... --resources", "") for text in remedy_texts()]
    named = {flag for text in spoken for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)}
    assert {"--via", "--input", "--dynamic-batch", "--timeout"} <= named
    assert named <= cli_flags, sorted(named - cli_flags)


def _failing_edge(src: Format, dst: Format) -> ConverterEdge:
    return ConverterEdge("fails", frozenset({src}), dst, "tests.test_remedies:fails_naming_litert", ())


def fails_naming_litert(model, out_path, options, check):
    """onnx2tf's remedy before issue 27, raised by any source."""
    raise ConversionError("onnx2tf failed at node Split_3", "try --via litert, or simplify the ONNX graph first")


@pytest.mark.parametrize("src, printed", [
    (Format.ONNX, "simplify the ONNX graph first"),                 # no litert route from ONNX
    (Format.TORCHSCRIPT, "simplify the ONNX graph first"),          # nor from TorchScript (torch.export cannot)
    (Format.EXPORTED_PROGRAM, "try --via litert, or simplify the ONNX graph first"),
])
def test_the_verdict_keeps_a_via_only_where_the_route_exists(tmp_path, monkeypatch, src, printed):
    monkeypatch.delenv(routing.FORBID_ENV, raising=False)        # the fake edge converts nothing
    model = LoadedModel(f"m.{src.value}", src, ModelSpec((TensorSpec("x", (1, 4)),), (TensorSpec("y", (1, 2)),)))
    run = routing.run_route([_failing_edge(src, Format.TFLITE)], model, tmp_path / "m.tflite", ExportOptions(),
                            checker=None)
    with pytest.raises(ConversionError) as info:
        routing.choose([run], route_all=False)
    assert info.value.remedy == printed
    assert "--via litert" not in info.value.one_line() or src == Format.EXPORTED_PROGRAM


def test_a_route_that_failed_here_too_is_not_suggested():
    """--route all tried litert and onnx: neither is offered again, whatever the first failure suggested."""
    offered = routing.offered_routes(Format.EXPORTED_PROGRAM, Format.TFLITE)
    runs = [routing.RouteRun(route, alternatives=[r for r in offered if r != route],
                             error=ConversionError("it failed", "raise --timeout, or try another route with --via"))
            for route in offered]
    with pytest.raises(ConversionError) as info:
        routing.choose(runs, route_all=True)
    assert info.value.remedy == "raise --timeout"
    assert routing.applicable_remedy(runs[0].error.remedy, runs[0].alternatives, [runs[0].route]) == \
        "raise --timeout, or try another route: --via onnx"


def test_verify_keeps_only_the_routes_this_source_has_in_a_runtimes_remedy(tmp_path, monkeypatch):
    """verify of an artifact that does not run: the runtime's remedy ("e.g. --via litert") is printed only where the
    source has that route (a PyTorch program), not for an ONNX source — checked through verify's own error path."""
    from deploykit import remedies
    from deploykit.checking import checker as checking
    from deploykit.errors import UnsupportedModelError

    hint = ("convert by a route that lowers them to builtin ops (e.g. --via litert, or export with the dynamo "
            "exporter), or run the model with the flex delegate")
    assert "--via litert" in remedies.for_formats(hint, Format.EXPORTED_PROGRAM, Format.TFLITE)
    assert "--via litert" not in remedies.for_formats(hint, Format.ONNX, Format.TFLITE)
    assert "export with the dynamo exporter" in remedies.for_formats(hint, Format.ONNX, Format.TFLITE)

    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")

    class _Flex:
        label, format = "m.tflite", Format.TFLITE

    def refuse(*_args, **_kwargs):
        raise UnsupportedModelError("m.tflite holds FlexSplitV", hint)

    monkeypatch.setattr(checking.Artifact, "open", staticmethod(lambda *_a, **_k: _Flex()))
    monkeypatch.setattr(checking.Checker, "runtimes_for", lambda self, artifact: [None])
    monkeypatch.setattr(checking.Checker, "input_layout", lambda self, artifact, how: (None, None))
    monkeypatch.setattr(checking.Checker, "run_both", refuse)
    monkeypatch.setattr(checking, "trusted_manifest", lambda *_a: ({}, ""))
    from deploykit.model import LoadOptions
    from deploykit.options import VerifyOptions

    with pytest.raises(UnsupportedModelError) as caught:
        checking.verify_artifacts(str(tmp_path / "m.onnx"), ["m.tflite"], LoadOptions(), VerifyOptions())
    assert "--via litert" not in caught.value.remedy and "dynamo" in caught.value.remedy, caught.value.remedy
