"""The ``sae-pipeline`` commands that need no Prefect: datasets, config, export, encode, ui, servers.

``flows.cli`` adds ``run``, ``serve`` and ``deploy`` on top and is the console entry point, so that imports
keep pointing one way (flows -> pipeline -> sae).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.app.limits import cap_line
from pipeline.errors import InputError
from pipeline.process import interrupts

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
Extend = Callable[[argparse._SubParsersAction], None]


def load_config(path: str | None, overrides: Sequence[str] = ()):  # noqa: ANN201
    """The config at ``path`` (default: the built-in digits example) with ``--set`` overrides applied."""
    from pipeline.config import PipelineConfig, default_config_path

    return PipelineConfig.from_yaml(Path(path) if path else default_config_path(), overrides)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG positional plus repeatable ``--set key=value``."""
    parser.add_argument("config", nargs="?", help="pipeline YAML (default: the built-in digits example)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set layers.0.hidden=100 (repeatable)")


def _datasets(args: argparse.Namespace) -> int:
    from pipeline.data.builtin import describe_builtins
    from pipeline.tables import format_rows

    rows = [["name", "samples", "features", "labels", "description"]]
    for d in describe_builtins():
        rows.append([d["name"], str(d["n_samples"]), str(d["n_features"]), "yes" if d["has_labels"] else "no",
                     d["description"]])
    print("\n".join(format_rows(rows)))
    return EXIT_OK


def _config(args: argparse.Namespace) -> int:
    if args.action == "schema":
        from pipeline.config import PipelineConfig

        print(json.dumps(PipelineConfig.json_schema(), indent=2))
        return EXIT_OK
    config = load_config(args.config, args.overrides)
    if args.action == "show" and args.annotated:
        from pipeline.config.docs import annotated_yaml

        print(annotated_yaml(config), end="")
    elif args.action == "show":
        print(config.to_yaml(), end="")
    else:
        print(f"{args.config or 'built-in digits config'}: valid ({len(config.layers)} layers, data {config.data.source})")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from pipeline.app.encode_export import export_command

    interrupts.install()  # SIGTERM too unwinds, so the half-written output is removed

    print(export_command(args.model_uri, args.format, Path(args.out), args.force))
    return EXIT_OK


def _encode(args: argparse.Namespace) -> int:
    from pipeline.app.encode_export import encode_command

    interrupts.install()

    print(encode_command(args.model_uri, Path(args.input), Path(args.out), args.force))
    return EXIT_OK


def _ui(args: argparse.Namespace) -> int:
    from pipeline.app.servers import port_free
    from pipeline.tracking.store_checks import check_tracking_store
    from pipeline.tracking.uris import project_root

    if not port_free(args.host, args.port):
        raise InputError(f"port {args.port} on {args.host} is already in use (another MLflow UI?); open "
                         f"http://{args.host}:{args.port} or pass --port with a free one")
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    store = check_tracking_store()
    cmd = [mlflow, "ui", "--backend-store-uri", store, "--default-artifact-root", str(project_root() / "mlruns"),
           "--host", args.host, "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://{args.host}:{args.port} (store {store}); Ctrl-C stops it", file=sys.stderr)
    os.execv(mlflow, cmd)
    return EXIT_OK  # not reached


def _servers(args: argparse.Namespace) -> int:
    from pipeline.app import servers

    match args.action:
        case "start":
            servers.start(Path(args.dir))
        case "stop":
            servers.stop(Path(args.dir))
        case _:
            servers.status(Path(args.dir))
    return EXIT_OK


