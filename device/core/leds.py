"""What the LEDs show in each state: one table, patterns as plain data.

Preamble and answer differ in motion (pulsing vs steady), not only in colour, so they can be
told apart at a glance by everyone, colour-blind users included. The listening pattern is
shown only while the microphone's audio is being streamed to the cloud.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .states import State


class Effect(enum.Enum):
    OFF = "off"
    SOLID = "solid"
    PULSE = "pulse"
    BLINK = "blink"


@dataclass(frozen=True)
class Pattern:
    name: str
    color: tuple[float, float, float]
    effect: Effect
    period_s: float = 0.0
    """Length of one pulse or blink cycle; 0 for solid and off."""

    @property
    def hex(self) -> str:
        return "#" + "".join(f"{round(c * 255):02x}" for c in self.color)


OFF = (0.0, 0.0, 0.0)
BLUE = (0.0, 0.25, 1.0)
CYAN = (0.0, 0.8, 0.8)
VIOLET = (0.55, 0.0, 1.0)
GREEN = (0.0, 1.0, 0.2)
RED = (1.0, 0.0, 0.0)
AMBER = (1.0, 0.45, 0.0)

PATTERNS: dict[State, Pattern] = {
    State.IDLE: Pattern("idle", OFF, Effect.OFF),
    State.CONNECTING: Pattern("connecting", BLUE, Effect.BLINK, 0.25),
    State.LISTENING: Pattern("listening", BLUE, Effect.SOLID),
    State.THINKING: Pattern("thinking", VIOLET, Effect.PULSE, 1.2),
    State.PREAMBLE: Pattern("preamble", CYAN, Effect.PULSE, 0.6),
    State.ANSWERING: Pattern("answering", GREEN, Effect.SOLID),
    State.FOLLOW_UP: Pattern("follow_up", BLUE, Effect.PULSE, 2.0),
    State.MUTED: Pattern("muted", RED, Effect.SOLID),
    State.ERROR: Pattern("error", AMBER, Effect.BLINK, 0.4),
}


def pattern_for(state: State) -> Pattern:
    return PATTERNS[state]
