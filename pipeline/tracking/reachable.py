"""Before any work starts: is the configured MLflow server there, and is the local store usable?

Probing costs one HTTP request with a short timeout; without it an unreachable server surfaces minutes later
from deep inside a run (MLflow retries each request with back-off). ``bound_http_retries`` caps those
retries for the rest of the process too.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

from pipeline.errors import InputError
from pipeline.tracking.uris import is_server, sqlite_path

PROBE_SECONDS = 3.0  # longest wait for each answer of a server probed before a run (MLflow, Prefect)
API_PROBE = "api/2.0/mlflow/experiments/search?max_results=1"  # a cheap request the tracking API answers
# MLflow's defaults (7 retries, back-off factor 2, 120 s timeout) turn one dead server into a 13-minute wait.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
SCHEMA_TRIES = 5


def bound_http_retries() -> None:
    """Cap MLflow's HTTP retries and timeout for this process (values the user exported win)."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def configured_uri(configured: str | None = None) -> str | None:
    """The tracking URI a run would use, as configured (None: the local default store)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or None


def check_tracking_server(uri: str | None, timeout: float = PROBE_SECONDS) -> None:
    """InputError unless an http(s) tracking ``uri`` answers, on /health and on its API, within ``timeout`` each;
    other stores pass. A server whose health check answers while its API hangs would otherwise hold a run for
    minutes (MLflow's own timeout and retries)."""
    if not uri or not is_server(uri):
        return
    fix = ("start it (`sae-pipeline servers start`) or set tracking_uri / MLFLOW_TRACKING_URI to a running server "
           "(unset both for the local sqlite store)")
    problem = unanswered(f"{uri.rstrip('/')}/health", timeout)
    if problem is not None:
        raise InputError(f"MLflow tracking server {uri} is unreachable ({problem}); {fix}")
    problem = unanswered(f"{uri.rstrip('/')}/{API_PROBE}", timeout)
    if problem is not None:
        raise InputError(f"MLflow tracking server {uri} answers /health but not its API ({problem}); restart it, "
                         f"or {fix.removeprefix('start it (`sae-pipeline servers start`) or ')}")


def unanswered(url: str, timeout: float) -> str | None:
    """None when ``url`` sends any HTTP answer within ``timeout`` seconds (an error status is an answer: an auth
    proxy, an older server); else why not, in a few words."""
    import urllib.error  # here, not at the top: every command imports this module, few probe
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError) else str(reason)


def check_local_store(uri: str, artifact_dir: Path) -> None:
    """InputError when a sqlite store's database or artifact folder cannot be written."""
    db = sqlite_path(uri)
    if db is None:
        return
    for folder in (db.parent, artifact_dir):
        blocked = unwritable(folder)
        if blocked is not None:
            raise InputError(f"{blocked}: cannot be written, so MLflow cannot record the run in {folder}; fix the "
                             "permissions (or remove the file in the way) or set tracking_uri to another "
                             "sqlite:/// file")


def unwritable(folder: Path) -> Path | None:
    """None when files can be created in ``folder`` (or in the nearest existing folder above it); else the culprit."""
    path = folder.resolve()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return path  # a file where a folder must go
    try:
        with tempfile.TemporaryFile(dir=path):
            return None
    except OSError:
        return path



def create_schema_once(uri: str) -> None:
    """Create (or migrate) a sqlite store's tables under a file lock, so two first runs do not race on it."""
    db = sqlite_path(uri)
    if db is None:
        return
    from mlflow import MlflowClient

    from pipeline.tracking.store import create_sqlite_store

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        create_sqlite_store(uri)  # ~1 s instead of MLflow's 5-7 s for a new store
        for attempt in range(SCHEMA_TRIES):
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
                return
            except Exception:  # noqa: BLE001 - another process without our lock may be migrating: retry
                if attempt == SCHEMA_TRIES - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