def build_parser(extend: Extend | None = None) -> argparse.ArgumentParser:
    """The full parser; ``extend`` adds subcommands (flows adds run/serve/deploy)."""
    parser = argparse.ArgumentParser(
        prog="sae-pipeline", description="Greedy pretraining of sparse autoencoder stacks, tracked in MLflow."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if extend is not None:
        extend(sub)

    p = sub.add_parser("datasets", help="list the built-in data sets with their shapes")
    p.set_defaults(func=_datasets)

    p = sub.add_parser("config", help="show, validate or print the schema of a pipeline config")
    p.add_argument("action", choices=["show", "schema", "validate"])
    p.add_argument("--annotated", action="store_true",
                   help="show: every field with its description as a comment, and its schema default where it differs")
    add_config_arguments(p)
    p.set_defaults(func=_config)

    p = sub.add_parser("export", help="export an encoder as ONNX, TorchScript or safetensors")
    p.add_argument("model_uri", help="models:/name@alias, models:/name/version, runs:/... or a local directory")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    p.add_argument("--out", required=True, help="output file (onnx, torchscript) or directory (safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    p.set_defaults(func=_export)

    p = sub.add_parser("encode", help="encode a data file with an encoder, writing .npy or .parquet")
    p.add_argument("model_uri", help="models:/name@alias, models:/name/version, runs:/... or a local directory")
    p.add_argument("input", help=".npy, .npz, .csv or .parquet with the training features")
    p.add_argument("--out", required=True, help="output .npy or .parquet")
    p.add_argument("--force", action="store_true", help="overwrite --out when it exists")
    p.set_defaults(func=_encode)

    p = sub.add_parser("ui", help="start the MLflow UI on the local store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_ui)

    p = sub.add_parser("servers", help="start/stop a local Prefect server and MLflow server (for schedules)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--dir", default=".servers", help="where server data, logs and pids live")
    p.set_defaults(func=_servers)
    return parser


def main(argv: Sequence[str] | None = None, extend: Extend | None = None) -> int:
    """Parse, dispatch, and map errors to exit codes: 2 bad input, 1 failure, 130/143 SIGINT/SIGTERM."""
    from pipeline.tracking.reachable import bound_http_retries

    parser = build_parser(extend)
    args = parser.parse_args(argv)
    bound_http_retries()
    try:
        return int(args.func(args))
    except InputError as error:
        if args.debug:
            traceback.print_exc()
        print(cap_line(f"error: {error}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, SystemExit) as error:
        # Lightning answers a KeyboardInterrupt inside fit with SystemExit(1): that is an interruption too.
        if isinstance(error, SystemExit) and interrupts.signal_of(error) is None and not _from_lightning(error):
            raise
        return _interrupted(error, args)
    except Exception as error:  # noqa: BLE001 - the CLI boundary: one line, the traceback only with --debug
        if interrupts.reason() is not None:  # what the interruption became on its way out
            return _interrupted(error, args)
        if args.debug:
            traceback.print_exc()
        print(cap_line(f"failed: {type(error).__name__}: {error}"), file=sys.stderr)
        return EXIT_FAILED
    except BaseException as error:  # an orchestrator's own signal exception (Prefect's TerminationSignal)
        if interrupts.signal_of(error) is None and interrupts.reason() is None:
            raise
        return _interrupted(error, args)
    finally:
        interrupts.uninstall()  # a command that routed SIGINT/SIGTERM (run, tune) gives the handlers back


def _interrupted(error: BaseException, args: argparse.Namespace) -> int:
    """One line for a command stopped by SIGINT/SIGTERM; the shell's exit status for that signal."""
    if args.debug:
        traceback.print_exception(error)
    if interrupts.reason() is not None:  # not a signal: another thread stopped the run and said why
        print(cap_line(f"failed: {interrupts.reason()}; the run stopped, its MLflow run is marked FAILED and nothing "
                       "was registered; finished layers stay cached: run again"), file=sys.stderr)
        return EXIT_FAILED
    signum = interrupts.signal_of(error) or signal.SIGINT
    name, status = ("SIGTERM", "FAILED") if signum == signal.SIGTERM else ("SIGINT", "KILLED")
    if args.command in ("encode", "export"):
        print(f"interrupted ({name}): nothing was written to --out {args.out}", file=sys.stderr)
        return interrupts.exit_status(signum)
    print(f"interrupted ({name}): the run stopped; its MLflow run is marked {status} and finished layers "
          "stay cached, so the next run resumes", file=sys.stderr)
    return interrupts.exit_status(signum)


def _from_lightning(error: SystemExit) -> bool:
    """True for the SystemExit(1) Lightning raises after catching a KeyboardInterrupt."""
    context = error.__context__
    return error.code == 1 and isinstance(context, KeyboardInterrupt)


if __name__ == "__main__":
    sys.exit(main())
