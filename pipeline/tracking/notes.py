"""The markdown descriptions runs, models and versions show in MLflow: what was trained, how it did, where it
came from, and one-click links to the Prefect flow run and the run behind a version.

Every text goes through ``pipeline.tracking.markdown``: aliases as code spans (no GitHub mentions), tables as
fixed-width text, numbers to four significant digits, and links only to the user's own MLflow and Prefect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.tracking import markdown
from pipeline.tracking.markdown import alias, link, no_mentions, num

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.run.finetune import FinetuneResult
    from pipeline.run.results import LayerResult, PretrainResult, Registration
    from pipeline.tune.result import TuneResult
    from pipeline.tune.trial import TrialOutcome


@dataclass(frozen=True)
class Origin:
    """Where a run came from besides its config: the Prefect flow run (name, page) and, for a search's best
    stack, the search run (a markdown line)."""

    flow_run: tuple[str, str] | None = None  # (name, url)
    search: str | None = None  # e.g. "the best config of search [tune-digits-...](url)"

    def lines(self) -> list[str]:
        """The description lines that link where this run came from."""
        out = []
        if self.flow_run is not None:
            out.append(f"Prefect flow run: {link(*self.flow_run)}")
        if self.search is not None:
            out.append(f"Config: {self.search}.")
        return out


def overrides_text(overrides: Sequence[str], origin: Origin | None = None) -> str:
    """The ``--set`` overrides as markdown code, or where the config came from when none were given."""
    if overrides:
        return "Overrides: " + " ".join(f"`--set {o}`" for o in overrides)
    if origin is not None and origin.search is not None:
        return "Overrides: none."
    return "Overrides: none (the config as written)."


def experiment_note(name: str) -> str:
    """The experiment's description: what its runs are and how to tell them apart."""
    return (f"Which `--set` made which run: add the `sae.overrides` tag as a column (Columns, Tags). Runs of "
            f"sae-pipeline config `{name}`: each `sae-pipeline run` is a parent run `{name}-<mmdd>-<time>` (its "
            "Prefect flow run has the same name) with child runs `layer-N` and `finetune`; a search is a run "
            "`tune-...` with `tune-layer-N` and `trial-N.M` children.\n")


def registration_tag(registration: Registration | None) -> str:
    """The ``sae.registry`` tag, short (the why is in the description): ``version 2 @champion``."""
    if registration is None:
        return "not registered"
    if not registration.new_version:
        return f"unchanged: version {registration.model_version}"
    return f"version {registration.model_version} @{registration.alias}"


def version_details(result: PretrainResult, overrides: Sequence[str], origin: Origin | None = None) -> str:
    """What a model version holds: the stack, the data, the overrides (or the search that chose the config),
    what ``predict`` takes, and the Prefect flow run that made it."""
    from pipeline.tracking.pyfunc import feature_names

    stack = result.registered_encoder
    kind, why = result.encoder_choice
    tuned = f"fine-tuned ({no_mentions(why)})" if kind == "finetuned" else \
        ("pretrained" + (f" ({no_mentions(why)})" if why else ""))
    lines = [f"Trained: {shapes(result.config, result.data.n_features)}, {tuned}, on {data_text(result)}.",
             overrides_text(overrides, origin), *(origin.lines() if origin else []),
             inputs_text(stack.d_in, stack.d_out, feature_names(stack))]
    return "\n\n".join(lines)


def overrides_tag(overrides: Sequence[str]) -> str:
    """The ``sae.overrides`` tag: the ``--set`` values, space-separated, or ``none`` (a runs-list column)."""
    return " ".join(overrides) if overrides else "none"


def shapes(config: PipelineConfig, d_in: int) -> str:
    """``64 → 100 → 100 (kl, kl)``: the stack's widths and each layer's sparsity."""
    layers = config.resolved_layers()
    widths = " → ".join([str(d_in), *(str(layer.hidden) for layer in layers)])
    kinds = ", ".join(layer.sparsity if layer.sparsity != "topk" else f"topk k={layer.k}" for layer in layers)
    return f"{widths} ({kinds})"


def data_text(result: PretrainResult) -> str:
    """``digits: pretrained on 1,293 rows, 1,293 labeled; test 360 rows, 64 features``."""
    d = result.data
    return f"`{d.source}`: {d.counts_line()}, {d.n_features} features"


