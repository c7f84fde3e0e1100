"""Microphone sources: PyAudio capture from ALSA, or a WAV file (paced or as fast as possible).

Both hand out fixed 20 ms frames of 16 kHz mono int16 through `await read()`. Closing a
source (mute) really closes it: the PortAudio stream is torn down, not merely ignored.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import wave
from pathlib import Path
from typing import Any, Protocol

from ..core.audio import FRAME_MS, FRAME_SAMPLES, MIC_RATE, SAMPLE_BYTES, resample
from .portaudio import DeviceInfo, find_device, pyaudio_instance

log = logging.getLogger(__name__)

FRAME_BYTES = FRAME_SAMPLES * SAMPLE_BYTES


class Mic(Protocol):
    name: str
    eof: bool
    """True once a file source has run out; it then yields silence."""
    overflows: int

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def read(self) -> bytes: ...


class PyAudioMic:
    """Capture through a PortAudio callback stream.

    The callback only hands bytes to the event loop. It takes a credit per frame, so when the
    loop falls behind the callback waits (briefly) instead of piling up audio: a real device
    then reports an input overflow, which is counted; a file device simply slows down, so
    tests that read a file through ALSA lose nothing.
    """

    CREDITS = 50  # frames = 1 s of audio in flight at most
    CREDIT_WAIT_S = 0.5

    def __init__(self, spec: str) -> None:
        self.device: DeviceInfo = find_device(spec, "input")
        self.name = self.device.name
        self.eof = False
        self.overflows = 0
        self.dropped = 0
        self._stream: Any = None
        self._queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._generation = 0
        self._credits = threading.BoundedSemaphore(self.CREDITS)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened = asyncio.Event()

    def _callback(self, data: bytes, frames: int, time_info: Any, status: int) -> tuple[None, int]:
        import pyaudio

        if status & pyaudio.paInputOverflow:
            self.overflows += 1
        if self._credits.acquire(timeout=self.CREDIT_WAIT_S):
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (self._generation, data))
        else:
            self.dropped += 1
        return None, pyaudio.paContinue

    async def open(self) -> None:
        import pyaudio

        if self._stream is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._generation += 1
        pa = pyaudio_instance()

        def _open() -> Any:
            return pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=MIC_RATE,
                input=True,
                input_device_index=self.device.index,
                frames_per_buffer=FRAME_SAMPLES,
                stream_callback=self._callback,
            )

        try:
            self._stream = await asyncio.to_thread(_open)
        except (OSError, ValueError) as e:
            raise OSError(
                f"could not open microphone '{self.name}' at {MIC_RATE} Hz mono: {e}"
            ) from e
        self._opened.set()
        log.info("microphone '%s' open (%d Hz, %d ms frames)", self.name, MIC_RATE, FRAME_MS)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
            self._credits.release()

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        self._opened.clear()
        if stream is None:
            return

        def _close() -> None:
            stream.stop_stream()
            stream.close()

        # Stopping waits for a running callback; one waiting for a credit gets it from _drain.
        closing = asyncio.ensure_future(asyncio.to_thread(_close))
        while not closing.done():
            self._drain()
            await asyncio.sleep(0.01)
        await closing
        self._drain()
        log.info("microphone '%s' closed", self.name)

    async def read(self) -> bytes:
        while True:
            await self._opened.wait()
            generation, data = await self._queue.get()
            self._credits.release()
            if generation == self._generation and self._stream is not None:
                return data


class WavMic:
    """A WAV file as the microphone: at real time (`paced`) or as fast as it is consumed.

    Any rate or channel count is converted to 16 kHz mono. After the end of the file it
    yields silence and sets `eof`, so a conversation in progress can finish.
    """

    def __init__(self, path: Path, paced: bool) -> None:
        self.name = str(path)
        self.paced = paced
        self.eof = False
        self.overflows = 0
        self._pcm = read_wav_16k_mono(path)
        self._pos = 0
        self._open = asyncio.Event()
        self._t0 = 0.0
        self._frames_read = 0

    async def open(self) -> None:
        self._open.set()
        self._t0 = time.monotonic() - self._frames_read * FRAME_MS / 1000

    async def close(self) -> None:
        self._open.clear()

    async def read(self) -> bytes:
        await self._open.wait()
        if self.paced:
            due = self._t0 + self._frames_read * FRAME_MS / 1000
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
        self._frames_read += 1
        frame = self._pcm[self._pos : self._pos + FRAME_BYTES]
        self._pos += FRAME_BYTES
        if len(frame) < FRAME_BYTES:
            self.eof = True
            frame += bytes(FRAME_BYTES - len(frame))
        return frame


def read_wav_16k_mono(path: Path) -> bytes:
    """16-bit PCM WAV of any rate and channel count → 16 kHz mono int16 bytes."""
    import numpy as np

    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as e:
        raise OSError(f"cannot read WAV file {path}: {e}") from e
    if width != 2:
        raise OSError(f"{path}: only 16-bit PCM WAV files are supported (got {8 * width}-bit)")
    if channels > 1:
        x = np.frombuffer(raw, "<i2").reshape(-1, channels).astype(np.int32).mean(axis=1)
        raw = np.rint(x).astype("<i2").tobytes()
    if rate != MIC_RATE:
        raw = resample(raw, rate, MIC_RATE)
    return raw
