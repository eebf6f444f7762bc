"""Hostile cases: names and formats (issue 26: tensor names a converter cannot take, files that only look like a
format).

Each case follows tests/hostile/kit.py's Case contract; corpus.CASES gathers this list.
"""
from __future__ import annotations

import re

from tests.hostile import builders as b
from tests.hostile.kit import Case, _files

# Text that starts with one of the seven printable bytes that are also onnx.ModelProto tags ('"' domain,
# '(' model_version, '2' doc_string, ':' graph, 'B' opset_import, 'r' metadata_props, 'z' a tag detection used to
# accept): each was taken for ONNX by its first byte and reported "not a valid ONNX", not "unknown model format".
_TAG_TEXTS = {"quote": '"quoted" text\n', "paren": "(x)\n", "digit": "2 apples\n", "colon": ": a colon first\n",
              "bonjour": "Bonjour\n", "readme": "readme: see docs/\n", "zebra": "zebra\n"}

# A matrix spec in YAML (its first key 'r' is a ModelProto tag) given where a model goes.
_SPEC_YAML = "runs:\n  - model: zoo/model.onnx\n    targets: [tflite]\nmatrix:\n  targets: [onnx, tflite]\n"

_TFLITE = ("onnxruntime", "tensorflow", "litert")     # an onnx2tf export and its LiteRT check
_EXPORTED = ("m.tflite", "m.tflite.deploykit.json")
# Every source name in the export's parity table, and no note of a pairing other than by name (the artifact
# carries the names).
_PARITY_BY_NAME = r"(?s)^(?!.*by (?:normalised name|shape and position|position))" + "".join(f".*{re.escape(n)}" for n in b.HOSTILE_OUTPUTS)
_SIGNATURE = "(?s)" + ".*".join(re.escape(n) for n in b.HOSTILE_INPUTS + b.HOSTILE_OUTPUTS)


def _export_hostile(work) -> list:
    b.hostile_names_onnx(work / "m.onnx")
    return ["export", "m.onnx", "--to", "tflite", "-o", "m.tflite"]


def _exported_hostile(work) -> list:
    """The hostile-named model exported (in the build: only `inspect` of the artifact is the case)."""
    from deploykit import api

    b.hostile_names_onnx(work / "m.onnx")
    assert api.export(str(work / "m.onnx"), "tflite", str(work / "m.tflite")).passed
    return ["inspect", "m.tflite"]


CASES: list = [
    *(Case(f"names-text-{label}-is-no-onnx", "format", lambda w, t=text: (_files(w, **{"m.onnx": t}),
                                                                         ["inspect", "m.onnx"])[1],
           2, r"m\.onnx: unknown model format") for label, text in _TAG_TEXTS.items()),
    Case("names-spec-yaml-as-model", "format", lambda w: (_files(w, **{"zoo.yaml": _SPEC_YAML}),
                                                          ["export", "zoo.yaml", "--to", "onnx", "-o", "out.onnx"])[1],
         2, r"zoo\.yaml: unknown model format"),
    # --- tensor names onnx2tf cannot take: renamed on its copy, the source's names back in the artifact ---------------
    Case("names-hostile-onnx-exports-to-tflite", "names", _export_hostile, 0, _PARITY_BY_NAME, _TFLITE, slow=True,
         creates=_EXPORTED),
    Case("names-hostile-tflite-carries-source-names", "names", _exported_hostile, 0, _SIGNATURE, _TFLITE, slow=True),
]
