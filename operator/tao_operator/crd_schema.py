"""JSON Schema (pydantic's, Draft 2020-12 with `$defs`) to a structural CRD schema, as `crd.py` renders it.

A kube-apiserver accepts only a *structural* OpenAPI v3 schema (every node typed, no `$ref`, no unions carrying
types), with OpenAPI 3.0 keywords (`exclusiveMinimum: true` beside `minimum`, `nullable`, no `const`).

Translation choices, each because the API server would otherwise reject or mangle the object:

- `Optional[X]` becomes `X`, not required. Kubernetes prunes explicit nulls of non-nullable fields, which
  reads the same as an absent field to pydantic. Only values inside maps and lists, which cannot be left
  out, get `nullable: true`.
- The scorer list is a discriminated union on `type` whose tags include free-form import paths, so no
  `oneOf` can express it: each item is one object with the union of all families' properties, and CEL rules
  demand what each built-in family requires. Properties that only some families have lose their default
  (the API server would otherwise write e.g. `mode: fullmatch` into a majority scorer, which pydantic
  rejects as an unknown field); the default is stated in the description instead.
- Free-form dicts (Kubernetes objects, function arguments, JSON Schemas) keep unknown fields.

Unknown JSON Schema constructs raise `CRDRenderError`: a model change that the CRD cannot express should be
a decision, not a silently wrong schema. The CEL spelling helpers (`cel_field`, `cel_path`, `cel_string`) live
here too: the scorer union's rules need them, and so do the CRD's own rules in `crd.py`.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

Schema = dict[str, Any]

# The scorer union's discriminator, and rules the scorer models enforce in validators rather than in
# their JSON Schema (PythonSpec._one_source).
_DISCRIMINATOR = "type"
_EXTRA_VARIANT_RULES: dict[str, list[Schema]] = {
    "python": [
        {
            "rule": 'self.type != "python" || has(self.path) != has(self.module)',
            "message": "a python scorer needs exactly one of 'path' and 'module'",
        }
    ],
    "majority": [
        {
            "rule": 'self.type != "majority" || has(self.extract) || (has(self.match) && self.match == "math")',
            "message": "a majority scorer needs 'extract' unless match is math",
        }
    ],
}

# Keywords copied as they are (after their values are translated).
_PASS_KEYS = {
    "description",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "maxProperties",
    "minProperties",
    "multipleOf",
    "enum",
}
# Keywords handled by shape (object, array, scalar) after the others.
_STRUCTURE_KEYS = {"type", "properties", "items", "additionalProperties", "required"}
# Annotations with no place in a CRD schema.
_DROP_KEYS = {"title", "examples", "deprecated", "readOnly", "writeOnly", "$comment", "discriminator"}
# Formats the API server knows; others would be ignored at best, so they are dropped.
_K8S_FORMATS = {
    "bsonobjectid", "uri", "email", "hostname", "ipv4", "ipv6", "cidr", "mac", "uuid", "uuid3", "uuid4",
    "uuid5", "isbn", "isbn10", "isbn13", "creditcard", "ssn", "hexcolor", "rgbcolor", "byte", "password",
    "date", "duration", "datetime", "date-time", "int32", "int64", "float", "double",
}  # fmt: skip


class CRDRenderError(ValueError):
    """The models use a construct the CRD schema cannot express."""


# --------------------------------------------------------------------------------------------- schema


class Converter:
    """Turns pydantic's JSON Schema (Draft 2020-12, with `$defs`) into a structural CRD schema."""

    def __init__(self, defs: dict[str, Schema]) -> None:
        self.defs = defs

    def resolve(self, node: Schema, stack: tuple[str, ...] = ()) -> Schema:
        """Inline a `$ref` (siblings such as a field's description win over the model's own)."""
        if "$ref" not in node:
            return node
        ref = node["$ref"]
        name = ref.removeprefix("#/$defs/")
        if name in stack:
            raise CRDRenderError(f"recursive model {name}: a structural schema cannot express it")
        target = self.resolve(self.defs[name], (*stack, name))
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return merged

    def convert(self, node: Schema, path: str, stack: tuple[str, ...] = ()) -> Schema:
        if "$ref" in node:
            name = node["$ref"].removeprefix("#/$defs/")
            return self.convert(self.resolve(node, stack), path, (*stack, name))
        if "allOf" in node:  # older pydantic wraps a described $ref in allOf
            parts = node["allOf"]
            if len(parts) != 1:
                raise CRDRenderError(f"{path}: allOf with {len(parts)} parts")
            rest = {k: v for k, v in node.items() if k != "allOf"}
            return self.convert({**self.resolve(parts[0]), **rest}, path, stack)
        for union_key in ("anyOf", "oneOf"):
            if union_key in node:
                return self._union(node, union_key, path, stack)
        if "not" in node or "prefixItems" in node or "patternProperties" in node or "if" in node:
            raise CRDRenderError(f"{path}: unsupported JSON Schema construct in {sorted(node)}")
        return self._plain(node, path, stack)

    def _plain(self, node: Schema, path: str, stack: tuple[str, ...]) -> Schema:
        out: Schema = {}
        kind = node.get("type")
        if isinstance(kind, list):
            raise CRDRenderError(f"{path}: a list of types {kind}")
        for key, value in node.items():
            if key in _DROP_KEYS or key in _STRUCTURE_KEYS:
                continue
            if key in _PASS_KEYS:
                out[key] = value
            elif key == "const":
                out["enum"] = [value]
            elif key == "default":
                if value is not None:
                    out["default"] = value
            elif key in ("minimum", "maximum"):
                out[key] = value
            elif key in ("exclusiveMinimum", "exclusiveMaximum"):
                # Draft 2020-12 numbers become OpenAPI 3.0's boolean flag beside the bound.
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                out[bound] = value
                out[key] = True
            elif key == "format":
                if value in _K8S_FORMATS:
                    out["format"] = value
            elif key == "uniqueItems":
                # uniqueItems is forbidden in CRDs (quadratic); a set list type says the same.
                if value:
                    out["x-kubernetes-list-type"] = "set"
            else:
                raise CRDRenderError(f"{path}: unsupported keyword {key!r}")
        if kind == "object" or "properties" in node:
            self._object(node, out, path, stack)
        elif kind == "array":
            out["type"] = "array"
            items = node.get("items")
            if not isinstance(items, dict):
                raise CRDRenderError(f"{path}: an array needs one items schema")
            out["items"] = self._value(items, f"{path}[]", stack)
        elif kind in ("string", "integer", "number", "boolean"):
            out["type"] = kind
        elif kind is None and not node.get("properties"):
            # `Any`: any JSON value, kept as it is.
            out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            raise CRDRenderError(f"{path}: unsupported type {kind!r}")
        return out

    def _object(self, node: Schema, out: Schema, path: str, stack: tuple[str, ...]) -> None:
        out["type"] = "object"
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props:
            out["properties"] = {
                name: self.convert(sub, f"{path}.{name}", stack) for name, sub in sorted(props.items())
            }
            required = sorted(node.get("required", []))
            if required:
                out["required"] = required
            # `additionalProperties: false` is implied: the API server prunes (or, with strict field
            # validation, rejects) unknown fields; an explicit false is not allowed beside properties.
            if extra not in (None, False):
                raise CRDRenderError(f"{path}: properties together with additionalProperties")
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = self._value(extra, f"{path}.*", stack)
        else:
            # dict[str, Any] and other free-form objects (Kubernetes objects, function arguments).
            out["x-kubernetes-preserve-unknown-fields"] = True

    def _value(self, node: Schema, path: str, stack: tuple[str, ...]) -> Schema:
        """A map value or list item: an explicit null cannot be left out there, so it must be allowed."""
        variants = node.get("anyOf") or node.get("oneOf")
        if variants and any(v.get("type") == "null" for v in variants):
            rest = [v for v in variants if v.get("type") != "null"]
            inner = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
            out = self.convert(
                {**rest[0], **inner} if len(rest) == 1 else {**inner, "anyOf": rest}, path, stack
            )
            out["nullable"] = True
            return out
        return self.convert(node, path, stack)

    def _union(self, node: Schema, key: str, path: str, stack: tuple[str, ...]) -> Schema:
        outer = {k: v for k, v in node.items() if k != key}
        variants = [v for v in node[key] if v.get("type") != "null"]
        if len(variants) == 1:
            # Optional[X]: X, simply not required (and a null default means "no default").
            return self.convert({**self.resolve(variants[0]), **outer}, path, stack)
        resolved = [self.convert(v, path, stack) for v in variants]
        if all(v.get("type") == "object" and "properties" in v for v in resolved):
            merged = _merge_scorer_union(resolved, path)
            if "description" in outer:
                merged["description"] = outer["description"]
            return merged
        # A scalar-or-list union such as `list[str] | str`: no structural type covers both, so the value is
        # kept as it is and pydantic validates it.
        out: Schema = {"x-kubernetes-preserve-unknown-fields": True}
        shapes = " or ".join(_shape(v) for v in resolved)
        text = outer.get("description", "")
        out["description"] = f"{text} One of: {shapes}.".strip()
        if outer.get("default") is not None:
            out["default"] = outer["default"]
        return out


