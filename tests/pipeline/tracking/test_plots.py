"""Plots write real PNG files that matplotlib can read back."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from pipeline.tracking.plots import filter_grid, loss_chart, loss_curves, rho_hat_figure, rho_hat_histogram

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, min_pixels: int = 100 * 100) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 2000
    image = imread(path)
    assert image.shape[0] * image.shape[1] >= min_pixels
    assert image[..., :3].std() > 0.01  # something was drawn, not a blank canvas
    return image


def test_filter_grid_draws_square_filters(tmp_path):
    weights = np.random.default_rng(0).normal(size=(25, 64))
    path = filter_grid(weights, tmp_path / "plots" / "filters.png")
    assert path == tmp_path / "plots" / "filters.png"
    _assert_png(path)


def test_filter_grid_uses_a_given_image_shape(tmp_path):
    weights = np.random.default_rng(0).normal(size=(10, 12))
    _assert_png(filter_grid(weights, tmp_path / "f.png", image_shape=(3, 4)))
    with pytest.raises(ValueError, match=r"image_shape=\(5, 5\) has 25 pixels but the weights have d_in=12"):
        filter_grid(weights, tmp_path / "g.png", image_shape=(5, 5))


def test_filter_grid_skips_non_square_inputs_without_image_shape(tmp_path):
    assert filter_grid(np.ones((4, 10)), tmp_path / "f.png") is None
    assert not (tmp_path / "f.png").exists()


def test_filter_grid_survives_a_dead_unit(tmp_path):
    weights = np.random.default_rng(0).normal(size=(4, 16))
    weights[1] = 0.0  # max abs 0: must not divide by zero
    _assert_png(filter_grid(weights, tmp_path / "f.png"))


def test_loss_curves_plot_every_layer_with_and_without_validation(tmp_path):
    histories = [
        [{"epoch": float(e), "loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1)} for e in range(10)],
        [{"epoch": float(e), "loss": 0.5 - 0.01 * e} for e in range(6)],
    ]
    _assert_png(loss_curves(histories, tmp_path / "loss.png", labels=["64->16", "16->8"]))
    with pytest.raises(ValueError, match="got 1 labels for 2 layers"):
        loss_curves(histories, tmp_path / "x.png", labels=["one"])


def test_loss_curves_accept_non_positive_losses(tmp_path):
    _assert_png(loss_curves([[{"loss": -1.0}, {"loss": 0.0}, {"loss": 2.0}]], tmp_path / "loss.png"))


def test_rho_hat_histogram_marks_the_targets(tmp_path):
    rng = np.random.default_rng(0)
    path = rho_hat_histogram([rng.beta(2, 18, 100), rng.uniform(0, 1, 20)], [0.1, None], tmp_path / "rho.png")
    _assert_png(path)
    with pytest.raises(ValueError, match="got 2 rho_hat arrays but 1 targets"):
        rho_hat_histogram([np.ones(3), np.ones(3)], [0.1], tmp_path / "x.png")


def _overlapping_tick_labels(fig) -> list[tuple[str, str]]:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    pairs = []
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        pairs += [(labels[i].get_text(), labels[i + 1].get_text()) for i in range(len(boxes) - 1)
                  if boxes[i].x1 > boxes[i + 1].x0]
    return pairs


@pytest.mark.parametrize("spread", [1e-4, 0.02, 0.5], ids=["narrow", "typical", "wide"])
def test_rho_hat_histogram_x_tick_labels_do_not_overlap(spread):
    # A well-trained kl layer has every rho_hat within ~1e-4 of its target: the case that overlapped.
    values = 0.1 + np.random.default_rng(0).uniform(-spread / 2, spread / 2, 100)
    fig = rho_hat_figure([values], [0.1], labels=["layer 2"])
    assert fig.axes[0].get_title() == "layer 2 (100 units)"
    assert _overlapping_tick_labels(fig) == []
    texts = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(texts) >= 2 and len(set(texts)) == len(texts)  # distinct values, not all "0.1"
    assert fig.axes[0].xaxis.get_offset_text().get_text() == ""  # the labels are the values themselves


def test_the_loss_image_chart_is_written_as_mlflows_log_image_writes_one(tmp_path, monkeypatch):
    """The layer run's loss chart is uploaded with its other files, not by log_image: the same two files."""
    import re

    from mlflow import MlflowClient

    from pipeline.tracking.run_files import write_image_chart

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run("0").info.run_id
    client.log_image(run, np.zeros((8, 8, 3), np.uint8), key="loss_and_val_loss", step=12)
    theirs = [a.path for a in client.list_artifacts(run, "images")]
    write_image_chart(tmp_path / "ours", "loss_and_val_loss", 12,
                      lambda dpi, out: loss_chart([{"loss": 2.0, "val_loss": 1.5}], out, dpi=dpi))
    ours = [f"images/{p.name}" for p in (tmp_path / "ours" / "images").iterdir()]

    def shape(path: str) -> str:
        return re.sub(r"\+timestamp\+\d+\+[0-9a-f-]{36}", "+timestamp+T+U", path)

    assert sorted(map(shape, ours)) == sorted(map(shape, theirs)) == [
        "images/loss_and_val_loss+step+12+timestamp+T+U+compressed.webp",
        "images/loss_and_val_loss+step+12+timestamp+T+U.png"]
