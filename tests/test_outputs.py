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


def test_no_write_follows_a_link_planted_at_the_target_or_at_the_report_pngs_temporary_name(tmp_path):
    """issue 26: save_figure wrote ``<name>.tmp.png`` by name, so a link planted there had its target overwritten."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploykit.benchmark.report import save_figure

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "report"
    out.mkdir()
    (out / "latency.tmp.png").symlink_to(victim)             # where the old code wrote first
    (out / "report.json").symlink_to(victim)                 # a link at the final name itself
    save_figure(plt.figure(), out / "latency.png")
    fsutil.write_text_atomic(out / "report.json", "{}")
    fsutil.write_bytes_atomic(out / "x.bin", b"new")
    assert victim.read_text() == "precious"
    assert not (out / "report.json").is_symlink() and (out / "report.json").read_text() == "{}"
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in out.iterdir()) == ["latency.png", "latency.tmp.png", "report.json", "x.bin"]
    assert oct((out / "x.bin").stat().st_mode & 0o077) != oct(0), "readable as any other file the user writes"


def test_a_link_as_the_output_is_refused_and_with_force_replaced_as_a_name(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "deploykit-bundle.json").write_text("{}")
    link = tmp_path / "out"
    link.symlink_to(victim)
    with pytest.raises(OutputExistsError, match="a link"):
        fsutil.prepare_output(link, force=False, directory=True)
    fsutil.prepare_output(link, force=True, directory=True)     # not looked into: it is replaced as a name
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "f").write_text("new")
    fsutil.publish([(staged, link)], force=True)
    assert link.is_dir() and not link.is_symlink() and (link / "f").read_text() == "new"
    assert (victim / "deploykit-bundle.json").read_text() == "{}" and sorted(os.listdir(tmp_path)) == ["out", "victim"]


@pytest.mark.onnxruntime
def test_package_force_replaces_its_own_bundle_and_nothing_else(tmp_path):
    """issue 26: --force deleted any folder holding a deploykit-bundle.json, a user's files with it."""
    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions
    from tests.hostile import builders

    builders.tiny_onnx(tmp_path / "tiny.onnx")
    options = PackageOptions(samples=1, source=str(tmp_path / "tiny.onnx"))
    bundle = tmp_path / "bundle"
    api.package(str(tmp_path / "tiny.onnx"), str(bundle), options)
    api.package(str(tmp_path / "tiny.onnx"), str(bundle), options, force=True)     # exactly as written: replaced
    assert sorted(os.listdir(tmp_path)) == ["bundle", "tiny.onnx"]
    (bundle / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="notes.txt is not one of the files deploykit wrote"):
        api.package(str(tmp_path / "tiny.onnx"), str(bundle), options, force=True)
    assert (bundle / "notes.txt").read_text() == "mine" and (bundle / "model.onnx").is_file()


def test_a_set_aside_bundle_loses_only_its_recorded_files(tmp_path):
    """Between the check and the removal a file may appear: publish removes the recorded files only."""
    import hashlib
    import json

    old = tmp_path / "old"
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "a.txt").write_text("a")
    (old / "deploykit-bundle.json").write_text(json.dumps({"files": {
        "sub/a.txt": hashlib.sha256(b"a").hexdigest()}}))
    (old / "late.txt").write_text("appeared after the check")
    staged = tmp_path / "staged"
    staged.mkdir()
    fsutil.publish([(staged, old)], force=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".old.old-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].rglob("*")) == ["late.txt"]


def test_the_demo_marker_never_writes_through_a_planted_link(tmp_path):
    from deploykit.demo.run import MARKER, _prepare_dir

    (tmp_path / "victim").write_text("precious")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / MARKER).symlink_to(tmp_path / "victim")
    _prepare_dir(str(tmp_path / "demo"))
    assert (tmp_path / "victim").read_text() == "precious" and not (tmp_path / "demo" / MARKER).is_symlink()


def test_force_replaces_a_saved_model_folder_only_as_deploykit_wrote_it(tmp_path):
    import json

    folder = tmp_path / "sm"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"weights")
    (tmp_path / "sm.deploykit.json").write_text(json.dumps({"artifact": {"sha256": fsutil.sha256_of(folder)}}))
    fsutil.prepare_output(folder, force=True, directory=True)
    (folder / "variables" / "my-notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="files changed since deploykit wrote it"):
        fsutil.prepare_output(folder, force=True, directory=True)


def test_a_report_that_fails_part_way_leaves_nothing_behind(tmp_path):
    """issue 26: a report whose third plot failed left its folder and the first PNGs behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploykit.benchmark.report import plotted_page

    def draw():
        figure = plt.figure()
        figure.text(0.5, 0.5, r"$\frac{1}$ drawn as written")       # mathtext would raise on this
        return figure

    written = plotted_page(tmp_path / "ok", "locate", {}, draw, lambda png: png.read_bytes()[:4].decode("latin-1"))
    assert sorted(os.listdir(tmp_path / "ok")) == ["locate.html", "locate.json", "locate.png"], written

    def broken():
        raise RuntimeError("a plot that fails")

    with pytest.raises(RuntimeError):
        plotted_page(tmp_path / "new" / "report", "locate", {}, broken, lambda png: "")
    assert sorted(os.listdir(tmp_path)) == ["ok"]
