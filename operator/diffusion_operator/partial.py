"""Partial models: every field optional and unset by default, constraints and docs kept.

A job spec states only what the user wrote; presets and built-in defaults fill the rest later
(explicit > preset > default). Deriving the partial form from the trainer's own models keeps one
source of truth for names, ranges and descriptions.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, Field, create_model

_cache: dict[type[BaseModel], type[BaseModel]] = {}


def make_partial(model: type[BaseModel]) -> type[BaseModel]:
    """Return `Partial<Model>`: same fields, all optional with no default value."""
    if model in _cache:
        return _cache[model]
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = partial_annotation(info.annotation)
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[name] = (
            annotation | None,
            Field(
                default=None,
                description=info.description or _doc_of(info.annotation),
                json_schema_extra=info.json_schema_extra,
            ),
        )
    partial: type[BaseModel] = create_model(
        f"Partial{model.__name__}", __base__=model.__mro__[1], __doc__=model.__doc__, **fields
    )
    _cache[model] = partial
    return partial


def partial_annotation(annotation: Any) -> Any:
    """Swap nested models for their partial form inside unions; leave other types alone."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return make_partial(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = tuple(partial_annotation(arg) for arg in get_args(annotation))
        return Union[members]  # noqa: UP007 - built from a runtime tuple
    return annotation


def _doc_of(annotation: Any) -> str | None:
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__doc__:
            return arg.__doc__.strip().splitlines()[0]
    return None
