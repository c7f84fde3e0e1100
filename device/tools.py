"""Functions the model may call, run on the device: small, local, quick, and safe to repeat.

Each tool is a `core.realtime.Tool` declaration sent in `session.update` plus a function
that turns the model's JSON arguments into a JSON result, with the device's parts it may
touch (`Device`). Arguments are checked; a request that cannot be done (a negative
duration, a timer that does not exist) is answered with an `error` sentence the model can
say, and a failing tool returns an error object rather than breaking the conversation.
Nothing here waits: a timer is saved by a thread of its own.

`assistant.tools` names groups: `time`, `timers` (timers and alarms), `volume`,
`end_conversation`.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .core.realtime import Tool
from .core.timers import TimerError, spoken_duration

if TYPE_CHECKING:
    from .timekeeper import Timekeeper

log = logging.getLogger(__name__)


@dataclass
class Device:
    """What the tools may touch."""

    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now().astimezone()
    timekeeper: Timekeeper | None = None
    set_volume: Callable[[int], int] | None = None
    """Sets the volume in percent (100: as sent), returns what it is now."""
    end_conversation: Callable[[], None] | None = None
    """Closes the session once the reply has been heard, instead of the follow-up window."""


Run = Callable[[dict[str, Any], Device], dict[str, Any]]


def _schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


NAME = {"type": "string", "description": "What the user calls it (tea, pasta…); optional."}


def current_time(args: dict[str, Any], device: Device) -> dict[str, Any]:
    t = device.now()
    return {
        "local_time": t.isoformat(timespec="seconds"),
        "weekday": t.strftime("%A"),
        "timezone": t.tzname() or "",
    }


def _keeper(device: Device) -> Timekeeper:
    if device.timekeeper is None:
        raise TimerError("timers are not available on this device")
    return device.timekeeper


def set_timer(args: dict[str, Any], device: Device) -> dict[str, Any]:
    t = _keeper(device).set_timer(args.get("seconds"), args.get("name"))
    return {"ok": True, "name": t.name, "rings_in": spoken_duration(t.seconds)}


def cancel_timer(args: dict[str, Any], device: Device) -> dict[str, Any]:
    t = _keeper(device).cancel(args.get("name"), "timer")
    return {"ok": True, "cancelled": t.name}


def list_timers(args: dict[str, Any], device: Device) -> dict[str, Any]:
    running = _keeper(device).listing()
    return {"timers": running} if running else {"timers": [], "note": "no timers or alarms"}


def set_alarm(args: dict[str, Any], device: Device) -> dict[str, Any]:
    keeper = _keeper(device)
    t = keeper.set_alarm(args.get("time"), args.get("name"))
    today = keeper.now_local().date()
    day = "today" if datetime.date.fromtimestamp(t.ends_at) == today else "tomorrow"
    return {"ok": True, "name": t.name, "rings_at": t.at, "day": day}


def cancel_alarm(args: dict[str, Any], device: Device) -> dict[str, Any]:
    t = _keeper(device).cancel(args.get("name"), "alarm")
    return {"ok": True, "cancelled": t.name}


def set_volume(args: dict[str, Any], device: Device) -> dict[str, Any]:
    percent = args.get("percent")
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise TimerError("percent must be a number from 0 to 100")
    if not 0 <= percent <= 100:
        raise TimerError("percent must be from 0 to 100")
    if device.set_volume is None:
        raise TimerError("the volume cannot be set on this device")
    return {"ok": True, "volume_percent": device.set_volume(round(percent))}


def end_conversation(args: dict[str, Any], device: Device) -> dict[str, Any]:
    if device.end_conversation is not None:
        device.end_conversation()
    return {"ok": True, "note": "say a short goodbye if anything; the device stops listening"}


@dataclass(frozen=True)
class LocalTool:
    declaration: Tool
    run: Run


TIME = LocalTool(
    Tool(
        "get_current_time",
        "The current local date, time and weekday where the user is. Use it for any "
        "question about the time, the date or the day of the week.",
    ),
    current_time,
)
TIMERS = [
    LocalTool(
        Tool(
            "set_timer",
            "Start a countdown timer on the device; it rings when it ends, even offline. "
            "Convert what the user says to seconds (five minutes: 300).",
            _schema(
                {
                    "seconds": {"type": "integer", "description": "1 to 86400"},
                    "name": NAME,
                },
                ("seconds",),
            ),
        ),
        set_timer,
    ),
    LocalTool(
        Tool(
            "cancel_timer",
            "Cancel a timer. Without a name, the only one; if there are several the result "
            "says which exist, so ask the user which one.",
            _schema({"name": NAME}),
        ),
        cancel_timer,
    ),
    LocalTool(
        Tool(
            "list_timers",
            "The timers and alarms running, with the time left on each. Use it for 'how "
            "long is left'.",
        ),
        list_timers,
    ),
    LocalTool(
        Tool(
            "set_alarm",
            "Set an alarm for the next time the clock shows this local time.",
            _schema(
                {
                    "time": {"type": "string", "description": "HH:MM, 24-hour, local time"},
                    "name": NAME,
                },
                ("time",),
            ),
        ),
        set_alarm,
    ),
    LocalTool(
        Tool(
            "cancel_alarm",
            "Cancel an alarm. Without a name, the only one.",
            _schema({"name": NAME}),
        ),
        cancel_alarm,
    ),
]
VOLUME = LocalTool(
    Tool(
        "set_volume",
        "Set the device's speaker volume, in percent (100 loudest, 0 silent).",
        _schema({"percent": {"type": "integer", "description": "0 to 100"}}, ("percent",)),
    ),
    set_volume,
)
END = LocalTool(
    Tool(
        "end_conversation",
        "The user is done (thanks, that's all, goodbye, never mind): stop listening after "
        "this reply instead of waiting for more.",
    ),
    end_conversation,
)
GROUPS: dict[str, list[LocalTool]] = {
    "time": [TIME],
    "timers": TIMERS,
    "volume": [VOLUME],
    "end_conversation": [END],
}
HINTS = {
    "timers": "Use the device's timer and alarm tools for timers and alarms.",
    "volume": "Use set_volume when asked to be louder or quieter.",
    "end_conversation": "When the user is done, call end_conversation.",
}
"""What the instructions say of each group, so that the model uses them."""


def instructions_for(names: list[str]) -> str:
    return " ".join(HINTS[n] for n in names if n in HINTS)


class Toolbox:
    def __init__(self, names: list[str], device: Device | None = None) -> None:
        self._by_function = {t.declaration.name: t for n in names for t in GROUPS[n]}
        self.device = device or Device()
        self.hints = instructions_for(names)

    @property
    def declarations(self) -> tuple[Tool, ...]:
        return tuple(t.declaration for t in self._by_function.values())

    def call(self, name: str, arguments: str) -> str:
        """The JSON string to send back as the call's output."""
        tool = self._by_function.get(name)
        if tool is None:
            return json.dumps({"error": f"no tool named {name[:60]!r} on this device"})
        try:
            try:
                args = json.loads(arguments or "{}")
            except ValueError:
                raise TimerError("the arguments are not JSON") from None
            if not isinstance(args, dict):
                raise TimerError("arguments must be a JSON object")
            return json.dumps(tool.run(args, self.device))
        except TimerError as e:
            log.info("tool %s: %s", name, e)
            return json.dumps({"error": str(e)})
        except Exception as e:
            log.warning("tool %s failed: %s", name, e)
            return json.dumps({"error": f"{type(e).__name__}: {e}"})
