"""TALE_REQUIRE_ALL=1 (set by .ci/run) turns a skipped area into a failure; other skips stay skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

PROBE = '''
import pytest

{module_level}

def test_needs_data():
    pytest.skip("evaluation data not found at /nowhere; set TALE_DATA_DIR")

def test_needs_a_gpu():
    pytest.skip("needs a CUDA GPU (marker 'gpu')")

def test_runs():
    assert 1 + 1 == 2
'''


def run_probe(tmp_path: Path, *, required: bool, module_level: str = "") -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE.format(module_level=module_level))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "TALE_REQUIRE_ALL": "1" if required else ""}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "require_all", "-q", "-p", "no:cacheprovider",
                           "-rs", str(tmp_path / "test_probe.py")], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)


def test_without_the_switch_missing_areas_are_skips(tmp_path):
    proc = run_probe(tmp_path, required=False)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 2 skipped" in proc.stdout


def test_with_the_switch_missing_data_fails_and_a_missing_gpu_does_not(tmp_path):
    proc = run_probe(tmp_path, required=True)
    assert proc.returncode == 1, proc.stdout
    assert "1 failed, 1 passed, 1 skipped" in proc.stdout
    assert "TALE_REQUIRE_ALL=1: this area is missing" in proc.stdout and "TALE_DATA_DIR" in proc.stdout


def test_with_the_switch_an_uninstalled_extra_fails_collection(tmp_path):
    proc = run_probe(tmp_path, required=True, module_level='pytest.importorskip("surely_not_installed_xyz")')
    assert proc.returncode != 0, proc.stdout
    assert "could not import 'surely_not_installed_xyz'" in proc.stdout and "1 error" in proc.stdout
    quiet = run_probe(tmp_path, required=False, module_level='pytest.importorskip("surely_not_installed_xyz")')
    assert quiet.returncode == 5 and "1 skipped" in quiet.stdout  # the whole module skipped: nothing ran


@pytest.mark.skipif(not os.environ.get("CI"), reason="checks the CI script's environment")
def test_ci_requires_every_area():
    assert os.environ.get("TALE_REQUIRE_ALL") == "1"
