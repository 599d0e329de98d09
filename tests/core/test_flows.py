"""The sync, async and streaming runners drive one flow the same way."""

import asyncio

import pytest

from tale_integrations.core.flows import Reply, adrive, astream_drive, drive, stream_drive


def _flow(log):
    """Asks to double 3, then asks for 'boom' (whose failure it handles), then returns its record."""
    doubled = yield ("double", 3)
    try:
        yield ("boom", None)
    except KeyError as exc:
        log.append(f"handled {exc.args[0]}")
    last = yield ("double", doubled)
    return [doubled, last]


def _answer(request):
    kind, value = request
    if kind == "boom":
        raise KeyError("boom")
    return value * 2


async def _aanswer(request):
    await asyncio.sleep(0)
    return _answer(request)


def test_drive_sends_replies_and_throws_failures_into_the_flow():
    log = []
    assert drive(_flow(log), _answer) == [6, 12]
    assert log == ["handled boom"]


def test_adrive_is_the_same():
    log = []
    assert asyncio.run(adrive(_flow(log), _aanswer)) == [6, 12]
    assert log == ["handled boom"]


def test_a_failure_the_flow_does_not_handle_propagates():
    def flow():
        yield ("boom", None)
        return "never"

    with pytest.raises(KeyError, match="boom"):
        drive(flow(), _answer)
    with pytest.raises(KeyError, match="boom"):
        asyncio.run(adrive(flow(), _aanswer))


def test_a_flow_that_asks_nothing_returns_at_once():
    def flow():
        return "done"
        yield  # pragma: no cover  (makes this a generator)

    assert drive(flow(), _answer) == "done"
    assert asyncio.run(adrive(flow(), _aanswer)) == "done"


def _events(request):
    kind, value = request
    if kind == "boom":
        raise KeyError("boom")
    yield f"chunk {value}"
    yield Reply(value * 2)


async def _aevents(request):
    for event in _events(request):
        yield event


def test_stream_drive_passes_events_and_ends_with_the_result():
    log = []
    events = list(stream_drive(_flow(log), _events))
    assert events[:-1] == ["chunk 3", "chunk 6"]
    assert events[-1] == Reply([6, 12])
    assert log == ["handled boom"]


def test_astream_drive_is_the_same():
    async def collect():
        return [e async for e in astream_drive(_flow([]), _aevents)]

    events = asyncio.run(collect())
    assert events == ["chunk 3", "chunk 6", Reply([6, 12])]


def test_a_streamed_answer_without_a_reply_is_an_error():
    def flow():
        yield ("double", 1)

    with pytest.raises(RuntimeError, match="without a Reply"):
        list(stream_drive(flow(), lambda request: iter(["chunk"])))
