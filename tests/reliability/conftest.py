"""Registers the fault-injection suite's fixtures and the hooks that write its results (see faultkit.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from faultkit import _LOGS, REPORT_ENV, fault, tiny_pipeline_run

__all__ = ["fault", "tiny_pipeline_run"]

_RESULTS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """In-process runs single-threaded: the runs here are tiny, and on a shared machine OpenMP threads that
    wait for busy cores make each step seconds long."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if "tests/reliability/" not in item.nodeid.replace("\\", "/"):
        return
    if report.failed:
        _RESULTS[item.nodeid] = "failed"
    elif report.skipped:
        _RESULTS.setdefault(item.nodeid, "skipped")
    elif report.when == "call":
        _RESULTS.setdefault(item.nodeid, "passed")


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    tests = []
    for item in session.items:
        if "tests/reliability/" not in item.nodeid.replace("\\", "/"):
            continue
        log = _LOGS.get(item.nodeid)
        tests.append(
            {
                "nodeid": item.nodeid,
                "result": _RESULTS.get(item.nodeid, "not run"),
                "cases": log.cases if log else [],
            }
        )
    Path(path).write_text(json.dumps({"tests": tests, "finished": time.time()}, indent=1))
