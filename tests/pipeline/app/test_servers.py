"""The background servers: a Prefect server on any port serves a UI that talks to that port."""

from pathlib import Path

from pipeline.app.servers import _specs


def test_a_prefect_server_on_another_port_tells_its_ui_that_port():
    _, _, env = _specs(Path("/tmp/servers"), "127.0.0.1", 14999, 15999)["prefect"]
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:14999/api"  # not the default 4200
