import numpy as np
import pytest

from deploykit.errors import UsageError
from deploykit.inputs import load_npz, random_feeds
from deploykit.spec import ModelSpec, TensorSpec

SPEC = ModelSpec((TensorSpec("x", (2, 3)), TensorSpec("ids", (2, 5), "int64", value_range=(0, 7))))


def test_random_feeds_are_seeded_varied_and_valid():
    first, again = random_feeds(SPEC, 4, seed=3), random_feeds(SPEC, 4, seed=3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["x"], b["x"])
    assert first[0]["x"].dtype == np.float32 and first[0]["ids"].dtype == np.int64
    assert all(0 <= f["ids"].min() and f["ids"].max() < 7 for f in first)
    assert (first[1]["x"] >= 0).all()                      # the uniform [0, 1) sample
    assert not np.allclose(first[0]["x"], first[2]["x"])


def test_dynamic_batch_gets_a_size_and_other_dynamic_dims_need_a_shape():
    spec = ModelSpec((TensorSpec("x", ("batch", 3)),))
    assert random_feeds(spec, 1)[0]["x"].shape == (1, 3)
    assert random_feeds(spec, 1, batch=4)[0]["x"].shape == (4, 3)
    with pytest.raises(UsageError, match="dynamic dim"):
        random_feeds(ModelSpec((TensorSpec("x", (1, "seq")),)), 1)


def test_npz_with_sample_axis_and_casting(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.ones((3, 2, 3), np.float64), ids=np.zeros((3, 2, 5), np.int32))
    feeds = load_npz(path, SPEC)
    assert len(feeds) == 3 and feeds[0]["x"].dtype == np.float32 and feeds[0]["ids"].dtype == np.int64


def test_npz_samples_stacked_on_a_batch_of_one_are_separate_feeds(tmp_path):
    """(N, 32) for a (1, 32) input is onnx2tf's and most tutorials' calibration form: N feeds of (1, 32)."""
    spec = ModelSpec((TensorSpec("ids", (1, 32), "int64"),))
    np.savez(tmp_path / "stacked.npz", ids=np.arange(5 * 32).reshape(5, 32))
    feeds = load_npz(tmp_path / "stacked.npz", spec)
    assert len(feeds) == 5 and feeds[2]["ids"].shape == (1, 32) and feeds[2]["ids"][0, 0] == 64
    np.savez(tmp_path / "documented.npz", ids=np.zeros((5, 1, 32), np.int64))       # the documented form still works
    assert len(load_npz(tmp_path / "documented.npz", spec)) == 5
    np.savez(tmp_path / "single.npz", ids=np.zeros((1, 32), np.int64))
    assert len(load_npz(tmp_path / "single.npz", spec)) == 1
    np.savez(tmp_path / "wrong.npz", ids=np.zeros((5, 33), np.int64))                # not unambiguous: refused
    with pytest.raises(UsageError, match=r"shape \(5, 33\)"):
        load_npz(tmp_path / "wrong.npz", spec)
    dynamic = ModelSpec((TensorSpec("ids", ("batch", 32), "int64"),))                # a real batch: one feed of 5
    assert len(load_npz(tmp_path / "stacked.npz", dynamic)) == 1


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.ones((2, 3), np.float32)}, "lacks input"),
    ({"x": np.ones((2, 4), np.float32), "ids": np.zeros((2, 5), np.int64)}, "shape"),
    ({"x": np.ones((2, 3), np.float32), "ids": np.zeros((2, 5), np.float32)}, "expects int64"),
    ({"x": np.ones((3,), np.float32), "ids": np.zeros((2, 5), np.int64)}, "rank"),
])
def test_npz_errors_name_the_problem(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UsageError, match=message):
        load_npz(path, SPEC)


def test_npz_not_a_file(tmp_path):
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(UsageError, match="not a readable"):
        load_npz(tmp_path / "junk.npz", SPEC)
    with pytest.raises(UsageError, match="no such"):
        load_npz(tmp_path / "missing.npz", SPEC)


def test_random_feeds_refuse_a_size_that_would_kill_the_process_for_memory():
    from deploykit.inputs import random_feeds

    huge = ModelSpec((TensorSpec("x", (1, 3, 30000, 30000)),))          # 2.7e9 elements declared by a model
    with pytest.raises(UsageError, match=r"would need 10,800,000,000 bytes"):
        random_feeds(huge, 1)
    small = ModelSpec((TensorSpec("x", (1, 1000)),))
    with pytest.raises(UsageError, match="1000000 random sample") as info:
        random_feeds(small, 1_000_000)
    assert "give fewer --samples" in info.value.remedy
    assert random_feeds(small, 2)[0]["x"].shape == (1, 1000)


def test_fifos_are_never_read_as_data(tmp_path):
    """A FIFO given as --inputs, --weights or an image in a calibration folder used to block forever."""
    import os

    from deploykit import api
    from deploykit.exporting.calibration import calibration_feeds
    from deploykit.inputs import load_npz

    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    spec = ModelSpec((TensorSpec("x", (1, 3, 8, 8)),))
    with pytest.raises(UsageError, match="not a regular file"):
        load_npz(fifo, spec)
    with pytest.raises(UsageError, match="not a regular file"):
        api.load_options(weights=str(fifo))
    images = tmp_path / "images"
    images.mkdir()
    os.mkfifo(images / "cat.png")
    with pytest.raises(UsageError, match="cat.png is not a regular file"):
        calibration_feeds(spec, str(images), 10)


def test_npz_shapes_pin_the_dims_a_signature_leaves_dynamic(tmp_path):
    from deploykit.inputs import shapes_from_npz

    spec = ModelSpec((TensorSpec("x", (1, "seq", 16), "float32"), TensorSpec("ids", ("batch", 8), "int64")))
    np.savez(tmp_path / "one.npz", x=np.zeros((1, 32, 16), np.float32), ids=np.zeros((3, 2, 8), np.int64))
    pinned = shapes_from_npz(spec, tmp_path / "one.npz")
    assert [t.shape for t in pinned.inputs] == [(1, 32, 16), (2, 8)]     # a sample axis is not a dim
    np.savez(tmp_path / "other.npz", x=np.zeros((5,), np.float32))         # a rank that fits nothing: left as it was
    assert shapes_from_npz(ModelSpec(spec.inputs[:1]), tmp_path / "other.npz").inputs[0].shape == (1, "seq", 16)
