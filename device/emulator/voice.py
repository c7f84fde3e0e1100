"""Speech for the emulator's replies: espeak-ng when installed, else recognisable tones."""

from __future__ import annotations

import functools
import logging
import math
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from ..core.audio import CLOUD_RATE, resample

log = logging.getLogger(__name__)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(text: str, rate: int, voice: str = "en-us", wpm: int = 165, pitch: int = 50) -> bytes:
    """`text` spoken by espeak-ng, as mono int16 at `rate`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(path), text],
            check=True,
            capture_output=True,
            timeout=30,
        )
        with wave.open(str(path), "rb") as w:
            native = w.getframerate()
            pcm = w.readframes(w.getnframes())
    return resample(pcm, native, rate) if native != rate else pcm


def tones(freqs: list[float], rate: int, tone_s: float = 0.25, gap_s: float = 0.08) -> bytes:
    """A short sequence of soft sine tones with gaps: a stand-in for speech."""
    parts = []
    n = int(tone_s * rate)
    t = np.arange(n) / rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    for f in freqs:
        parts.append(0.3 * np.sin(2 * math.pi * f * t) * fade)
        parts.append(np.zeros(int(gap_s * rate)))
    x = np.concatenate(parts)
    return bytes(np.rint(x * 32767).astype("<i2").tobytes())


@functools.lru_cache(maxsize=32)
def speak(text: str, kind: str) -> bytes:
    """24 kHz speech for a reply item; `kind` picks the fallback tones (preamble or answer)."""
    if espeak_available():
        try:
            return espeak(text, CLOUD_RATE)
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("espeak-ng failed (%s); using tones", e)
    words = max(1, len(text.split()))
    if kind == "commentary":
        return tones([523.0, 659.0] * max(1, words // 4), CLOUD_RATE)
    return tones([440.0, 554.0, 659.0, 880.0] * max(1, words // 4), CLOUD_RATE)
