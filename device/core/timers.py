"""Timers and alarms: plain values on the wall clock, so that they survive a restart.

A timer ends a number of seconds after it was set; an alarm at the next occurrence of a
local time of day. Both are kept by name (the user's word for it, or one made from the
duration or the time) in `Timers`, which the device saves in its state directory after each
change. Whatever the model or the command line asks is checked here, and refused with a
sentence the model can say.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

MAX_SECONDS = 24 * 3600
"""The longest timer: a day (an alarm is for longer)."""
MAX_TIMERS = 20
MAX_NAME = 40
MISSED_S = 300.0
"""A timer that ended while the device was off rings at start if it ended less than this ago;
an older one is only logged as missed."""

Kind = Literal["timer", "alarm"]


class TimerError(ValueError):
    """A request that cannot be done; the message is for the user (through the model)."""


@dataclass(frozen=True)
class Timer:
    name: str
    kind: Kind
    ends_at: float
    """Wall-clock time (seconds since the epoch) it rings at."""
    seconds: int = 0
    """How long the timer was set for (0 for an alarm)."""
    at: str = ""
    """An alarm's local time, HH:MM."""

    def remaining(self, now: float) -> float:
        return max(0.0, self.ends_at - now)

    def spoken(self, now: float) -> dict[str, Any]:
        """What the model is told about it, in words it can say as they are."""
        if self.kind == "alarm":
            return {"name": self.name, "kind": "alarm", "rings_at": self.at}
        return {
            "name": self.name,
            "kind": "timer",
            "time_left": spoken_duration(math.ceil(self.remaining(now))),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "ends_at": self.ends_at,
            "seconds": self.seconds,
            "at": self.at,
        }

    @staticmethod
    def from_json(data: Any) -> Timer | None:
        """A saved timer, or None for anything that is not one (a hand-edited file)."""
        try:
            kind = data["kind"]
            name = str(data["name"])[:MAX_NAME]
            ends_at = float(data["ends_at"])
            if kind not in ("timer", "alarm") or not name or not math.isfinite(ends_at):
                return None
            seconds = int(data.get("seconds", 0))
            return Timer(name, kind, ends_at, seconds, str(data.get("at", ""))[:5])
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def spoken_duration(seconds: int) -> str:
    """4 minutes 10 seconds; 1 hour 5 minutes; 30 seconds."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "hour"), (minutes, "minute")] + ([] if hours else [(secs, "second")])
    words = [f"{n} {unit}{'' if n == 1 else 's'}" for n, unit in parts if n]
    return " ".join(words) or "0 seconds"


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def parse_duration(text: str) -> int:
    """`5m`, `90s`, `90`, `1h30m`, `1m30s` → seconds (the command line's way of saying it)."""
    t = text.strip().lower().replace(" ", "")
    m = _DURATION.match(t)
    if not t or m is None or not any(m.groups()):
        raise TimerError(f"'{text}' is not a duration: say 90s, 5m or 1h30m")
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def clean_name(name: Any) -> str:
    if name is None:
        return ""
    if not isinstance(name, str):
        raise TimerError("the name must be text")
    words = " ".join(name.split())  # no newlines or control whitespace in a name
    clean = "".join(c for c in words if c.isprintable())
    if len(clean) > MAX_NAME:
        raise TimerError(f"that name is too long (at most {MAX_NAME} characters)")
    return clean


def next_occurrence(at: str, now: datetime.datetime) -> datetime.datetime:
    """The next `at` ("HH:MM", local time of `now`'s zone) strictly after `now`."""
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", at.strip()) if isinstance(at, str) else None
    if m is None or int(m[1]) > 23 or int(m[2]) > 59:
        raise TimerError(f"'{at}' is not a time of day: give it as HH:MM, 24-hour")
    day = now.date()
    for _ in range(3):  # today, or tomorrow (a day after that if a clock change ate it)
        naive = datetime.datetime.combine(day, datetime.time(int(m[1]), int(m[2])))
        when = naive.astimezone() if now.tzinfo is None else naive.replace(tzinfo=now.tzinfo)
        if now.tzinfo is not None and when.tzinfo is not None:
            when = when.astimezone(now.tzinfo)
        if when > now:
            return when
        day += datetime.timedelta(days=1)
    raise TimerError(f"cannot find the next {at}")


def ring_notice(names: tuple[str, ...] | list[str]) -> str:
    """What the device says when these ring: "Your tea timer is done." """
    said = []
    for name in names:
        noun = "" if name.endswith(("timer", "alarm")) else " timer"
        said.append(f"Your {name}{noun} is done.")
    return " ".join(said)


class Timers:
    """The running timers and alarms, by name (case does not matter)."""

    def __init__(self, items: Iterable[Timer] = ()) -> None:
        self._items: dict[str, Timer] = {}
        for t in items:
            if len(self._items) < MAX_TIMERS:
                self._items[t.name.casefold()] = t

    def __len__(self) -> int:
        return len(self._items)

    def running(self) -> list[Timer]:
        return sorted(self._items.values(), key=lambda t: t.ends_at)

    def next_end(self) -> float | None:
        return min((t.ends_at for t in self._items.values()), default=None)

    def _free_name(self, wanted: str, default: str) -> str:
        name = wanted or default
        if wanted and name.casefold() in self._items:
            return name  # the same name again: that one is replaced
        n, candidate = 2, name
        while candidate.casefold() in self._items:
            candidate = f"{name} {n}"
            n += 1
        return candidate

    def _add(self, timer: Timer) -> Timer:
        key = timer.name.casefold()
        if key not in self._items and len(self._items) >= MAX_TIMERS:
            raise TimerError(f"there are already {MAX_TIMERS} timers and alarms: cancel one first")
        self._items[key] = timer
        return timer

    def set_timer(self, seconds: Any, name: Any, now: float) -> Timer:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TimerError("seconds must be a whole number")
        if not math.isfinite(seconds) or seconds != int(seconds):
            raise TimerError("seconds must be a whole number")
        seconds = int(seconds)
        if seconds < 1:
            raise TimerError("a timer must be at least one second long")
        if seconds > MAX_SECONDS:
            raise TimerError("a timer can be at most 24 hours long: set an alarm instead")
        label = clean_name(name)
        default = f"{spoken_duration(seconds).replace('minutes', 'minute')}"
        default = default.replace("hours", "hour").replace("seconds", "second")
        final = self._free_name(label, default)
        return self._add(Timer(final, "timer", now + seconds, seconds))

    def set_alarm(self, at: Any, name: Any, now: datetime.datetime) -> Timer:
        when = next_occurrence(at if isinstance(at, str) else "", now)
        hhmm = when.strftime("%H:%M")
        final = self._free_name(clean_name(name), f"{hhmm} alarm")
        return self._add(Timer(final, "alarm", when.timestamp(), 0, hhmm))

    def find(self, name: Any, kind: Kind | None) -> Timer:
        """The timer `name` names, or the only one of `kind` when no name is given."""
        label = clean_name(name)
        noun = kind or "timer or alarm"
        of_kind = [t for t in self.running() if kind is None or t.kind == kind]
        if label:
            t = self._items.get(label.casefold())
            if t is None or (kind is not None and t.kind != kind):
                known = ", ".join(t.name for t in of_kind) or "none"
                raise TimerError(f"there is no {noun} called {label} (there are: {known})")
            return t
        if not of_kind:
            raise TimerError(f"there is no {noun} running")
        if len(of_kind) > 1:
            names = ", ".join(t.name for t in of_kind)
            raise TimerError(f"which one? There are {len(of_kind)}: {names}")
        return of_kind[0]

    def cancel(self, name: Any, kind: Kind | None) -> Timer:
        t = self.find(name, kind)
        del self._items[t.name.casefold()]
        return t

    def due(self, now: float) -> list[Timer]:
        """Those that have ended by `now`, taken out (oldest first)."""
        ended = [t for t in self.running() if t.ends_at <= now]
        for t in ended:
            del self._items[t.name.casefold()]
        return ended

    def restored(self, now: float) -> tuple[list[Timer], list[Timer]]:
        """At start: the timers that ended while the device was off, taken out, as (to ring
        now, missed): one that ended less than MISSED_S ago still rings."""
        ended = self.due(now)
        return (
            [t for t in ended if now - t.ends_at < MISSED_S],
            [t for t in ended if now - t.ends_at >= MISSED_S],
        )

    def to_json(self) -> dict[str, Any]:
        return {"timers": [t.to_json() for t in self.running()]}

    @staticmethod
    def from_json(data: Any) -> Timers:
        items = data.get("timers", []) if isinstance(data, dict) else []
        timers = (Timer.from_json(d) for d in (items if isinstance(items, list) else []))
        return Timers(t for t in timers if t is not None)
