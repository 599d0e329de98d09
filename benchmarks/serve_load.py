"""`tale serve` under load: continuous batching against the micro-batcher and one request at a time.

One invocation, one loaded embedded SmolLM2-135M-Instruct, servers on free loopback ports
(127.0.0.1 only), clients are ``openai.AsyncOpenAI`` (and httpx for the burst) in the same process.
Every phase runs each server setting side by side and prints the ratio:

- **latency**: a 1-token request sent 1 s into a 300-token request (plain, then streamed): how long
  the short one takes, under the continuous scheduler and under the micro-batcher;
- **streams**: ``--requests`` concurrent streaming clients (default 64) x ``--max-tokens`` (32):
  tokens/s and time to first token (p50/p99), continuous vs micro-batcher vs one stream at a time;
- **plain**: the same number of concurrent plain requests: continuous vs micro-batched vs one at a
  time (``max_batch_size=1``, the baseline of the recorded 4.47x);
- **burst**: ``--burst`` requests (2000) at once against ``--burst-queue`` (256): each must be answered
  or refused with 429, none lost or hung; peak RSS of the process during the burst.

``--compare-transformers-cb`` adds an offline check of transformers' own continuous batching
(``model.generate_batch``) against the scheduler on the same prompts.

The run is bounded: each request has ``--timeout`` seconds; servers are shut down before the script
exits. Results go to ``--json`` (default benchmarks/results/serve_load.json).

    python benchmarks/serve_load.py [--phases latency,streams,plain,burst] [--requests 64] [--max-tokens 32]
        [--batch-size 16] [--burst 2000] [--burst-queue 256] [--compare-transformers-cb]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import torch
import uvicorn

from tale_integrations.backends.hf import HFGenerator
from tale_integrations.serve import create_app

QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A box holds 12 eggs. How many eggs are in 4 boxes?",
    "Sara had 20 dollars and spent 7. How much money is left?",
    "A train travels 60 miles per hour for 3 hours. How far does it go?",
    "There are 24 students split equally into 6 groups. How many students are in each group?",
    "A shirt costs 15 dollars. How much do 3 shirts cost?",
    "Ben read 9 pages on Monday and 14 pages on Tuesday. How many pages did he read?",
    "A farmer has 30 chickens and sells 12. How many chickens are left?",
    "Each bag has 8 marbles. How many marbles are in 7 bags?",
    "Lisa is 11 years old. Her brother is 4 years older. How old is her brother?",
    "A pizza has 8 slices. If 3 people eat 2 slices each, how many slices are left?",
    "Mark runs 5 km every day. How many km does he run in a week?",
    "A shop sold 45 cups in the morning and 38 in the afternoon. How many cups were sold?",
    "There are 100 pencils shared by 4 classes equally. How many pencils does each class get?",
    "Anna has 6 red pens and twice as many blue pens. How many pens does she have?",
    "A bus has 40 seats and 27 are taken. How many seats are free?",
]
#: A prompt the embedded model answers at length (it runs to the 300-token cap).
LONG_PROMPT = "Write a long story about a dragon who learns to cook. Make it at least 500 words."
MODEL = "smol"


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


class Server:
    """The app under uvicorn on 127.0.0.1, in a thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    backlog=4096, timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=120)

    def client(self, timeout: float) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=timeout)


def serving(gen: HFGenerator, scheduler: str, batch_size: int, **kwargs: Any) -> Server:
    return Server(create_app(gen, scheduler=scheduler, max_batch_size=batch_size, served_model_name=MODEL, **kwargs))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- latency: a short request behind a long one ---------------------------------------------------

async def short_behind_long(server: Server, *, stream_long: bool, timeout: float) -> dict[str, Any]:
    client = server.client(timeout)
    long_tokens = 0

    async def long_request() -> None:
        nonlocal long_tokens
        body = {"role": "user", "content": LONG_PROMPT}
        if stream_long:
            stream = await client.chat.completions.create(model=MODEL, messages=[body], max_tokens=300, stream=True,
                                                          temperature=0)
            async for chunk in stream:
                long_tokens += bool(chunk.choices and chunk.choices[0].delta.content)
        else:
            r = await client.chat.completions.create(model=MODEL, messages=[body], max_tokens=300, temperature=0)
            long_tokens = r.usage.completion_tokens

    long = asyncio.ensure_future(long_request())
    await asyncio.sleep(1.0)
    start = time.perf_counter()
    r = await client.chat.completions.create(model=MODEL, messages=messages(0), max_tokens=1, temperature=0)
    latency = time.perf_counter() - start
    long_running = not long.done()
    started_long = time.perf_counter()
    try:
        await asyncio.wait_for(long, timeout)
    except TimeoutError:
        pass
    await client.close()
    return {"short_latency_s": round(latency, 3), "short_tokens": r.usage.completion_tokens,
            "long_still_running_when_short_answered": long_running, "long_tokens": long_tokens,
            "long_finished_after_short_s": round(time.perf_counter() - started_long, 2)}


