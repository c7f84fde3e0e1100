"""Functions the model may call, run on the device: small, local, quick, and safe to repeat.

Each tool is a `core.realtime.Tool` declaration sent in `session.update` plus a function
that turns the model's JSON arguments into a JSON result. A failing tool returns an error
object to the model rather than breaking the conversation.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .core.realtime import Tool

log = logging.getLogger(__name__)


def current_time(args: dict[str, Any], now: Callable[[], datetime.datetime]) -> dict[str, Any]:
    t = now()
    return {
        "local_time": t.isoformat(timespec="seconds"),
        "weekday": t.strftime("%A"),
        "timezone": t.tzname() or "",
    }


@dataclass(frozen=True)
class LocalTool:
    declaration: Tool
    run: Callable[[dict[str, Any], Callable[[], datetime.datetime]], dict[str, Any]]


TOOLS: dict[str, LocalTool] = {
    "time": LocalTool(
        Tool(
            "get_current_time",
            "The current local date, time and weekday where the user is. Use it for any "
            "question about the time, the date or the day of the week.",
        ),
        current_time,
    ),
}


class Toolbox:
    def __init__(
        self,
        names: list[str],
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now().astimezone(),
    ) -> None:
        self._by_function = {TOOLS[n].declaration.name: TOOLS[n] for n in names}
        self._now = now

    @property
    def declarations(self) -> tuple[Tool, ...]:
        return tuple(t.declaration for t in self._by_function.values())

    def call(self, name: str, arguments: str) -> str:
        """The JSON string to send back as the call's output."""
        tool = self._by_function.get(name)
        if tool is None:
            return json.dumps({"error": f"no tool named {name!r} on this device"})
        try:
            args = json.loads(arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
            return json.dumps(tool.run(args, self._now))
        except Exception as e:
            log.warning("tool %s failed: %s", name, e)
            return json.dumps({"error": f"{type(e).__name__}: {e}"})
