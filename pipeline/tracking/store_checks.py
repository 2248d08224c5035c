"""Is the configured tracking store usable? Answered before any server starts or layer trains, every wait bounded.

A sqlite store must be a regular, writable SQLite file holding MLflow's tables (or not exist yet), not locked
by another process for longer than ``LOCK_WAIT_SECONDS``; a database server needs its driver installed and
its port to answer within ``CONNECT_SECONDS``; ``databricks`` needs credentials; an http(s) server is
probed by ``reachable.check_tracking_server``; any other scheme is refused. Light on purpose: no mlflow
import (sqlite3 and, for database servers only, SQLAlchemy's URL parser).
"""

from __future__ import annotations

import configparser
import contextlib
import importlib.util
import os
import socket
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlparse

from pipeline.errors import InputError
from pipeline.tracking.reachable import check_tracking_server
from pipeline.tracking.uris import DB_NAME, is_server, resolve_tracking_uri, sqlite_path

LOCK_WAIT_SECONDS = 3.0  # longest wait for another process's write lock on a sqlite store
CHECK_SECONDS = 2.0  # longest integrity check of an existing sqlite store (past it, its header alone is checked)
CONNECT_SECONDS = 3.0  # longest wait for a database server's port to accept a connection
DATABASES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # MLflow's SQL stores and their default ports
# The driver SQLAlchemy imports for a URI naming none (postgresql://, not postgresql+psycopg2://): when it is not
# installed, it is named without importing SQLAlchemy (~0.4 s). tests/pipeline/tracking/test_store_checks.py holds
# this table to the installed SQLAlchemy.
DEFAULT_DRIVERS = {"postgresql": "psycopg", "mysql": "MySQLdb", "mssql": "pyodbc"}
FIX = f"or set tracking_uri to another sqlite:///…/{DB_NAME} file"


def check_tracking_store(configured: str | None = None) -> str:
    """The tracking URI a run will use, checked; InputError naming the problem and the fix."""
    uri = resolve_tracking_uri(configured)  # refuses the legacy file store
    scheme = urlparse(uri).scheme.split("+")[0]
    if is_server(uri):
        check_tracking_server(uri)
    elif scheme == "sqlite":
        check_sqlite_store(uri)
    elif scheme in DATABASES:
        check_database_server(uri, DATABASES[scheme])
    elif uri == "databricks" or scheme.startswith("databricks"):
        check_databricks_credentials(uri)
    elif scheme not in _plugin_schemes():
        raise InputError(f"tracking URI {uri!r}: MLflow cannot track to {scheme}:// stores; use "
                         f"sqlite:///{DB_NAME}, an http(s):// MLflow server, {', '.join(DATABASES)} or databricks")
    return uri


def check_sqlite_store(uri: str) -> None:
    """InputError unless the sqlite file is absent (MLflow creates it) or an MLflow store this process can write."""
    db = sqlite_path(uri)
    if db is None:
        return
    try:
        os.stat(db)
    except FileNotFoundError:
        return
    except OSError as error:
        raise InputError(f"sqlite store {db}: cannot be opened ({error.strerror}); {FIX}") from None
    if db.is_dir():
        raise InputError(f"sqlite store {db}: is a directory; point tracking_uri at a file inside it, e.g. "
                         f"sqlite:///{db / DB_NAME}")
    if not db.is_file():
        raise InputError(f"sqlite store {db}: is not a regular file (a device or pipe); {FIX}")
    if db.stat().st_size:
        _check_database(db)


def _check_database(db: Path) -> None:
    try:
        connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=rw", uri=True, timeout=LOCK_WAIT_SECONDS,
                                     isolation_level=None)
    except sqlite3.Error as error:
        raise InputError(f"sqlite store {db}: cannot be opened ({error}); {FIX}") from None
    try:
        connection.execute("BEGIN IMMEDIATE")  # the write lock, released at once: locked, read-only?
        connection.execute("ROLLBACK")
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "alembic_version" not in tables:
            raise InputError(f"sqlite store {db}: is a SQLite database without MLflow's tables ({len(tables)} "
                             f"others); {FIX}")
        _check_integrity(connection, db)
    except sqlite3.OperationalError as error:
        raise InputError(_operational(db, str(error))) from None
    except sqlite3.DatabaseError as error:
        raise InputError(f"sqlite store {db}: is damaged or not a SQLite database ({error}); move it aside "
                         f"(MLflow then starts a new store there) {FIX}") from None
    finally:
        connection.close()


