"""What the LEDs show: one table from state to pattern, patterns as plain data.

Preamble and answer differ in motion (pulsing vs steady), not only in colour, so they can be
told apart at a glance by everyone, colour-blind users included, and on a single-colour LED.
The listening pattern is shown only while the microphone's audio is being streamed.
Users can override any pattern in the configuration ([leds.patterns.<name>]).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .states import State


class Effect(enum.Enum):
    OFF = "off"
    SOLID = "solid"
    PULSE = "pulse"
    """Fades in and out over `period_s`."""
    BLINK = "blink"
    """On for half of `period_s`, off for the other half."""
    SPIN = "spin"
    """On a pixel ring, a light circling once per `period_s`; elsewhere a quick pulse."""


RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Pattern:
    name: str
    color: RGB
    effect: Effect
    period_s: float = 0.0
    """Length of one cycle; 0 for solid and off."""

    @property
    def hex(self) -> str:
        return "#" + "".join(f"{round(c * 255):02x}" for c in self.color)


OFF: RGB = (0.0, 0.0, 0.0)
BLUE: RGB = (0.0, 0.25, 1.0)
CYAN: RGB = (0.0, 0.8, 0.8)
VIOLET: RGB = (0.55, 0.0, 1.0)
GREEN: RGB = (0.0, 1.0, 0.2)
RED: RGB = (1.0, 0.0, 0.0)
AMBER: RGB = (1.0, 0.45, 0.0)
YELLOW: RGB = (1.0, 0.8, 0.0)
DIM_YELLOW: RGB = (0.12, 0.09, 0.0)
DIM_BLUE: RGB = (0.0, 0.04, 0.16)

PATTERNS: dict[str, Pattern] = {
    p.name: p
    for p in (
        Pattern("idle", OFF, Effect.OFF),
        Pattern("connecting", BLUE, Effect.SPIN, 0.8),
        Pattern("listening", BLUE, Effect.SOLID),
        Pattern("thinking", VIOLET, Effect.PULSE, 1.2),
        Pattern("preamble", CYAN, Effect.PULSE, 0.6),
        Pattern("answering", GREEN, Effect.SOLID),
        Pattern("follow_up", BLUE, Effect.PULSE, 2.0),
        Pattern("muted", RED, Effect.SOLID),
        Pattern("error", AMBER, Effect.BLINK, 0.4),
        Pattern("offline", AMBER, Effect.PULSE, 3.0),
        Pattern("ringing", YELLOW, Effect.BLINK, 1.0),
        Pattern("timer", DIM_YELLOW, Effect.SOLID),
        Pattern("elsewhere", DIM_BLUE, Effect.SOLID),
        Pattern("preamble_live", CYAN, Effect.BLINK, 0.6),
        Pattern("answering_live", GREEN, Effect.PULSE, 2.4),
    )
}
"""Keyed by name: one per state, `offline` (idle, but the cloud is unreachable) and `timer`
(idle, a timer running; shown if `timers.idle_led` says so), and `elsewhere` (for a moment
after another device took the wake word, `ELSEWHERE_S`). Ringing blinks slowly in yellow,
the error quickly in amber. With `turn.barge_in = "voice"` the microphone is live during a
reply, for the user to talk over it: the reply shows `preamble_live` / `answering_live`,
the same colours in another motion, so a live microphone is never mistaken for one that is
not."""
ELSEWHERE_S = 1.0


def pattern_name(
    state: State, offline: bool = False, timer: bool = False, live: bool = False
) -> str:
    if live and state in (State.PREAMBLE, State.ANSWERING):
        return f"{state.value}_live"
    if state is State.IDLE and offline:
        return "offline"
    if state is State.IDLE and timer:
        return "timer"
    return state.value


def parse_color(value: str) -> RGB:
    """'#rrggbb' → (r, g, b) in 0..1."""
    v = value.strip().lstrip("#")
    if len(v) != 6 or any(c not in "0123456789abcdefABCDEF" for c in v):
        raise ValueError(f"{value!r} is not a colour like '#00ccff'")
    return (int(v[0:2], 16) / 255, int(v[2:4], 16) / 255, int(v[4:6], 16) / 255)


def with_overrides(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Pattern]:
    """The table with user changes: {name: {color?, effect?, period_s?}}. Raises ValueError
    naming what is wrong."""
    table = dict(PATTERNS)
    for name, fields in overrides.items():
        if name not in table:
            raise ValueError(f"no pattern named {name!r} (known: {', '.join(PATTERNS)})")
        p = table[name]
        for key, value in fields.items():
            if key == "color":
                p = dataclasses.replace(p, color=parse_color(str(value)))
            elif key == "effect":
                try:
                    p = dataclasses.replace(p, effect=Effect(value))
                except ValueError:
                    effects = ", ".join(e.value for e in Effect)
                    raise ValueError(f"{name}.effect must be one of {effects}") from None
            elif key == "period_s":
                if not isinstance(value, int | float) or not 0.05 <= value <= 10:
                    raise ValueError(f"{name}.period_s must be a number of seconds, 0.05 to 10")
                p = dataclasses.replace(p, period_s=float(value))
            else:
                raise ValueError(f"{name}: unknown field {key!r} (color, effect, period_s)")
        if p.effect in (Effect.PULSE, Effect.BLINK, Effect.SPIN) and p.period_s <= 0:
            p = dataclasses.replace(p, period_s=1.0)
        table[name] = p
    return table


def render(pattern: Pattern, t: float, pixels: int) -> list[RGB]:
    """The colour of each pixel of a ring at time `t`, for drivers that animate themselves."""
    c = pattern.color
    if pattern.effect is Effect.OFF:
        return [OFF] * pixels
    if pattern.effect is Effect.SOLID:
        return [c] * pixels
    phase = (t / pattern.period_s) % 1.0
    if pattern.effect is Effect.BLINK:
        return [c if phase < 0.5 else OFF] * pixels
    if pattern.effect is Effect.PULSE:
        level = 0.5 - 0.5 * math.cos(2 * math.pi * phase)
        return [(c[0] * level, c[1] * level, c[2] * level)] * pixels
    # SPIN: a full-brightness head stepping from pixel to pixel, with a fading tail
    out = []
    head = int(phase * pixels)
    tail = max(2.0, pixels / 3)
    for i in range(pixels):
        behind = (head - i) % pixels
        level = max(0.0, 1.0 - behind / tail)
        out.append((c[0] * level, c[1] * level, c[2] * level))
    return out
