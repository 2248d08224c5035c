"""A full disk raises ENOSPC where arrays are memory-mapped for writing (codes, scratch copies), never SIGBUS.

Each case runs in a child process with a 1 MB tmpfs mounted in a private mount namespace (``unshare``): a
mapped write into a hole of a full file system kills the process with SIGBUS (exit 135), which no handler,
cleanup or run record survives.
"""

import shlex
import subprocess
import sys

import pytest

from tests import ROOT

CASES = {
    "codes written to a .npy": """
import numpy as np, torch
from pathlib import Path
from pipeline.data.codes import encode_in_chunks
encode_in_chunks(lambda t: t, np.ones((100_000, 8), np.float32), 8, out_path=Path(FULL) / "codes.npy")
""",
    "a scratch array in $TMPDIR": """
import tempfile
tempfile.tempdir = FULL
from pipeline.data.scratch import scratch_array
scratch_array((100_000, 8))[:] = 1.0
""",
}


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not unshare_works(), reason="needs unshare (a private mount namespace for a small tmpfs)")
@pytest.mark.parametrize("case", list(CASES))
def test_writing_past_a_full_disk_raises_enospc_instead_of_sigbus(case, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    code = f"FULL = {str(full)!r}\n" + CASES[case]
    script = (f"mount -t tmpfs -o size=1m tmpfs {full} && "
              f"exec {sys.executable} -c {shlex.quote(code)}")
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])  # a Python exception, not a signal
    assert "OSError: [Errno 28] cannot reserve" in done.stderr and str(full) in done.stderr
