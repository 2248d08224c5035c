"""Does a ``models:/`` or ``runs:/`` URI name something a local sqlite store holds? Answered from the database file
itself (sqlite3, no mlflow import: importing MLflow and opening its store takes seconds, and opening a
store that does not exist yet creates it) before ``encode`` or ``export`` fetches the model.

Only the tables' stable columns are read (registered_models, model_versions, registered_model_aliases,
logged_models, runs); a store laid out otherwise is left to MLflow, which then answers itself.
"""

from __future__ import annotations

import sqlite3

from pipeline.errors import InputError
from pipeline.tracking.store_checks import LOCK_WAIT_SECONDS
from pipeline.tracking.uris import registry_uri, sqlite_path

SHOWN = 8  # names, aliases or versions listed in a message at most


def check_model_uri(uri: str, tracking_uri: str) -> None:
    """InputError when ``uri`` names a model, version, alias or run that the sqlite store does not hold."""
    if not uri.startswith(("models:/", "runs:/")):
        return
    store = registry_uri(tracking_uri) if uri.startswith("models:/") else tracking_uri
    db = sqlite_path(store)
    if db is None:
        return  # a server: MLflow answers, within its bounded timeouts
    if not db.exists():
        raise InputError(f"{uri}: the tracking store {db} does not exist (nothing was recorded there); run "
                         "`sae-pipeline run` first, or set MLFLOW_TRACKING_URI to the store that holds the model")
    try:
        # Read-write (it only reads): a read-only connection to a write-ahead-log store leaves -wal/-shm behind.
        connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True, timeout=LOCK_WAIT_SECONDS)
        try:
            problem = _missing(connection, uri)
        finally:
            connection.close()
    except sqlite3.Error:
        return  # not the layout read here: MLflow says what is wrong
    if problem:
        raise InputError(f"{uri}: {problem} in {db}; check the name, version or alias (e.g. models:/digits-encoder@champion)")


def _missing(connection: sqlite3.Connection, uri: str) -> str | None:
    """What ``uri`` names that the store lacks, else None."""
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/")[0]
        found = connection.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        return None if found else f"no run with id {run_id!r}"
    path = uri.removeprefix("models:/")
    if path.startswith("m-") and "/" not in path and "@" not in path:
        found = connection.execute("SELECT 1 FROM logged_models WHERE model_id = ?", (path,)).fetchone()
        return None if found else f"no logged model with id {path!r}"
    name, at, alias = path.partition("@")
    name, _, version = name.partition("/")
    names = [row[0] for row in connection.execute("SELECT name FROM registered_models ORDER BY name")]
    if name not in names:
        return f"no registered model named {name!r} (registered: {_listed(names) or 'none'})"
    if at:
        aliases = [row[0] for row in connection.execute(
            "SELECT alias FROM registered_model_aliases WHERE name = ? ORDER BY alias", (name,))]
        return None if alias in aliases else f"{name} has no alias @{alias} (aliases: {_listed(aliases) or 'none'})"
    if version.isdigit():
        versions = [str(row[0]) for row in connection.execute(
            "SELECT version FROM model_versions WHERE name = ? ORDER BY version", (name,))]
        return None if version in versions else f"{name} has no version {version} (versions: {_listed(versions)})"
    return None  # a stage or "latest": MLflow resolves it


def _listed(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")

