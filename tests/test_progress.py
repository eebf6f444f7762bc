"""Long work says how far it is: a line per 10 % (with ETA) in a log, a live bar on a terminal."""
import io
import re

import pytest

from deploykit.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_ten_percent_with_loss_and_eta():
    out = io.StringIO()
    with Progress("training net", total=50, stream=out) as bar:
        for step in range(1, 51):
            bar.update(step, loss=1.0 / step)
    lines = out.getvalue().splitlines()
    assert lines[0] == "training net …"
    counted = [line for line in lines if re.match(r"training net: \d+/50 \(\d+%\)", line)]
    assert [int(re.search(r"(\d+)/50", line).group(1)) for line in counted] == list(range(5, 51, 5))
    assert "loss 0.2" in counted[0] and "ETA" in counted[0]
    assert "ETA" not in counted[-1]          # nothing left at 100 %
    assert re.fullmatch(r"training net: done in \d+s", lines[-1])


def test_without_a_total_each_attempt_is_a_line():
    out = io.StringIO()
    with Progress("int8 repair", total=None, stream=out) as bar:
        bar.update(1, "percentile: failed", cosine=0.91)
        bar.update(2, "entropy: passed", cosine=0.999)
    lines = out.getvalue().splitlines()
    assert lines[1:3] == ["int8 repair: 1 cosine 0.91  percentile: failed", "int8 repair: 2 cosine 0.999  entropy: passed"]


def test_a_terminal_gets_a_bar_and_disabled_progress_prints_nothing():
    terminal = _Terminal()
    with Progress("routes", total=3, stream=terminal) as bar:
        for done in range(1, 4):
            bar.update(done, "torch_to_onnx passed")
    assert "routes: done in" in terminal.getvalue()
    assert "routes: 1/3" not in terminal.getvalue()       # the bar, not the log lines
    quiet = io.StringIO()
    with Progress("routes", total=3, stream=quiet, enabled=False) as bar:
        bar.update(1)
    assert quiet.getvalue() == ""


def test_hostile_labels_reach_the_terminal_as_printable_text():
    out = io.StringIO()
    with Progress("model \x1b[2Jx", total=None, stream=out) as bar:
        bar.update(1, "\x1b]0;title\x07")
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()


def test_eta_is_the_mean_step_time_times_the_steps_left():
    bar = Progress("x", total=10)
    bar.started -= 4.0                       # 4 s for 2 steps: 2 s a step, 8 steps left
    assert abs(bar.eta(2) - 16.0) < 0.5
    assert bar.eta(0) is None and Progress("x", total=None).eta(3) is None


@pytest.mark.slow
@pytest.mark.torch
def test_training_shows_step_loss_and_eta_and_the_demo_says_so_first(tmp_path, monkeypatch, capsys):
    """The one-time MobileNetV2 training (minutes) reports its progress; the demo announces it beforehand."""
    from deploykit.demo.run import training_notice
    from sample_models import mobilenet

    monkeypatch.setenv("DEPLOYKIT_CACHE_DIR", str(tmp_path))      # an empty cache: training would run
    monkeypatch.setattr(mobilenet, "_TRAINED", {})
    assert "trained once on this machine" in training_notice()
    model = mobilenet.mobilenet_v2()
    model.image_size = 64                      # the same loop on small images: seconds, not minutes
    monkeypatch.setattr(mobilenet, "accuracy", lambda model, count=200: 0.0)    # the held-out pass is not the point
    mobilenet._train(model, steps=10, batch=2)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("training mobilenet_v2 (once per machine") and lines[0].endswith("…")
    assert lines[1].startswith("training mobilenet_v2: 1/10 (10%)  loss ")
    steps = [line for line in lines if re.search(r": \d+/10 \(\d+%\)  loss \d", line)]
    assert len(steps) == 10 and "ETA" in steps[0] and re.search(r"done in \d+s$", lines[-1])
    monkeypatch.setattr(mobilenet, "is_trained_here", lambda *a: True)
    assert training_notice() is None
