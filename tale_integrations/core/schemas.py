"""JSON Schema as the tools and structured output use it: a structure check with clear errors
(`check_json_schema`), the closed form constrained turns follow (`closed_schema`), and a validator
for the common keywords (`schema_errors`). Pure logic, no dependencies.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from .errors import SchemaError

__all__ = ["check_json_schema", "closed_schema", "schema_errors"]

_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
# Where JSON Schema nests schemas: one schema, a list of them, or a map of names to them.
_ONE = ("additionalProperties", "additionalItems", "items", "not", "contains", "propertyNames", "if", "then",
        "else", "unevaluatedProperties", "unevaluatedItems")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def check_json_schema(schema: Any, where: str = "schema") -> Any:
    """Return ``schema`` if it is JSON Schema (a dict or a bool at every level), else raise `SchemaError`.

    Checks the structure, not the meaning: ``type`` names JSON types, ``properties`` and the other
    maps hold schemas, ``anyOf`` and the other lists are non-empty lists of schemas, ``required`` is
    a list of strings, ``enum`` a list, ``$ref`` a string. Unknown keywords pass (JSON Schema allows
    them; the decoding constraint refuses the ones it cannot enforce).
    """
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, Mapping):
        hint = " (convert a pydantic model with .model_json_schema(), or pass a dict)" \
            if isinstance(schema, type) else ""
        raise SchemaError(f"{where} must be a JSON Schema (a dict), got {type(schema).__name__}{hint}")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for k in kinds:
        if k not in _JSON_TYPES:
            raise SchemaError(
                f"{where}['type'] is {kind!r}; a JSON Schema type is one of {sorted(_JSON_TYPES)} (or a list of them)"
            )
    for key in _ONE:
        if key in schema:
            value = schema[key]
            if key in ("items", "additionalItems") and isinstance(value, list):  # draft-07 tuple items
                for i, sub in enumerate(value):
                    check_json_schema(sub, f"{where}['{key}'][{i}]")
            else:
                check_json_schema(value, f"{where}['{key}']")
    for key in _LIST:
        if key in schema:
            value = schema[key]
            if not isinstance(value, list) or not value:
                raise SchemaError(f"{where}['{key}'] must be a non-empty list of schemas, got {value!r}")
            for i, sub in enumerate(value):
                check_json_schema(sub, f"{where}['{key}'][{i}]")
    for key in _MAP:
        if key in schema:
            value = schema[key]
            if not isinstance(value, Mapping):
                raise SchemaError(f"{where}['{key}'] must be an object mapping names to schemas, got {value!r}")
            for name, sub in value.items():
                check_json_schema(sub, f"{where}['{key}'][{name!r}]")
    required = schema.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        raise SchemaError(f"{where}['required'] must be a list of property names, got {required!r}")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise SchemaError(f"{where}['enum'] must be a list of values, got {schema['enum']!r}")
    if "$ref" in schema and not isinstance(schema["$ref"], str):
        raise SchemaError(f"{where}['$ref'] must be a string, got {schema['$ref']!r}")
    return schema


def closed_schema(schema: Any) -> Any:
    """A copy of ``schema`` in which every object schema with ``properties`` and no
    ``additionalProperties`` gets ``additionalProperties: false``.

    Every value valid under the result is valid under ``schema``; a small model held to it cannot
    wander into keys nobody asked for. Used for constrained turns (tool arguments, structured output).
    """
    if isinstance(schema, list):
        return [closed_schema(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _MAP and isinstance(value, Mapping):
            out[key] = {name: closed_schema(sub) for name, sub in value.items()}
        elif key in _ONE or key in _LIST:
            out[key] = closed_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


def _resolve_ref(root: Mapping[str, Any], ref: str) -> Any:
    if not ref.startswith("#"):
        raise SchemaError(f"$ref {ref!r} points outside the schema; only local references (#/$defs/...) work")
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            raise SchemaError(f"$ref {ref!r} does not resolve inside the schema")
        node = node[part]
    return node


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        whole = isinstance(value, float) and value.is_integer()
        return (isinstance(value, int) and not isinstance(value, bool)) or whole
    return {
        "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }[kind](value)


def schema_errors(value: Any, schema: Any, *, root: Any = None, path: str = "$") -> list[str]:
    """Why ``value`` does not follow ``schema`` (empty when it does), for the common keywords.

    Checked: ``type``, ``enum``, ``const``, ``properties``, ``required``, ``additionalProperties``,
    ``items``, ``prefixItems``, ``anyOf``/``oneOf``/``allOf``, ``minimum``/``maximum`` (and their
    exclusive forms), ``minLength``/``maxLength``, ``minItems``/``maxItems`` and local ``$ref``.
    Other keywords are not checked here (the decoding constraint enforces what it supports).
    """
    root = schema if root is None else root
    if schema is True or schema is None:
        return []
    if schema is False:
        return [f"{path}: no value is allowed here"]
    if "$ref" in schema:
        return schema_errors(value, _resolve_ref(root, schema["$ref"]), root=root, path=path)
    errors: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_type_ok(value, k) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {json.dumps(value)[:60]}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {json.dumps(value)[:60]} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {json.dumps(schema['const'])}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: missing required property {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                errors += schema_errors(item, props[name], root=root, path=f"{path}.{name}")
            elif extra is False and not schema.get("patternProperties"):
                errors.append(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, Mapping):
                errors += schema_errors(item, extra, root=root, path=f"{path}.{name}")
    if isinstance(value, list):
        prefix = schema.get("prefixItems", [])
        items = schema.get("items", True)
        if isinstance(items, list):  # draft-07 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else items
            errors += schema_errors(item, sub, root=root, path=f"{path}[{i}]")
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, bad in (("minimum", lambda v, b: v < b), ("maximum", lambda v, b: v > b),
                         ("exclusiveMinimum", lambda v, b: v <= b), ("exclusiveMaximum", lambda v, b: v >= b)):
            bound = schema.get(key)
            if isinstance(bound, (int, float)) and not isinstance(bound, bool) and bad(value, bound):
                errors.append(f"{path}: {value} breaks {key} {bound}")
    for sub in schema.get("allOf", []):
        errors += schema_errors(value, sub, root=root, path=path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            matches = [not schema_errors(value, sub, root=root, path=path) for sub in schema[key]]
            if not any(matches) or (key == "oneOf" and sum(matches) > 1):
                errors.append(f"{path}: matches {'none' if not any(matches) else 'several'} of the {key} schemas")
    return errors
