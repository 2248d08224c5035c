"""Where runs go and what describes them: tracking URIs, experiments, versions, commit, dataset inputs."""

from __future__ import annotations

import os
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import sqlalchemy
from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipeline.data.loading import fingerprint
from pipeline.tracking.uris import ARTIFACT_DIR, artifact_location, registry_uri, sqlite_path  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from pipeline.data.loading import LoadedData

DIGEST_CHARS = 16  # MLflow shows short digests (also the run tag sae.data.hash: a long value squeezes the key)


def client(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri`` and its registry (no process-global state involved)."""
    wait_for_store(tracking_uri)
    create_sqlite_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri(tracking_uri))


_CREATING: dict[str, tuple[threading.Thread, threading.Event, list[BaseException]]] = {}  # uri -> creation, done, error


def create_sqlite_store_soon(uri: str, create: Callable[[str], None] | None = None, *,
                             then: Sequence[Callable[[], object]] = ()) -> threading.Thread:
    """Run ``create(uri)`` (default: ``create_sqlite_store``) on a thread, then each of ``then`` (warm-ups: work
    the run would otherwise do later on its critical path); this process's next ``client(uri)`` waits for the
    store only. The CLI starts it while Prefect starts its temporary server, which leaves a core idle for
    seconds.

    Start it after Prefect's server module is imported, when one will be: MLflow's store modules are imported
    on the thread, which configures every SQLAlchemy mapper in the process, and that failed ("expression
    'Deployment' failed to locate a name") while the main thread was half-way through importing Prefect's
    server models.
    """
    errors: list[BaseException] = []
    done = threading.Event()

    def job() -> None:
        try:
            import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
            from mlflow.store.db import utils  # noqa: F401

            (create or create_sqlite_store)(uri)
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits for the store
            errors.append(error)
        finally:
            done.set()
        for warm in then:
            try:
                warm()
            except Exception:  # noqa: BLE001, S112 - a warm-up only saves time; the real call reports problems
                continue

    thread = threading.Thread(target=job, name="sae-create-store")
    _CREATING[uri] = (thread, done, errors)
    thread.start()
    return thread


def wait_for_store(uri: str) -> None:
    """Wait for a ``create_sqlite_store_soon(uri)`` still creating the store; re-raise its error."""
    pending = _CREATING.get(uri)
    if pending is None or pending[0] is threading.current_thread():
        return
    pending[1].wait()
    _CREATING.pop(uri, None)
    if pending[2]:
        raise pending[2][0]


def create_sqlite_store(uri: str) -> None:
    """Give a ``sqlite:///`` store that does not exist yet MLflow's tables, fast; any other store is left alone.

    MLflow builds a new database by running its ~60 schema migrations, each committed and synced to disk: 5-6 s
    here, the largest single cost of a first run. The same migrations run here on a side file without a sync
    per statement (~1 s), which is synced once and then linked into place; a store another process created
    meanwhile stands. MLflow then only adds its default experiment, exactly as on a database it made itself.
    The new database is in write-ahead-log mode: a commit then syncs one file once instead of a rollback
    journal and the database (log_batch 8 ms instead of 18, set_tag 4 ms instead of 21, measured here), and
    the MLflow UI can read while a run writes. SQLite keeps ``mlflow.db-wal`` and ``-shm`` beside it while a
    connection is open; WAL needs a local disk (not a network file system) for the database file.
    """
    db = sqlite_path(uri)
    if db is None or db.exists() or not db.parent.is_dir():
        return
    try:
        from mlflow.store.db.utils import _initialize_tables  # private, pinned mlflow: fall back if it moves
    except ImportError:
        return
    with _BUILDING:  # alembic's migration context is process-global: one build at a time in a process
        if not db.exists():
            _build(db, _initialize_tables)


_BUILDING = threading.Lock()


def _build(db: Path, initialize_tables: Callable[[Any], None]) -> None:
    """Run MLflow's migrations on a side file without per-statement syncs, sync it once, link it in as ``db``."""
    side = db.with_name(f".{db.name}.{os.getpid()}.creating")
    engine = sqlalchemy.create_engine(f"sqlite:///{side}", poolclass=sqlalchemy.pool.NullPool)
    sqlalchemy.event.listen(engine, "connect", _unsynced)
    try:
        initialize_tables(engine)
        with engine.connect() as connection:  # persistent: stored in the file, every later connection uses it
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        engine.dispose()
        descriptor = os.open(side, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.link(side, db)  # atomic, and never over a store that appeared meanwhile
    except FileExistsError:
        pass
    finally:
        engine.dispose()
        side.unlink(missing_ok=True)


def _unsynced(connection: Any, _record: Any) -> None:
    # Only for the side file being built: nothing reads it before the one fsync that ends its creation.
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute("PRAGMA journal_mode=MEMORY")


def experiment_id(mlflow_client: MlflowClient, uri: str, name: str, tags: dict[str, str] | None = None) -> str:
    """The id of experiment ``name``, created (with a local artifact root for sqlite, and ``tags``) when missing;
    an existing one gets the ``tags`` it lacks (one request each, so usually none)."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(found.experiment_id)
        for key, value in (tags or {}).items():
            if key not in found.tags:
                mlflow_client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=artifact_location(uri, name), tags=tags)


def swap_tracking_uri(uri: str | None) -> str | None:
    """Set MLflow's process-global tracking URI (None unsets it); returns the previous one to restore later."""
    old = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)  # None also clears the $MLFLOW_TRACKING_URI that MLflow exports
    return old


@contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking URI at ``uri`` for the block (fluent-only APIs), then restore it."""
    old = swap_tracking_uri(uri)
    try:
        yield
    finally:
        swap_tracking_uri(old)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run's results depend on."""
    out = {}
    for name in ("torch", "pytorch-lightning", "mlflow", "sae-pipeline", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout holding this code, or None when it is not a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _rows(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``X[rows]``: a view when the rows are consecutive (loading puts the labeled ones first), else a copy."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return X[int(rows[0]) : int(rows[-1]) + 1]
    return X[rows]


def dataset_inputs(data: LoadedData) -> list[DatasetInput]:
    """The train, validation and test splits as MLflow dataset inputs: name, own digest, schema, source path; the
    training rows without labels (and the unlabeled pool) apart, as context ``unlabeled``."""
    path = Path(data.source)
    source: Any = CodeDatasetSource({"builtin": data.source, "loader": "pipeline.data.builtin"})
    if path.is_file():
        with warnings.catch_warnings():  # a path reads as several local source kinds; all are the same file
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(path.resolve()))
    out = []
    splits = [("train", data.X_train, data.y_train), ("validation", data.X_val, data.y_val),
              ("test", data.X_test, data.y_test)]
    labeled = data.labeled_rows("train")
    if data.y_train is not None and labeled.size < data.X_train.shape[0]:  # the rows only pretraining saw
        rest = np.setdiff1d(np.arange(data.X_train.shape[0]), labeled)
        splits[0] = ("train", _rows(data.X_train, labeled), np.asarray(data.y_train)[labeled])
        splits.append(("unlabeled", _rows(data.X_train, rest), None))
    for context, X, y in splits:
        name = data.source if context == "train" else f"{data.source}:{context}"
        digest = fingerprint(X, y)[:DIGEST_CHARS]
        dataset = mlflow.data.from_numpy(X, targets=y, source=source, name=name, digest=digest)
        out.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return out
