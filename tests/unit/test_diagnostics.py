"""Chart payloads/images and trajectory sanity checks (no ComfyUI needed)."""
import math

import pytest
import torch

from diagnostics import charts
from diagnostics.recorder import TrajectoryRecorder


def test_payload_sends_non_finite_values_as_null_and_counts_finite_points():
    payload = charts.chart("t", "x", "y", [charts.series("a", [1.0, 2.0, 3.0], [1.0, math.nan, math.inf]),
                                          charts.series("b", torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.25]))])
    assert payload["series"][0]["y"] == [1.0, None, None]
    assert charts.finite_points(payload) == 3


def test_series_of_unequal_length_is_rejected():
    with pytest.raises(ValueError, match="3 x values but 2 y values"):
        charts.series("bad", [1, 2, 3], [1, 2])


@pytest.mark.parametrize("y_log", [False, True])
def test_render_gives_a_comfy_image(y_log):
    payload = charts.chart("Velocity", "t", "|v|", [charts.series("a", [1.0, 0.5, 0.0], [2.0, 1.0, 0.5])],
                           y_log=y_log, x_reversed=True, parameterization="flow time", notes=["n1"])
    image = charts.render(payload, width=400, height=300)
    assert image.shape == (1, 300, 400, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert float(image.std()) > 0.01  # something was drawn


def axes_texts(payload):
    (axes,) = charts.figure(payload, width=200, height=150).axes
    return [text.get_text() for text in axes.texts], axes.get_legend()


def test_render_of_an_all_nan_payload_says_so_instead_of_failing():
    """No drawable point (NaN, or only non-positive values on a log axis): the chart's axes carry exactly the
    "no finite data to plot" text and no legend, and the image still renders; with data, no such text."""
    for payload in (charts.chart("Empty", "t", "y", [charts.series("a", [1.0], [math.nan])]),
                    charts.chart("Log", "t", "y", [charts.series("a", [1.0, 2.0], [0.0, -1.0])], y_log=True)):
        texts, legend = axes_texts(payload)
        assert texts == [charts.NO_DATA_TEXT] == ["no finite data to plot"] and legend is None
        assert charts.render(payload, width=200, height=150).shape == (1, 150, 200, 3)
    texts, legend = axes_texts(charts.chart("Data", "t", "y", [charts.series("a", [1.0, 2.0], [1.0, math.nan])]))
    assert texts == [] and [text.get_text() for text in legend.get_texts()] == ["a"]


def _recorded(steps, interrupted=False, poison=False):
    recorder = TrajectoryRecorder(True, torch.linspace(1, 0, steps + 1), label="demo")
    x = torch.randn(2, 4)
    for i in range(steps):
        denoised = torch.zeros_like(x) if not poison else torch.full_like(x, math.nan)
        recorder.on_model_call(x, torch.full((2,), 1 - i / steps), denoised)
        recorder.on_step(i, x, denoised)
        x = x * 0.5
    return recorder.finish(x, interrupted=interrupted)


def test_an_empty_trajectory_is_rejected_with_a_clear_message():
    empty = TrajectoryRecorder(True, [1.0, 0.0], label="nothing").finish(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="FlowScope · Straightness Meter: the trajectory 'nothing' has no completed"):
        empty.validate("FlowScope · Straightness Meter")


def test_interrupted_and_nan_trajectories_are_flagged():
    assert _recorded(3).warnings() == []
    interrupted = _recorded(3, interrupted=True)
    assert interrupted.status == "interrupted"
    assert interrupted.warnings() == ["warning: 'demo' is interrupted (partial path)"]
    poisoned = _recorded(3, poison=True)  # NaN denoised: each of the 3 calls' ‖v‖ for both samples; points finite
    assert int(torch.isnan(poisoned.call_velocity_rms).sum()) == 6 and torch.isfinite(poisoned.secant_sq).all()
    assert poisoned.warnings() == ["warning: 'demo' has 6 non-finite values (skipped in charts)"]
