"""The warm runner imports what its copies imported on first use, a slice at a time, and never keeps threads."""

import json
import signal
import sys
import threading

from flows import warm_imports
from flows.warm_imports import Warming


def test_a_copy_reports_the_modules_it_imported_since_the_fork(tmp_path, monkeypatch):
    (tmp_path / "imported_by_the_copy.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    known = set(sys.modules)
    import imported_by_the_copy  # noqa: F401 - as a command imports on first use

    path = warm_imports.report_file()
    warm_imports.write_new(path, known)
    with open(path) as report:
        assert json.load(report) == ["imported_by_the_copy"]
    monkeypatch.delitem(sys.modules, "imported_by_the_copy")
    warming = Warming()
    assert warming.learn(path) == 1 and list(warming.pending) == ["imported_by_the_copy"]
    assert warming.step() is None and "imported_by_the_copy" in sys.modules  # the runner has it now


def test_only_importable_modules_of_the_environment_are_imported(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(["__main__", "code_model_5c28", "sae_encoder_pyfunc", "json", "colorsys",
                                "no_such_module_here"]))
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    warming = Warming()
    assert warming.learn(str(path)) == 2 and not path.exists()  # a logged model's code, main, loaded ones: no
    while warming.pending:
        assert warming.step() is None
    assert "colorsys" in sys.modules and warming.failed == {"no_such_module_here"}


def test_an_import_that_starts_a_thread_stops_warming(tmp_path, monkeypatch):
    (tmp_path / "starts_a_thread_here.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(0.5,), daemon=True).start()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    already = threading.active_count()  # the suite's own threads: only a new one counts
    monkeypatch.setattr(threading, "active_count", lambda real=threading.active_count: real() - already + 1)
    warming = Warming()
    warming.pending.extend(["starts_a_thread_here", "colorsys"])
    assert warming.step() == "importing starts_a_thread_here started a thread"
    assert not warming.on and not warming.pending


def test_signal_handlers_an_import_sets_are_put_back(tmp_path, monkeypatch):
    (tmp_path / "sets_a_handler_here.py").write_text("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    before = signal.getsignal(signal.SIGTERM)
    warming = Warming()
    warming.pending.append("sets_a_handler_here")
    assert warming.step() is None and signal.getsignal(signal.SIGTERM) is before
