"""The warm runner imports what its copies imported on first use, a slice at a time, and never keeps threads."""

import json
import signal
import sys
import threading

import pytest

from flows import warm_imports
from flows.warm_imports import Warming


@pytest.fixture(autouse=True)
def only_new_threads_count(monkeypatch):
    """The runner forks from one thread; this test process runs the suite's own: only threads started in the
    test count."""
    already = threading.active_count()
    monkeypatch.setattr(threading, "active_count", lambda real=threading.active_count: real() - already + 1)


def test_a_copy_reports_the_modules_it_imported_since_the_fork(tmp_path, monkeypatch):
    (tmp_path / "imported_by_the_copy.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    known = set(sys.modules)
    import imported_by_the_copy  # noqa: F401 - as a command imports on first use

    path = warm_imports.report_file()
    warm_imports.write_new(path, known, [str(tmp_path)])
    with open(path) as report:
        assert json.load(report) == [["imported_by_the_copy", str(tmp_path / "imported_by_the_copy.py")]]
    monkeypatch.delitem(sys.modules, "imported_by_the_copy")
    warming = Warming()
    assert warming.learn(path) == 1 and [n for n, _ in warming.pending] == ["imported_by_the_copy"]
    assert warming.step() is None and "imported_by_the_copy" in sys.modules  # the runner has it now


def test_modules_from_the_callers_folder_are_never_reported(tmp_path, monkeypatch):
    (tmp_path / "callers_own_hooks.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    known = set(sys.modules)
    import callers_own_hooks  # noqa: F401 - e.g. a hook module beside the caller's config

    path = warm_imports.report_file()
    warm_imports.write_new(path, known, [p for p in sys.path if p != str(tmp_path)])  # the runner's path
    with open(path) as report:
        assert json.load(report) == []


def test_only_the_same_files_importable_in_the_environment_are_imported(tmp_path, monkeypatch):
    import colorsys

    path = tmp_path / "report.json"
    path.write_text(json.dumps([["__main__", None], ["code_model_5c28", None], ["sae_encoder_pyfunc", None],
                                ["json", json.__file__], ["colorsys", colorsys.__file__],
                                ["no_such_module_here", None], ["tabnanny", str(tmp_path / "tabnanny.py")]]))
    monkeypatch.delitem(sys.modules, "colorsys")
    monkeypatch.delitem(sys.modules, "tabnanny", raising=False)
    warming = Warming()
    assert warming.learn(str(path)) == 3 and not path.exists()  # a logged model's code, main, loaded ones: no
    while warming.pending:
        assert warming.step() is None
    assert "colorsys" in sys.modules and "tabnanny" not in sys.modules  # another file of that name: left alone
    assert warming.failed == {"no_such_module_here", "tabnanny"}


def test_an_import_that_starts_a_thread_stops_warming(tmp_path, monkeypatch):
    (tmp_path / "starts_a_thread_here.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(0.5,), daemon=True).start()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    warming = Warming()
    warming.pending.extend([("starts_a_thread_here", None), ("colorsys", None)])
    assert warming.step() == "importing starts_a_thread_here started a thread"
    assert not warming.on and not warming.pending


def test_signal_handlers_an_import_sets_are_put_back(tmp_path, monkeypatch):
    (tmp_path / "sets_a_handler_here.py").write_text("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    warming = Warming()
    warming.pending.append(("sets_a_handler_here", None))
    assert warming.step() is None and signal.getsignal(signal.SIGTERM) is before
