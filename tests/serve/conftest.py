"""Fixtures for `tale serve`: the app running under uvicorn on a free loopback port, in a thread.

Test modules skip themselves when fastapi, uvicorn or torch is missing; this file imports them lazily.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest


class Running:
    """``app`` served by uvicorn on 127.0.0.1 (port chosen by the OS) in a background thread.

    Attributes:
        url: The base URL, ``http://127.0.0.1:PORT`` (the OpenAI base URL is ``url + "/v1"``).
        server: The ``uvicorn.Server``.
    """

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the test server failed to start")
            if time.monotonic() > deadline:
                self.server.should_exit = True
                raise RuntimeError("the test server did not start within 60 s")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Graceful shutdown: uvicorn finishes the requests in flight, then the lifespan drains
        the batcher."""
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the test server did not shut down"


def _servers() -> Iterator[Callable[..., str]]:
    started: list[Running] = []

    def start(generator: Any, **kwargs: Any) -> str:
        from tale_integrations.serve import create_app

        started.append(Running(create_app(generator, **kwargs)))
        start.last = started[-1]  # type: ignore[attr-defined]
        return started[-1].url

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture()
def serve() -> Iterator[Callable[..., str]]:
    """A factory: ``serve(generator, **create_app_kwargs)`` starts a server and returns its base URL;
    ``serve.last`` is the latest `Running` server. Every server is shut down after the test."""
    yield from _servers()


@pytest.fixture(scope="module")
def serve_module() -> Iterator[Callable[..., str]]:
    """`serve` for servers shared by a whole test module."""
    yield from _servers()


@pytest.fixture()
def seven(scripted_generator) -> Any:
    """The scripted tiny model that greedily writes " 7" forever."""
    return scripted_generator(" 7", model_name="seven")


