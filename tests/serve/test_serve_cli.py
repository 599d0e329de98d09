"""The ``tale serve`` subcommand: its parser and handler (uvicorn.run replaced by a recorder)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from tale_integrations.serve.cli import API_KEY_ENV, add_serve_parser, run_serve


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tale")
    add_serve_parser(root.add_subparsers(dest="command", required=True))
    return root


def test_defaults_bind_loopback_with_no_key():
    args = parser().parse_args(["serve"])
    assert args.handler is run_serve
    assert args.host == "127.0.0.1" and args.port == 8000
    assert args.api_key is None and args.model is None and args.adapter is None and not args.enforce
    assert args.max_batch_size == 16 and args.batch_window_ms == 10.0 and args.max_body_bytes == 1_000_000


@pytest.mark.parametrize("argv", [["--port", "0"], ["--port", "70000"], ["--max-batch-size", "0"],
                                  ["--batch-window-ms", "-1"], ["--temperature", "3"]])
def test_bad_values_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["serve", *argv])
    assert "error" in capsys.readouterr().err


def test_importing_the_subcommand_loads_no_framework():
    code = textwrap.dedent("""
        import sys
        import tale_integrations.serve.cli
        heavy = {"torch", "transformers", "fastapi", "uvicorn", "starlette", "openai"}
        print(sorted(heavy & {m.split(".")[0] for m in sys.modules}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def recorded_run(monkeypatch) -> dict[str, Any]:
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("torch")
    seen: dict[str, Any] = {}

    def fake_run(app, **kwargs):
        seen["app"], seen["kwargs"] = app, kwargs

    monkeypatch.setattr(uvicorn, "run", fake_run)
    return seen


def test_run_serve_loads_the_model_and_runs_uvicorn(monkeypatch, tiny_model_dir, capsys):
    seen = recorded_run(monkeypatch)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    args = parser().parse_args(["serve", "--model", str(tiny_model_dir), "--port", "8123", "--enforce",
                                "--served-model-name", "tiny", "--max-batch-size", "4"])
    assert args.handler(args) == 0
    app = seen["app"]
    assert seen["kwargs"]["host"] == "127.0.0.1" and seen["kwargs"]["port"] == 8123
    assert app.state.served_model_name == "tiny"
    assert app.state.generator.is_loaded and app.state.generator.enforcement is not None
    assert app.state.batcher.max_batch_size == app.state.generator.max_batch_size == 4
    err = capsys.readouterr().err
    assert "http://127.0.0.1:8123/v1" in err and "warning" not in err


def test_public_host_without_a_key_warns_and_the_key_can_come_from_the_environment(
        monkeypatch, tiny_model_dir, capsys):
    seen = recorded_run(monkeypatch)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    args = parser().parse_args(["serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0"])
    run_serve(args)
    assert "without an API key" in capsys.readouterr().err
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    run_serve(args)
    err = capsys.readouterr().err
    assert "without an API key" not in err and "API key required" in err
    assert seen["kwargs"]["host"] == "0.0.0.0"
    from fastapi.testclient import TestClient

    with TestClient(seen["app"]) as http:
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_a_missing_model_folder_fails_before_serving(monkeypatch, tmp_path):
    seen = recorded_run(monkeypatch)
    args = parser().parse_args(["serve", "--model", str(tmp_path / "nope")])
    with pytest.raises((ValueError, OSError)):
        run_serve(args)
    assert "app" not in seen


def test_missing_fastapi_names_the_extra():
    code = textwrap.dedent("""
        import sys
        sys.modules["fastapi"] = None
        import tale_integrations.serve  # stays importable: the parser needs it
        try:
            tale_integrations.serve.create_app
        except ImportError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert 'pip install "tale-integrations[serve]"' in out


def test_serving_flags_reach_the_app(monkeypatch, tiny_model_dir):
    seen = recorded_run(monkeypatch)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    args = parser().parse_args(["serve", "--model", str(tiny_model_dir), "--scheduler", "microbatch",
                                "--max-queue", "7", "--max-tokens-limit", "99", "--allow-origin", "http://a.example",
                                "--allow-host", "box.lan", "--shutdown-timeout", "5", "--constrain", "never"])
    run_serve(args)
    app = seen["app"]
    assert app.state.scheduler == "microbatch" and app.state.batcher.max_queue == 7
    assert app.state.constrain == "never"
    assert seen["kwargs"]["timeout_graceful_shutdown"] == 5.0
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="http://box.lan") as http:  # an --allow-host name, beside the loopback ones
        assert http.get("/health").status_code == 200
        assert http.get("/health", headers={"host": "localhost:8000"}).status_code == 200
        assert http.get("/health", headers={"host": "evil.example"}).status_code == 403
        assert http.get("/v1/models", headers={"origin": "http://a.example"}).status_code == 200
        assert http.get("/v1/models", headers={"origin": "http://b.example"}).status_code == 403
        body = {"model": app.state.served_model_name, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 100}
        too_many = http.post("/v1/chat/completions", json=body)
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_tokens"


def test_an_empty_api_key_is_refused_at_start(monkeypatch, capsys, tiny_model_dir):
    for key in ("", "  "):
        with pytest.raises(SystemExit):
            parser().parse_args(["serve", "--api-key", key])
        assert "API key is empty" in capsys.readouterr().err
    seen = recorded_run(monkeypatch)
    monkeypatch.setenv(API_KEY_ENV, "")
    with pytest.raises(SystemExit, match="set but empty"):
        run_serve(parser().parse_args(["serve", "--model", str(tiny_model_dir)]))
    assert "app" not in seen


def test_the_default_scheduler_is_continuous(monkeypatch, tiny_model_dir):
    seen = recorded_run(monkeypatch)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    run_serve(parser().parse_args(["serve", "--model", str(tiny_model_dir), "--max-batch-size", "3"]))
    app = seen["app"]
    assert app.state.scheduler == "continuous" and app.state.batcher.max_batch_size == 3
    assert app.state.batcher.scheduler.max_waiting == 256
    assert app.state.constrain == "auto"
    assert parser().parse_args(["serve"]).max_tokens_limit == 4096
