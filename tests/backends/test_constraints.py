"""backends/constraints.py: the JSON-schema constraint as a RowRule, on the tiny tokenizer and real
tiny models through `HFGenerator.generate` / `stream` (``answer_rules``); one slow test on the
embedded SmolLM2."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("llguidance")

import torch  # noqa: E402
from tiny_models import build_tiny_model, build_tiny_tokenizer  # noqa: E402

from tale_integrations.backends.constraints import (  # noqa: E402
    JsonSchemaRule,
    json_schema_constraint,
    validate_json_schema,
)
from tale_integrations.backends.hf import HFGenerator  # noqa: E402
from tale_integrations.backends.row_rules import force_token  # noqa: E402
from tale_integrations.core.errors import SchemaError  # noqa: E402
from tale_integrations.core.schemas import closed_schema, schema_errors  # noqa: E402
from tale_integrations.core.tools import ToolChoice, parse_tool_calls, tool_call_schema, tool_specs  # noqa: E402

PERSON = closed_schema({"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}}, "required": ["name", "age"]})
TOOLS = tool_specs([
    {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                                   "required": ["a", "b"]}},
    {"name": "now"},
])
PROMPTS = [[{"role": "user", "content": text}] for text in ("a", "What is 2 + 3?", "The answer is 7.", "bb bb")]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def generator(tokenizer):
    return HFGenerator.from_model(build_tiny_model(tokenizer, max_positions=1024), tokenizer, model_name="random")


def rules(generator, schema, n, **options):
    constraint = json_schema_constraint(generator.tokenizer, schema)
    return [[constraint.rule(**options)] for _ in range(n)]


def test_compiled_once_per_schema_and_tokenizer(tokenizer):
    first = json_schema_constraint(tokenizer, PERSON)
    assert json_schema_constraint(tokenizer, json.loads(json.dumps(PERSON))) is first
    assert json_schema_constraint(build_tiny_tokenizer(), PERSON) is not first
    assert json_schema_constraint(tokenizer, PERSON, text_alternative=True) is not first
    one, two = first.rule(), first.rule()
    assert isinstance(one, JsonSchemaRule) and one is not two and one.matcher is not two.matcher


def test_a_random_model_writes_only_schema_valid_json_in_a_batch(generator):
    free = generator.generate(PROMPTS, max_tokens=60)
    assert not any(_valid(g.text, PERSON) for g in free)  # without the rule: nonsense
    held = generator.generate(PROMPTS, max_tokens=60, answer_rules=rules(generator, PERSON, len(PROMPTS)))
    for generation in held:
        assert _valid(generation.text, PERSON), generation.text
        assert generation.finish_reason == "stop"


def test_each_row_keeps_its_own_state_with_different_schemas_per_row(generator):
    call = tool_call_schema(TOOLS, ToolChoice(mode="required"))
    row_rules = [[json_schema_constraint(generator.tokenizer, s).rule(max_tokens=80)] for s in (PERSON, call, PERSON)]
    texts = [g.text for g in generator.generate(PROMPTS[:3], max_tokens=80, answer_rules=row_rules)]
    assert _valid(texts[0], PERSON) and _valid(texts[2], PERSON)
    assert parse_tool_calls(texts[1], TOOLS).tool_calls


def test_streaming_applies_the_rule_too(generator):
    events = list(generator.stream(PROMPTS[1], max_tokens=60,
                                   answer_rules=[json_schema_constraint(generator.tokenizer, PERSON).rule()]))
    assert _valid("".join(e.text for e in events), PERSON)


def test_near_the_cap_the_document_is_closed_not_cut(generator):
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    cut = generator.generate(PROMPTS, max_tokens=30, answer_rules=rules(generator, schema, len(PROMPTS)))
    assert not all(_valid(g.text, schema) for g in cut)  # strings run on: the cap cuts them
    closed = generator.generate(PROMPTS, max_tokens=30,
                                answer_rules=rules(generator, schema, len(PROMPTS), max_tokens=30, reserve=10))
    assert all(_valid(g.text, schema) for g in closed), [g.text for g in closed]


def test_the_text_alternative_lets_a_row_answer_in_text_or_json(scripted_generator):
    sevens = scripted_generator(" 7")
    constraint = json_schema_constraint(sevens.tokenizer, PERSON, text_alternative=True)
    text = sevens.generate([PROMPTS[0]], max_tokens=5, answer_rules=[[constraint.rule(max_tokens=5)]])[0].text
    assert text == " 7 7 7 7 7"  # text, never closed as JSON
    braces = scripted_generator("[[40]]")  # "[" is not a JSON object start: still text
    assert braces.generate([PROMPTS[0]], max_tokens=2, answer_rules=[[constraint.rule()]])[0].text == "[[40]][[40]]"
    only_json = json_schema_constraint(sevens.tokenizer, PERSON)
    held = sevens.generate([PROMPTS[0]], max_tokens=60, answer_rules=[[only_json.rule()]])[0].text
    assert _valid(held, PERSON)


class ForceSeven:
    """A rule that forces " 7" at every step, as a budget enforcer forces its wrap-up text."""

    def __init__(self, token: int) -> None:
        self.token = token

    def apply(self, generated, scores):
        force_token(scores, self.token)


def test_the_constraint_wins_over_an_earlier_rule_that_forces_a_forbidden_token(generator):
    seven = generator.tokenizer.convert_tokens_to_ids(" 7")
    constraint = json_schema_constraint(generator.tokenizer, PERSON)
    texts = [g.text for g in generator.generate(
        PROMPTS, max_tokens=80, answer_rules=[[ForceSeven(seven), constraint.rule(max_tokens=80)] for _ in PROMPTS])]
    assert all(_valid(t, PERSON) for t in texts), texts


def test_the_constraint_composes_with_the_budget_enforcer(tokenizer):
    gen = HFGenerator.from_model(build_tiny_model(tokenizer, max_positions=1024), tokenizer, enforce_budget=True)
    constraint = json_schema_constraint(tokenizer, PERSON)
    texts = [g.text for g in gen.generate(PROMPTS, max_tokens=80, budgets=[3] * len(PROMPTS),
                                          answer_rules=[[constraint.rule(max_tokens=80)] for _ in PROMPTS])]
    assert all(_valid(t, PERSON) for t in texts), texts


def test_a_rule_stops_when_its_row_ends_or_is_shown_a_forbidden_token(tokenizer):
    constraint = json_schema_constraint(tokenizer, PERSON)
    rule = constraint.rule()
    scores = torch.zeros(len(tokenizer))
    rule.apply([], scores)
    allowed = torch.isfinite(scores)
    assert 0 < int(allowed.sum()) < len(tokenizer) and allowed[tokenizer.convert_tokens_to_ids("{")]
    rule.apply(tokenizer.encode("x", add_special_tokens=False), torch.zeros(len(tokenizer)))
    assert rule.error is not None
    ended = constraint.rule()
    ended.apply([tokenizer.eos_token_id], torch.zeros(len(tokenizer)))
    assert ended.error == "ended"


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"x": {"not": {"type": "string"}}}}, 'Unimplemented keys: ["not"]'),
    ({"type": "array", "uniqueItems": True}, 'Unimplemented keys: ["uniqueItems"]'),
    ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, '"if", "then"'),
    ({"type": "thing"}, "['type'] is 'thing'"),
    ({"$ref": "#/$defs/missing"}, "cannot be enforced"),
    ("string", "must be a JSON Schema (a dict)"),
])
def test_schemas_the_constraint_cannot_enforce_are_refused_by_name(schema, words, tokenizer):
    with pytest.raises(SchemaError) as caught:
        validate_json_schema(schema, where="response_format")
    assert words in str(caught.value) and "response_format" in str(caught.value)
    with pytest.raises(SchemaError):
        json_schema_constraint(tokenizer, schema)


def test_a_missing_llguidance_names_the_extra(monkeypatch, tokenizer):
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(ImportError, match=r'tale-integrations\[constrain\]'):
        validate_json_schema(PERSON)


@pytest.mark.slow
def test_the_embedded_model_writes_valid_tool_calls_in_a_batch(embedded_generator):
    schema = tool_call_schema(TOOLS, ToolChoice(mode="required"))
    constraint = json_schema_constraint(embedded_generator.tokenizer, schema)
    prompts = [[{"role": "user", "content": f"Use a tool: what is {a} + {b}?"}] for a, b in ((2, 3), (10, 7))]
    rows = [[constraint.rule(max_tokens=48)] for _ in prompts]
    texts = [g.text for g in embedded_generator.generate(prompts, max_tokens=48, answer_rules=rows)]
    for text in texts:
        (call,) = parse_tool_calls(text, TOOLS).tool_calls
        assert call.name in ("add", "now")


def _valid(text: str, schema) -> bool:
    try:
        return not schema_errors(json.loads(text), schema)
    except json.JSONDecodeError:
        return False
