"""Builders for the bad-input table (test_bad_input.py): configs, data files, encoder folders, hostile servers."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
import yaml

from sae import SAEConfig, SparseAutoencoder
from sae.scaling import Scaling
from sae.stack import StackedEncoder

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


def base_config(tmp: Path) -> dict:
    return {
        "name": "bad",
        "cache_dir": str(tmp / "cache"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "data": {"source": "digits", "max_samples": 200},
        "defaults": {"epochs": 1},
        "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 4}],
        "finetune": {"epochs": 0},
    }


def write_config(tmp: Path, **sections) -> str:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp) | sections))
    return str(path)


def write_text(tmp: Path, name: str, text: str | bytes) -> str:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def save(tmp: Path, name: str, X) -> str:
    path = tmp / name
    if name.endswith(".csv"):
        path.write_text(X)
    else:
        np.save(path, X, allow_pickle=True)
    return str(path)


def encoder_dir(tmp: Path, name: str = "encoder", d_in: int = 4, names: list[str] | None = None) -> Path:
    torch.manual_seed(0)
    layer = SparseAutoencoder(SAEConfig(d_in=d_in, d_hidden=3))
    meta = {"feature_names": names} if names else None
    return StackedEncoder.from_autoencoders(Scaling.identity(d_in), [layer], meta=meta).save(tmp / name)


def damage_config(tmp: Path, change: Callable[[dict], object]) -> Path:
    directory = encoder_dir(tmp)
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def rng_data(shape, low=0.0, high=1.0):
    return np.random.default_rng(0).uniform(low, high, size=shape)


def in_npy(tmp: Path) -> str:
    return save(tmp, "in.npy", rng_data((5, 4)))


def folder_with(tmp: Path, name: str, *files: str) -> str:
    """A folder holding ``files`` (each with a line of text): what --force must never delete."""
    folder = tmp / name
    folder.mkdir()
    for file in files:
        (folder / file).write_text(f"{file}: the user's own file\n")
    return str(folder)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256 of its bytes); links are listed, not followed."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = f"link -> {path.readlink()}"
        elif path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a listening socket nobody reads)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def dead_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def health_only_server(hang_s: float = 30.0) -> Iterator[str]:
    """An HTTP server that answers /health (and /api/health) at once and hangs on everything else."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path.rstrip("/").endswith("health"):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")
            else:
                release.wait(hang_s)

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def mlflow_store(tmp: Path, name: str = "mlflow.db") -> Path:
    """A real, empty MLflow sqlite store (MLflow's tables, no runs)."""
    from pipeline.tracking.store import create_sqlite_store

    db = tmp / name
    create_sqlite_store(f"sqlite:///{db}")
    return db


def truncated_store(tmp: Path) -> Path:
    db = mlflow_store(tmp)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    return db


@contextmanager
def locked_store(db: Path) -> Iterator[Path]:
    """``db`` with another connection holding its exclusive lock until the block ends."""
    import sqlite3

    connection = sqlite3.connect(db, isolation_level=None)
    connection.execute("PRAGMA journal_mode=DELETE")
    connection.execute("BEGIN EXCLUSIVE")
    try:
        yield db
    finally:
        connection.execute("ROLLBACK")
        connection.close()


def foreign_database(tmp: Path) -> Path:
    """A SQLite file holding someone else's tables."""
    import sqlite3

    db = tmp / "mlflow.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER)")
    return db


def npz_declaring(tmp: Path, shape: tuple[int, ...], dtype: str = "<f8") -> str:
    """An .npz of a few bytes whose features member's header declares ``shape`` (its data is missing)."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    path = tmp / "declares.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", header.getvalue() + b"\0" * 64)
    return str(path)


def alias_bomb(tmp: Path, levels: int = 9) -> str:
    """A config whose data.features expands to 9**levels strings through nested YAML aliases."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    config = base_config(tmp)
    body = yaml.safe_dump({k: v for k, v in config.items() if k != "data"})
    text = "\n".join(lines) + f"\n{body}data:\n  source: digits\n  features: *a{levels - 1}\n"
    return write_text(tmp, "bomb.yaml", text)


def deep_json(levels: int) -> str:
    return "[" * levels + "]" * levels


def alias_bomb_value(levels: int = 9) -> str:
    """A YAML flow sequence (a --set value) expanding to 9**levels strings through nested aliases."""
    parts = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    parts += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"[{', '.join(parts)}]"
