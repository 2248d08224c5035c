"""A signal that arrives while a write to the tracking store runs waits for the write to end: a KeyboardInterrupt
inside one of SQLAlchemy's sqlite transactions left the database locked for the rest of the process (every
later write waited 20 s and failed), so a run stopped by Ctrl-C or by its server's death stayed RUNNING."""

import _thread
import os
import signal
import threading
import time

import pytest

from pipeline.process import interrupts


@pytest.fixture(autouse=True)
def python_sigint():
    """Python's own SIGINT handler (an earlier test may have left another), restored afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    interrupts.uninstall()
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("arrive", [lambda: os.kill(os.getpid(), signal.SIGINT), _thread.interrupt_main],
                         ids=["SIGINT", "interrupt_main"])
def test_a_signal_inside_the_block_is_raised_when_the_block_ends(arrive):
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        arrive()
        for step in range(3):  # Python code after the signal: it would have been interrupted here
            time.sleep(0.01)
            done.append(step)
    assert done == [0, 1, 2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


def test_our_handler_records_the_held_signal_and_nested_blocks_deliver_once_at_the_outermost_end():
    interrupts.install()
    order = []
    with pytest.raises(KeyboardInterrupt, match="received SIGTERM"), interrupts.deferred():
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            order.append("inner")
        order.append("outer")
    assert order == ["inner", "outer"] and interrupts.received() == signal.SIGTERM


def test_a_block_without_a_signal_changes_nothing_and_other_threads_run_it_as_is():
    handler = signal.getsignal(signal.SIGINT)
    assert interrupts.deferred()(lambda x: x + 1)(1) == 2 and signal.getsignal(signal.SIGINT) is handler
    errors = []

    def elsewhere():
        try:
            with interrupts.deferred():  # signal.signal would raise ValueError off the main thread
                pass
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert errors == []


def test_an_interrupt_during_a_flush_to_sqlite_lets_the_flush_finish_and_the_run_close(tmp_path):
    from mlflow import MlflowClient

    from pipeline.tracking.epoch_logger import BufferedMLFlowLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    logger = BufferedMLFlowLogger(run_id, uri)
    logger.pending = [point for epoch in range(1500) for point in _points(epoch)]
    write = logger.experiment.log_batch

    def interrupted_write(*args, **kwargs):  # the signal arrives inside the write, as Ctrl-C would
        _thread.interrupt_main()
        return write(*args, **kwargs)

    logger.experiment.log_batch = interrupted_write
    with pytest.raises(KeyboardInterrupt):
        logger.flush()
    assert len(client.get_metric_history(run_id, "loss")) == 1500  # both writes done before the interrupt
    started = time.monotonic()
    client.set_terminated(run_id, "KILLED")  # the store is not left locked
    assert time.monotonic() - started < 5 and client.get_run(run_id).info.status == "KILLED"


def _points(epoch: int):
    from mlflow.entities import Metric

    return [Metric("loss", 1.0 / (epoch + 1), 0, epoch + 1)]