def _operational(db: Path, message: str) -> str:
    if "locked" in message:
        return (f"sqlite store {db}: locked by another process for over {LOCK_WAIT_SECONDS:g} s ({message}); "
                f"wait for it or stop it (`fuser {db}` names it), {FIX}")
    if "readonly" in message or "unable to open" in message:
        return (f"sqlite store {db}: cannot be written ({message}); make the file and its folder writable, {FIX}")
    return f"sqlite store {db}: unusable ({message}); {FIX}"


def _check_integrity(connection: sqlite3.Connection, db: Path) -> None:
    """``PRAGMA quick_check``, abandoned after CHECK_SECONDS (a large store); a truncated file fails it."""
    deadline = time.monotonic() + CHECK_SECONDS
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        result = connection.execute("PRAGMA quick_check(1)").fetchone()
    except sqlite3.OperationalError as error:
        if "interrupted" in str(error):
            return
        raise
    finally:
        connection.set_progress_handler(None, 0)
    if result and result[0] != "ok":
        raise sqlite3.DatabaseError(f"integrity check: {result[0]}")


def check_database_server(uri: str, default_port: int) -> None:
    """InputError unless the store's SQLAlchemy driver is installed and its server accepts a connection."""
    driver = DEFAULT_DRIVERS.get(urlparse(uri).scheme)
    if driver is not None and importlib.util.find_spec(driver) is None:
        raise _no_driver(_without_password(uri), driver)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        shown = url.render_as_string(hide_password=True)
        url.get_dialect().import_dbapi()
    except ModuleNotFoundError as error:
        raise _no_driver(shown, str(error.name)) from None
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise InputError(f"tracking URI {uri.split('@')[-1]!r}: not a database URL SQLAlchemy knows ({error}); "
                         "e.g. postgresql://user:password@host:5432/mlflow") from None
    host, port = url.host or "localhost", url.port or default_port
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise InputError(f"tracking URI {shown}: the database server {host}:{port} did not accept a connection "
                         f"within {CONNECT_SECONDS:g} s ({error.strerror or error}); start it, or use "
                         f"sqlite:///{DB_NAME}") from None


def _no_driver(shown: str, module: str) -> InputError:
    return InputError(f"tracking URI {shown}: needs the database driver {module!r}, which is not installed; "
                      f"`pip install {module}`, or use sqlite:///{DB_NAME}")


def _without_password(uri: str) -> str:
    """``uri`` with its password shown as ``***`` (as SQLAlchemy renders it)."""
    parts = urlparse(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def check_databricks_credentials(uri: str) -> None:
    """InputError unless DATABRICKS_HOST (with a token or client id) or a ~/.databrickscfg profile is set."""
    if os.environ.get("DATABRICKS_HOST") and any(os.environ.get(key) for key in (
            "DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID", "DATABRICKS_USERNAME")):
        return
    profile = urlparse(uri).netloc or os.environ.get("DATABRICKS_CONFIG_PROFILE") or "DEFAULT"
    config = Path(os.environ.get("DATABRICKS_CONFIG_FILE") or "~/.databrickscfg").expanduser()
    parser = configparser.ConfigParser()
    with contextlib.suppress(configparser.Error):
        parser.read(config)
    if parser.has_option(profile, "host"):
        return
    raise InputError(f"tracking URI {uri!r}: no Databricks credentials (DATABRICKS_HOST and DATABRICKS_TOKEN are "
                     f"unset and {config} has no [{profile}] host); set them, or use sqlite:///{DB_NAME}")


def _plugin_schemes() -> set[str]:
    """Schemes that installed MLflow plugins register for tracking stores."""
    from importlib.metadata import entry_points

    return {entry.name for entry in entry_points(group="mlflow.tracking_store")}
