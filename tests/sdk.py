"""Validation of realtime events against the official `openai` SDK's pydantic models.

The SDK models accept unknown fields silently, so a typo in a field name would pass a plain
validation. `validate_*` therefore also walks the parsed model and fails on any field the
SDK does not declare, except the few the service is documented to send beyond the SDK:
`phase` on assistant messages (gpt-realtime-2) and `id`/`object` on session objects.
"""

from __future__ import annotations

import typing
from functools import cache
from typing import Any

from openai.types.beta.realtime import RealtimeClientEvent as BetaClientEvent
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter

ALLOWED_EXTRA = {"phase", "id", "object"}


@cache
def _by_type(union: Any) -> dict[str, type[BaseModel]]:
    members = typing.get_args(typing.get_args(union)[0])
    table = {}
    for model in members:
        literal = model.model_fields["type"].annotation
        for name in typing.get_args(literal):
            table[name] = model
    return table


def _extras(obj: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(obj, BaseModel):
        for key in obj.model_extra or {}:
            if key not in ALLOWED_EXTRA:
                found.append(f"{path}.{key}".lstrip("."))
        for name in type(obj).model_fields:
            found += _extras(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, list | tuple):
        for i, x in enumerate(obj):
            found += _extras(x, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            found += _extras(v, f"{path}.{k}")
    return found


def _validate(union: Any, event: dict[str, Any]) -> BaseModel:
    model = _by_type(union).get(event.get("type", ""))
    assert model is not None, f"the SDK knows no event type {event.get('type')!r}"
    parsed = TypeAdapter(model).validate_python(event)
    extras = _extras(parsed)
    assert not extras, f"{event['type']}: fields the SDK does not declare: {extras}"
    return parsed


def validate_client_event(event: dict[str, Any], beta: bool = False) -> BaseModel:
    """`beta`: the deprecated preview API's event models (Azure api-version endpoints)."""
    return _validate(BetaClientEvent if beta else RealtimeClientEvent, event)


def validate_server_event(event: dict[str, Any], beta: bool = False) -> BaseModel:
    return _validate(BetaServerEvent if beta else RealtimeServerEvent, event)