async def alone(server: Server, timeout: float) -> float:
    client = server.client(timeout)
    start = time.perf_counter()
    await client.chat.completions.create(model=MODEL, messages=messages(0), max_tokens=1, temperature=0)
    await client.close()
    return round(time.perf_counter() - start, 3)


def phase_latency(gen: HFGenerator, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scheduler in ("continuous", "microbatch"):
        with serving(gen, scheduler, args.batch_size) as server:
            out[scheduler] = {"alone_s": asyncio.run(alone(server, args.timeout))}
            for stream_long in (False, True):
                key = "long_streamed" if stream_long else "long_plain"
                print(f"  latency: {scheduler}, {key} ...", flush=True)
                out[scheduler][key] = asyncio.run(short_behind_long(server, stream_long=stream_long,
                                                                    timeout=args.timeout))
    return out


# -- concurrent streams ---------------------------------------------------------------------------

async def streams(server: Server, n: int, max_tokens: int, timeout: float, *, concurrent: bool) -> dict[str, Any]:
    client = server.client(timeout)
    ttft: list[float] = []
    tokens = failed = 0
    texts: dict[int, str] = {}

    async def one(i: int) -> None:
        nonlocal tokens, failed
        start = time.perf_counter()
        first = None
        pieces: list[str] = []
        try:
            stream = await client.chat.completions.create(
                model=MODEL, messages=messages(i), max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.usage:
                    tokens += chunk.usage.completion_tokens
        except Exception as exc:  # counted, never lost
            failed += 1
            print(f"    stream {i} failed: {exc!r}")
            return
        ttft.append((first or time.perf_counter()) - start)
        texts[i] = "".join(pieces)

    start = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(one(i) for i in range(n)))
    else:
        for i in range(n):
            await one(i)
    seconds = time.perf_counter() - start
    await client.close()
    return {"streams": n, "answered": len(texts), "failed": failed, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "ttft_p50_s": round(percentile(ttft, 50), 3),
            "ttft_p99_s": round(percentile(ttft, 99), 3), "texts": texts}


def phase_streams(gen: HFGenerator, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs = [("continuous", "continuous", True), ("microbatch", "microbatch", True),
            ("one_at_a_time", "continuous", False)]
    for key, scheduler, concurrent in runs:
        print(f"  streams: {key} ...", flush=True)
        with serving(gen, scheduler, args.batch_size) as server:
            out[key] = asyncio.run(streams(server, args.requests, args.max_tokens, args.timeout,
                                           concurrent=concurrent))
            if scheduler == "continuous":
                out[key]["batch_sizes"] = server.app.state.batcher.stats()["batch_sizes"]
    texts = {k: out[k].pop("texts") for k in out}
    base = out["one_at_a_time"]["tokens_per_s"]
    out["ratio_continuous_vs_one_at_a_time"] = round(out["continuous"]["tokens_per_s"] / base, 2) if base else None
    out["ratio_microbatch_vs_one_at_a_time"] = round(out["microbatch"]["tokens_per_s"] / base, 2) if base else None
    out["identical_texts_continuous_vs_one_at_a_time"] = sum(
        texts["continuous"].get(i) == texts["one_at_a_time"].get(i) for i in range(args.requests))
    return out


# -- concurrent plain requests --------------------------------------------------------------------

async def plain(server: Server, n: int, max_tokens: int, timeout: float) -> dict[str, Any]:
    client = server.client(timeout)
    tokens = failed = 0
    texts: dict[int, str] = {}

    async def one(i: int) -> None:
        nonlocal tokens, failed
        try:
            r = await client.chat.completions.create(model=MODEL, max_tokens=max_tokens, temperature=0,
                                                     messages=messages(i))
        except Exception as exc:  # counted, never lost
            failed += 1
            print(f"    request {i} failed: {exc!r}")
            return
        tokens += r.usage.completion_tokens
        texts[i] = r.choices[0].message.content

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    seconds = time.perf_counter() - start
    await client.close()
    return {"requests": n, "answered": len(texts), "failed": failed, "tokens": tokens, "seconds": round(seconds, 2),
            "requests_per_s": round(len(texts) / seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "texts": texts}


def phase_plain(gen: HFGenerator, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs = [("continuous", "continuous", args.batch_size), ("microbatch", "microbatch", args.batch_size),
            ("one_at_a_time", "microbatch", 1)]
    for key, scheduler, size in runs:
        print(f"  plain: {key} (max_batch_size={size}) ...", flush=True)
        with serving(gen, scheduler, size) as server:
            out[key] = asyncio.run(plain(server, args.requests, args.max_tokens, args.timeout))
    texts = {k: out[k].pop("texts") for k in out}
    base = out["one_at_a_time"]["tokens_per_s"]
    for key in ("continuous", "microbatch"):
        out[f"ratio_{key}_vs_one_at_a_time"] = round(out[key]["tokens_per_s"] / base, 2) if base else None
    out["identical_texts_continuous_vs_one_at_a_time"] = sum(
        texts["continuous"].get(i) == texts["one_at_a_time"].get(i) for i in range(args.requests))
    return out


# -- a burst against a bounded queue --------------------------------------------------------------

def _clear_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def _rss_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


async def burst(server: Server, n: int, max_tokens: int, timeout: float) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    lost: list[str] = []
    latencies: dict[str, list[float]] = {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as client:
        async def one(i: int) -> None:
            start = time.perf_counter()
            try:
                r = await client.post("/v1/chat/completions", json={
                    "model": MODEL, "messages": messages(i), "max_tokens": max_tokens, "temperature": 0})
            except Exception as exc:  # lost or hung: counted apart
                lost.append(type(exc).__name__)
                return
            key = str(r.status_code)
            statuses[key] = statuses.get(key, 0) + 1
            latencies.setdefault(key, []).append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        seconds = time.perf_counter() - start
    return {"requests": n, "statuses": dict(sorted(statuses.items())), "lost_or_hung": len(lost),
            "lost_kinds": sorted(set(lost)), "seconds": round(seconds, 2),
            "latency_p50_s": {k: round(percentile(v, 50), 3) for k, v in sorted(latencies.items())},
            "latency_max_s": {k: round(max(v), 3) for k, v in sorted(latencies.items())}}


def phase_burst(gen: HFGenerator, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scheduler in ("continuous", "microbatch"):
        print(f"  burst: {scheduler}, {args.burst} requests, queue {args.burst_queue} ...", flush=True)
        with serving(gen, scheduler, args.batch_size, max_queue=args.burst_queue) as server:
            before = _rss_mib("VmRSS")
            peak_reset = _clear_peak_rss()
            result = asyncio.run(burst(server, args.burst, args.burst_tokens, args.timeout))
            result["rss_before_mib"] = before
            result["peak_rss_mib"] = _rss_mib("VmHWM") if peak_reset else None
            result["peak_rss_note"] = ("peak RSS of the whole process (server, model and the load generator) "
                                       "during the burst" if peak_reset else "could not reset the peak counter")
            stats = server.app.state.batcher.stats()
            result["server_stats"] = {k: stats.get(k) for k in ("finished", "refused", "cancelled", "failed", "steps")
                                      if k in stats}
        answered = result["statuses"].get("200", 0)
        refused = result["statuses"].get("429", 0)
        result["every_request_answered_or_429"] = (answered + refused == args.burst and not result["lost_or_hung"])
        out[scheduler] = result
    return out


# -- transformers' own continuous batching (offline) ------------------------------------------------

def phase_transformers_cb(gen: HFGenerator, args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    from tale_integrations.backends.embedded import embedded_model_path
    from tale_integrations.backends.hf.scheduler import StepScheduler

    n = 16
    prompts = [messages(i) for i in range(n)]
    ids = [gen.encode_chat(p) for p in prompts]
    s = StepScheduler(gen, max_rows=n, max_waiting=n).start()
    start = time.perf_counter()
    ours = [r.result() for r in [s.submit(p, max_tokens=args.max_tokens) for p in prompts]]
    scheduler_s = time.perf_counter() - start
    s.close()
    model = AutoModelForCausalLM.from_pretrained(str(embedded_model_path()), dtype=torch.float32).eval()
    config = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=False,
                              eos_token_id=sorted(gen._decoder.eos_ids), pad_token_id=gen.tokenizer.pad_token_id)
    model.generate_batch(ids[:2], generation_config=config)  # warm-up (builds its manager), not timed
    start = time.perf_counter()
    theirs = model.generate_batch(ids, generation_config=config)
    cb_s = time.perf_counter() - start
    texts = [gen.tokenizer.decode(r.generated_tokens, skip_special_tokens=True) for r in theirs.values()]
    return {"prompts": n, "max_tokens": args.max_tokens, "step_scheduler_s": round(scheduler_s, 2),
            "transformers_generate_batch_s": round(cb_s, 2), "ratio": round(cb_s / scheduler_s, 2),
            "identical_texts": sum(t == o.text for t, o in zip(texts, ours, strict=True))}


PHASES = {"latency": phase_latency, "streams": phase_streams, "plain": phase_plain, "burst": phase_burst}


def report(results: dict[str, Any]) -> None:
    if "latency" in results:
        print("\nlatency of a 1-token request sent 1 s into a 300-token request (target under 0.5 s):")
        for scheduler, r in results["latency"].items():
            for key in ("long_plain", "long_streamed"):
                x = r[key]
                print(f"  {scheduler:<11} {key:<14} {x['short_latency_s']:>7.2f} s   (alone {r['alone_s']:.2f} s; "
                      f"long request {x['long_tokens']} tokens, still running: "
                      f"{x['long_still_running_when_short_answered']})")
    for phase, unit in (("streams", "streams"), ("plain", "requests")):
        if phase not in results:
            continue
        r = results[phase]
        print(f"\n{phase}: {'mode':<14} {'answered':>9} {'failed':>6} {'seconds':>8} {'tokens/s':>9}"
              + ("  ttft p50 / p99" if phase == "streams" else ""))
        for key in ("continuous", "microbatch", "one_at_a_time"):
            x = r[key]
            extra = f"  {x['ttft_p50_s']:.2f} / {x['ttft_p99_s']:.2f} s" if phase == "streams" else ""
            print(f"        {key:<14} {x['answered']:>5}/{x[unit]:<3} {x['failed']:>6} {x['seconds']:>8.1f} "
                  f"{x['tokens_per_s']:>9.1f}{extra}")
        print(f"        ratio continuous / one at a time: {r['ratio_continuous_vs_one_at_a_time']}x; "
              f"micro-batcher / one at a time: {r['ratio_microbatch_vs_one_at_a_time']}x; identical answers "
              f"continuous vs one at a time: {r['identical_texts_continuous_vs_one_at_a_time']}")
    if "burst" in results:
        print("\nburst:")
        for scheduler, x in results["burst"].items():
            print(f"  {scheduler:<11} statuses {x['statuses']}, lost or hung {x['lost_or_hung']}, "
                  f"{x['seconds']:.1f} s, peak RSS {x['peak_rss_mib']} MiB (before {x['rss_before_mib']} MiB); "
                  f"all answered or 429: {x['every_request_answered_or_429']}")
    if "transformers_cb" in results:
        x = results["transformers_cb"]
        print(f"\ntransformers generate_batch vs StepScheduler, {x['prompts']} x {x['max_tokens']} tokens: "
              f"{x['transformers_generate_batch_s']} s vs {x['step_scheduler_s']} s ({x['ratio']}x slower); "
              f"identical texts {x['identical_texts']}/{x['prompts']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="latency,streams,plain,burst",
                        help="comma-separated phases to run (default: all four)")
    parser.add_argument("--requests", type=int, default=64, help="concurrent clients in streams/plain (default 64)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request (default 32)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="max_batch_size of both schedulers (default 16, the server's)")
    parser.add_argument("--burst", type=int, default=2000, help="requests sent at once in the burst (default 2000)")
    parser.add_argument("--burst-queue", type=int, default=256, help="max_queue during the burst (default 256)")
    parser.add_argument("--burst-tokens", type=int, default=8, help="max_tokens of each burst request (default 8)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per request (default 900)")
    parser.add_argument("--compare-transformers-cb", action="store_true",
                        help="also time transformers' generate_batch against the scheduler (offline)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "serve_load.json"),
                        help="where to write the results")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {sorted(unknown)}; choose from {sorted(PHASES)}")

    gen = HFGenerator(max_batch_size=max(args.batch_size, 1)).load()
    gen.generate([messages(0)], max_tokens=4)  # warm-up, not timed
    machine = (f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
    print(f"model {gen.model_name} on {gen.device}; {machine}")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
             if k != "json" and v is not False]
    results: dict[str, Any] = {
        "command": "python benchmarks/serve_load.py " + " ".join(flags),
        "machine": machine, "load_average_at_start": load,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }
    started = time.perf_counter()
    for phase in phases:
        print(f"running {phase} ...", flush=True)
        results[phase] = PHASES[phase](gen, args)
    if args.compare_transformers_cb:
        print("running transformers generate_batch comparison ...", flush=True)
        results["transformers_cb"] = phase_transformers_cb(gen, args)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    try:
        results["load_average_at_end"] = os.getloadavg()[0]
    except OSError:
        pass
    report(results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.json}")
    bad = [s for s, x in results.get("burst", {}).items() if not x["every_request_answered_or_429"]]
    if bad:
        raise SystemExit(f"burst: some requests were lost or hung under {bad}")


if __name__ == "__main__":
    main()
