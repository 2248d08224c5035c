"""Each layer's encoder sees every split exactly once per run: probes, metrics, plots and tracking reuse the codes."""

from collections import Counter

import mlflow
import pytest
import torch

import sae.model
import sae.stack
from pipeline.config import PipelineConfig
from pipeline.run.greedy import pretrain_stack
from pipeline.tracking.runs import MlflowTracking

CONFIG = {
    "name": "codes-once",
    "data": {"source": "digits", "max_samples": 600},
    "defaults": {"epochs": 1, "batch_size": 128, "lr": 0.01},
    "trainer": {"accelerator": "cpu"},
    "layers": [{"hidden": 24}, {"hidden": 12}],
    "finetune": {"epochs": 0},  # fine-tuning changes the weights, so its passes are not code reuse
}


@pytest.mark.slow  # a tracked run: MLflow's import and model logging take 20-50 s on the shared 2 cores
def test_every_split_passes_through_each_layer_encoder_once(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows: Counter[tuple[str, int, int]] = Counter()  # (who, d_in, d_hidden) -> rows encoded outside training

    def counting(module: str):  # noqa: ANN202 - wraps encode_with where each module looks it up
        real = (sae.model if module == "layer" else sae.stack).encode_with

        def encode_with(encoder: torch.nn.Linear, x: torch.Tensor, config: sae.model.SAEConfig) -> torch.Tensor:
            if not torch.is_grad_enabled():  # training steps need gradients; every encoding pass runs without
                rows[(module, config.d_in, config.d_hidden)] += x.shape[0]
            return real(encoder, x, config)

        return encode_with

    monkeypatch.setattr(sae.model, "encode_with", counting("layer"))
    monkeypatch.setattr(sae.stack, "encode_with", counting("stack"))
    monkeypatch.setenv("MLFLOW_ENABLE_TELEMETRY", "false")
    monkeypatch.chdir(tmp_path)
    config = PipelineConfig.from_dict({**CONFIG, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    try:
        result = pretrain_stack(config, MlflowTracking(register=False))
    finally:
        mlflow.set_tracking_uri(None)
    data = result.data
    n = data.X_train.shape[0] + data.X_val.shape[0] + data.X_test.shape[0]
    # Per layer: train, validation (early-stopping metrics) and test once each for the codes, plus the
    # validation pass of each epoch inside training, which encodes the validation split by design.
    epochs = [len(layer.history) for layer in result.layers]
    assert rows[("layer", 64, 24)] == n + epochs[0] * data.X_val.shape[0]
    assert rows[("layer", 24, 12)] == n + epochs[1] * data.X_val.shape[0]
    # The stacked copy only ever encodes the handful of example rows logged with the model, never a split.
    assert all(count < data.X_val.shape[0] for (who, _, _), count in rows.items() if who == "stack"), rows
    assert result.probes and set(result.probes) == {"raw", "layer_1", "layer_2"}