def registry_text(registration: Registration | None) -> str:
    """What the registry did with this run."""
    if registration is None:
        return "Registry: not registered (tracking only)."
    if registration.new_version:
        return (f"Registry: `{registration.model_name}` version {registration.model_version} "
                f"{alias(registration.alias)}: {no_mentions(registration.reason)}.")
    return f"Registry: `{registration.model_name}` unchanged: {no_mentions(registration.reason)}."


def parent_start(config: PipelineConfig, source: str, overrides: Sequence[str], origin: Origin) -> str:
    """The parent's description while it runs."""
    lines = [f"**{config.name}** on `{source}`: {len(config.layers)} layers, running.", *origin.lines(),
             overrides_text(overrides, origin)]
    return "\n\n".join(lines) + "\n"


def parent_end(result: PretrainResult, overrides: Sequence[str], registration: Registration | None,
               origin: Origin) -> str:
    """The parent's final description: headline, overrides, links, registry outcome, what was trained, results."""
    name, value, greater = result.headline()
    lines = [f"**{name} = {num(value)}** ({'higher' if greater else 'lower'} is better)",
             overrides_text(overrides, origin), *origin.lines(), registry_text(registration),
             f"Trained: {shapes(result.config, result.data.n_features)} on {data_text(result)}.",
             markdown.table(result.rows())]
    return "\n\n".join(lines) + "\n"


def parent_failed(config: PipelineConfig, source: str, overrides: Sequence[str], origin: Origin,
                  error: BaseException) -> str:
    """The description of a run that raised."""
    head = f"**{config.name}** on `{source}`: **failed**: `{type(error).__name__}: {str(error)[:300]}`"
    return "\n\n".join([head, *origin.lines(), overrides_text(overrides, origin)]) + "\n"


def layer_note(result: LayerResult) -> str:
    """A layer run: what it is, how it was made, its test-split numbers, what its charts show."""
    s, t = result.settings, result.test_metrics
    sparsity = {"kl": f"kl, target {s.target:g}, β {s.beta:g}", "topk": f"topk, k {s.k}"}.get(s.sparsity, s.sparsity)
    how = "reused from the layer cache" if result.reused else f"trained in {result.seconds:.1f} s"
    shown = {"loss": "loss", "fvu": "FVU", "l0": "L0", "rho_hat_mean": "ρ̂"}
    test = " · ".join([f"{label} {num(t[key])}" for key, label in shown.items() if key in t] +
                      ([f"dead units {t['dead_fraction']:.0%}"] if "dead_fraction" in t else []))
    return (f"**layer {result.index + 1}: {result.model.config.d_in} → {s.hidden}**, {sparsity}, "
            f"{len(result.history)} of {s.epochs} epochs, {how}.\n\nTest split: {test or 'not measured'}.\n\n"
            f"Settings (the parent's `layers.{result.index}.*` params): {settings_text(s)}.\n\n"
            "Charts: loss on both splits (and together, log-scaled, in `loss_and_val_loss`); FVU, L0 and ρ̂ on the "
            "validation split; epochs counted from 1. Every epoch's numbers are in `history.json`.\n")


def settings_text(settings: object) -> str:
    """A layer's resolved settings as code spans, ``key=value``."""
    from pipeline.tracking.describe import layer_params

    return " ".join(f"`{k}={v}`" for k, v in layer_params(settings).items())


def finetune_note(result: FinetuneResult, epochs: int) -> str:
    """The fine-tuning run: accuracies before and after and what was kept (epochs counted from 1)."""
    how = " Reused from the fine-tuning cache (same stack, labels and settings)." if result.reused else ""
    if not result.validated:
        return (f"**fine-tuning ({result.method}): too few labels for a validation split to choose; the last step "
                f"kept.**\n\nTest accuracy {num(result.test_accuracy_before)} → {num(result.test_accuracy_after)}; "
                f"a softmax head over {len(result.classes)} classes on the top codes, trained with the stack.{how}\n")
    kept = "no epoch beat the start: the start kept" if result.best_epoch is None else \
        f"epoch {result.best_epoch + 1} kept"
    competed = "".join(f"; {method} {num(value)}" for method, value in result.candidates.items()
                       if len(result.candidates) > 1)
    return (f"**fine-tuning ({result.method}): validation accuracy {num(result.val_accuracy_before)} → "
            f"{num(result.val_accuracy_after)}**, {kept} (of {epochs}){competed}.\n\n"
            f"Test accuracy {num(result.test_accuracy_before)} → {num(result.test_accuracy_after)}; a softmax head "
            f"over {len(result.classes)} classes on the top codes, trained with the stack. `val_accuracy` at step 0 "
            f"is the frozen-codes softmax before fine-tuning.{how}\n")


