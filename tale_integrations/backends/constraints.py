"""Constrained decoding: a JSON schema held while decoding, as a `RowRule` (``row_rules.py``) per row.

`json_schema_constraint(tokenizer, schema)` compiles a schema once per tokenizer (cached) into a
`JsonSchemaConstraint`; its `JsonSchemaConstraint.rule` makes a fresh `JsonSchemaRule` for each row
(a rule holds one row's parser state). At each step the rule advances its parser by the tokens the
row added since the last call, then leaves only the tokens that keep the text a valid prefix of a
document the schema accepts; once the document is complete only the end-of-turn tokens remain.
With ``text_alternative=True`` the row may instead write plain text whose first non-blank character
is not ``{`` (a tool call or an answer: ``tool_choice="auto"``).

The engine is llguidance (the ``constrain`` extra), chosen over xgrammar, outlines-core and
lm-format-enforcer for three reasons measured in ``benchmarks/README.md``: it refuses a schema
keyword it cannot enforce and names it (xgrammar accepts ``not``, ``uniqueItems`` and ``if``/``then``
and ignores them, so its output may break the schema), it needs no other package (xgrammar pulls
triton), and it compiles lazily (about 2 ms for a three-tool schema) with a per-row mask cost of a
few microseconds plus the mask itself. JSON is written compactly, with json.dumps' separators
(``", "`` and ``": "``) and no other whitespace, so a small model cannot loop on blank lines.

Composing with the budget enforcer: rules apply in order and the enforcer comes first. A turn held
to a tool call or a schema should get no budget (the adapters pass none); if an earlier rule still
forces a token the schema forbids, the constraint wins: the allowed tokens stay possible (equally
likely), so the document stays valid.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy

from .._optional import require
from ..core.errors import SchemaError
from ..core.schemas import check_json_schema

torch = require("torch", extra="hf", purpose="constrained decoding")

__all__ = [
    "JsonSchemaConstraint", "JsonSchemaRule", "json_schema_constraint", "schema_rule", "validate_json_schema",
]

#: How the JSON is laid out: json.dumps' separators, no free whitespace.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance() -> Any:
    return require("llguidance", extra="constrain", purpose="constrained decoding (tool calls, structured output)")


def _grammar(schema: Mapping[str, Any] | bool, text_alternative: bool) -> str:
    llg = _llguidance()
    if not text_alternative:
        return llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
    body = dict(schema) if isinstance(schema, Mapping) else {}
    body["x-guidance"] = {**JSON_LAYOUT, **body.get("x-guidance", {})}
    lark = (
        "start: json | text\n"
        f"json: %json {json.dumps(body)}\n"
        "text: /\\s*[^{\\s][\\s\\S]*/\n"
    )
    return llg.LLMatcher.grammar_from_lark(lark)


def validate_json_schema(schema: Any, *, where: str = "schema") -> None:
    """Raise `SchemaError` unless ``schema`` is JSON Schema the constraint can enforce.

    Needs no model: a server can refuse a schema before it queues a request. The message names the
    keywords the engine does not implement (``not``, ``uniqueItems``, ``if``/``then``...) or what it
    could not compile, and the fix.
    """
    check_json_schema(schema, where)
    try:
        grammar = _grammar(schema, False)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"{where} cannot be compiled: {exc}") from None
    failed, messages = _llguidance().LLMatcher.validate_grammar_with_warnings(grammar)
    if failed or messages:
        detail = "; ".join(m.strip() for m in messages) or "unknown error"
        raise SchemaError(
            f"{where} cannot be enforced while decoding: {detail}. Remove or rewrite those keywords "
            "(the constraint supports types, properties, required, enum, const, anyOf, items, "
            "string patterns and lengths, number bounds and local $ref)"
        )


#: Texts that close what is open in a JSON document, most closing first: near its cap a row picks
#: the first of them the schema allows (after the end of turn), so the document ends in time.
CLOSERS = ('"}', '"]', '"', "}]", "]}", "}", "]", ", ", ",", "0", "false", "null")


class JsonSchemaRule:
    """A `RowRule` that holds one row to a JSON schema (make it with `JsonSchemaConstraint.rule`).

    Near the row's cap (``max_tokens``) the rule closes the document: within the last ``reserve``
    tokens it forces the end of turn as soon as the document is complete, and otherwise the first
    of `CLOSERS` the schema allows (a string ends, an object closes; text the schema forces
    still comes), so a cap does not cut the JSON unless the schema's forced text is longer than the
    reserve.

    Attributes:
        error: Why the rule stopped constraining (a token it was shown broke the schema), or None.
    """

    def __init__(self, matcher: Any, vocab_size: int, eos_ids: Sequence[int], *, closers: Sequence[int] = (),
                 max_tokens: int | None = None, reserve: int = 24, json_probe: Any = None) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.eos_ids = frozenset(eos_ids)
        self.eos = min(self.eos_ids)
        self.closers = list(closers)
        self.max_tokens = max_tokens
        self.reserve = min(reserve, max_tokens // 2) if max_tokens else reserve
        #: With a text alternative: a matcher of the JSON branch alone, fed the same tokens until it
        #: errs (the row writes text: nothing to close).
        self.json_probe = json_probe
        #: Whether the row took the text alternative.
        self.writes_text = False
        self.consumed = 0
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        """Whether the text so far is a whole document of the schema."""
        return self.matcher.is_accepting()

    def apply(self, generated: Sequence[int], scores: Any) -> None:
        """`RowRule.apply`: advance by the new tokens, then mask the tokens that would break the schema."""
        if self.error is not None:
            return
        for token in generated[self.consumed:]:
            self.consumed += 1
            if token in self.eos_ids:  # the row has ended; later steps only pad it
                self.error = "ended"
                return
            if not self.matcher.consume_token(token):
                self.error = self.matcher.get_error() or f"token {token} breaks the schema"
                return
            if self.json_probe is not None and not self.json_probe.consume_token(token):
                self.json_probe, self.writes_text = None, True
        if self.matcher.is_error():
            self.error = self.matcher.get_error()
            return
        bits = numpy.frombuffer(self.matcher.compute_bitmask(), dtype=numpy.uint8)
        allowed = numpy.unpackbits(bits, bitorder="little")[: self.vocab_size].view(numpy.bool_)
        forbidden = numpy.ones(scores.shape[0], dtype=numpy.bool_)
        forbidden[: len(allowed)] = ~allowed
        if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64, torch.float16):
            # numpy on the tensor's own memory: a multi-threaded torch operation on one row costs
            # 100x more on a busy CPU (benchmarks/README.md), numpy stays at tens of microseconds.
            row = scores.numpy()
            numpy.putmask(row, forbidden, -numpy.inf)
            if row.max() == -numpy.inf:  # an earlier rule forced a forbidden token: the constraint wins
                numpy.putmask(row, ~forbidden, 0.0)
        else:
            mask = torch.from_numpy(forbidden).to(scores.device)
            scores.masked_fill_(mask, -float("inf"))
            if scores.max() == -float("inf"):
                scores.masked_fill_(~mask, 0.0)
        if self.max_tokens is not None and len(generated) >= self.max_tokens - self.reserve and not self.writes_text:
            self._close(allowed, scores)

    def _close(self, allowed: Any, scores: Any) -> None:
        """Near the cap: end the turn if the document is complete, else take the first allowed closer."""
        if self.matcher.is_accepting():
            choice = next((t for t in sorted(self.eos_ids) if t < len(allowed) and allowed[t]), None)
        else:
            choice = next((t for t in self.closers if allowed[t]), None)
        if choice is not None:
            scores.fill_(-float("inf"))
            scores[choice] = 0.0


class JsonSchemaConstraint:
    """A JSON schema compiled for one tokenizer: a factory of `JsonSchemaRule` values, one per row.

    Attributes:
        schema: The schema.
        text_alternative: Whether a row may write plain text (not starting with ``{``) instead.
    """

    def __init__(self, lltokenizer: Any, schema: Any, *, text_alternative: bool, vocab_size: int,
                 eos_ids: Sequence[int], closers: Sequence[int]) -> None:
        self.schema, self.text_alternative = schema, text_alternative
        llg = _llguidance()
        # log_level=0: the rule reports a matcher's errors itself (the probe errs on every text answer).
        self._prototype = llg.LLMatcher(lltokenizer, _grammar(schema, text_alternative), log_level=0)
        if self._prototype.is_error():
            raise SchemaError(f"the schema cannot be compiled for this tokenizer: {self._prototype.get_error()}")
        self._probe = llg.LLMatcher(lltokenizer, _grammar(schema, False), log_level=0) if text_alternative else None
        self._vocab_size = vocab_size
        self._eos_ids = tuple(eos_ids)
        self._closers = tuple(closers)

    def rule(self, *, max_tokens: int | None = None, reserve: int = 24) -> JsonSchemaRule:
        """A fresh rule for one row; ``max_tokens`` (the row's cap) turns on closing within the last
        ``reserve`` tokens (at most half the cap)."""
        return JsonSchemaRule(self._prototype.deep_copy(), self._vocab_size, self._eos_ids, closers=self._closers,
                              max_tokens=max_tokens, reserve=reserve,
                              json_probe=self._probe.deep_copy() if self._probe is not None else None)


_LOCK = threading.Lock()
#: Per tokenizer: its llguidance tokenizer and its compiled constraints (gone with the tokenizer).
_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def json_schema_constraint(tokenizer: Any, schema: Mapping[str, Any] | bool, *, eos_ids: Sequence[int] | None = None,
                           text_alternative: bool = False, where: str = "schema") -> JsonSchemaConstraint:
    """The constraint for ``schema`` with ``tokenizer`` (a fast Hugging Face tokenizer), compiled once and cached.

    Args:
        tokenizer: The model's tokenizer.
        schema: The JSON Schema the output must follow.
        eos_ids: The tokens that end a turn (default: the tokenizer's end-of-sequence token).
        text_alternative: Let a row write plain text instead (not starting with ``{``).
        where: How error messages name the schema.

    Raises:
        SchemaError: not JSON Schema, or keywords the engine cannot enforce (see `validate_json_schema`).
        ImportError: llguidance is missing (it names the ``constrain`` extra).
    """
    validate_json_schema(schema, where=where)
    llg = _llguidance()
    ends = tuple(sorted(set(eos_ids) if eos_ids is not None else {tokenizer.eos_token_id}))
    key = (json.dumps(schema, sort_keys=True), ends, text_alternative)
    with _LOCK:
        entry = _CACHE.get(tokenizer)
        if entry is None:
            import llguidance.hf  # noqa: F401  (the submodule that reads Hugging Face tokenizers)

            entry = _CACHE[tokenizer] = {"lltokenizer": {}, "constraints": {}}
        lltok = entry["lltokenizer"].get(ends)
        if lltok is None:
            lltok = entry["lltokenizer"][ends] = llg.hf.from_tokenizer(tokenizer, eos_token=list(ends))
        constraint = entry["constraints"].get(key)
        if constraint is None:
            closers = entry.get("closers")
            if closers is None:
                closers = entry["closers"] = _single_tokens(tokenizer, CLOSERS)
            constraint = entry["constraints"][key] = JsonSchemaConstraint(
                lltok, schema, text_alternative=text_alternative, vocab_size=lltok.vocab_size, eos_ids=ends,
                closers=closers,
            )
    return constraint


def schema_rule(generator: Any, schema: Mapping[str, Any] | bool, *, max_tokens: int | None = None,
                text_alternative: bool = False) -> JsonSchemaRule:
    """A fresh rule holding one answer of an `HFGenerator` to ``schema``: the constraint for its tokenizer
    and end-of-turn tokens (compiled once), closing the document before ``max_tokens`` (default: the
    generator's ``max_new_tokens``). Pass it in ``answer_rules`` of ``generate`` or ``stream``."""
    from .hf.decoding import eos_ids_of

    model, tokenizer = generator.model, generator.tokenizer
    constraint = json_schema_constraint(tokenizer, schema, eos_ids=eos_ids_of(model, tokenizer, generator.model_name),
                                        text_alternative=text_alternative)
    return constraint.rule(max_tokens=max_tokens or generator.max_new_tokens)


def _single_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """The ids of the texts that are one token each, in order."""
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return [i[0] for i in ids if len(i) == 1]
