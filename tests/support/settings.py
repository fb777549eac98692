"""The configuration file's keys, as the tests that compare them with the chart and docs need."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from sidecar.config.settings import Settings


def configuration_keys() -> list[str]:
    """Every key of the configuration file, dotted, down to the leaves users set."""
    keys: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            model_type = _model_of(info.annotation)
            if model_type is not None:
                walk(model_type, f"{prefix}{name}.")
            else:
                keys.append(f"{prefix}{name}")

    walk(Settings, "")
    return keys


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (``Section`` or ``Section | None``), or None for a leaf."""
    union = get_origin(annotation) in (Union, types.UnionType)
    for candidate in (annotation, *(get_args(annotation) if union else ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None
