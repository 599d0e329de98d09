"""A pytest plugin: with ``TALE_REQUIRE_ALL=1`` (CI sets it), a skip caused by a missing extra or a
missing data folder fails the run instead of passing quietly.

A module that ``pytest.importorskip``-s an uninstalled framework, or a test that skips for want of
``TALE_DATA_DIR``, reports an error naming what is missing. Skips for a reason the machine cannot
change (no CUDA GPU, a PyTorch build without oneDNN, langchain-tests' own optional features) stay skips.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

#: Skip messages that mean "an area of the project is not installed or has no data here".
MISSING_AREA = ("could not import", "evaluation data not found", "set TALE_DATA_DIR")


def _required() -> bool:
    return os.environ.get("TALE_REQUIRE_ALL", "") not in ("", "0")


def _missing_area(report: Any) -> str | None:
    if not report.skipped:
        return None
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return message if any(marker in message for marker in MISSING_AREA) else None


def _fail(report: Any, why: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"TALE_REQUIRE_ALL=1: this area is missing, so it was not tested: {why}. Install "
                       'every extra (pip install -e ".[all,test]") and set TALE_DATA_DIR, or unset TALE_REQUIRE_ALL.')


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    if _required() and (why := _missing_area(report)):
        _fail(report, why)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    if _required() and (why := _missing_area(report)):
        _fail(report, why)
