"""A .pt2 archive runs no code of its own: pickled parts are refused before torch.export.load sees them."""
import json
import pickle
import zipfile

import pytest

from tests.conftest import assert_clean_error, run_cli

pytestmark = pytest.mark.torch


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))     # creates the marker file if anything unpickles it


def _rewrite(source, target, change) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            new.writestr(item, change(item.filename, old.read(item.filename)))


def _pickled_weight(marker):
    def change(name, data):
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        return data
    return change, "weights"


def _pickled_sample_inputs(marker):
    def change(name, data):
        return pickle.dumps(_Payload(str(marker)), protocol=2) if "/data/sample_inputs/" in name else data
    return change, "sample inputs"


@pytest.mark.parametrize("attack", [_pickled_weight, _pickled_sample_inputs])
def test_pickled_parts_of_a_pt2_archive_are_refused_without_trust_pickle(samples_dir, tmp_path, attack):
    marker = tmp_path / "PWNED"
    change, _what = attack(marker)
    if attack is _pickled_weight:       # the weight file itself becomes the payload
        original = change

        def change(name, data, _original=original):
            if "/data/weights/weight_" in name and name.endswith("weight_0"):
                return pickle.dumps(_Payload(str(marker)), protocol=2)
            return _original(name, data)
    hostile = tmp_path / "hostile.pt2"
    _rewrite(samples_dir / "two_layer_net.pt2", hostile, change)
    proc = run_cli("inspect", str(hostile), cwd=tmp_path)
    assert_clean_error(proc, 2, "torch.export archive with pickled parts", "--trust-pickle")
    assert not marker.exists()


def test_a_plain_pt2_archive_has_no_pickled_parts(samples_dir):
    from deploykit.formats import pt2_pickled_parts

    assert pt2_pickled_parts(samples_dir / "two_layer_net.pt2") == []
