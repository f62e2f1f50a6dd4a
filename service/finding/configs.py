"""Validating a finder's hyperparameters from JSON: unknown or ill-typed fields are named (422)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pydantic import TypeAdapter, ValidationError

from service.errors import APIError


def _unknown_fields(config_type: type, params: dict[str, Any], prefix: str = "") -> str | None:
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    for key, value in params.items():
        if key not in fields:
            return f"{prefix}{key}"
        nested = fields[key].default_factory
        if isinstance(value, dict) and nested is not dataclasses.MISSING and dataclasses.is_dataclass(nested):
            found = _unknown_fields(nested, value, f"{prefix}{key}.")
            if found:
                return found
    return None


def _non_finite(value: Any, where: str = "") -> str | None:
    """The path of the first NaN or infinite number in `value` (JSON as Python parses it), if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "hyperparameters"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def build_config(config_type: type, params: dict[str, Any]) -> Any:
    """A validated config dataclass, or a 422 naming the first bad field."""
    unknown = _unknown_fields(config_type, params)
    if unknown:
        names = ", ".join(f.name for f in dataclasses.fields(config_type))
        raise APIError(422, "invalid_hyperparameters", f"unknown hyperparameter {unknown!r}; known: {names}")
    # Python's JSON parser reads NaN and Infinity, and pydantic passes them where a float has no bounds (a
    # learning rate): SQLite would store them and train a network to nothing, PostgreSQL refuse the row.
    non_finite = _non_finite(params)
    if non_finite:
        raise APIError(422, "invalid_hyperparameters", f"{non_finite}: must be a finite number")
    try:
        return TypeAdapter(config_type).validate_python(params)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "hyperparameters"
        raise APIError(422, "invalid_hyperparameters", f"{where}: {error['msg']}") from None
    except (ValueError, TypeError) as exc:
        raise APIError(422, "invalid_hyperparameters", str(exc)) from None


def describe(config_type: type) -> dict[str, Any]:
    """Defaults and help text of every field (nested configs included), for clients and the CLI."""
    out = {}
    for f in dataclasses.fields(config_type):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            out[f.name] = describe(f.default_factory)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[f.name] = {"default": default, "help": f.metadata.get("help", "")}
    return out
