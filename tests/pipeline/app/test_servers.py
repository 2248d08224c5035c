"""The background servers: a Prefect server on any port serves a UI that talks to that port."""

import os
from pathlib import Path

from pipeline.app.servers import _specs


def test_a_prefect_server_on_another_port_tells_its_ui_that_port():
    _, _, env = _specs(Path("/tmp/servers"), "127.0.0.1", 14999, 15999)["prefect"]
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:14999/api"  # not the default 4200


def test_the_runner_socket_sits_in_the_directory_unless_its_path_is_too_long_for_a_socket():
    from pipeline.app.servers import runner_socket

    assert runner_socket(Path("/tmp/servers")) == "/tmp/servers/runner.sock"
    deep = Path("/tmp/" + "d" * 120)
    name = runner_socket(deep)
    assert name.startswith("@sae-runner-") and name == runner_socket(deep) != runner_socket(deep / "x")
    runner, _, _ = _specs(deep, "127.0.0.1", 14999, 15999)["runner"]
    assert runner.env == {"SAE_RUNNER": name}


def test_an_abstract_runner_socket_is_found_healthy():
    import socket

    from pipeline.app.servers import _healthy, unix_address

    name = f"@sae-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(unix_address(name))
        listening.listen(1)
        assert _healthy(f"unix:{name}")
    assert not _healthy(f"unix:{name}")
