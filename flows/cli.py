"""Console entry point: the pipeline's commands plus ``run``, ``serve`` and ``deploy`` (the Prefect ones)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.app.cli import EXIT_OK, add_config_arguments, load_config
from pipeline.app.cli import main as pipeline_main
from pipeline.process.runtime import quiet_runtime

if TYPE_CHECKING:
    from pipeline.run.results import PretrainResult


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    from flows.startup import flow_session

    with flow_session(config, debug=args.debug):  # bad input exits 2 here, before Prefect starts a server
        from flows.pretrain import pretrain_flow

        result = pretrain_flow(config, refresh_cache=args.fresh, overrides=list(args.overrides))
    tracked, reg = result.tracked, result.tracked and result.tracked.registration
    if args.json:
        print(json.dumps(run_summary(result)))
        return EXIT_OK
    print(result.table())
    name, value, _ = result.headline()
    print(f"\n{name}: {value:.4f}")
    if reg:
        why = f": {reg.reason}" if reg.alias != config.register.alias else ""
        print(f"registered: {reg.model_uri} (version {reg.model_version}, alias {reg.alias}{why})")
    if tracked:
        print(_next_line(tracked.tracking_uri, tracked.experiment_id, tracked.run_id))
    return EXIT_OK


def run_summary(result: PretrainResult) -> dict[str, Any]:
    """What ``run --json`` prints: where the run and the registered encoder are, and the run's metrics."""
    tracked, reg = result.tracked, result.tracked and result.tracked.registration
    return {
        "run_id": tracked and tracked.run_id,
        "tracking_uri": tracked and tracked.tracking_uri,
        "model_uri": tracked and tracked.model_uri,
        "model_version": reg and reg.model_version,
        "alias": reg and reg.alias,
        "metrics": result.metrics(),
    }


