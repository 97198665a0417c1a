"""Render the sweep-spec and server-config models as a Markdown reference.

``boinc-pipeline schema --markdown`` prints it; ``docs/spec-reference.md`` is
its output, and a test keeps the two equal, so the reference cannot drift from
the models.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from pydantic import BaseModel

__all__ = ["markdown_reference"]


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return (
            f"[{schema['$ref'].rsplit('/', 1)[-1]}](#{schema['$ref'].rsplit('/', 1)[-1].lower()})"
        )
    if "anyOf" in schema:
        return " or ".join(_type_of(s) for s in schema["anyOf"])
    if "oneOf" in schema:
        return " or ".join(_type_of(s) for s in schema["oneOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema and schema["additionalProperties"]:
        extra = schema["additionalProperties"]
        return f"map of {_type_of(extra) if isinstance(extra, dict) else 'any'}"
    limits = [
        f"{sym} {schema[key]}"
        for key, sym in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("minLength", "length >="),
            ("maxLength", "length <="),
        )
        if key in schema
    ]
    pattern = f" matching `{schema['pattern']}`" if "pattern" in schema else ""
    return f"{kind}{' (' + ', '.join(limits) + ')' if limits else ''}{pattern}"


def _default(model: type[BaseModel], field: str) -> str:
    info = model.model_fields.get(field)
    if info is None or info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{json.dumps(value, default=lambda v: v.model_dump(mode='json'))}`"


def _model_section(
    name: str, schema: dict[str, Any], doc: str, model: type[BaseModel]
) -> list[str]:
    lines = [f"### {name}", ""]
    if doc:
        lines += [doc, ""]
    props = schema.get("properties", {})
    if not props:
        return lines
    lines += ["| field | type | default |", "|---|---|---|"]
    for field, sub in props.items():
        lines.append(f"| `{field}` | {_type_of(sub)} | {_default(model, field)} |")
    lines.append("")
    return lines


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}

    def visit(model: type[BaseModel]) -> None:
        if model.__name__ in found:
            return
        found[model.__name__] = model
        for info in model.model_fields.values():
            for arg in _flatten(info.annotation):
                if inspect.isclass(arg) and issubclass(arg, BaseModel):
                    visit(arg)

    visit(root)
    return found


def _flatten(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    out: list[Any] = []
    for a in args:
        out += _flatten(a)
    return out


def markdown_reference() -> str:
    """Return the Markdown reference of the sweep spec and the server config."""
    from pipeline.config import ServerConfig
    from pipeline.spec import SweepSpec

    lines = [
        "# Spec and server-config reference",
        "",
        "Generated from the models by `boinc-pipeline schema --markdown`; do not edit by hand.",
        "A spec or server config with a field not listed here is refused.",
        "",
    ]
    for title, root in (("Sweep spec", SweepSpec), ("Server config", ServerConfig)):
        lines += [f"## {title}", ""]
        defs = root.model_json_schema().get("$defs", {})
        models = _models(root)
        for name, model in models.items():
            schema = root.model_json_schema() if model is root else defs.get(name, {})
            doc = inspect.cleandoc(model.__doc__ or "")
            lines += _model_section(name, schema, doc, model)
    return "\n".join(lines).rstrip() + "\n"
