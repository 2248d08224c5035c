"""Screenshots of what a user sees: the MLflow UI and the Prefect UI after a few real runs, in headless Chromium.

    python docs/screenshots.py [--out DIR] [--workdir DIR] [--epochs N]

In a fresh working directory it starts a Prefect server on a free loopback port, runs `sae-pipeline run`
three times against it (the digits example, again with a `--set` override, and the patches config) and
`sae-pipeline tune examples/tune-digits.yaml --trials 3` (the MLflow store is the working directory's
mlflow.db, as for any user), serves that store with `sae-pipeline ui` on another free port, and saves PNGs
into docs/ (the README's pictures among them) of: the experiment's run list, a parent run, a layer run's
charts, the registered model and its champion version, the search's run, and the Prefect flow runs of the
run and of the search with the run's link artifact. Needs Debian's `chromium` and `chromium-driver`
(apt-get install chromium chromium-driver). A dev tool: nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
WINDOW = "1600,1100"
QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_ENABLE_TELEMETRY": "false",
         "OMP_WAIT_POLICY": "PASSIVE"}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}: no answer after {timeout:.0f}s; log {log}")


@contextmanager
def server(command: list[str], health: str, workdir: Path, env: dict[str, str], name: str) -> Iterator[None]:
    """Run ``command`` in its own process group until the block ends."""
    log = workdir / f"{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_healthy(health, process, log)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # mlflow's job workers can be slow to follow
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def pipeline_run(workdir: Path, env: dict[str, str], args: list[str], command: str = "run") -> dict:
    """``sae-pipeline COMMAND ARGS --json`` in ``workdir`` (against the Prefect server in ``env``); its JSON answer."""
    started = time.monotonic()
    done = subprocess.run([str(BIN / "sae-pipeline"), command, *args, "--json"], cwd=workdir, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sae-pipeline {command} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    print(f"  {command} {' '.join(args) or '(digits)'}: {time.monotonic() - started:.0f}s", file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


class Browser:
    """Headless Chromium driven through chromedriver's W3C HTTP API (no selenium needed): real waits, and the
    MLflow Assistant panel, which opens by itself on a first visit and covers a quarter of the page, kept shut."""

    STORAGE = {"mlflow.assistant.panelOpen_v1": "false", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}

    def __init__(self, chromium: str, driver: str, workdir: Path) -> None:
        port = free_port()
        self.url = f"http://{HOST}:{port}"
        self.log = (workdir / "chromedriver.log").open("w")
        self.process = subprocess.Popen([driver, f"--port={port}"], stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_healthy(f"{self.url}/status", self.process, workdir / "chromedriver.log", timeout=30)
        options = {"binary": chromium, "args": ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                                f"--window-size={WINDOW}"]}
        answer = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}})
        self.session = f"/session/{answer['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers={"Content-Type": "application/json"},
                                         data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=120) as answer:
            return json.loads(answer.read())["value"]

    def shot(self, url: str, out: Path, seconds: float) -> Path:
        """Open ``url``, let it render for ``seconds`` of real time, save the window as PNG."""
        self._call("POST", f"{self.session}/url", {"url": url})
        script = "for (const [k, v] of Object.entries(arguments[0])) localStorage.setItem(k, v);"
        self._call("POST", f"{self.session}/execute/sync", {"script": script, "args": [self.STORAGE]})
        self._call("POST", f"{self.session}/refresh", {})
        time.sleep(seconds)
        out.write_bytes(base64.b64decode(self._call("GET", f"{self.session}/screenshot")))
        print(f"  {out.name}: {url}", file=sys.stderr)
        return out

    def close(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
            self.log.close()


def flow_run_of_artifact(prefect_api: str, key: str, flow_run: str | None = None) -> dict:
    """The newest artifact ``key`` (of ``flow_run``, when given) as the Prefect API returns it."""
    query: dict[str, Any] = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    if flow_run is not None:
        query["flow_runs"] = {"id": {"any_": [flow_run]}}
    request = urllib.request.Request(f"{prefect_api}/artifacts/filter", data=json.dumps(query).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        (found,) = json.loads(answer.read())
    return found


def pages(workdir: Path, mlflow_url: str, prefect_api: str) -> dict[str, str]:
    """Screenshot name -> URL, for the newest digits run and the search, read from the store the runs wrote."""
    from mlflow import MlflowClient  # slow imports only once the runs are done

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    ml = "?workflowType=machine_learning"  # MLflow 3.17 opens GenAI pages unless told (or toggled once)
    experiment = client.get_experiment_by_name("digits").experiment_id
    parent = client.search_runs([experiment], "tags.sae.flow_run != ''", order_by=["start_time DESC"],
                                max_results=1)[0]
    (layer,) = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                                "and attributes.run_name = 'layer-2'")
    model = client.get_model_version_by_alias("digits-encoder", "champion")
    flow_run = parent.data.tags["sae.flow_run"]  # the link from MLflow back to Prefect
    link = flow_run_of_artifact(prefect_api, "digits-mlflow-run", flow_run)  # the link from Prefect to MLflow
    searches = client.get_experiment_by_name("digits-tune").experiment_id
    (search,) = client.search_runs([searches], "tags.sae.kind = 'tune'", order_by=["start_time DESC"], max_results=1)
    prefect_ui = prefect_api.removesuffix("/api")
    return {
        "mlflow-runs": f"{mlflow_url}/#/experiments/{experiment}/runs{ml}",
        "mlflow-parent-run": f"{mlflow_url}/#/experiments/{experiment}/runs/{parent.info.run_id}{ml}",
        "mlflow-layer-charts": f"{mlflow_url}/#/experiments/{experiment}/runs/{layer.info.run_id}/model-metrics{ml}",
        "mlflow-registered-model": f"{mlflow_url}/#/models/digits-encoder",
        "mlflow-model-version": f"{mlflow_url}/#/models/digits-encoder/versions/{model.version}",
        "mlflow-tune-run": f"{mlflow_url}/#/experiments/{searches}/runs/{search.info.run_id}{ml}",
        "prefect-flow-run": f"{prefect_ui}/runs/flow-run/{flow_run}",
        "prefect-tune-flow-run": f"{prefect_ui}/runs/flow-run/{search.data.tags['sae.flow_run']}",
        "prefect-mlflow-link": f"{prefect_ui}/artifacts/artifact/{link['id']}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where the PNGs go (the README's are among them)")
    parser.add_argument("--workdir", help="working directory for the runs (default: a new temporary one)")
    parser.add_argument("--epochs", type=int, help="cap every layer's and fine-tuning's epochs (quicker runs)")
    parser.add_argument("--reuse", action="store_true", help="skip the runs when --workdir already has a store")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        parser.error("chromium or chromedriver not found: apt-get install chromium chromium-driver (Debian)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sae-screens-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_api, mlflow_url = f"http://{HOST}:{prefect_port}/api", f"http://{HOST}:{mlflow_port}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | QUIET
    env |= {"PREFECT_HOME": str(workdir / "prefect-home"), "PREFECT_API_URL": prefect_api,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}
    capped = [] if args.epochs is None else ["--set", f"defaults.epochs={args.epochs}",
                                             "--set", f"finetune.epochs={args.epochs}"]
    print(f"working directory {workdir}", file=sys.stderr)
    with ExitStack() as stack:
        stack.enter_context(server([str(BIN / "prefect"), "server", "start", "--host", HOST, "--port",
                                    str(prefect_port)], f"{prefect_api}/health", workdir, env, "prefect"))
        if not (args.reuse and (workdir / "mlflow.db").exists()):
            pipeline_run(workdir, env, capped)
            patches_capped = [] if args.epochs is None else ["--set", f"defaults.epochs={args.epochs}"]
            pipeline_run(workdir, env, [str(ROOT / "pipeline" / "configs" / "patches.yaml"), *patches_capped])
            pipeline_run(workdir, env, [*capped, "--set", "layers.1.hidden=64"])  # the newest digits run: shown
            tune_capped = [] if args.epochs is None else ["--set", f"defaults.epochs={args.epochs}",
                                                          "--set", f"finetune.epochs={args.epochs}"]
            pipeline_run(workdir, env, [str(ROOT / "examples" / "tune-digits.yaml"), "--trials", "3", *tune_capped,
                                        "--out", str(workdir / "best.yaml")], command="tune")
        stack.enter_context(server([str(BIN / "sae-pipeline"), "ui", "--port", str(mlflow_port)],
                                   f"{mlflow_url}/health", workdir, env, "mlflow"))
        browser = Browser(chromium, driver, workdir)
        stack.callback(browser.close)
        for name, url in pages(workdir, mlflow_url, prefect_api).items():
            browser.shot(url, out / f"{name}.png", seconds=25 if "charts" in name else 12)
    print(f"screenshots in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
