"""`tale serve` with continuous batching (the default): requests and streams join the running batch,
leave it when their client goes away, wait in a bounded queue, and ``/health`` tells when the
scheduler has died. The evidence is the scheduler's own counters and state (`StepScheduler.stats`),
never a sleep; the scripted model is slowed by a forward hook only so that a request is still
running when the test acts on it."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("torch")

CHAT = "/v1/chat/completions"
WAIT = 60  # seconds any single wait may take before the test fails (never reached when it passes)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (polled), failing after `WAIT` seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def slowed(generator: Any, seconds: float = 0.01) -> Any:
    """Make every forward pass of the generator's model take at least ``seconds`` (so it is still running
    when the test acts on it)."""
    generator.load().model.register_forward_hook(lambda *_: time.sleep(seconds))
    return generator


def raw_post(url: str, body: dict[str, Any]) -> socket.socket:
    """Send a chat request on a socket of our own (so the test can drop the connection); returns it."""
    address = urlparse(url)
    sock = socket.create_connection((address.hostname, address.port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """The body of a plain (Content-Length) response on ``sock``."""
    sock.settimeout(WAIT)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0])
    while len(body) < length:
        body += sock.recv(65536)
    return body


def stats(serve: Any) -> dict[str, Any]:
    return serve.last.app.state.batcher.stats()


def test_a_short_request_is_answered_while_a_long_one_runs(serve, seven):
    url = serve(slowed(seven))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    for stream in (False, True):
        done = threading.Event()

        def long_request(stream: bool = stream, done: threading.Event = done) -> None:
            r = client.chat.completions.create(model="seven", messages=user("long"), max_tokens=200, stream=stream)
            if stream:
                assert "".join(c.choices[0].delta.content or "" for c in r if c.choices) == " 7" * 200
            else:
                assert r.usage.completion_tokens == 200
            done.set()

        thread = threading.Thread(target=long_request)
        thread.start()
        until(lambda: stats(serve)["decoding"] == 1, "the long request to decode")
        short = client.chat.completions.create(model="seven", messages=user("short"), max_tokens=1)
        assert short.choices[0].message.content == " 7"
        assert not done.is_set() and stats(serve)["decoding"] == 1  # the long one is still decoding
        thread.join(WAIT)
        assert done.is_set()


async def test_concurrent_streams_share_decoding_steps(serve, seven):
    url = serve(seven, max_batch_size=8)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    async def one(i: int) -> tuple[str, int]:
        stream = await client.chat.completions.create(model="seven", messages=user(f"q{i}"), max_tokens=20 + i,
                                                      stream=True, stream_options={"include_usage": True})
        text, usage = [], 0
        async for chunk in stream:
            text += [chunk.choices[0].delta.content or ""] if chunk.choices else []
            usage = chunk.usage.completion_tokens if chunk.usage else usage
        return "".join(text), usage

    results = await asyncio.gather(*(one(i) for i in range(6)))
    await client.close()
    assert results == [(" 7" * (20 + i), 20 + i) for i in range(6)]
    sizes = stats(serve)["batch_sizes"]
    assert max(sizes) >= 2, sizes  # streams were decoded together, not one after another


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_request_abandoned_mid_generation_frees_its_row_within_one_step(serve, seven, stream):
    url = serve(slowed(seven))
    sock = raw_post(url, {"model": "seven", "messages": user("hi"), "max_tokens": 240, "stream": stream})
    until(lambda: stats(serve)["decoding"] == 1 and stats(serve)["steps"] >= 3, "the request to decode")
    if stream:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.close()
    until(lambda: stats(serve)["cancelled"] == 1, "the row to be cancelled")
    after = stats(serve)
    assert after["decoding"] == 0 and after["finished"] == 0
    assert after["steps"] < 230  # it stopped long before its cap
    # The server set the row's cancel event at once; the row left at the next step boundary (a lag of
    # one: the step that was running when the event was set).
    assert after["cancel_lags"] == [after["cancel_lags"][0]] and after["cancel_lags"][0] <= 1


def test_a_full_queue_answers_429_with_retry_after(serve, seven):
    url = serve(slowed(seven), max_batch_size=1, max_queue=1)
    running = raw_post(url, {"model": "seven", "messages": user("a"), "max_tokens": 240})
    until(lambda: stats(serve)["decoding"] == 1, "the first request to decode")
    waiting = raw_post(url, {"model": "seven", "messages": user("b"), "max_tokens": 2})
    until(lambda: stats(serve)["waiting"] == 1, "the second request to wait")
    refused = httpx.post(f"{url}{CHAT}", json={"model": "seven", "messages": user("c"), "max_tokens": 2})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    streamed = httpx.post(f"{url}{CHAT}", json={"model": "seven", "messages": user("c"), "max_tokens": 2,
                                                "stream": True})
    assert streamed.status_code == 429  # refused before the stream starts
    assert stats(serve)["refused"] >= 2
    running.close()
    until(lambda: stats(serve)["cancelled"] == 1, "the running request to leave")
    assert json.loads(read_response(waiting))["choices"][0]["message"]["content"] == " 7 7"  # it got the free row
    waiting.close()
    ok = httpx.post(f"{url}{CHAT}", json={"model": "seven", "messages": user("d"), "max_tokens": 2})
    assert ok.status_code == 200


def test_health_reports_a_dead_scheduler(serve, seven, monkeypatch):
    url = serve(seven)
    assert httpx.get(f"{url}/health").json() == {"status": "ok", "model": "seven"}
    scheduler = serve.last.app.state.batcher.scheduler

    def broken() -> None:
        raise SystemError("a bug in the loop")

    monkeypatch.setattr(scheduler, "_prefill", broken)
    r = httpx.post(f"{url}{CHAT}", json={"model": "seven", "messages": user("hi"), "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    health = httpx.get(f"{url}/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    again = httpx.post(f"{url}{CHAT}", json={"model": "seven", "messages": user("hi"), "max_tokens": 2})
    assert again.status_code == 503


def test_shutdown_finishes_requests_in_flight(serve, seven):
    url = serve(slowed(seven))
    answers: list[httpx.Response] = []

    def ask() -> None:
        answers.append(httpx.post(f"{url}{CHAT}", json={"model": "seven", "messages": user("hi"), "max_tokens": 20},
                                  timeout=WAIT))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    until(lambda: stats(serve)["decoding"] >= 1, "a request to decode")
    serve.last.stop()
    for t in threads:
        t.join(WAIT)
    assert [r.status_code for r in answers] == [200] * 3
    assert all(r.json()["choices"][0]["message"]["content"] == " 7" * 20 for r in answers)
