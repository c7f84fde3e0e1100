"""Shared test helpers: speech from espeak-ng, WAV files, ALSA file devices, event logs."""

from __future__ import annotations

import asyncio
import json
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from device.emulator.voice import espeak


def speech(text: str, voice: str = "en-us", wpm: int = 160) -> bytes:
    """`text` spoken by espeak-ng as 16 kHz mono int16."""
    return espeak(text, 16_000, voice=voice, wpm=wpm)


def silence(seconds: float, rate: int = 16_000) -> bytes:
    return bytes(int(seconds * rate) * 2)


def write_wav(path: Path, pcm: bytes, rate: int = 16_000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def nonzero(pcm: bytes) -> np.ndarray:
    x = np.frombuffer(pcm, "<i2")
    return x[x != 0]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def states(events: list[dict[str, Any]]) -> list[str]:
    return [e["state"] for e in events if e["event"] == "state"]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def asoundrc(tmp: Path, mic_raw: Path, speaker_raw: Path) -> Path:
    """ALSA config whose `testmic` reads `mic_raw` and `testspk` writes `speaker_raw`."""
    path = tmp / "asoundrc"
    path.write_text(
        "</usr/share/alsa/alsa.conf>\n"
        f'pcm.testmic {{ type file; slave.pcm "null"; file "/dev/null"; infile "{mic_raw}"; '
        'format "raw"; hint { show on description "test mic" } }\n'
        f'pcm.testspk {{ type file; slave.pcm "null"; file "{speaker_raw}"; format "raw"; '
        'hint { show on description "test speaker" } }\n'
    )
    return path