def _shape(schema: Schema) -> str:
    kind: str = schema.get("type", "any value")
    if kind == "array":
        return f"a list of {_shape(schema['items'])}s"
    names = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean"}
    return names.get(kind, kind)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _merge_scorer_union(variants: list[Schema], path: str) -> Schema:
    """One object schema for the scorer union (discriminated by `type`), with CEL rules for each family.

    A variant whose `type` is a single value is a built-in family; at most one variant may leave `type`
    open (a pattern: the import path of user code).
    """
    tags: list[str | None] = []
    for variant in variants:
        disc = variant.get("properties", {}).get(_DISCRIMINATOR)
        if disc is None or disc.get("type") != "string":
            raise CRDRenderError(
                f"{path}: a union of objects without a string {_DISCRIMINATOR!r} discriminator"
            )
        enum = disc.get("enum")
        tags.append(enum[0] if enum and len(enum) == 1 else None)
    if tags.count(None) > 1:
        raise CRDRenderError(f"{path}: more than one union member with an open {_DISCRIMINATOR!r}")
    builtin = [t for t in tags if t is not None]
    open_variant = next((v for v, t in zip(variants, tags, strict=True) if t is None), None)

    def label(tag: str | None) -> str:
        return tag if tag is not None else "an import path"

    names = sorted({name for v in variants for name in v["properties"]})
    properties: Schema = {}
    for name in names:
        holders = [
            (t, v["properties"][name]) for t, v in zip(tags, variants, strict=True) if name in v["properties"]
        ]
        if name == _DISCRIMINATOR:
            text = f"Scorer family: {', '.join(builtin)}."
            if open_variant is not None:
                open_text = open_variant["properties"][name].get("description", "")
                text += f" Any other value is the {open_text[:1].lower()}{open_text[1:]}"
            properties[name] = {"type": "string", "description": text, "minLength": 1}
            continue
        properties[name] = _merge_property(name, holders, everywhere=len(holders) == len(variants))

    required = sorted(set.intersection(*(set(v.get("required", [])) for v in variants)))
    rules: list[Schema] = []
    for tag, variant in zip(tags, variants, strict=True):
        if tag is None:
            continue
        for name in sorted(set(variant.get("required", [])) - set(required)):
            rules.append(
                {
                    "rule": f"self.{_DISCRIMINATOR} != {cel_string(tag)} || has(self.{cel_field(name)})",
                    "message": f"a {tag} scorer needs '{name}'",
                }
            )
        rules.extend(copy.deepcopy(_EXTRA_VARIANT_RULES.get(tag, [])))

    lines = ["One scorer; `type` picks the family, and with it the fields that apply:"]
    for tag, variant in zip(tags, variants, strict=True):
        lines.append(f"- {label(tag)}: {_flat(variant.get('description', ''))}")
    out: Schema = {
        "type": "object",
        "description": "\n".join(lines),
        "properties": properties,
        "required": required,
    }
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def _merge_property(name: str, holders: list[tuple[str | None, Schema]], everywhere: bool) -> Schema:
    schemas = [s for _, s in holders]
    first = schemas[0]
    if everywhere and all(s == first for s in schemas):
        return copy.deepcopy(first)
    # Differing or family-specific: keep what every holder agrees on, minus defaults (see module docstring).
    shapes = {
        json.dumps({k: v for k, v in s.items() if k == "type" or k.startswith("x-kubernetes")})
        for s in schemas
    }
    if len(shapes) != 1:
        raise CRDRenderError(f"scorer field {name!r} has different types in different families")
    out: Schema = {}
    for key, value in first.items():
        if key not in ("description", "default") and all(s.get(key) == value for s in schemas[1:]):
            out[key] = copy.deepcopy(value)
    # One sentence per distinct meaning, naming the families it applies to.
    texts: dict[str, list[str]] = {}
    for tag, schema in holders:
        text = schema.get("description", "").rstrip(".")
        if "default" in schema:
            text += f" (default: {json.dumps(schema['default'])})"
        texts.setdefault(text, []).append(f"type {tag}" if tag is not None else "an import-path type")
    out["description"] = " ".join(f"For {' or '.join(who)}: {text}." for text, who in texts.items())
    return out


# --------------------------------------------------------------------------------------------- CEL spelling


# Property names that are CEL reserved words are reached as `__name__` in rules.
_CEL_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
    "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
}  # fmt: skip


_CEL_ESCAPES = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}


def cel_field(name: str) -> str:
    """A property name as CEL rules must spell it (the API server's escaping, k8s.io/apiserver's cel.Escape).

    >>> [cel_field(n) for n in ("function", "max_tokens", "a__b", "app.kubernetes.io/name", "x-y")]
    ['__function__', 'max_tokens', 'a__underscores__b', 'app__dot__kubernetes__dot__io__slash__name', 'x__dash__y']
    """
    if name in _CEL_RESERVED:
        return f"__{name}__"
    return re.sub(r"__|[./-]", lambda m: _CEL_ESCAPES[m.group()], name)


def cel_path(dotted: str) -> str:
    return ".".join(cel_field(part) for part in dotted.split("."))


def cel_string(text: str) -> str:
    """A CEL string literal: JSON's escapes (\\", \\\\, \\n, \\uXXXX) are all CEL escapes too."""
    return json.dumps(text)
