"""Short sounds that say something without words, generated rather than shipped as files."""

from __future__ import annotations

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


EARCONS = {
    # two quick rising notes: I'm listening
    "wake": [(660.0, 0.06), (880.0, 0.08)],
    # one soft low note: got it, thinking
    "end_of_turn": [(523.0, 0.09)],
    # two falling notes: something went wrong
    "error": [(660.0, 0.12), (0.0, 0.04), (440.0, 0.18)],
    # falling, rising, and a single low blip while still muted
    "mute_on": [(784.0, 0.07), (523.0, 0.1)],
    "mute_off": [(523.0, 0.07), (784.0, 0.1)],
    "muted": [(392.0, 0.12)],
}


def earcon(kind: str, volume: float = 0.3, rate: int = CLOUD_RATE) -> bytes:
    return _tone_sequence(EARCONS[kind], volume, rate)
