"""What Python and LightGBM would print on stderr becomes JSON log records."""

from __future__ import annotations

import json
import threading
import warnings

import lightgbm
import numpy as np

from worker.model.lightgbm_log import route_lightgbm_log
from worker.ops.logging import configure_logging


def records(err: str) -> list[dict]:
    lines = [line for line in err.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # a line that is not JSON fails here


def test_python_warnings_are_log_records(capsys):
    configure_logging(fmt="json", component="run")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful with that", UserWarning, stacklevel=1)
    (record,) = records(capsys.readouterr().err)
    assert record["event"] == "python_warning" and record["level"] == "warning"
    assert record["category"] == "UserWarning" and record["message"] == "careful with that"
    assert record["component"] == "run"


def test_lightgbm_native_warnings_are_log_records(capsys):
    configure_logging(fmt="json", level="info")
    route_lightgbm_log(lightgbm)  # as loading or training a model does
    x = np.random.default_rng(1).random((200, 3))
    y = (x[:, 0] > 0.5).astype(float)
    lightgbm.train(
        {"objective": "binary", "verbosity": 1, "no_such_parameter": 3, "num_threads": 1},
        lightgbm.Dataset(x, y),
        num_boost_round=2,
    )
    captured = capsys.readouterr()
    assert "[LightGBM]" not in captured.out
    lines = records(captured.err)
    warned = [r for r in lines if r["event"] == "lightgbm" and r["level"] == "warning"]
    assert any("no_such_parameter" in r["message"] for r in warned), lines
    assert all(r["level"] != "debug" for r in lines)  # info lines only at debug level


def test_an_exception_escaping_a_thread_is_one_record_with_its_traceback(capsys):
    configure_logging(fmt="json", component="monitor")

    def boom() -> None:
        raise RuntimeError("went wrong")

    t = threading.Thread(target=boom, name="probe")
    t.start()
    t.join()
    (record,) = records(capsys.readouterr().err)
    assert record["event"] == "uncaught_exception" and record["level"] == "critical"
    assert record["thread"] == "probe"
    assert "RuntimeError: went wrong" in record["exception"]
