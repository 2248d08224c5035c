"""The files a run's artifacts hold: each layer's weights (safetensors), history and plots, and the results table."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from pipeline.tables import markdown_table

if TYPE_CHECKING:
    from pipeline.run.results import LayerResult, PretrainResult
    from sae import SparseAutoencoder


def write_layer_weights(model: SparseAutoencoder, path: Path) -> Path:
    """The layer's encoder and decoder tensors as safetensors, with its SAEConfig as JSON metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"sae_config": json.dumps(model.config.to_dict())})
    return path


def write_artifacts(result: PretrainResult, directory: Path) -> Path:
    """The results table (text and markdown) into ``directory``; the plots are on the layer runs."""
    (directory / "results.txt").write_text(result.table() + "\n")
    (directory / "results.md").write_text(markdown_table(result.rows()) + "\n")
    return directory


LOSS_CHART = "loss_and_val_loss"  # the image chart's key: sorts beside ``loss`` in the run's charts
LOGGED_IMAGES_TAG = "mlflow.loggedImages"  # MLflow's tag: the run has image charts


def write_layer_files(result: LayerResult, directory: Path) -> Path:
    """Everything a layer run keeps, for one upload: ``weights/layer-N.safetensors``, ``history.json``,
    ``plots/`` and the loss image chart under ``images/``."""
    name = f"layer-{result.index + 1}"
    (directory / "weights").mkdir(parents=True, exist_ok=True)
    write_layer_weights(result.model, directory / "weights" / f"{name}.safetensors")
    (directory / "history.json").write_text(json.dumps(result.history, indent=1))
    write_layer_plots(result, directory / "plots")
    if result.history:
        write_image_chart(directory, LOSS_CHART, len(result.history), lambda dpi, out: _loss_chart(result, dpi, out))
    return directory


def write_image_chart(directory: Path, key: str, step: int, draw: Callable[[int, Path], object]) -> None:
    """The two files ``MlflowClient.log_image(run, image, key=key, step=step)`` writes (a PNG and the
    256-pixel WebP the charts tab shows), under ``directory/images``: uploaded with the run's other files,
    they cost no request of their own. ``draw(dpi, path)`` renders the PNG at ``dpi``."""
    from PIL import Image

    stem = f"{key.replace('/', '~')}+step+{step}+timestamp+{int(time.time() * 1000)}+{uuid.uuid4()}"
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    draw(160, images / f"{stem}.png")
    small = images / f"{stem}+compressed.png"
    draw(80, small)  # drawn for 256 pixels, not shrunk to them: legible
    with Image.open(small) as image:
        image.save(images / f"{stem}+compressed.webp")
    small.unlink()


def _loss_chart(result: LayerResult, dpi: int, out: Path) -> None:
    from pipeline.tracking import plots

    plots.loss_chart(result.history, out, dpi=dpi, title=f"layer {result.index + 1}")


def write_layer_plots(result: LayerResult, directory: Path) -> Path:
    """One layer's figures into ``directory``: filters (first layer, image inputs), rho_hat histogram, loss curve."""
    from pipeline.tracking import plots  # matplotlib is slow to import; only runs that log need it

    number = result.index + 1
    if result.index == 0:
        plots.filter_grid(result.model.encoder.weight.detach().cpu().numpy(), directory / "filter_grid.png")
    plots.loss_curves([result.history], directory / "loss_curve.png", labels=[f"layer {number}"])
    if result.model.rho_hat is not None:
        target = result.settings.target if result.settings.sparsity == "kl" else None
        plots.rho_hat_histogram([result.model.rho_hat.numpy()], [target], directory / "rho_hat_histogram.png",
                                labels=[f"layer {number}"])
    directory.mkdir(parents=True, exist_ok=True)
    return directory