def trial_note(index: int, outcome: TrialOutcome, objective: str) -> str:
    """A trial run: its state, objective and parameters."""
    params = " ".join(f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`" for k, v in outcome.params.items())
    origin = "recalled from the layer cache" if outcome.recalled else f"{outcome.epochs} epochs trained"
    line = (f"**trial {index + 1}.{outcome.number + 1}: {outcome.state}**, objective {objective} "
            f"{num(outcome.value)}; {origin}.")
    error = f"\n\n`{no_mentions(outcome.error.splitlines()[0])[:300]}`" if outcome.error else ""
    return f"{line}\n\n{params}{error}\n"


def tune_start(config: PipelineConfig, trials: int, objective: str, origin: Origin) -> str:
    """The search run while it runs."""
    head = (f"**Search of {config.name}**: {trials} trials per layer, {len(config.layers)} layers, "
            f"objective {objective} (validation), running.")
    return "\n\n".join([head, *origin.lines()]) + "\n"


def tune_end(result: TuneResult, trials: int, origin: Origin, best_run: str | None) -> str:
    """The search run at its end: per-layer outcome, the best stack's run, how to run the best config."""
    rows = [["layer", "trials run", "complete", "pruned", "failed", "best", "best objective"]]
    for layer in result.layers:
        states = [o.state for o in layer.ran]
        rows.append([str(layer.index + 1), str(len(layer.ran)), *(str(states.count(s)) for s in
                     ("complete", "pruned", "failed")), f"trial {layer.best.number + 1}", num(layer.best.value)])
    head = (f"**Search of {result.config.name}**: {trials} trials per layer, objective {result.objective} "
            f"(validation), {result.seconds:.0f} s.")
    lines = [head, *origin.lines()]
    if best_run is not None:
        lines.append(f"Best stack: {best_run}.")
    lines += [markdown.table(rows), "`best.yaml` (artifact) holds the best config; `sae-pipeline run best.yaml` "
              "reuses its cached layers. Every trial is in `trials.txt` and the child runs."]
    return "\n\n".join(lines) + "\n"


def best_stack_text(run_name: str, url: str, result_headline: tuple[str, float, bool],
                    registration: Registration | None, recalled: bool) -> str:
    """The best stack's run as a link with its headline and registry outcome."""
    name, value, _ = result_headline
    text = f"{link(run_name, url)}: {name} {num(value)}"
    if registration is not None:
        text += f", `{registration.model_name}` version {registration.model_version}"
        text += f" {alias(registration.alias)}" if registration.alias else ""
    return text + (" (recalled: an identical search already ran it)" if recalled else "")


def version_note(headline: tuple[str, float, bool], alias_name: str, reason: str, run: tuple[str, str],
                 details: str | None = None) -> str:
    """A model version: a plain first line (registry lists show it raw), the alias and why, the run, and
    ``details`` (what was trained, what ``predict`` takes)."""
    name, value, greater = headline
    lines = [f"{name} {num(value)} ({'higher' if greater else 'lower'} is better)",
             f"{alias(alias_name)}: {no_mentions(reason)}", f"Run: {link(*run)}"]
    return "\n\n".join(lines + ([details] if details else []))


def inputs_text(d_in: int, d_out: int, names: Sequence[str] | None) -> str:
    """What the encoder's ``predict`` takes and gives."""
    order = f" in this order: `{names[0]}` … `{names[-1]}`" if names else ""
    named = " (by these names, in any order)" if names else ""
    return (f"Input: {d_in} numeric columns{order}: a DataFrame{named}, a numpy array (float32 or float64) or a "
            f"list of rows. Output: (n, {d_out}) float32 codes.")


def logged_model_note(kind: str, d_in: int, d_out: int, names: Sequence[str] | None) -> str:
    """A logged model: which encoder it is and what it takes."""
    what = "fine-tuned with the softmax head" if kind == "finetuned" else "greedily pretrained, not fine-tuned"
    return f"Stacked encoder, {what}.\n\n{inputs_text(d_in, d_out, names)}"
