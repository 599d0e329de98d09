"""A LoRA adapter on the embedded model: unmerged vs ``merge=True`` (packed) vs merged but unpacked.

The adapter has the shape `tale train` gives by default (r = 8 on ``q_proj`` and ``v_proj``), with
small random weights so that it changes the model; it is made with peft in a temporary folder. The
same 16 GSM8K questions, 64 new tokens each, greedy, batched, as in `hf_throughput.py`.

    python benchmarks/adapter_merge.py [--questions 16] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import peft
import torch
import transformers

from hf_throughput import questions
from tale_integrations.backends.embedded import embedded_model_path
from tale_integrations.backends.hf import HFGenerator
from tale_integrations.core.prompts import answer_messages


def make_adapter(base: Path, out: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = peft.get_peft_model(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    adapter.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    base = embedded_model_path()
    prompts = [answer_messages(q) for q in questions(args.questions)]
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.questions} GSM8K questions x {args.new_tokens} new tokens, greedy, one batch")
    texts, rates = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        make_adapter(base, Path(folder))
        for name, options in [("unmerged adapter", {}), ("merge=True (packed)", {"merge": True}),
                              ("merge=True, pack_weights=False", {"merge": True, "pack_weights": False})]:
            gen = HFGenerator(str(base), adapter=folder, max_batch_size=args.questions, **options).load()
            gen.generate(prompts, max_tokens=2)  # warm-up
            start = time.perf_counter()
            out = gen.generate(prompts, max_tokens=args.new_tokens)
            seconds = time.perf_counter() - start
            tokens = sum(g.usage.output_tokens for g in out)
            texts[name], rates[name] = [g.text for g in out], tokens / seconds
            print(f"{name:<32} {seconds:>7.2f} s {tokens:>6d} tokens {rates[name]:>7.1f} tok/s "
                  f"{rates[name] / rates['unmerged adapter']:>6.2f}x unmerged")
            del gen
    same = sum(a == b for a, b in zip(texts["unmerged adapter"], texts["merge=True (packed)"]))
    print(f"identical texts, unmerged vs merged (packed): {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
