"""The store checks' facts held to the libraries they stand in for."""

import importlib.util
import os
import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url

from pipeline.tracking.store_checks import DATABASES, DEFAULT_DRIVERS
from tests import ROOT


@pytest.mark.parametrize("scheme", list(DATABASES))
def test_each_default_driver_is_the_module_sqlalchemy_imports(scheme):
    try:
        make_url(f"{scheme}://me@127.0.0.1/mlflow").get_dialect().import_dbapi()
    except ModuleNotFoundError as error:
        assert error.name == DEFAULT_DRIVERS[scheme]
    else:
        assert importlib.util.find_spec(DEFAULT_DRIVERS[scheme]) is not None


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg is installed here")
def test_a_missing_driver_is_named_without_importing_sqlalchemy_or_showing_the_password():
    probe = ("import sys\nfrom pipeline.errors import InputError\nfrom pipeline.tracking.store_checks import "
             "check_tracking_store\ntry:\n    check_tracking_store('postgresql://me:secret@127.0.0.1/mlflow')\n"
             "except InputError as error:\n    print(error)\nprint('sqlalchemy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    message, imported = done.stdout.strip().splitlines()
    assert message.startswith("tracking URI postgresql://me:***@127.0.0.1/mlflow: needs the database driver 'psycopg'")
    assert imported == "False" and "secret" not in done.stdout
