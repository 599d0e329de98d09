"""tale_integrations.core.records: what a refusal says changed between two run headers."""

from __future__ import annotations

from tale_integrations.core.records import diff_summary


def test_diff_summary_names_nested_keys_and_counts_the_rest():
    assert diff_summary({"model": "a", "policy": {"min_budget": 1}}, {"model": "a", "policy": {"min_budget": 2}}) \
        == "policy.min_budget: 1 -> 2"
    old, new = {f"k{i}": i for i in range(6)}, {f"k{i}": -i for i in range(6)}
    assert diff_summary(old, new) == "k1: 1 -> -1; k2: 2 -> -2; k3: 3 -> -3; k4: 4 -> -4; and 1 more"
    assert diff_summary({"x": 1}, {}) == "x: 1 -> None"
    assert diff_summary({"x": {}}, {}) == "the values differ"


# -- the corruption table: every damaged file has one expected outcome and message, never a traceback --------

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from tale_integrations.core.errors import RunLockedError, RunMismatchError, TaleValueError  # noqa: E402
from tale_integrations.core.records import RecordFile, RecoveredFileWarning, read_records  # noqa: E402
from tale_integrations.core.search import SearchRecord, SearchStatus, load_records  # noqa: E402

HEADER = {"kind": "tale-search", "model": "m"}
HEAD = json.dumps({"header": HEADER}).encode() + b"\n"


def line(rid: str, **extra) -> bytes:
    return json.dumps({"id": rid, "v": 1, **extra}).encode() + b"\n"


# name, file bytes, what the writer resumes with (record ids, or the error and its message),
# what the reader returns (record ids, or the error and its message), and the dropped lines' reasons
CORRUPTIONS = [
    ("empty file", b"", [], (TaleValueError, "is empty"), []),
    ("header only", HEAD, [], [], []),
    ("truncated header", HEAD[:20], [], (TaleValueError, "cut header line"), []),
    ("truncated last line", HEAD + line("a") + line("b")[:9], ["a"], ["a"], ["line 3: cut by a kill"]),
    ("invalid UTF-8 in a middle line", HEAD + line("a") + b'{"id": "b", "v": "\xff\xfe"}\n' + line("c"),
     ["a", "c"], ["a", "c"], ["line 3: invalid UTF-8"]),
    ("a line that is not JSON", HEAD + line("a") + b"{oops\n" + line("c"), ["a", "c"], ["a", "c"],
     ["line 3: not JSON"]),
    ("another run's header in the middle", HEAD + line("a") + json.dumps({"header": {"kind": "x"}}).encode() + b"\n"
     + line("c"), ["a", "c"], ["a", "c"], ["line 3: a second header line"]),
    ("a record without an id", HEAD + line("a") + b'{"v": 2}\n', ["a"], ["a"], ["line 3: a record without an id"]),
    ("duplicate ids", HEAD + line("a") + line("b") + line("a", v=2), ["a", "b"], ["a", "b"],
     ["line 4: a second copy of id 'a' (the first is kept)"]),
    ("not a record file", b"hello\nworld\n", (RunMismatchError, "first line is not a header"),
     (TaleValueError, "first line is not a header"), []),
]


@pytest.mark.parametrize(("name", "content", "writer", "reader", "dropped"), CORRUPTIONS,
                         ids=[c[0] for c in CORRUPTIONS])
def test_corruption_table(tmp_path, name, content, writer, reader, dropped):
    path = tmp_path / "run.jsonl"
    path.write_bytes(content)
    # the reader
    if isinstance(reader, tuple):
        with pytest.raises(reader[0], match=reader[1]):
            read_records(path)
    else:
        read = read_records(path)
        assert list(read.records) == reader
        got = [f"line {d.line}: {d.reason}" for d in read.recovery.dropped]
        assert len(got) == len(dropped) and all(g.startswith(x) for g, x in zip(got, dropped)), got
        assert bool(read.recovery) == bool(dropped)
        assert all(x in read.recovery.describe() for x in dropped)
    # the writer: resumes with the good records, or refuses the file, and leaves it appendable
    if isinstance(writer, tuple):
        with pytest.raises(writer[0], match=writer[1]):
            RecordFile(path, HEADER)
        assert path.read_bytes() == content  # a refused file is left as it was
        return
    with RecordFile(path, HEADER) as store:
        assert list(store.records) == writer
        assert store.skipped_lines == len(dropped)
        store.append({"id": "new", "v": 3})
    again = read_records(path)
    assert list(again.records) == [*writer, "new"]
    assert path.read_bytes().endswith(b"\n")


def test_load_records_reports_what_it_left_out(tmp_path):
    path = tmp_path / "s.jsonl"
    good = SearchRecord(id="q", question="?", gold="1", format="gsm8k", status=SearchStatus.VANILLA_WRONG,
                        vanilla_answer="2", vanilla_tokens=3, optimal_budget=None, optimal_answer=None,
                        optimal_tokens=None, trace=(), mode="greedy", counter="usage").to_dict()
    path.write_bytes(HEAD + b'{"id": "e", "text": "an eval record"}\n' + line("cut")[:5])
    with pytest.warns(RecoveredFileWarning, match=r"2 lines left out \(line 2: not a record of this file's kind"):
        assert load_records(path) == []
    path.write_bytes(HEAD + json.dumps(good).encode() + b"\n")
    assert [r.id for r in load_records(path)] == ["q"]


# -- one writer per run ------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from tale_integrations.core.records import RecordFile
    store = RecordFile(sys.argv[1], {"kind": "tale-search", "model": "m"})
    store.append({"id": "from-holder"})
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
    store.close()
    print("released", flush=True)
    time.sleep(30)
""")


def _holder(path, hold: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(hold)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_second_writer_is_refused_with_the_first_ones_name(tmp_path):
    path = tmp_path / "run.jsonl"
    proc = _holder(path, 60)
    try:
        with pytest.raises(RunLockedError, match=rf"run.jsonl is being written by pid {proc.pid} .*--wait"):
            RecordFile(path, HEADER)
        start = time.monotonic()
        with pytest.raises(RunLockedError, match="after waiting 0.3 s"):
            RecordFile(path, HEADER, wait=0.3)
        assert time.monotonic() - start >= 0.3
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    # the system drops a killed process's lock: the run resumes with what it wrote, nothing twice
    with RecordFile(path, HEADER) as store:
        assert list(store.records) == ["from-holder"]
        with pytest.raises(ValueError, match="already in"):
            store.append({"id": "from-holder"})


def test_wait_takes_over_when_the_first_writer_finishes(tmp_path):
    path = tmp_path / "run.jsonl"
    proc = _holder(path, 0.5)
    try:
        with RecordFile(path, HEADER, wait=True) as store:  # blocks until the holder closes
            assert list(store.records) == ["from-holder"]
            store.append({"id": "after"})
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert list(read_records(path).records) == ["from-holder", "after"]
