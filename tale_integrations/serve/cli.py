"""The ``tale serve`` subcommand: parser and handler (wired into ``tale_integrations.cli``).

Importing this module loads no web framework or model library; ``run_serve`` does, when it runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Iterable
from typing import Any

from .._argtypes import convert
from .._argtypes import positive_int as _positive
from .._argtypes import temperature as _temperature
from ..core.checks import check_int, check_number

__all__ = ["API_KEY_ENV", "LOOPBACK_HOSTS", "add_serve_parser", "default_allowed_hosts", "guard_settings", "run_serve"]

#: Environment variable read for the API key when ``--api-key`` is not given (keeps the key out of
#: the process list).
API_KEY_ENV = "TALE_API_KEY"
#: Host names a loopback-bound server answers to (the Host allow-list against DNS rebinding).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _port(text: str) -> int:
    return convert(text, int, check_int, low=1, high=65535, hint=" (a port number)")


def _seconds(text: str) -> float:
    return float(convert(text, float, check_number, above=0, hint=" (seconds)"))


def _milliseconds(text: str) -> float:
    return float(convert(text, float, check_number, low=0, high=10_000, hint=" (milliseconds)"))


def _api_key(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the API key is empty; give a non-empty key, or leave --api-key out")
    return text


def add_serve_parser(subparsers: Any) -> None:
    """Add the ``serve`` subcommand to the ``tale`` parser's subparsers."""
    serve = subparsers.add_parser(
        "serve",
        help="run an OpenAI-compatible server over a local model (continuous batching, optional TALE budgets)",
        description="Serve the embedded SmolLM2-135M-Instruct model (or --model / --adapter) at "
        "/v1/chat/completions, /v1/completions and /v1/models. Concurrent requests, streamed or not, "
        "are batched step by step (continuous batching). "
        "Requests may add tale_budget (an integer or \"auto\") and tale_enforce. Binds 127.0.0.1 "
        "unless --host says otherwise.",
    )
    serve.add_argument("--model", metavar="PATH",
                       help="a local Hugging Face model folder (default: the embedded model)")
    serve.add_argument("--adapter", metavar="PATH", help="a LoRA adapter folder (TALE-PT) to apply on top of the model")
    serve.add_argument("--merge", action="store_true", help="merge the adapter into the weights (faster decoding)")
    serve.add_argument("--served-model-name", metavar="NAME",
                       help="the model name clients send (default: the model folder's name)")
    serve.add_argument("--enforce", action="store_true",
                       help="load the budget enforcer, so requests may ask for tale_enforce: true")
    serve.add_argument("--estimator", default="zero-shot", metavar="NAME",
                       help="the estimator behind \"tale_budget\": \"auto\": 'zero-shot' (the paper's, on the served "
                       "model; default), 'learned' (the shipped learned estimator: no model call) or 'learned:PATH'")
    serve.add_argument("--upstream", metavar="URL",
                       help="instead of a local model, serve a TALE front for the OpenAI-compatible engine at URL "
                       "(vLLM, SGLang, llama.cpp, OpenAI: http://gpu-host:8000/v1); see docs/vllm_and_openai.md")
    serve.add_argument("--upstream-api-key", metavar="KEY",
                       help="the engine's API key (default: $TALE_UPSTREAM_API_KEY if set)")
    serve.add_argument("--upstream-timeout", type=_seconds, default=600.0, metavar="S",
                       help="seconds the engine may take to answer, or between two chunks (default %(default)s)")
    serve.add_argument("--upstream-thinking", default="auto", choices=["auto", "off", "vllm", "sglang", "llamacpp"],
                       help="the engine's thinking-budget knob for thinking models: auto (OpenAI's, by model name; "
                       "default), off (budget in the prompt only), or the engine's own when it is set up for it")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes the server)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default %(default)s)")
    serve.add_argument("--api-key", metavar="KEY", type=_api_key,
                       help=f"require 'Authorization: Bearer KEY' on /v1 routes (default: ${API_KEY_ENV} if set)")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="answer browser requests from this origin (e.g. http://localhost:3000; '*' for any), "
                       "with CORS headers; repeatable. Requests with any other Origin header are refused (403)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="a Host name to answer to besides the loopback names (when bound to loopback, any other "
                       "Host is refused against DNS rebinding; when bound elsewhere, giving names turns the check on)")
    serve.add_argument("--scheduler", default="continuous", choices=["continuous", "microbatch"],
                       help="continuous: requests and streams join the running batch at each decoding step (default); "
                       "microbatch: the earlier micro-batcher (streams one at a time)")
    serve.add_argument("--constrain", default="auto", choices=["auto", "always", "never"],
                       help="when tool calls and structured output are held to their JSON schema while decoding: "
                       "auto = JSON response formats, required tool calls and 'strict' schemas (default); always = "
                       "also turns where the model may call a tool or answer in text; never = no constraint")
    serve.add_argument("--max-batch-size", type=_positive, default=16, metavar="N",
                       help="most requests decoding together; 1 = one at a time (default %(default)s)")
    serve.add_argument("--max-queue", type=_positive, default=256, metavar="N",
                       help="most requests waiting for the model; past it, 429 with Retry-After (default %(default)s)")
    serve.add_argument("--max-tokens-limit", type=_positive, default=4096, metavar="N",
                       help="the most output tokens a request may ask for (400 above it), also the ceiling of the "
                       "default cap (default %(default)s; the context window limits it too)")
    serve.add_argument("--prefill-tokens", type=_positive, default=256, metavar="N",
                       help="continuous scheduler: most prompt tokens prefilled between two decoding steps "
                       "(default %(default)s)")
    serve.add_argument("--batch-window-ms", type=_milliseconds, default=10.0, metavar="MS",
                       help="microbatch scheduler: how long a request waits for others to batch with "
                       "(default %(default)s)")
    serve.add_argument("--shutdown-timeout", type=_seconds, default=30.0, metavar="S",
                       help="at shutdown, seconds the requests in flight get to finish (default %(default)s)")
    serve.add_argument("--max-body-bytes", type=_positive, default=1_000_000, metavar="N",
                       help="largest request body accepted (default %(default)s)")
    serve.add_argument("--max-new-tokens", type=_positive, default=512, metavar="N",
                       help="output cap of chat requests that give no max_tokens (default %(default)s)")
    serve.add_argument("--temperature", type=_temperature, default=0.0,
                       help="temperature of requests that give none; 0 = greedy (default)")
    serve.add_argument("--seed", type=int, help="seed for sampled decoding")
    serve.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                       help="server log level (default %(default)s)")
    serve.set_defaults(handler=run_serve)


