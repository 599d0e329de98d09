"""Tool calls with and without the JSON-schema constraint, on the embedded model, side by side.

The same 100 prompts (arithmetic, weather and search questions, in turn) are sent to the embedded
SmolLM2-135M-Instruct with three tools bound and ``tool_choice="any"``, prompted as `ChatTaleHF`
prompts a model whose template cannot render tools (the generic tool prompt, ``core/tools.py``),
greedy, batch 16: once free, once held to `core.tools.tool_call_schema` by
``backends/constraints.py``. A reply counts as parseable when `parse_tool_calls` finds exactly one
call of a bound tool, and as schema-valid when its arguments also follow that tool's JSON Schema
(checked with the ``jsonschema`` package when installed, else `core.schemas.schema_errors`).

The constraint's cost is measured inside the same constrained run: the time its rules take per
decoding step for the 16 rows of a batch (advance the parser, compute the mask, apply it), next to
the wall time of a whole decoding step. Compile times are measured on their own (first compile,
including the tokenizer's conversion, and a cached lookup).

``--libraries`` adds the comparison behind the choice of llguidance: for each candidate engine
that is importable (llguidance, xgrammar, outlines-core), the compile time of the three-tool
schema, the mask cost of 16 rows per step along 16 valid calls, and whether it refuses a keyword
it cannot enforce (``not``) or accepts it and ignores it.

    python benchmarks/constrained.py [--prompts 100] [--batch 16] [--max-tokens 64] [--libraries]
        [--libraries-only] [--json benchmarks/results/constrained.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from tale_integrations.backends.constraints import json_schema_constraint
from tale_integrations.backends.hf import HFGenerator
from tale_integrations.backends.hf.decoding import eos_ids_of
from tale_integrations.core.schemas import schema_errors
from tale_integrations.core.tools import (
    ToolChoice,
    parse_tool_calls,
    tool_call_schema,
    tool_prompt,
    tool_specs,
    with_system_text,
)

TOOLS = tool_specs([
    {"name": "add", "description": "Add two numbers.", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}},
    {"name": "get_weather", "description": "Current weather in a city.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"},
                                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}},
    {"name": "search", "description": "Search the web.", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"},
                                         "limit": {"type": "integer", "minimum": 1, "maximum": 10}},
        "required": ["query"]}},
])
CITIES = ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Denver", "Hanoi", "Perth", "Quito", "Riga", "Seoul"]
TOPICS = ["token budgets", "the tallest mountain", "vegan recipes", "Python decorators", "solar panels",
          "the French revolution", "black holes", "chess openings", "sourdough bread", "electric cars"]


def prompts(n: int) -> list[str]:
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(f"What is {7 * i + 3} plus {i * i % 97 + 1}?")
        elif kind == 1:
            out.append(f"What's the weather like in {CITIES[i % len(CITIES)]} today?")
        else:
            out.append(f"Search the web for {TOPICS[i % len(TOPICS)]}.")
    return out


def validator():
    try:
        import jsonschema
    except ImportError:
        return "core.schemas.schema_errors", lambda value, schema: not schema_errors(value, schema)
    from importlib.metadata import version

    return f"jsonschema {version('jsonschema')}", lambda value, schema: jsonschema.Draft202012Validator(
        schema).is_valid(value)


class Timed:
    """A rule that times the rule it wraps, per decoding step (summed over the rows of a batch)."""

    def __init__(self, rule, clock: dict[int, float]) -> None:
        self.rule, self.clock = rule, clock

    def apply(self, generated, scores) -> None:
        start = time.perf_counter()
        self.rule.apply(generated, scores)
        step = len(generated)
        self.clock[step] = self.clock.get(step, 0.0) + time.perf_counter() - start


def run(gen: HFGenerator, questions: list[str], *, constrained: bool, batch: int, max_tokens: int) -> dict:
    choice = ToolChoice(mode="required")
    system = tool_prompt(TOOLS, choice)
    conversations = [with_system_text([{"role": "user", "content": q}], system) for q in questions]
    constraint = None
    if constrained:
        constraint = json_schema_constraint(gen.tokenizer, tool_call_schema(TOOLS, choice),
                                            eos_ids=eos_ids_of(gen.model, gen.tokenizer, ""))
    texts, step_rule_ms, step_wall_ms, tokens = [], [], [], 0
    start = time.perf_counter()
    for k in range(0, len(conversations), batch):
        chunk = conversations[k:k + batch]
        clock: dict[int, float] = {}
        rules = [[Timed(constraint.rule(max_tokens=max_tokens), clock)] for _ in chunk] if constraint else None
        t0 = time.perf_counter()
        generations = gen.generate(chunk, max_tokens=max_tokens, answer_rules=rules)
        wall = time.perf_counter() - t0
        steps = max(g.usage.output_tokens for g in generations)
        step_wall_ms.append(1000 * wall / steps)
        if clock and len(chunk) == batch:  # the full batches: cost at batch 16
            step_rule_ms += [1000 * v for v in clock.values()]
        texts += [g.text for g in generations]
        tokens += sum(g.usage.output_tokens for g in generations)
    elapsed = time.perf_counter() - start
    name, is_valid = validator()
    by_name = {t.name: t for t in TOOLS}
    parseable = valid = 0
    failures = []
    for q, text in zip(questions, texts, strict=True):
        reply = parse_tool_calls(text)  # any name, no schema check: is it one tool call at all?
        ok = len(reply.tool_calls) == 1 and not reply.invalid_tool_calls and reply.tool_calls[0].name in by_name
        parseable += ok
        if ok:
            call = reply.tool_calls[0]
            if is_valid(call.arguments, dict(by_name[call.name].parameters)):
                valid += 1
                continue
        if len(failures) < 3:
            failures.append({"prompt": q, "reply": text[:160]})
    n = len(questions)
    return {
        "constrained": constrained, "prompts": n, "parseable": parseable / n, "schema_valid": valid / n,
        "validator": name, "seconds": round(elapsed, 1), "output_tokens": tokens,
        "step_wall_ms_median": round(statistics.median(step_wall_ms), 2),
        "rule_ms_per_step_batch": None if not step_rule_ms else {
            "median": round(statistics.median(step_rule_ms), 3), "mean": round(statistics.mean(step_rule_ms), 3),
            "p90": round(sorted(step_rule_ms)[int(0.9 * (len(step_rule_ms) - 1))], 3), "steps": len(step_rule_ms)},
        "examples_failed": failures,
    }


def compile_times(gen: HFGenerator) -> dict:
    from tale_integrations.backends import constraints

    schema = tool_call_schema(TOOLS, ToolChoice(mode="required"))
    constraints._CACHE.pop(gen.tokenizer, None)
    t0 = time.perf_counter()
    json_schema_constraint(gen.tokenizer, schema)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    json_schema_constraint(gen.tokenizer, {**schema, "title": "another schema"})
    second = time.perf_counter() - t0
    t0 = time.perf_counter()
    json_schema_constraint(gen.tokenizer, schema)
    cached = time.perf_counter() - t0
    return {"first_with_tokenizer_ms": round(1000 * first, 1), "another_schema_ms": round(1000 * second, 2),
            "cached_ms": round(1000 * cached, 3)}


def compare_libraries(tokenizer, batch: int) -> dict:
    """Compile time and mask cost (16 rows per step, along valid calls) of each importable engine."""
    import numpy
    import torch

    schema = tool_call_schema(TOOLS, ToolChoice(mode="required"))
    calls = [json.dumps(c) for c in ({"name": "add", "arguments": {"a": 12, "b": 30.5}},
                                     {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
                                     {"name": "search", "arguments": {"query": "token budget aware", "limit": 3}},
                                     {"name": "get_weather", "arguments": {"city": "New York"}})]
    paths = [tokenizer.encode(calls[i % len(calls)], add_special_tokens=False) for i in range(batch)]
    vocab = len(tokenizer)
    bad = {"type": "object", "properties": {"x": {"not": {"type": "string"}}}}
    results = {}

    def walk(fill, consume, make) -> float:
        """Median over three walks of the median step: 16 rows' masks filled and applied (numpy, as the rule does)."""
        medians = []
        for _ in range(3):
            matchers = [make() for _ in range(batch)]
            logits = numpy.random.default_rng(0).standard_normal((batch, vocab)).astype(numpy.float32)
            steps = []
            for s in range(max(map(len, paths))):
                t0 = time.perf_counter()
                for i, m in enumerate(matchers):
                    if s < len(paths[i]):
                        words = fill(m).numpy().view(numpy.uint8)
                        allowed = numpy.unpackbits(words, bitorder="little")[:vocab].view(numpy.bool_)
                        numpy.putmask(logits[i], ~allowed, -numpy.inf)
                steps.append(time.perf_counter() - t0)
                for i, m in enumerate(matchers):
                    if s < len(paths[i]) and not consume(m, paths[i][s]):
                        raise AssertionError(f"row {i} step {s}: a valid call was refused")
            medians.append(statistics.median(steps))
        return round(1000 * statistics.median(medians), 3)

    try:
        import llguidance
        import llguidance.hf

        layout = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        t0 = time.perf_counter()
        lltok = llguidance.hf.from_tokenizer(tokenizer)
        t_tok = time.perf_counter() - t0
        t0 = time.perf_counter()
        proto = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=layout))
        t_compile = time.perf_counter() - t0
        refused = llguidance.LLMatcher.validate_grammar_with_warnings(
            llguidance.LLMatcher.grammar_from_json_schema(bad))
        results["llguidance"] = {
            "tokenizer_ms": round(1000 * t_tok, 1), "compile_ms": round(1000 * t_compile, 2),
            "mask_ms_per_step_16_rows": walk(
                lambda m: torch.from_numpy(numpy.frombuffer(m.compute_bitmask(), dtype=numpy.int32).copy()),
                lambda m, t: m.consume_token(t), proto.deep_copy),
            "unsupported_keyword": "refused: " + "; ".join(refused[1]) if refused[0] or refused[1] else "accepted",
            "dependencies": "none",
        }
    except ImportError:
        pass
    try:
        import xgrammar

        t0 = time.perf_counter()
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        t_tok = time.perf_counter() - t0
        compiler = xgrammar.GrammarCompiler(info, max_threads=1)
        t0 = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        t_compile = time.perf_counter() - t0
        bitmask = xgrammar.allocate_token_bitmask(1, info.vocab_size)

        def fill(m):
            m.fill_next_token_bitmask(bitmask, 0)
            return bitmask[0]

        try:
            compiler.compile_json_schema(json.dumps(bad))
            keyword = "accepted (and not enforced)"
        except Exception as exc:  # noqa: BLE001
            keyword = f"refused: {exc}"
        results["xgrammar"] = {
            "tokenizer_ms": round(1000 * t_tok, 1), "compile_ms": round(1000 * t_compile, 2),
            "mask_ms_per_step_16_rows": walk(fill, lambda m, t: m.accept_token(t),
                                             lambda: xgrammar.GrammarMatcher(compiled)),
            "unsupported_keyword": keyword, "dependencies": "torch, transformers, triton, apache-tvm-ffi, pydantic",
        }
    except ImportError:
        pass
    try:
        import outlines_core
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        t0 = time.perf_counter()
        to_byte = {v: k for k, v in bytes_to_unicode().items()}
        table: dict[bytes, list[int]] = {}
        for text, i in tokenizer.get_vocab().items():
            if i != tokenizer.eos_token_id and text not in tokenizer.all_special_tokens:
                table.setdefault(bytes(to_byte[c] for c in text), []).append(i)
        vocabulary = outlines_core.Vocabulary(tokenizer.eos_token_id, table)
        t_tok = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = outlines_core.Index(outlines_core.json_schema.build_regex_from_schema(json.dumps(schema), r"[ ]?"),
                                    vocabulary)
        t_compile = time.perf_counter() - t0
        words = torch.full(((vocab + 31) // 32,), -1, dtype=torch.int32)

        def fill(g):
            g.write_mask_into(words.data_ptr(), words.numel(), 4)
            return words

        def consume(g, t):
            g.advance(t)
            return True

        try:
            outlines_core.json_schema.build_regex_from_schema(json.dumps(bad))
            keyword = "accepted (and not enforced)"
        except Exception as exc:  # noqa: BLE001
            keyword = f"refused: {exc}"
        results["outlines_core"] = {
            "tokenizer_ms": round(1000 * t_tok, 1), "compile_ms": round(1000 * t_compile, 2),
            "mask_ms_per_step_16_rows": walk(fill, consume, lambda: outlines_core.Guide(index)),
            "unsupported_keyword": keyword, "dependencies": "none",
        }
    except ImportError:
        pass
    return results


def print_libraries(libraries: dict) -> None:
    print("| engine | tokenizer ms | compile ms | mask ms / step, 16 rows | `not` keyword | dependencies |")
    print("|---|---|---|---|---|---|")
    for name, r in libraries.items():
        print(f"| {name} | {r['tokenizer_ms']} | {r['compile_ms']} | {r['mask_ms_per_step_16_rows']} "
              f"| {r['unsupported_keyword'][:60]} | {r['dependencies']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--libraries", action="store_true", help="also compare the candidate engines")
    parser.add_argument("--libraries-only", action="store_true", help="only compare the candidate engines")
    parser.add_argument("--json", default="benchmarks/results/constrained.json")
    args = parser.parse_args()

    gen = HFGenerator(max_batch_size=args.batch).load()
    if args.libraries_only:
        libraries = compare_libraries(gen.tokenizer, args.batch)
        print_libraries(libraries)
        Path(args.json).write_text(json.dumps({"benchmark": "constrained --libraries-only", "libraries": libraries,
                                               "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}},
                                              indent=2) + "\n")
        return
    questions = prompts(args.prompts)
    free = run(gen, questions, constrained=False, batch=args.batch, max_tokens=args.max_tokens)
    held = run(gen, questions, constrained=True, batch=args.batch, max_tokens=args.max_tokens)
    compiled = compile_times(gen)
    rule = held["rule_ms_per_step_batch"]
    print(f"{args.prompts} prompts, three tools, tool_choice='any', greedy, batch {args.batch}, "
          f"max_tokens {args.max_tokens}, {gen.model_name} on {gen.device}")
    print("| decoding | parseable | schema-valid | wall s | output tokens | step ms (median) |")
    print("|---|---|---|---|---|---|")
    for label, r in (("free", free), ("constrained", held)):
        print(f"| {label} | {r['parseable']:.0%} | {r['schema_valid']:.0%} | {r['seconds']} | {r['output_tokens']} "
              f"| {r['step_wall_ms_median']} |")
    print(f"constraint per decoding step, {args.batch} rows: median {rule['median']} ms, p90 {rule['p90']} ms "
          f"({rule['median'] / held['step_wall_ms_median']:.1%} of a median step)")
    print(f"compile: first {compiled['first_with_tokenizer_ms']} ms (tokenizer conversion included), another "
          f"schema {compiled['another_schema_ms']} ms, cached {compiled['cached_ms']} ms")
    libraries = compare_libraries(gen.tokenizer, args.batch) if args.libraries else None
    if libraries:
        print_libraries(libraries)
    result = {
        "benchmark": "constrained", "model": gen.model_name, "device": gen.device, "prompts": args.prompts,
        "batch": args.batch, "max_tokens": args.max_tokens, "free": free, "constrained": held,
        "compile": compiled, "libraries": libraries,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
