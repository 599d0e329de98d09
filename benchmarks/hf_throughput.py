"""Local generation throughput on the embedded model, side by side in one run.

Three ways to answer the same GSM8K questions (greedy, the same new-token cap):

1. `HFGenerator.generate`: one left-padded batch, one forward pass per step for all questions
   (also run with ``pack_weights=False``, to show what the packed weights add, and with
   ``fast_path=False``, plain batched ``model.generate``: what the whole CPU fast path adds);
2. LangChain's `ChatHuggingFace.batch` over a `HuggingFacePipeline` (langchain-huggingface), the
   usual way LangChain users run a local model;
3. a plain `model.generate` loop, one question at a time.

Prints tokens/s, ratios, peak memory of the batched path, and what fraction of this machine's
measured memory bandwidth and matmul throughput the batched decoding reaches. The baselines run the
model as their users load it (plain transformers); ours runs as `HFGenerator` loads it (on CPU, with
oneDNN-packed weights). Peak memory is the kernel's own peak-RSS count (reset before the run; Linux),
from a baseline taken after the libraries that loading imports are imported.

    pip install langchain-huggingface   # for the comparison only
    python benchmarks/hf_throughput.py [--questions 16] [--new-tokens 64] [--json benchmarks/results/hf_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from tale_integrations.backends.hf import HFGenerator
from tale_integrations.core.prompts import answer_messages

DATA = Path(os.environ.get("TALE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def questions(n: int) -> list[str]:
    with open(DATA / "gsm8k" / "test.jsonl") as f:
        return [json.loads(line)["question"] for _, line in zip(range(n), f)]


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb() -> float:
    return status_mb("VmRSS")


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) here: no polling thread competes with the run."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_heap() -> None:
    import gc

    from tale_integrations.backends.hf.cpu_packing import release_free_memory

    gc.collect()
    release_free_memory()


def import_loading_code() -> None:
    """Import what loading imports (the model's code, the tokenizer libraries) and free what it made.

    The RSS measured after this is the baseline: library code is not model memory.
    """
    import transformers

    from tale_integrations.backends.embedded import embedded_model_path

    path = embedded_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(path))
    del tokenizer, model
    release_heap()


def mapped_file_mb(suffix: str) -> float:
    """RSS of this process's mappings of files ending in ``suffix`` (the checkpoint), in MB."""
    total, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                current = len(head) >= 6 and head[-1].endswith(suffix)
            elif current and head[0] == "Rss:":
                total += int(head[1])
    return total / 1024


def kv_cache_mb(model, rows: int, positions: int) -> float:
    """Key/value cache size, fp32: ``rows`` rows of ``positions`` positions."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_position = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * 4
    return rows * positions * per_position / 2**20


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
    parser.add_argument("--json", metavar="PATH", help="also write every row's raw figures here")
    args = parser.parse_args()

    gen = HFGenerator(max_batch_size=args.questions)
    torch_only = rss_mb()
    import_loading_code()
    before, before_file = rss_mb(), status_mb("RssFile")
    gen.load()
    load_peak = status_mb("VmHWM")
    prompts = [answer_messages(q) for q in questions(args.questions)]
    gen.generate(prompts, max_tokens=2)  # warm-up: the same batch, two tokens
    loaded = rss_mb()

    tracked = reset_peak()
    ours = run_ours(gen, prompts, args.new_tokens)
    run_peak = status_mb("VmHWM") if tracked else float("nan")
    code_pages = status_mb("RssFile") - before_file - mapped_file_mb(".safetensors")
    checkpoint_pages = mapped_file_mb(".safetensors")
    packed = sum(type(m).__name__ == "PackedLinear" for m in gen.model.modules())
    prefill_seconds = run_ours(gen, prompts, 1)[0]  # the prefill and the first new token
    rows = [gen.encode_chat(p) for p in prompts]
    kv_mb = kv_cache_mb(gen.model, len(rows), max(map(len, rows)) + args.new_tokens)
    kv_written_mb = kv_cache_mb(gen.model, 1, sum(map(len, rows)) + len(rows) * args.new_tokens)

    # The baselines run the model as their users load it: plain transformers, no packed weights.
    plain = HFGenerator(max_batch_size=args.questions, pack_weights=False).load()
    weight_bytes = sum(p.numel() * p.element_size() for p in plain.model.parameters())
    plain.generate(prompts, max_tokens=2)  # the same warm-up
    results = {"HFGenerator.generate (batched)": ours,
               "  the same, pack_weights=False": run_ours(plain, prompts, args.new_tokens)}
    unfast = HFGenerator(max_batch_size=args.questions, fast_path=False).load()
    unfast.generate(prompts, max_tokens=2)  # the same warm-up
    results["  the same, fast_path=False"] = run_ours(unfast, prompts, args.new_tokens)
    del unfast
    results["plain model.generate loop"] = run_loop(plain, prompts, args.new_tokens)
    chf = run_chat_huggingface(plain, prompts, args.new_tokens)
    if chf is not None:
        results["ChatHuggingFace.batch"] = chf

    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {gen.device}, {args.questions} GSM8K questions x {args.new_tokens} new tokens, greedy; "
          f"ours: {packed} linear layers packed for oneDNN")
    print(f"{'method':<34} {'seconds':>8} {'tokens':>7} {'tokens/s':>9} {'ours is':>9}")
    ours_rate = ours[1] / ours[0]
    for name, (seconds, tokens, _) in results.items():
        rate = tokens / seconds
        print(f"{name:<34} {seconds:>8.2f} {tokens:>7d} {rate:>9.1f} {ours_rate / rate:>8.2f}x")
    for name in ("plain model.generate loop", "  the same, pack_weights=False", "  the same, fast_path=False"):
        same = sum(a == b for a, b in zip(ours[2], results[name][2]))
        print(f"identical texts, ours vs {name.strip()}: {same}/{len(prompts)}")

    if args.json:
        out = {"settings": {"questions": args.questions, "new_tokens": args.new_tokens, "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "device": str(gen.device)},
               "rows": {name.strip(): {"seconds": round(sec, 3), "tokens": tok, "tokens_per_s": round(tok / sec, 1),
                                       "identical_texts": sum(a == b for a, b in zip(ours[2], texts))}
                        for name, (sec, tok, texts) in results.items()}}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")

    bandwidth, peak_flops = machine_limits()
    steps = args.new_tokens
    step_time = ours[0] / steps
    fp32_mb = weight_bytes / 2**20
    params = weight_bytes / 4
    bytes_per_step = weight_bytes  # every weight is read once per decoding step
    flops_per_step = 2 * params * args.questions
    print(f"machine: copy bandwidth {bandwidth:.1f} GB/s, fp32 matmul {peak_flops:.1f} GFLOP/s (measured)")
    print(f"batched run: {step_time * 1e3:.1f} ms/new token (prefill included); weights {bytes_per_step / step_time / 1e9:.1f} "
          f"GB/s = {bytes_per_step / step_time / 1e9 / bandwidth:.0%} of bandwidth; "
          f"{flops_per_step / step_time / 1e9:.1f} GFLOP/s = {flops_per_step / step_time / 1e9 / peak_flops:.0%} of matmul peak")
    decode_step = (ours[0] - prefill_seconds) / max(1, steps - 1)
    print(f"  prefill + first token {prefill_seconds:.2f} s; decoding alone {decode_step * 1e3:.1f} ms/step: weights "
          f"{bytes_per_step / decode_step / 1e9:.1f} GB/s = {bytes_per_step / decode_step / 1e9 / bandwidth:.0%} of bandwidth; "
          f"{flops_per_step / decode_step / 1e9:.1f} GFLOP/s = {flops_per_step / decode_step / 1e9 / peak_flops:.0%} of matmul peak")
    print(f"memory: fp32 weights {fp32_mb:.0f} MB; RSS {before:.0f} MB before loading (python, torch, transformers, "
          f"the model's code and tokenizer libraries imported), {loaded:.0f} MB after loading and warm-up, peak "
          f"{load_peak:.0f} MB while loading, {run_peak:.0f} MB during the batched run")
    growth = run_peak - before
    print(f"  RSS growth at the run's peak: {growth:.0f} MB = {growth / fp32_mb:.2f}x the fp32 weights; of it "
          f"{code_pages:.0f} MB are shared-library code pages read in on first use, {checkpoint_pages:.0f} MB pages of the "
          f"mapped checkpoint, and the batch's key/value cache is {kv_mb:.0f} MB "
          f"in all, {kv_written_mb:.0f} MB of it real positions (the rest is padding)")
    print(f"  (from the RSS after importing torch and transformers alone, {torch_only:.0f} MB, the growth would be "
          f"{run_peak - torch_only:.0f} MB = {(run_peak - torch_only) / fp32_mb:.2f}x: the loading code's imports are "
          f"{before - torch_only:.0f} MB)")
    print(f"  model memory at the peak (RSS growth less library code): {growth - code_pages:.0f} MB = "
          f"{(growth - code_pages) / fp32_mb:.2f}x the fp32 weights; loading peaks at {(load_peak - before) / fp32_mb:.2f}x")


if __name__ == "__main__":
    main()
