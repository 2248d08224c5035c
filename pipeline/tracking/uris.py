"""Where a run lives, as text: tracking URIs, the sqlite file behind one, and the MLflow UI pages of runs.

Light on purpose (no mlflow import): the CLI's fast checks and the Prefect artifacts use it too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from pipeline.errors import InputError

DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlruns"  # beside a sqlite store: its experiments' artifacts, one folder each
LOCAL_UI = "http://127.0.0.1:5000"  # where `sae-pipeline ui` (`make ui`) serves a local store
# MLflow 3.17's UI picks GenAI or model-training pages from a browser-wide toggle (default GenAI), not from
# the experiment's mlflow.experimentKind tag; this query selects model training for the page a link opens.
UI_QUERY = "?workflowType=machine_learning"


def experiment_page(experiment_id: str) -> str:
    """The UI path (after the server's address) of an experiment's run list, in model-training mode."""
    return f"#/experiments/{experiment_id}{UI_QUERY}"


def run_page(experiment_id: str, run_id: str) -> str:
    """The UI path (after the server's address) of a run's page, in model-training mode."""
    return f"#/experiments/{experiment_id}/runs/{run_id}{UI_QUERY}"


def model_version_page(model_name: str, version: str | int) -> str:
    """The UI path (after the server's address) of a registered model version."""
    return f"#/models/{quote(model_name)}/versions/{version}"


def project_root() -> Path:
    """Where runs, artifacts and the layer cache go by default: the working directory, as for ``mlflow ui``."""
    return Path.cwd()


def default_tracking_uri() -> str:
    """``sqlite:///<working directory>/mlflow.db`` (absolute): the store used when nothing is configured."""
    return f"sqlite:///{project_root() / DB_NAME}"


def resolve_tracking_uri(configured: str | None = None) -> str:
    """The config's ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the project's sqlite store."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme == "file" or (scheme == "" and uri != "databricks") or (len(scheme) == 1 and os.name == "nt"):
        raise InputError(
            f"tracking URI {uri!r} is the legacy MLflow file store, which this MLflow refuses; "
            f"use a database URI such as sqlite:///{Path(uri.removeprefix('file://')).parent / DB_NAME} "
            "or an http(s):// MLflow server"
        )
    return uri


def registry_uri(tracking_uri: str) -> str:
    """``$MLFLOW_REGISTRY_URI`` when set, else the tracking store itself."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri


def is_server(uri: str) -> bool:
    """True for an http(s) MLflow server, which serves its own UI."""
    return uri.startswith(("http://", "https://"))


def ui_base_url(uri: str) -> str:
    """The MLflow UI showing store ``uri``: the server itself, else where ``sae-pipeline ui`` serves it."""
    return uri.rstrip("/") if is_server(uri) else LOCAL_UI


def run_page_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of run ``run_id``."""
    return f"{ui_base_url(uri)}/{run_page(experiment_id, run_id)}"


def ui_command(uri: str) -> str | None:
    """The command that serves a local store's UI on LOCAL_UI; None for a server (it has its own UI)."""
    if is_server(uri):
        return None
    db = sqlite_path(uri)
    if db is not None and db.resolve() == (project_root() / DB_NAME).resolve():
        return "`sae-pipeline ui` (or `make ui` in the checkout)"
    return f"`MLFLOW_TRACKING_URI={uri} sae-pipeline ui`"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other stores. As for SQLAlchemy (and so MLflow),
    ``sqlite:///x.db`` is relative to the working directory and ``sqlite:////abs/x.db`` absolute."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or parsed.path in ("", "/", "/:memory:"):
        return None
    return Path(unquote(parsed.path[1:]))


def artifact_location(uri: str, experiment: str) -> str | None:
    """``mlruns/<experiment>`` beside a sqlite database; None (the server's default) for other stores."""
    db = sqlite_path(uri)
    if db is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment).strip("-") or "default"
    return (db.parent / ARTIFACT_DIR / slug).resolve().as_uri()