def _is_loopback(host: str) -> bool:
    if host.strip("[]").lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind: str, extra: Iterable[str] = ()) -> tuple[str, ...] | None:
    """The Host allow-list of a server bound to ``bind``: the loopback names (and ``bind`` itself) when it
    is a loopback address, plus ``extra``; otherwise None (any host) unless ``extra`` names some."""
    extra = tuple(h.strip("[]").lower() for h in extra)
    if _is_loopback(bind):
        return tuple(dict.fromkeys((*LOOPBACK_HOSTS, bind.strip("[]").lower(), *extra)))
    return extra or None


def guard_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``api_key``, ``allow_origins`` and ``allowed_hosts`` for `serve.guards.install_guards`, from the
    command line and the environment (an API key set but empty in the environment is refused)."""
    api_key = args.api_key
    if api_key is None and API_KEY_ENV in os.environ:
        api_key = os.environ[API_KEY_ENV]
        if not api_key.strip():
            raise SystemExit(f"tale serve: ${API_KEY_ENV} is set but empty; set a key, or unset it to serve "
                             "without one")
    return {"api_key": api_key, "allow_origins": tuple(args.allow_origin),
            "allowed_hosts": default_allowed_hosts(args.host, args.allow_host)}


def run_serve(args: argparse.Namespace) -> int:
    """Load the model and serve it until interrupted (Ctrl-C finishes the requests in flight)."""
    if args.upstream:
        from .upstream import run_upstream

        return run_upstream(args)
    from .._optional import require

    require("transformers", extra="serve", purpose="`tale serve`")
    require("fastapi", extra="serve", purpose="`tale serve`")
    require("uvicorn", extra="serve", purpose="`tale serve`")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from ..backends.hf import HFGenerator
    from .app import create_app

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    guards = guard_settings(args)
    api_key = guards["api_key"]
    generator = HFGenerator(
        args.model, adapter=args.adapter, merge=args.merge, device=args.device, temperature=args.temperature,
        seed=args.seed, max_new_tokens=args.max_new_tokens, max_batch_size=args.max_batch_size,
        enforce_budget=args.enforce, progress=progress,
    )
    generator.load()  # fail before binding the port if the model cannot load
    app = create_app(
        generator, max_body_bytes=args.max_body_bytes, max_batch_size=args.max_batch_size,
        batch_window_ms=args.batch_window_ms, served_model_name=args.served_model_name, estimator=args.estimator,
        scheduler=args.scheduler, max_queue=args.max_queue, max_tokens_limit=args.max_tokens_limit,
        prefill_tokens=args.prefill_tokens, shutdown_timeout=args.shutdown_timeout, constrain=args.constrain,
        **guards,
    )
    return launch(app, args, api_key, serving=f"model {app.state.served_model_name!r}", behind="the model")


def launch(app: Any, args: argparse.Namespace, api_key: str | None, *, serving: str, behind: str) -> int:
    """Print where ``app`` listens (warning when a public address has no API key) and run it with uvicorn
    until interrupted; shared by the local server and the ``--upstream`` front."""
    from .._optional import require

    uvicorn = require("uvicorn", extra="serve", purpose="`tale serve`")
    if not _is_loopback(args.host) and api_key is None:
        print(f"tale serve: warning: listening on {args.host} without an API key; anyone who can reach this "
              f"port can use {behind} (set --api-key or ${API_KEY_ENV})", file=sys.stderr)
    print(f"tale serve: {serving} at http://{args.host}:{args.port}/v1"
          f"{' (API key required)' if api_key else ''}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.shutdown_timeout)
    return 0
