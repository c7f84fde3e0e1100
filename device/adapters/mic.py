"""Microphone sources: PyAudio capture from ALSA, or a WAV file (paced or as fast as possible).

Both hand out fixed 20 ms frames of 16 kHz mono int16 through `await read()`. Closing a
source (mute) really closes it: the PortAudio stream is torn down, not merely ignored.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from ..core.audio import FRAME_MS, FRAME_SAMPLES, MIC_RATE, SAMPLE_BYTES, MicConverter, resample
from .portaudio import DeviceInfo, capture_format, find_device, pyaudio_instance

log = logging.getLogger(__name__)

FRAME_BYTES = FRAME_SAMPLES * SAMPLE_BYTES


class Mic(Protocol):
    name: str
    eof: bool
    """True once a file source has run out; it then yields silence."""
    overflows: int

    @property
    def is_open(self) -> bool: ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def reopen(self, refresh: Callable[[], Awaitable[None]] | None = None) -> None: ...
    async def read(self) -> bytes: ...


class MicFailure(Exception):
    """The microphone stopped delivering audio; the message says how."""


class PyAudioMic:
    """Capture through a PortAudio callback stream.

    The callback only hands bytes to the event loop. It takes a credit per chunk, so when the
    loop falls behind the callback waits (briefly) instead of piling up audio: a real device
    then reports an input overflow, which is counted; a file device simply slows down, so
    tests that read a file through ALSA lose nothing. The device is opened at 16 kHz mono
    when it offers that, else at its own rate and channels, converted in software.

    `read()` raises MicFailure when no audio has come for STALL_S, or the stream died;
    `reopen()` tries to get it back (see `supervise.Supervisor.recover_mic`).
    """

    CREDITS = 50  # chunks = 1 s of audio in flight at most
    CREDIT_WAIT_S = 0.5
    STALL_S = 2.0

    def __init__(self, spec: str, rate: int = 0, channels: int = 0, channel: int = -1) -> None:
        self.spec = spec
        self._want = (rate, channels, channel)
        self.device: DeviceInfo | None = None
        self.name = spec or "default microphone"
        self.eof = False
        self.overflows = 0
        self.dropped = 0
        self.input_latency_s = 0.0
        """What PortAudio reports once the stream is open."""
        self._stream: Any = None
        self._converter: MicConverter | None = None
        self._frames: deque[bytes] = deque()
        self._queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._generation = 0
        self._credits = threading.BoundedSemaphore(self.CREDITS)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened = asyncio.Event()
        self._closing: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None

    @property
    def is_open(self) -> bool:
        return self._stream is not None

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
        self.device = find_device(self.spec, "input")  # DeviceNotFound names it
        self.name = self.device.name
        want_rate, want_channels, channel = self._want
        rate, channels = capture_format(self.device, want_rate, want_channels)
        self._converter = MicConverter(rate, channels, channel if channels > 1 else -1)
        self._frames.clear()

        index = self.device.index

        def _open() -> Any:
            return pa.open(
                format=pyaudio.paInt16,
                channels=channels,
                rate=rate,
                input=True,
                input_device_index=index,
                frames_per_buffer=rate * FRAME_MS // 1000,
                stream_callback=self._callback,
            )

        try:
            self._stream = await asyncio.to_thread(_open)
        except (OSError, ValueError) as e:
            raise OSError(f"could not open microphone '{self.name}': {e}") from e
        self._opened.set()
        self.input_latency_s = float(self._stream.get_input_latency())
        how = "" if (rate, channels) == (MIC_RATE, 1) else f", captured at {rate} Hz x{channels}"
        log.info(
            "microphone '%s' open (%d Hz, %d ms frames%s, %.0f ms input latency)",
            self.name,
            MIC_RATE,
            FRAME_MS,
            how,
            self.input_latency_s * 1000,
        )

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
        # A device that hangs inside PortAudio can hang this too: it runs in a thread, and
        # reopen() does not wait for it for ever (the systemd watchdog has the last word).
        self._closing = asyncio.ensure_future(asyncio.to_thread(_close))
        while not self._closing.done():
            self._drain()
            await asyncio.sleep(0.01)
        await self._closing
        self._drain()
        log.info("microphone '%s' closed", self.name)

    async def reopen(self, refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        """Close what is left of the stream and open the device again (found by its name).

        `refresh` re-enumerates PortAudio's devices once the stream is closed, so a device
        plugged back in is seen. Raises OSError, MicFailure or DeviceNotFound to be retried.
        """
        if self._stream is not None:
            self._closed = asyncio.ensure_future(self.close())
        if self._closed is not None and not self._closed.done():
            try:
                async with asyncio.timeout(self.STALL_S):
                    await asyncio.shield(self._closed)
            except TimeoutError:
                stuck = f"microphone '{self.name}' does not let go of its stream"
                raise MicFailure(stuck) from None
        if refresh is not None:
            await refresh()
        await self.open()

    async def read(self) -> bytes:
        while not self._frames:
            await self._opened.wait()
            try:
                # (not wait_for: on Python 3.11 it can swallow a cancellation when the item is
                # already there, which with a fast source is always, and the daemon won't stop)
                async with asyncio.timeout(self.STALL_S):
                    generation, data = await self._queue.get()
            except TimeoutError:
                if self._stream is None:
                    continue  # closed meanwhile (mute)
                state = "stopped" if not self._stream.is_active() else "stalled"
                raise MicFailure(
                    f"microphone '{self.name}' {state}: no audio for {self.STALL_S:g} s"
                ) from None
            self._credits.release()
            if generation == self._generation and self._stream is not None:
                assert self._converter is not None
                self._frames.extend(self._converter.push(data))
        return self._frames.popleft()


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

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def open(self) -> None:
        self._open.set()
        self._t0 = time.monotonic() - self._frames_read * FRAME_MS / 1000

    async def close(self) -> None:
        self._open.clear()

    async def reopen(self, refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        await self.open()

    def say(self, pcm: bytes) -> None:
        """From the next frame on, `pcm` instead of what the file holds there (tests: a user
        who speaks when the device is ready, not at a fixed time)."""
        head = self._pcm[: self._pos].ljust(self._pos, b"\0")
        self._pcm = head + pcm + self._pcm[self._pos + len(pcm) :]
        self.eof = False

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


WAV_RATES = (8_000, 192_000)
WAV_CHANNELS = 16


def read_wav_16k_mono(path: Path) -> bytes:
    """A PCM WAV file (8, 16, 24 or 32-bit integers or 32-bit float, plain or
    WAVE_FORMAT_EXTENSIBLE as sox writes, any sensible rate and channel count) as 16 kHz mono
    int16. A file that is not one says why, in a sentence."""
    import numpy as np

    try:
        data = path.read_bytes()
    except OSError as e:
        raise OSError(f"cannot read WAV file {path}: {e.strerror or e}") from e
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        what = "empty" if not data else "not a WAV file (no RIFF/WAVE header)"
        raise OSError(f"{path}: {what}")
    fmt: bytes | None = None
    raw: bytes | None = None
    at = 12
    while at + 8 <= len(data) and (fmt is None or raw is None):
        name, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        body = data[at + 8 : at + 8 + size]
        if name == b"fmt ":
            fmt = body
        elif name == b"data":
            raw = body  # a truncated file keeps what is there
        at += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise OSError(f"{path}: no format chunk: the file is truncated or not a WAV file")
    if raw is None:
        raise OSError(f"{path}: no audio (no data chunk)")
    tag, channels, rate = (
        int.from_bytes(fmt[i : i + n], "little") for i, n in ((0, 2), (2, 2), (4, 4))
    )
    bits = int.from_bytes(fmt[14:16], "little")
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag is the subformat
        tag = int.from_bytes(fmt[24:26], "little")
    if not WAV_RATES[0] <= rate <= WAV_RATES[1]:
        raise OSError(
            f"{path}: a sample rate of {rate} Hz (expected {WAV_RATES[0]} to {WAV_RATES[1]})"
        )
    if not 1 <= channels <= WAV_CHANNELS:
        raise OSError(f"{path}: {channels} channels (expected 1 to {WAV_CHANNELS})")
    width = bits // 8
    if (tag, bits) not in ((1, 8), (1, 16), (1, 24), (1, 32), (3, 32)):
        kind = "float" if tag == 3 else f"format {tag}" if tag != 1 else "PCM"
        raise OSError(f"{path}: {bits}-bit {kind} audio is not supported (PCM or 32-bit float)")
    frames = len(raw) // (width * channels)
    if frames == 0:
        raise OSError(f"{path}: no audio (the data chunk is empty)")
    raw = raw[: frames * width * channels]
    if tag == 3:
        x = np.frombuffer(raw, "<f4").astype(np.float64) * 32767
    elif width == 1:
        x = (np.frombuffer(raw, "u1").astype(np.float64) - 128) * 256
    elif width == 3:
        b = np.frombuffer(raw, "u1").reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float64) / 256
    else:
        x = np.frombuffer(raw, "<i2" if width == 2 else "<i4").astype(np.float64)
        if width == 4:
            x /= 65536
    mono = x.reshape(-1, channels).mean(axis=1) if channels > 1 else x
    pcm = np.clip(np.rint(mono), -32768, 32767).astype("<i2").tobytes()
    if rate != MIC_RATE:
        pcm = resample(pcm, rate, MIC_RATE)
    return pcm