def _next_line(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where to look next: the run's page, served by the MLflow server or by `sae-pipeline ui` for a local store."""
    from pipeline.tracking.uris import run_page_url, ui_command

    page, command = run_page_url(tracking_uri, experiment_id, run_id), ui_command(tracking_uri)
    return f"MLflow run: {page}" if command is None else f"Next: {command}, then open the MLflow run: {page}"


def _tune(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if config.search is None or (args.trials is not None and args.trials < 1) or args.parallel < 1:
        from pipeline.errors import InputError

        raise InputError("tune needs a config with a search section (see examples/tune-digits.yaml), "
                         "--trials >= 1 and --parallel >= 1")
    from flows.startup import flow_session

    with flow_session(config, debug=args.debug):  # as run: preflight, signals, server guard, store thread
        from flows.tune import tune_flow

        result = tune_flow(config, trials=args.trials, parallel=args.parallel)
    from pipeline.tune.table import search_table, trial_rows

    out = Path(args.out).resolve()
    out.write_text(result.best_yaml())
    tracked = result.best_stack and result.best_stack.tracked
    reg = tracked and tracked.registration
    if args.json:
        print(json.dumps({"best_config": str(out), "objective": result.objective, "seconds": result.seconds,
                          "trials": trial_rows(result), "run_id": tracked and tracked.run_id,
                          "model_version": reg and reg.model_version,
                          "recalled": bool(result.best_stack and result.best_stack.recalled)}))
        return EXIT_OK
    print(search_table(result))
    print(f"\nobjective: {result.objective} (validation); searched in {result.seconds:.1f} s")
    print(f"best config: {out} (`sae-pipeline run {out}` reuses the cached layers)")
    if result.best_stack is not None:
        name, value, _ = result.best_stack.headline()
        print(f"best stack {name}: {value:.4f}" + (f"; registered version {reg.model_version} @{reg.alias}" if reg else ""))
        if result.best_stack.recalled:
            print(f"(recalled from MLflow run {tracked.run_id}: an identical search already fine-tuned, evaluated and "
                  f"registered this stack; `sae-pipeline run {out}` runs it again)")
    return EXIT_OK


def _curve(args: argparse.Namespace) -> int:
    from pipeline.data.budgets import check_budgets, parse_budgets
    from pipeline.errors import InputError

    budgets = parse_budgets(args.labels)
    if args.repeats < 1:
        raise InputError(f"--repeats {args.repeats}: give at least 1 draw a budget")
    config = load_config(args.config, args.overrides)
    from flows.startup import flow_session

    with flow_session(config, debug=args.debug, check=lambda data: check_budgets(data, budgets), raw_probe=False):
        from flows.curve import curve_flow

        result = curve_flow(config, labels=budgets, repeats=args.repeats, refresh_cache=args.fresh,
                            overrides=list(args.overrides))
    print(json.dumps(result.to_json()) if args.json else result.table())
    if not args.json and result.run_id and result.tracking_uri and result.experiment_id:
        print(_next_line(result.tracking_uri, result.experiment_id, result.run_id))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    if (args.cron is None) == (args.interval is None):
        from pipeline.errors import InputError

        raise InputError("serve needs exactly one schedule: --cron '0 3 * * *' or --interval SECONDS")
    config = load_config(args.config, args.overrides)
    if args.tune:
        from flows.tune import serve_tune

        serve_tune(config, cron=args.cron, interval=args.interval, name=args.name, trials=args.trials)
        return EXIT_OK
    from flows.deploy import serve

    serve(config, cron=args.cron, interval=args.interval, name=args.name)
    return EXIT_OK


def _deploy(args: argparse.Namespace) -> int:
    from flows.deploy import deploy

    deployment_id = deploy(
        load_config(args.config, args.overrides), pool=args.pool, cron=args.cron, interval=args.interval,
        name=args.name,
    )
    print(f"deployed to work pool {args.pool!r}: deployment {deployment_id}; start a worker with "
          f"`prefect worker start --pool {args.pool}`")
    return EXIT_OK


def _add_flow_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train, evaluate, track and register a stack (the main job)")
    add_config_arguments(p)
    p.add_argument("--fresh", action="store_true", help="ignore cached layers and retrain everything")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.set_defaults(func=_run)

    p = sub.add_parser("tune", help="greedy per-layer hyperparameter search (the config's search section)")
    add_config_arguments(p)
    p.add_argument("--trials", type=int, help="trials per layer (default: search.trials)")
    p.add_argument("--parallel", type=int, default=1, help="trials of one layer run at once (default 1)")
    p.add_argument("--out", default="best.yaml", help="where the best config is written (default ./best.yaml)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.set_defaults(func=_tune)

    p = sub.add_parser("curve", help="label-efficiency curve: accuracy against labels per class, with anchors")
    add_config_arguments(p)
    p.add_argument("--labels", default="10,40,100,all", help="labels per class, comma-separated; all = every "
                   "labeled row (default 10,40,100,all)")
    p.add_argument("--repeats", type=int, default=3, help="seeded label draws per budget (default 3; all: one)")
    p.add_argument("--fresh", action="store_true", help="ignore cached layers and retrain everything")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.set_defaults(func=_curve)

    for name, func, helptext in (
        ("serve", _serve, "serve a scheduled deployment of the flow (needs a Prefect server: make servers)"),
        ("deploy", _deploy, "deploy the flow to a Prefect work pool, optionally on a schedule"),
    ):
        p = sub.add_parser(name, help=helptext)
        add_config_arguments(p)
        p.add_argument("--cron", help="cron schedule, e.g. '0 3 * * *'")
        p.add_argument("--interval", type=float, help="schedule every SECONDS")
        p.add_argument("--name", help="deployment name (default: the config name)")
        if name == "deploy":
            p.add_argument("--pool", required=True, help="Prefect work pool (created as a process pool if missing)")
        else:
            p.add_argument("--tune", action="store_true",
                           help="serve the config's search (as `tune`) instead of a run; name default tune-NAME")
            p.add_argument("--trials", type=int, help="with --tune: trials per layer (default: search.trials)")
        p.set_defaults(func=func)


def main(argv: Sequence[str] | None = None) -> int:
    """``sae-pipeline`` console script."""
    quiet_runtime()  # before any command imports torch
    from flows.warm import delegate

    warm = delegate(sys.argv[1:] if argv is None else argv)  # the warm runner of `servers start`, if it takes it
    if warm is not None:
        return warm
    code = pipeline_main(argv, extend=_add_flow_commands)
    from flows.server_guard import server_lost

    if server_lost() is not None:  # Prefect would spend minutes at exit sending events to the dead server
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
