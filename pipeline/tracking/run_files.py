"""The files a run's artifacts hold: each layer's weights (safetensors) and plots, and the results table."""

from __future__ import annotations

import json
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
