"""What a pipeline run produces: the stacks, every measurement, and a printable table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipeline.config import PipelineConfig, ResolvedLayer
from pipeline.data.loading import LoadedData, Splits
from pipeline.tables import format_rows
from sae.model import SparseAutoencoder
from sae.stack import StackedEncoder

if TYPE_CHECKING:
    from pipeline.run.finetune import FinetuneResult


@dataclass
class LayerResult:
    """One trained layer with the codes it produces for the next, and how it did on the test split."""

    settings: ResolvedLayer
    model: SparseAutoencoder
    codes: Splits  # (n_split, hidden) per split, maybe memory-mapped
    test_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False  # loaded from a cache rather than trained

    @property
    def index(self) -> int:
        """0-based position in the stack."""
        return self.settings.index

    @property
    def history(self) -> list[dict[str, float]]:
        return self.model.history


@dataclass(frozen=True)
class Registration:
    """What registering produced: the version, the alias it got and why."""

    model_name: str
    model_version: str
    alias: str
    model_uri: str  # models:/<name>@<alias>, so downstream code follows the alias
    version_uri: str  # models:/<name>/<version>, this exact version
    reason: str
    new_version: bool = True  # False: the weights were already registered as model_version, nothing added


@dataclass
class TrackedRun:
    """Where a run was recorded: the MLflow parent run, its logged models and the registration (if any)."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    run_url: str | None = None  # the run's page when tracking went to an http(s) server
    model_uri: str | None = None  # the registered alias URI, else the logged model's URI
    logged_models: dict[str, str] = field(default_factory=dict)  # name -> models:/<id>
    registration: Registration | None = None


@dataclass
class PretrainResult:
    """The pretrained stack (always), the fine-tuned one (when labelled), and the evaluation."""

    config: PipelineConfig
    data: LoadedData
    layers: list[LayerResult]
    encoder: StackedEncoder  # pretrained, not fine-tuned
    finetuned: FinetuneResult | None = None
    probes: dict[str, float] = field(default_factory=dict)  # raw, layer_1, ... test accuracies
    seconds: float = 0.0
    tracked: TrackedRun | None = None  # filled by the tracking hooks
    encoder_choice: tuple[str, str] = ("pretrained", "")  # (pretrained | finetuned, why): register.encoder
    recalled = False  # trained in this run (not a dataclass field); a recalled stack says True

    @property
    def registered_encoder(self) -> StackedEncoder:
        """The encoder ``encoder_choice`` names (what the registry gets)."""
        return self.finetuned.encoder if self.encoder_choice[0] == "finetuned" and self.finetuned else self.encoder

    def metrics(self) -> dict[str, float]:
        """Flat metrics: per-layer train/test numbers, probe and fine-tuning accuracies, wall time."""
        out: dict[str, float] = {}
        for layer in self.layers:
            prefix = f"layer_{layer.index + 1}"
            last = layer.history[-1] if layer.history else {}
            for key in ("loss", "reconstruction", "sparsity", "mse", "fvu", "l0", "dead_fraction", "rho_hat_mean"):
                if key in last:
                    out[f"{prefix}.train_{key}"] = float(last[key])
            for key in ("loss", "mse", "fvu", "l0"):
                if f"val_{key}" in last:  # the last epoch's, on the validation split
                    out[f"{prefix}.val_{key}"] = float(last[f"val_{key}"])
            for key, value in layer.test_metrics.items():
                out[f"{prefix}.test_{key}"] = float(value)
            out[f"{prefix}.seconds"] = layer.seconds
        for key, value in self.probes.items():
            out[f"probe_accuracy.{key}"] = value
        if self.finetuned is not None:
            f = self.finetuned
            for split in ("val", "test"):
                out[f"finetune.{split}_accuracy_before"] = getattr(f, f"{split}_accuracy_before")
                out[f"finetune.{split}_accuracy_after"] = getattr(f, f"{split}_accuracy_after")
            out["finetune.best_epoch"] = float(0 if f.best_epoch is None else f.best_epoch + 1)  # 0: the start kept
            out["encoder.test_accuracy"] = self.headline()[1]
        out["seconds"] = self.seconds
        return out

    def headline(self) -> tuple[str, float, bool]:
        """(metric name, value, greater is better): the registered encoder's softmax test accuracy when
        fine-tuning ran (its fine-tuned head, or the frozen-codes softmax), else top probe, else test loss."""
        if self.finetuned is not None:
            f = self.finetuned
            chosen = f.test_accuracy_after if self.encoder_choice[0] == "finetuned" else f.test_accuracy_before
            return "encoder.test_accuracy", chosen, True
        top = f"layer_{len(self.layers)}"
        if top in self.probes:
            return f"probe_accuracy.{top}", self.probes[top], True
        return f"{top}.test_loss", float(self.layers[-1].test_metrics["loss"]), False

    def table(self) -> str:
        """The row counts (``LoadedData.counts_line``), then the results as a fixed-width text table (also
        rendered as markdown by the flows)."""
        return "\n".join([self.data.counts_line(), *format_rows(self.rows())])

    def rows(self) -> list[list[str]]:
        """Header plus one row per layer, then the accuracy rows."""
        header = ["layer", "shape", "sparsity", "train loss", "test mse", "test fvu", "L0", "dead", "rho_hat",
                  "probe acc", "time"]
        rows = [header]
        for layer in self.layers:
            s, t = layer.settings, layer.test_metrics
            last = layer.history[-1] if layer.history else {}
            probe = self.probes.get(f"layer_{layer.index + 1}")
            rows.append([
                f"{layer.index + 1}" + (" (cached)" if layer.reused else ""),
                f"{layer.model.config.d_in}->{s.hidden}",
                s.sparsity if s.sparsity != "topk" else f"topk k={s.k}",
                _num(last.get("loss")),
                _num(t.get("mse")),
                _num(t.get("fvu")),
                _num(t.get("l0"), ".1f"),
                _num(t.get("dead_fraction"), ".0%"),
                _num(t.get("rho_hat_mean"), ".3f"),
                _num(probe, ".4f"),
                f"{layer.seconds:.1f}s",
            ])
        if "raw" in self.probes:
            rows.append(["inputs", f"{self.encoder.d_in}", "", "", "", "", "", "", "", _num(self.probes["raw"], ".4f"), ""])
        if self.finetuned is not None:
            f = self.finetuned
            rows.append(["fine-tuned" + (" (cached)" if f.reused else ""), f"softmax {len(f.classes)}", f.kept,
                         "", "", "", "", "", "",
                         f"{f.test_accuracy_before:.4f} -> {f.test_accuracy_after:.4f}", f"{f.seconds:.1f}s"])
        return rows


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "" if value is None else format(value, fmt)
