"""The ``tale serve`` subcommand: parser and handler (wired into ``tale_integrations.cli``).

Importing this module loads no web framework or model library; ``run_serve`` does, when it runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Any

from .._argtypes import convert
from .._argtypes import positive_int as _positive
from .._argtypes import temperature as _temperature
from ..core.checks import check_int, check_number

__all__ = ["API_KEY_ENV", "add_serve_parser", "run_serve"]

#: Environment variable read for the API key when ``--api-key`` is not given (keeps the key out of
#: the process list).
API_KEY_ENV = "TALE_API_KEY"


def _port(text: str) -> int:
    return convert(text, int, check_int, low=1, high=65535, hint=" (a port number)")


def _milliseconds(text: str) -> float:
    return float(convert(text, float, check_number, low=0, high=10_000, hint=" (milliseconds)"))


def add_serve_parser(subparsers: Any) -> None:
    """Add the ``serve`` subcommand to the ``tale`` parser's subparsers."""
    serve = subparsers.add_parser(
        "serve",
        help="run an OpenAI-compatible server over a local model (micro-batched, optional TALE budgets)",
        description="Serve the embedded SmolLM2-135M-Instruct model (or --model / --adapter) at "
        "/v1/chat/completions, /v1/completions and /v1/models. Concurrent requests are micro-batched. "
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
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes the server)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default %(default)s)")
    serve.add_argument("--api-key", metavar="KEY",
                       help=f"require 'Authorization: Bearer KEY' on /v1 routes (default: ${API_KEY_ENV} if set)")
    serve.add_argument("--max-batch-size", type=_positive, default=16, metavar="N",
                       help="most requests in one micro-batch; 1 = one at a time (default %(default)s)")
    serve.add_argument("--batch-window-ms", type=_milliseconds, default=10.0, metavar="MS",
                       help="how long a request waits for others to batch with (default %(default)s)")
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
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    """Load the model and serve it until interrupted (Ctrl-C finishes the requests in flight)."""
    from .._optional import require

    require("transformers", extra="serve", purpose="`tale serve`")
    require("fastapi", extra="serve", purpose="`tale serve`")
    uvicorn = require("uvicorn", extra="serve", purpose="`tale serve`")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from ..backends.hf import HFGenerator
    from .app import create_app

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    generator = HFGenerator(
        args.model, adapter=args.adapter, merge=args.merge, device=args.device, temperature=args.temperature,
        seed=args.seed, max_new_tokens=args.max_new_tokens, max_batch_size=args.max_batch_size,
        enforce_budget=args.enforce, progress=progress,
    )
    generator.load()  # fail before binding the port if the model cannot load
    app = create_app(
        generator, api_key=api_key, max_body_bytes=args.max_body_bytes, max_batch_size=args.max_batch_size,
        batch_window_ms=args.batch_window_ms, served_model_name=args.served_model_name, estimator=args.estimator,
    )
    name = app.state.served_model_name
    if not _is_loopback(args.host) and api_key is None:
        print(f"tale serve: warning: listening on {args.host} without an API key; anyone who can reach this "
              f"port can use the model (set --api-key or ${API_KEY_ENV})", file=sys.stderr)
    print(f"tale serve: model {name!r} at http://{args.host}:{args.port}/v1"
          f"{' (API key required)' if api_key else ''}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
