"""A simulated room on one clock, for tests and benchmarks: the speaker is heard by the mic.

The microphone hears what people say (a recording) plus the device's own playback, delayed
by the distance, scaled, and smeared by a short reverberation tail. Microphone and speaker
run on the microphone's clock, as the two halves of one sound card do, so echo handling can
be measured exactly: nothing here depends on wall-clock timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.audio import CLOUD_RATE, FRAME_MS, FRAME_SAMPLES, MIC_RATE, SAMPLE_BYTES, Resampler
from .speaker import Speaker, wav_writer

FRAME_BYTES = FRAME_SAMPLES * SAMPLE_BYTES
SPEAKER_FRAME = FRAME_SAMPLES * CLOUD_RATE // MIC_RATE


DIRECT_TO_REVERB_DB = 3.0
"""A speaker a metre or so from the microphone in a furnished room."""


def room_response(delay_ms: float, reverb_ms: float, gain: float, seed: int = 0) -> np.ndarray:
    """An impulse response: a direct path of `gain` after `delay_ms`, then a diffuse tail
    decaying with time constant `reverb_ms`, carrying DIRECT_TO_REVERB_DB less energy."""
    rng = np.random.default_rng(seed)
    delay = int(delay_ms * MIC_RATE / 1000)
    length = delay + int(reverb_ms * MIC_RATE / 1000 * 5) + 1
    ir = np.zeros(length, dtype=np.float32)
    ir[delay] = 1.0
    t = np.arange(length - delay - 1)
    tail = rng.standard_normal(len(t)) * np.exp(-t / (reverb_ms * MIC_RATE / 1000))
    tail *= np.sqrt(10 ** (-DIRECT_TO_REVERB_DB / 10) / np.sum(tail**2))
    ir[delay + 1 :] = tail
    return ir * gain


class RoomSpeaker(Speaker):
    """Played by the room's clock: every microphone frame pulls 20 ms from it."""

    name = "room speaker"

    def _start(self) -> None:
        pass

    def _stop(self) -> None:
        pass


class Room:
    def __init__(
        self,
        user: bytes,
        paced: bool,
        echo_gain: float = 0.3,
        delay_ms: float = 20.0,
        reverb_ms: float = 60.0,
        jitter_ms: int = 60,
        seed: int = 0,
        record: Path | None = None,
    ) -> None:
        """`record`: a 24 kHz WAV of what the speaker played, one frame per microphone
        frame (silence included), so it lines up with the microphone's timeline."""
        self.speaker = RoomSpeaker(jitter_ms)
        self.speaker.name = str(record) if record is not None else RoomSpeaker.name
        self._record: Any = wav_writer(record) if record is not None else None
        self.mic = RoomMic(self, user, paced)
        self.cue: Callable[[int], bytes | None] | None = None
        """Called with the frame count before each frame: return speech to start saying then
        (a user who answers what the device does, not a fixed timeline)."""
        self.delay_ms = delay_ms
        """How late the device's own sound is in what its microphone hears (the path a
        real device's PortAudio latencies and the air make)."""
        self._ir = room_response(delay_ms, reverb_ms, echo_gain, seed)
        self._tail = np.zeros(len(self._ir) - 1, dtype=np.float32)
        self._resampler = Resampler(CLOUD_RATE, MIC_RATE)
        self._heard = bytearray()

    def echo(self) -> np.ndarray:
        """The next 20 ms of the device's own sound, as it reaches the microphone."""
        played = (
            self.speaker._render(SPEAKER_FRAME, pad=True)
            if self.speaker.playing
            else bytes(SPEAKER_FRAME * SAMPLE_BYTES)
        )
        if self._record is not None:
            self._record.writeframes(played)
        self._heard += self._resampler.push(played)
        block = np.frombuffer(bytes(self._heard[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\0"), "<i2")
        del self._heard[:FRAME_BYTES]
        y = np.convolve(block.astype(np.float32), self._ir)
        y[: len(self._tail)] += self._tail
        self._tail = y[FRAME_SAMPLES:].copy()
        return y[:FRAME_SAMPLES]

    def close(self) -> None:
        if self._record is not None:
            self._record.close()
            self._record = None


def parse_echo(spec: str) -> dict[str, float]:
    """`GAIN[:DELAY_MS[:REVERB_MS]]` (the `--simulate-echo` option) as Room's arguments."""
    parts = spec.split(":")
    try:
        if not 1 <= len(parts) <= 3:
            raise ValueError
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"{spec!r}: expected GAIN[:DELAY_MS[:REVERB_MS]], e.g. 0.3:20:60"
        ) from None
    names = ("echo_gain", "delay_ms", "reverb_ms")
    values = dict(zip(names, numbers, strict=False))
    limits = {"echo_gain": (0.0, 4.0), "delay_ms": (0.0, 500.0), "reverb_ms": (1.0, 2000.0)}
    for name, value in values.items():
        low, high = limits[name]
        if not low <= value <= high:  # (also refuses nan)
            raise ValueError(f"{name.split('_')[0]} must be between {low:g} and {high:g}")
    return values


class RoomMic:
    """The room's microphone: the recording, then silence, with the device's echo mixed in."""

    overflows = 0

    def __init__(self, room: Room, user: bytes, paced: bool) -> None:
        self.name = "room microphone"
        self.eof = False
        self._room = room
        self._user = user
        self._paced = paced
        self._pos = 0
        self._open = asyncio.Event()
        self._t0 = 0.0
        self._frames = 0

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    @property
    def recording(self) -> bytes:
        """What the people in the room said, as heard so far (the cues included)."""
        return self._user

    async def open(self) -> None:
        self._open.set()
        self._t0 = time.monotonic() - self._frames * FRAME_MS / 1000

    async def close(self) -> None:
        self._open.clear()

    async def reopen(self, refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        await self.open()

    async def read(self) -> bytes:
        await self._open.wait()
        if self._paced:
            delay = self._t0 + self._frames * FRAME_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
        self._frames += 1
        if self._room.cue is not None:
            said = self._room.cue(self._frames)
            if said:  # from now on, instead of what the recording holds here
                head = self._user[: self._pos].ljust(self._pos, b"\0")
                self._user = head + said + self._user[self._pos + len(said) :]
                self.eof = False
        chunk = self._user[self._pos : self._pos + FRAME_BYTES]
        self._pos += FRAME_BYTES
        if len(chunk) < FRAME_BYTES:
            self.eof = True
            chunk = chunk.ljust(FRAME_BYTES, b"\0")
        voice = np.frombuffer(chunk, "<i2").astype(np.float32)
        heard = voice + self._room.echo()
        return bytes(np.clip(np.rint(heard), -32768, 32767).astype("<i2").tobytes())
