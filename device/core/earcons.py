"""Short sounds that say something without words, generated rather than shipped as files."""

from __future__ import annotations

import enum

import numpy as np

from .audio import CLOUD_RATE


def _tone_sequence(notes: list[tuple[float, float]], volume: float, rate: int) -> bytes:
    """(frequency Hz, seconds) notes, each with 8 ms fades so nothing clicks."""
    parts = []
    for freq, seconds in notes:
        n = int(seconds * rate)
        t = np.arange(n) / rate
        fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.008)
        parts.append(np.sin(2 * np.pi * freq * t) * fade * volume if freq else np.zeros(n))
    x = np.concatenate(parts)
    return bytes(np.rint(x * 32767).astype("<i2").tobytes())


class Earcon(enum.StrEnum):
    WAKE = "wake"
    END_OF_TURN = "end_of_turn"
    ERROR = "error"
    MUTE_ON = "mute_on"
    MUTE_OFF = "mute_off"
    MUTED = "muted"
    """Pressed while muted: still muted."""
    RING = "ring"
    """A timer or alarm ended (repeats while it rings)."""
    ANNOUNCE = "announce"
    """Before an announcement."""

    @property
    def switch(self) -> str | None:
        """The name that turns this sound on in `audio.earcons`: the three mute sounds
        share one switch, `mute`; None: always played (the ring, the announcement)."""
        return SWITCHES.get(self)


ALWAYS = frozenset({Earcon.RING, Earcon.ANNOUNCE})
"""Sounds that are the point, not a courtesy: no switch turns them off."""
SWITCHES = {
    k: "mute" if k in (Earcon.MUTE_ON, Earcon.MUTE_OFF, Earcon.MUTED) else k.value
    for k in Earcon
    if k not in ALWAYS
}
EARCON_SWITCHES = tuple(dict.fromkeys(SWITCHES.values()))
"""What `audio.earcons` may list: wake, end_of_turn, error, mute."""

NOTES: dict[Earcon, list[tuple[float, float]]] = {
    # two quick rising notes: I'm listening
    Earcon.WAKE: [(660.0, 0.06), (880.0, 0.08)],
    # one soft low note: got it, thinking
    Earcon.END_OF_TURN: [(523.0, 0.09)],
    # two falling notes: something went wrong
    Earcon.ERROR: [(660.0, 0.12), (0.0, 0.04), (440.0, 0.18)],
    # falling, rising, and a single low blip while still muted
    Earcon.MUTE_ON: [(784.0, 0.07), (523.0, 0.1)],
    Earcon.MUTE_OFF: [(523.0, 0.07), (784.0, 0.1)],
    Earcon.MUTED: [(392.0, 0.12)],
    # three bright beeps, a rest: a kitchen timer, not to be missed, not to be confused
    Earcon.RING: [(1175.0, 0.1), (0.0, 0.06), (1175.0, 0.1), (0.0, 0.06), (1568.0, 0.16)],
    # a soft two-note call before someone's words
    Earcon.ANNOUNCE: [(523.0, 0.1), (784.0, 0.16)],
}


def earcon(kind: Earcon | str, volume: float = 0.3, rate: int = CLOUD_RATE) -> bytes:
    return _tone_sequence(NOTES[Earcon(kind)], volume, rate)
