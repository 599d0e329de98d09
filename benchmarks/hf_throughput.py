"""Local generation throughput on the embedded model, side by side in one run.

Three ways to answer the same GSM8K questions (greedy, the same new-token cap):

1. `HFGenerator.generate`: one left-padded batch, one forward pass per step for all questions;
2. LangChain's `ChatHuggingFace.batch` over a `HuggingFacePipeline` (langchain-huggingface), the
   usual way LangChain users run a local model;
3. a plain `model.generate` loop, one question at a time.

Prints tokens/s, ratios, peak memory of the batched path, and what fraction of this machine's
measured memory bandwidth and matmul throughput the batched decoding reaches.

    pip install langchain-huggingface   # for the comparison only
    python benchmarks/hf_throughput.py [--questions 16] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from tale_integrations.backends.hf import HFGenerator
from tale_integrations.core.prompts import answer_messages

DATA = Path(os.environ.get("TALE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def questions(n: int) -> list[str]:
    with open(DATA / "gsm8k" / "test.jsonl") as f:
        return [json.loads(line)["question"] for _, line in zip(range(n), f)]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Highest RSS seen while a block runs (polled every 2 ms in a thread)."""

    def __enter__(self) -> RssSampler:
        import threading

        self.peak, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine_limits() -> tuple[float, float]:
    """Measured copy bandwidth (GB/s, read+write) and fp32 matmul throughput (GFLOP/s) on this machine."""
    a = torch.empty(256 * 1024 * 1024 // 4)  # 256 MB
    b = torch.empty_like(a)
    b.copy_(a)
    start = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    bandwidth = 10 * 2 * a.numel() * 4 / (time.perf_counter() - start) / 1e9
    del a, b
    m = torch.randn(1024, 1024)
    m @ m
    start = time.perf_counter()
    for _ in range(20):
        m @ m
    flops = 20 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9
    return bandwidth, flops


def run_ours(gen: HFGenerator, prompts, new_tokens: int) -> tuple[float, int, list[str]]:
    start = time.perf_counter()
    out = gen.generate(prompts, max_tokens=new_tokens)
    return time.perf_counter() - start, sum(g.usage.output_tokens for g in out), [g.text for g in out]


def run_loop(gen: HFGenerator, prompts, new_tokens: int) -> tuple[float, int, list[str]]:
    model, tok = gen.model, gen.tokenizer
    texts, total = [], 0
    start = time.perf_counter()
    for messages in prompts:
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        total += len(new)
        texts.append(tok.decode(new, skip_special_tokens=True))
    return time.perf_counter() - start, total, texts


def run_chat_huggingface(gen: HFGenerator, prompts, new_tokens: int) -> tuple[float, int, list[str]] | None:
    try:
        from langchain_core.messages import HumanMessage
        from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    except ImportError:
        return None
    import transformers

    pipe = transformers.pipeline("text-generation", model=gen.model, tokenizer=gen.tokenizer, max_new_tokens=new_tokens,
                                 do_sample=False, return_full_text=False)
    chat = ChatHuggingFace(llm=HuggingFacePipeline(pipeline=pipe), tokenizer=gen.tokenizer)
    inputs = [[HumanMessage(m[-1]["content"])] for m in prompts]
    start = time.perf_counter()
    out = chat.batch(inputs)
    elapsed = time.perf_counter() - start
    texts = [m.content for m in out]
    total = sum(len(gen.tokenizer.encode(t, add_special_tokens=False)) for t in texts)  # it reports no usage
    return elapsed, total, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    before = rss_mb()
    gen = HFGenerator(max_batch_size=args.questions).load()
    weights_mb = sum(p.numel() * p.element_size() for p in gen.model.parameters()) / 2**20
    prompts = [answer_messages(q) for q in questions(args.questions)]
    gen.generate(prompts[:2], max_tokens=2)  # warm-up

    load_peak, loaded = peak_rss_mb(), rss_mb()
    with RssSampler() as sampler:
        ours = run_ours(gen, prompts, args.new_tokens)
    results = {"HFGenerator.generate (batched)": ours,
               "plain model.generate loop": run_loop(gen, prompts, args.new_tokens)}
    chf = run_chat_huggingface(gen, prompts, args.new_tokens)
    if chf is not None:
        results["ChatHuggingFace.batch"] = chf

    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {gen.device}, {args.questions} GSM8K questions x {args.new_tokens} new tokens, greedy")
    print(f"{'method':<34} {'seconds':>8} {'tokens':>7} {'tokens/s':>9} {'ours is':>9}")
    ours_rate = ours[1] / ours[0]
    for name, (seconds, tokens, _) in results.items():
        rate = tokens / seconds
        print(f"{name:<34} {seconds:>8.2f} {tokens:>7d} {rate:>9.1f} {ours_rate / rate:>8.2f}x")
    same = sum(a == b for a, b in zip(ours[2], results["plain model.generate loop"][2]))
    print(f"identical texts, batched vs loop: {same}/{len(prompts)}")

    bandwidth, peak_flops = machine_limits()
    steps = args.new_tokens
    step_time = ours[0] / steps
    params = sum(p.numel() for p in gen.model.parameters())
    bytes_per_step = weights_mb * 2**20  # every weight is read once per decoding step
    flops_per_step = 2 * params * args.questions
    print(f"machine: copy bandwidth {bandwidth:.1f} GB/s, fp32 matmul {peak_flops:.1f} GFLOP/s (measured)")
    print(f"batched decoding: {step_time * 1e3:.1f} ms/step; weights {bytes_per_step / step_time / 1e9:.1f} GB/s "
          f"= {bytes_per_step / step_time / 1e9 / bandwidth:.0%} of bandwidth; "
          f"{flops_per_step / step_time / 1e9:.1f} GFLOP/s = {flops_per_step / step_time / 1e9 / peak_flops:.0%} of matmul peak")
    print(f"memory: fp32 weights {weights_mb:.0f} MB; RSS before loading {before:.0f} MB (python + torch), "
          f"after loading {loaded:.0f} MB, peak while loading {load_peak:.0f} MB, peak during the batched run "
          f"{sampler.peak:.0f} MB")
    print(f"  model memory in use during generation: {sampler.peak - before:.0f} MB = "
          f"{(sampler.peak - before) / weights_mb:.2f}x the fp32 weights (loading peaks at "
          f"{(load_peak - before) / weights_mb:.2f}x while safetensors pages are mapped)")


if __name__ == "__main__":
    main()
