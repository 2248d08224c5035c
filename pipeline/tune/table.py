"""The search as rows: one per trial, per layer (printed by the CLI, logged to MLflow, in --json)."""

from __future__ import annotations

from typing import Any

from pipeline.tables import format_rows
from pipeline.tune.result import STATES, TuneResult

HEADER = ["layer", "trial", "params", "objective", "state", "layer from", "seconds"]


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trial_rows(result: TuneResult) -> list[dict[str, Any]]:
    """Every trial of every layer's study, in order, as plain values."""
    rows = []
    for layer in result.layers:
        for t in layer.trials:
            rows.append({
                "layer": layer.index + 1, "trial": t.number + 1, "params": dict(t.params),
                "objective": t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                                   if t.intermediate_values else None),
                "state": STATES.get(t.state, str(t.state)), "best": t.number == layer.best.number,
                "recalled": bool(t.user_attrs.get("recalled")), "config": bool(t.user_attrs.get("config")), "seconds": t.user_attrs.get("seconds"),
                "epochs": t.user_attrs.get("epochs"), "error": t.user_attrs.get("error"),
            })
    return rows


def search_table(result: TuneResult) -> str:
    """Fixed-width table; a pruned trial shows its last reported objective, the best trial is marked *, the
    trial holding the config's own values ``(config)``."""
    rows = [HEADER]
    for r in trial_rows(result):
        params = ("(config) " if r["config"] else "") + " ".join(f"{k}={_value(v)}" for k, v in r["params"].items())
        objective = "-" if r["objective"] is None else f"{r['objective']:.4f}"
        state = r["state"] + (f" @{r['epochs']}" if r["state"] == "pruned" and r["epochs"] else "")
        origin = "cache" if r["recalled"] else "trained" if r["state"] != "failed" else "-"
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        rows.append([str(r["layer"]), f"{r['trial']}{'*' if r['best'] else ''}", params, objective, state, origin,
                     seconds])
    return "\n".join(format_rows(rows))
