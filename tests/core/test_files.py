"""core/files.py: atomic writes of files and folders, and the cross-process `FileLock` (tested with
real subprocesses); and the core writers that go through it (learned estimator, tiktoken cache)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from tale_integrations.core import files
from tale_integrations.core.errors import RunLockedError
from tale_integrations.core.files import (
    FileLock,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)

#: A process that takes a FileLock on argv[1], says so, and holds it until its stdin closes.
HOLD = """
import sys
from tale_integrations.core.files import FileLock
lock = FileLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Lock files live in the cache folder: a fresh one per test (the subprocesses inherit it)."""
    monkeypatch.setenv("TALE_CACHE_DIR", str(tmp_path / "cache"))


@contextlib.contextmanager
def held_elsewhere(path):
    """Another process holding the lock on ``path`` while the block runs; yields the process."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=60)


@pytest.fixture()
def failing_fsync(monkeypatch):
    """Make every write fail midway: the data is in the temporary file, not yet renamed into place."""

    def fail(fd):
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(os, "fsync", fail)


def current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- atomic files -------------------------------------------------------------------------------------


def test_atomic_writes_replace_the_file_and_leave_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "out.json"
    assert atomic_write_json(path, {"b": "é", "a": [1]}) == path  # parents are created
    assert path.read_text(encoding="utf-8") == '{\n  "b": "é",\n  "a": [\n    1\n  ]\n}\n'
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["out.json"]
    # the file gets the usual mode (the umask's), not a private temporary file's 0600
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask()


@pytest.mark.parametrize("write", [
    lambda p: atomic_write_text(p, "new"),
    lambda p: atomic_write_bytes(p, b"new"),
    lambda p: atomic_write_json(p, {"new": True}),
])
def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path, failing_fsync, write):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(OSError, match="simulated"):
        write(path)
    assert path.read_text() == "old" and leftovers(tmp_path) == []


def test_a_value_json_cannot_write_changes_nothing(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


# -- atomic folders -------------------------------------------------------------------------------------


def test_atomic_directory_appears_whole_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".model.") and not target.exists()
        (staging / "weights").write_bytes(b"w")
        (staging / "sub").mkdir()
        (staging / "sub" / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["sub", "weights"]
    assert os.listdir(tmp_path) == ["model"]
    # the folder gets the usual mode (the umask's), not a private temporary folder's 0700
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~current_umask()


def test_atomic_directory_replaces_an_old_folder_only_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError, match="cut"), atomic_directory(target) as staging:
        (staging / "half").write_text("half")
        raise RuntimeError("cut short")
    assert [p.name for p in target.iterdir()] == ["old"] and os.listdir(tmp_path) == ["model"]
    with atomic_directory(target) as staging:
        (staging / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"] and os.listdir(tmp_path) == ["model"]


# -- the lock, across processes -------------------------------------------------------------------------


def test_a_second_process_is_refused_with_the_holders_name(tmp_path):
    path = tmp_path / "run.json"
    with held_elsewhere(path) as holder:
        with pytest.raises(RunLockedError, match=rf"the results of run 7 is being written by pid {holder.pid} "):
            FileLock(path, what="the results of run 7").acquire()
        started = time.monotonic()
        with pytest.raises(RunLockedError, match=r"after waiting 0\.3 s"):
            FileLock(path, wait=0.3).acquire()
        assert time.monotonic() - started >= 0.3
    with FileLock(path) as lock:  # released when the holder ended
        assert lock.held
    assert not lock.held
    assert not path.exists()  # the lock file is kept out of the user's folder


def test_wait_true_waits_for_the_holder_to_finish(tmp_path):
    path = tmp_path / "out"
    with held_elsewhere(path) as holder:
        released = time.monotonic() + 0.5
        threading.Timer(0.5, holder.stdin.close).start()
        with FileLock(path, wait=True):
            assert time.monotonic() >= released - 0.05


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "out"
    with held_elsewhere(path) as holder:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        with FileLock(path, wait=5):
            pass


def test_one_process_two_locks_on_one_path_exclude_each_other(tmp_path):
    first = FileLock(tmp_path / "x").acquire()
    with pytest.raises(RunLockedError):
        FileLock(tmp_path / "x").acquire()
    first.release()
    FileLock(tmp_path / "x").acquire().release()


# -- core writers that go through files.py ------------------------------------------------------------


def test_a_learned_estimator_save_that_fails_keeps_the_old_file(tmp_path, failing_fsync):
    from tale_integrations.core.learned import default_learned_estimator

    path = tmp_path / "est.json"
    path.write_text("old")
    with pytest.raises(OSError, match="simulated"):
        default_learned_estimator().save(path)
    assert path.read_text() == "old" and leftovers(tmp_path) == []


def test_learned_estimator_save_writes_the_same_bytes(tmp_path):
    from tale_integrations.core.learned import default_learned_estimator

    estimator = default_learned_estimator()
    path = estimator.save(tmp_path / "a" / "est.json")
    assert json.loads(path.read_text(encoding="utf-8")) == estimator.to_dict()
    assert estimator.save(tmp_path / "b.json").read_bytes() == path.read_bytes()
    assert os.listdir(tmp_path / "a") == ["est.json"]


def test_the_tiktoken_cache_file_is_never_left_half_written(tmp_path, failing_fsync):
    from tale_integrations.core.tokens import _prepare_tiktoken_cache

    with pytest.raises(OSError, match="simulated"):
        _prepare_tiktoken_cache("cl100k_base")
    assert os.listdir(tmp_path / "cache" / "tiktoken") == []


def test_files_imports_only_the_standard_library():
    assert "atomic_write_bytes" in files.__all__
    code = "import sys, tale_integrations.core.files; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
