"""One Prefect test harness for every flow test, with Prefect's home in a temporary directory.

PREFECT_HOME (where Prefect keeps its profile, default result storage and local state) must point at a
temporary directory before prefect is first imported, so this module sets it at import time.
"""

import os
import sys
import tempfile
import warnings

_HOME = tempfile.mkdtemp(prefix="sae-prefect-home-")
if "prefect" in sys.modules:  # someone imported prefect before us: its settings are already fixed
    warnings.warn("prefect was imported before tests/flows/conftest.py; PREFECT_HOME may not be isolated",
                  stacklevel=1)
os.environ.update(
    PREFECT_HOME=_HOME,
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    DO_NOT_TRACK="1",
    MLFLOW_ENABLE_TELEMETRY="false",
)

import pytest  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def prefect_harness():
    """A temporary Prefect server and database shared by the whole session (keep flow tests serial)."""
    with prefect_test_harness(server_startup_timeout=120):
        yield
