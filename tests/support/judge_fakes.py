"""Replies of a fake judge: whatever JSON schema a chat request carries (in any structured
mode), the smallest instance valid against it, so DeepEval metrics run end to end against the
fake OpenAI server and every reply proves the schema travelled."""

from __future__ import annotations

import json
from typing import Any

from tests.support.fake_openai import Behaviour, ok


def sent_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a chat request carries, in whichever structured mode it was sent."""
    if "json_schema" in body:
        return body["json_schema"]
    if "structured_outputs" in body:
        return body["structured_outputs"]["json"]
    if "guided_json" in body:
        return body["guided_json"]
    if "response_format" in body:
        return body["response_format"]["json_schema"]["schema"]
    return None


def build_instance(schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """The smallest value valid against `schema`: one item per array, the first enum value, a
    score of 7 (0.7 once GEval divides by 10)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return build_instance(root["$defs"][name], root)
    if "anyOf" in schema:
        variants = [v for v in schema["anyOf"] if v.get("type") != "null"]
        return build_instance(variants[0], root)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: build_instance(v, root) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [build_instance(schema["items"], root)]
    return {"string": "fine", "number": 7, "integer": 7, "boolean": True}.get(kind)


def answer_schema(body: dict[str, Any]) -> Behaviour:
    schema = sent_schema(body)
    if schema is None:
        return ok("plain text")
    return ok(json.dumps(build_instance(schema, schema)), usage=(50, 10))
