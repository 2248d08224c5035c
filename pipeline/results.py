"""What a pipeline run produces: the stacks, every measurement, and a printable table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sae.stack import StackedEncoder

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data import LoadedData
    from pipeline.finetune import FinetuneResult
    from pipeline.stacking import LayerResult


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
    extra: dict[str, Any] = field(default_factory=dict)  # filled by hooks (run ids, model versions)

    def metrics(self) -> dict[str, float]:
        """Flat metrics: per-layer train/test numbers, probe and fine-tuning accuracies, wall time."""
        out: dict[str, float] = {}
        for layer in self.layers:
            prefix = f"layer_{layer.index + 1}"
            last = layer.history[-1] if layer.history else {}
            for key in ("loss", "reconstruction", "sparsity", "mse", "fvu", "l0", "dead_fraction", "rho_hat_mean"):
                if key in last:
                    out[f"{prefix}.train_{key}"] = float(last[key])
            for key, value in layer.test_metrics.items():
                out[f"{prefix}.test_{key}"] = float(value)
            out[f"{prefix}.seconds"] = layer.seconds
        for key, value in self.probes.items():
            out[f"probe_accuracy.{key}"] = value
        if self.finetuned is not None:
            out["finetune.accuracy_before"] = self.finetuned.accuracy_before
            out["finetune.accuracy_after"] = self.finetuned.accuracy_after
        out["seconds"] = self.seconds
        return out

    def headline(self) -> tuple[str, float, bool]:
        """(metric name, value, greater is better): fine-tuned accuracy, else top probe, else test loss."""
        if self.finetuned is not None:
            return "finetune.accuracy_after", self.finetuned.accuracy_after, True
        top = f"layer_{len(self.layers)}"
        if top in self.probes:
            return f"probe_accuracy.{top}", self.probes[top], True
        return f"{top}.test_loss", float(self.layers[-1].test_metrics["loss"]), False

    def table(self) -> str:
        """The results as a fixed-width text table (also rendered as markdown by the flows)."""
        return "\n".join(format_rows(self.rows()))

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
            rows.append(["fine-tuned", f"softmax {len(f.classes)}", "", "", "", "", "", "", "",
                         f"{f.accuracy_before:.4f} -> {f.accuracy_after:.4f}", f"{f.seconds:.1f}s"])
        return rows


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "" if value is None else format(value, fmt)


def format_rows(rows: list[list[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def markdown_table(rows: list[list[str]]) -> str:
    """The same rows as a markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)
