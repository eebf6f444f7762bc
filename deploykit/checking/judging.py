"""What an artifact is judged with: the preset its (trusted) manifest or its own bytes call for, and the feeds."""
from __future__ import annotations

from typing import Optional

from deploykit import parity
from deploykit.artifact import Artifact
from deploykit.inputs import load_npz, random_feeds
from deploykit.model import LoadedModel
from deploykit.options import PRECISION_OF, VerifyOptions
from deploykit.parity import Tolerance, tolerance_for
from deploykit.source_precision import source_precision


def trusted_manifest(artifact: Artifact, source: LoadedModel, source_hash: dict) -> tuple:
    """(the manifest whose precision may pick the tolerance, a note saying why or why not).

    A sidecar file is not evidence: a manifest decides the preset only when the artifact's bytes and the
    source's bytes are the ones it records (anyone can write {"precision": "int8"} beside a damaged file)."""
    from deploykit.fsutil import sha256_of

    stored = artifact.manifest or {}
    precision = stored.get("precision")
    if precision in (None, "fp32"):
        return stored, ""
    recorded = ((stored.get("artifact") or {}).get("sha256"), (stored.get("source") or {}).get("sha256"))
    if "sha256" not in source_hash:      # hashed once per verify, and only when a manifest claims a precision
        source_hash["sha256"] = sha256_of(source.path)
    if recorded == (artifact.sha256, source_hash["sha256"]) and all(recorded):
        return stored, f"judged with the {precision} preset: its manifest records this artifact's and this source's sha256"
    return {k: v for k, v in stored.items() if k != "precision"}, (
        f"its manifest says {precision}, but does not record this artifact's and this source's sha256: judged with "
        "the fp32 preset (give --precision to choose one)")


def artifact_tolerance(stored: dict, options: VerifyOptions):
    """Without --precision, a quantized artifact is judged with its precision's preset (from its manifest)."""
    if options.precision is not None or stored.get("precision") in (None, "fp32"):
        return None
    return tolerance_for(PRECISION_OF.get(stored["precision"], "fp32"), options.atol, options.rtol)


def quantized_file_tolerance(artifact: Artifact, current: Tolerance, options: VerifyOptions) -> tuple:
    """(the preset of a quantized artifact file no manifest describes, why), when it is looser than the checker's:
    the file's own bytes say it is quantized (int8 weights, QDQ, fp16 weights), a sidecar cannot lie about that."""
    precision, why = source_precision(artifact)
    if parity.looser_preset(current.preset, precision) == current.preset:
        return None, ""
    return (tolerance_for(precision, options.atol, options.rtol),
            why.replace("source", "the artifact", 1) + " (--precision overrides)")


def int8_feeds(model: LoadedModel, stored: dict, options: VerifyOptions) -> Optional[tuple]:
    """An int8 artifact is verified on normal and uniform samples (plus --inputs), not the 3-sigma and
    negated ones that exercise float branches: int8 clips what its calibration never saw."""
    if stored.get("precision") != "int8" or options.precision is not None:
        return None
    pool = random_feeds(model.spec, 4 * options.samples, options.seed)
    feeds = [f for i, f in enumerate(pool) if i % 4 in (0, 1)][:options.samples]
    if options.inputs_npz:
        feeds += load_npz(options.inputs_npz, model.spec)
    return ("normal/uniform (int8)", feeds)
