"""Speakers: a PyAudio callback stream, or a WAV file (clocked at real time or as fast as fed).

Both count what they actually hand to the output, per item, and report it as
`core.audio` playout events (`ItemStarted`, `ResponsePlayed`, `PlayoutStopped`) on the event
loop: the LEDs follow what the user hears, not what has arrived from the network.

The output runs only while there is something to play. Playback of a response starts once
`jitter_ms` of it is buffered (or all of it has arrived), so a hiccup in the network does
not become a gap in the voice.

An output that stops taking audio while it should be playing (a hung driver, a USB speaker
pulled out mid-reply), or that fails to start, is reported by `failure()`; `recover()` then
leaves the old stream to its fate on its own thread and opens a fresh one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.audio import (
    CLOUD_RATE,
    SAMPLE_BYTES,
    PlayoutBuffer,
    PlayoutEvent,
    PlayoutStopped,
    ResponsePlayed,
    Source,
    ms_to_samples,
    scale,
)
from .portaudio import DeviceInfo, DeviceNotFound, find_device, pyaudio_instance

log = logging.getLogger(__name__)

PERIOD_MS = 20
PERIOD_SAMPLES = CLOUD_RATE * PERIOD_MS // 1000
MAX_QUEUED_S = 300
"""Reply audio held at most (14 MB): a server sending faster than this is cut, not obeyed."""
MAX_SEGMENTS = 10_000
"""Items' worth of audio held at most: a server sending a new item every two bytes must
not fill the memory with the bookkeeping of each."""
FAR_END_S = 1
"""How much of what was played is kept for echo handling (read back at the mic's pace)."""
STALL_S = 2.0
"""An output that takes no audio for this long while it should be playing has failed. A
working one asks every period (20 ms); its own buffer is a few periods deep."""
START_GRACE_S = 3.0
"""More time allowed for starting: some outputs (Bluetooth, a sound server) are slow to."""

Post = Callable[[PlayoutEvent], None]


class Speaker:
    """What both kinds of speaker share: the playout buffer, its lock, and when to run.

    The buffer is the one object touched from two threads (the loop adds audio, the audio
    callback pulls it); the lock around it is held for microseconds at a time.
    """

    name = "speaker"

    def __init__(self, jitter_ms: int, volume: float = 1.0) -> None:
        self._buffer = PlayoutBuffer(CLOUD_RATE)
        self._lock = threading.Lock()
        self.volume = volume
        """Software gain applied to everything played (0 silent, 1 as received)."""
        self._far = bytearray()
        self._silence = b""
        self._underruns_logged = 0
        self._prefill = ms_to_samples(jitter_ms, CLOUD_RATE)
        self._running = False
        self._dropping: str | None = None
        self._post: Post | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.underruns = 0
        self.audible_after_stop = 0
        """Reply samples rendered after the last stop() (a barge-in): should stay 0."""
        self._stopped = False
        self.output_latency_s = 0.0
        """What the output device holds beyond our buffer (PortAudio's figure)."""
        self._last_pull = 0.0
        """When the output last asked for audio (or was started)."""
        self._fault: str | None = None
        """A start or stop that failed on the output's thread, until `failure()` reports it."""

    def attach(self, post: Post) -> None:
        """Where playout events go; called on the event loop before anything is played."""
        self._post = post
        self._loop = asyncio.get_running_loop()

    # -- called on the event loop -----------------------------------------------------------

    def play(
        self,
        response_id: str,
        item_id: str,
        phase: str | None,
        pcm: bytes,
        source: Source = Source.REPLY,
    ) -> None:
        with self._lock:
            queued = self._buffer.buffered_samples
            too_many = self._buffer.segments >= MAX_SEGMENTS
            if too_many or queued + len(pcm) // SAMPLE_BYTES > MAX_QUEUED_S * CLOUD_RATE:
                if self._dropping != response_id:
                    self._dropping = response_id
                    log.warning(
                        "reply audio beyond %d s or %d items queued; dropping the rest",
                        MAX_QUEUED_S,
                        MAX_SEGMENTS,
                    )
                return
            self._buffer.add(response_id, item_id, phase, pcm, source)
            self._stopped = False
            ready = queued + len(pcm) // SAMPLE_BYTES >= self._prefill
        self._fed()
        if ready:
            self._ensure_running()

    def relabel(self, item_id: str, phase: str) -> bool:
        """See `PlayoutBuffer.relabel`: True if the item is being heard now."""
        with self._lock:
            return self._buffer.relabel(item_id, phase)

    def end(self, response_id: str, source: Source = Source.REPLY) -> None:
        """Nothing more will arrive for this response: play out whatever is left."""
        with self._lock:
            self._buffer.end(response_id, source)
        self._fed()
        self._ensure_running()

    def stop(self) -> None:
        """Cut playback now (barge-in). Reports `PlayoutStopped` with what was played."""
        with self._lock:
            stopped = self._buffer.flush()
            self._stopped = True
            self.audible_after_stop = 0
        self._emit([stopped])
        self._halt()

    def _ensure_running(self) -> None:
        if not self._running:
            self._running = True
            self._last_pull = time.monotonic() + START_GRACE_S
            self._start()

    def failure(self, now: float) -> str | None:
        """Why the output is failing, if it is: a start or stop that raised, or no audio taken
        for STALL_S while it should be playing. Each fault is reported once; the caller then
        calls `recover()`."""
        fault, self._fault = self._fault, None
        if fault is not None:
            return fault
        if self._running and now - self._last_pull > STALL_S:
            return f"speaker '{self.name}' took no audio for {STALL_S:g} s"
        return None

    def recover(self) -> None:
        """Drop what was queued (reported as stopped) and get a fresh output."""
        with self._lock:
            stopped = self._buffer.flush()
            self._stopped = True
        self._emit([stopped])
        self._running = False
        self._reopen()

    def _reopen(self) -> None:
        pass

    def _settle(self) -> None:
        """Called on the loop after a response has played out: stop the output if idle."""
        with self._lock:
            idle = self._buffer.idle
        if idle and self._running:
            self._halt()
            self._report_underruns()

    def _halt(self) -> None:
        if self._running:
            self._running = False
            self._stop()

    # -- called where audio is rendered (callback thread or writer task) --------------------

    def _render(self, samples: int, pad: bool) -> bytes:
        self._last_pull = time.monotonic()
        with self._lock:
            pcm, events = self._buffer.pull(samples, pad)
            self.underruns = self._buffer.underruns
            if self._stopped and any(pcm):
                self.audible_after_stop += len(pcm) // SAMPLE_BYTES
            if self.volume != 1.0 and pcm:
                pcm = scale(pcm, self.volume)
            self._far += pcm
            excess = len(self._far) - FAR_END_S * CLOUD_RATE * SAMPLE_BYTES
            if excess > 0:
                del self._far[:excess]
        if events:
            self._emit(events)
        return pcm

    @property
    def playing(self) -> bool:
        return self._running

    def take_far_end(self, samples: int) -> bytes:
        """What was played since the last call, `samples` long (silence where nothing was):
        the reference an echo path compares the microphone against."""
        want = samples * SAMPLE_BYTES
        if not self._far:  # (nothing played: most of the time, every 20 ms)
            if len(self._silence) != want:
                self._silence = bytes(want)
            return self._silence
        with self._lock:
            taken = bytes(self._far[:want])
            del self._far[:want]
        return taken + bytes(want - len(taken))

    def _emit(self, events: list[PlayoutEvent]) -> None:
        if self._loop is None or self._post is None:
            return
        for ev in events:
            self._loop.call_soon_threadsafe(self._post, ev)
            if isinstance(ev, ResponsePlayed | PlayoutStopped):
                self._loop.call_soon_threadsafe(self._settle)

    def _report_underruns(self) -> None:
        new = self.underruns - self._underruns_logged
        if new:
            self._underruns_logged = self.underruns
            log.info("speaker ran dry %d times during the reply (network jitter)", new)

    # -- what each kind implements ----------------------------------------------------------

    def _fed(self) -> None:
        """Called on the loop after audio or an end marker is queued (the WAV writer wakes)."""

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Background work while the daemon runs (the WAV writer); returns when closed."""
        await asyncio.Event().wait()

    def close(self) -> None:
        pass


class _Worker:
    """One daemon thread that runs jobs in order. PortAudio calls on a hung device may never
    return: a daemon thread cannot hold up the process's exit, as a thread pool's would."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._run, name="speaker", daemon=True).start()

    def submit(self, job: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((job, future))
        return future

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as e:  # handed to whoever waits on the future
                future.set_exception(e)
            if job is _quit:
                return


def _quit() -> None:
    """The last job a worker runs."""


class PyAudioSpeaker(Speaker):
    """Playback through a PortAudio callback stream, started and stopped per response.

    Opening, starting, stopping and closing happen on one worker thread, in order, off the
    event loop; a failure there is kept for `failure()`.
    """

    def __init__(self, spec: str, jitter_ms: int, volume: float = 1.0) -> None:
        super().__init__(jitter_ms, volume)
        self.spec = spec
        self._stream: Any = None
        self._find_and_open()
        self._worker = _Worker()

    def _find_and_open(self) -> None:
        """Look the device up by its name (PortAudio's index can change) and open it."""
        self.device: DeviceInfo = find_device(self.spec, "output")
        self.name = self.device.name
        self._open()

    def _open(self) -> None:
        import pyaudio

        pa = pyaudio_instance()
        try:
            self._stream = pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=CLOUD_RATE,
                output=True,
                output_device_index=self.device.index,
                frames_per_buffer=PERIOD_SAMPLES,
                stream_callback=self._callback,
                start=False,
            )
        except (OSError, ValueError) as e:
            raise OSError(
                f"could not open speaker '{self.name}' at {CLOUD_RATE} Hz mono: {e}"
            ) from e
        self.output_latency_s = self._stream.get_output_latency()
        log.info(
            "speaker '%s' ready (%d Hz, %d ms periods, %.0f ms output latency)",
            self.name,
            CLOUD_RATE,
            PERIOD_MS,
            self.output_latency_s * 1000,
        )

    def _callback(self, data: Any, frames: int, time_info: Any, status: int) -> tuple[bytes, int]:
        import pyaudio

        return self._render(frames, pad=True), pyaudio.paContinue

    def _on_worker(self, what: str, job: Callable[[], None]) -> None:
        def run() -> None:
            try:
                job()
            except (OSError, DeviceNotFound) as e:
                self._fault = f"speaker '{self.name}' could not {what}: {e}"

        self._worker.submit(run)

    def _start_stream(self) -> None:
        if self._stream is None:  # a reopen failed: try again now that there is audio
            self._find_and_open()
        self._stream.start_stream()
        self._last_pull = time.monotonic()  # started: from now on it must keep asking

    def _stop_stream(self) -> None:
        if self._stream is not None and self._stream.is_active():
            self._stream.stop_stream()

    def _start(self) -> None:
        self._on_worker("start", self._start_stream)

    def _stop(self) -> None:
        # The buffer is already empty (flushed or played out), so from the next callback on
        # PortAudio gets silence; stopping plays what it still holds, at most the output
        # latency. (PyAudio offers no Pa_AbortStream to drop even that.)
        self._on_worker("stop", self._stop_stream)

    def _reopen(self) -> None:
        """The old stream, and the thread that may be stuck in it, are left behind: the stream
        is closed there if that thread ever comes back. The new one opens on a new thread."""
        old_worker, old_stream = self._worker, self._stream

        def close_old() -> None:
            if old_stream is not None:
                with contextlib.suppress(OSError):
                    old_stream.close()

        old_worker.submit(close_old)
        old_worker.submit(_quit)
        self._worker = _Worker()
        self._stream = None
        self._on_worker("reopen", self._find_and_open)

    def suspend(self) -> None:
        """Close the stream (PortAudio is about to be restarted); `resume()` reopens it."""
        self._halt()

        def _close() -> None:
            self._stop_stream()
            if self._stream is not None:
                self._stream.close()
                self._stream = None

        self._worker.submit(_close).result(timeout=5)

    def resume(self) -> None:
        self._worker.submit(self._find_and_open).result(timeout=5)

    def close(self) -> None:
        with contextlib.suppress(concurrent.futures.TimeoutError, OSError):
            self.suspend()
        self._worker.submit(_quit)


def wav_writer(path: Path) -> Any:
    """A 24 kHz mono WAV open for writing what is played; its owner closes it."""
    w = wave.open(str(path), "wb")  # noqa: SIM115 - kept open by the caller
    w.setnchannels(1)
    w.setsampwidth(SAMPLE_BYTES)
    w.setframerate(CLOUD_RATE)
    return w


class WavSpeaker(Speaker):
    """Writes what would be played to a 24 kHz mono WAV file (or, with no path, nowhere).

    `paced`: clocked like a real device, one 20 ms period at a time, silence on underrun.
    Otherwise audio is written as soon as it arrives, and "played" means "written".
    """

    def __init__(self, path: Path | None, jitter_ms: int, paced: bool, volume: float = 1.0) -> None:
        super().__init__(jitter_ms if paced else 0, volume)
        self.name = str(path) if path else "no speaker"
        self.paced = paced
        self._wav: Any = None
        if path is not None:
            self._wav = wav_writer(path)  # open for the daemon's life
        self._wake = asyncio.Event()
        self._closed = False

    def _fed(self) -> None:
        self._wake.set()

    def _start(self) -> None:
        self._wake.set()

    def _stop(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._closed:
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.paced:
                await self._play_paced()
            else:
                pcm = self._render(1 << 30, pad=False)
                if pcm:
                    self._write(pcm)
                else:
                    self._wake.clear()
                    await self._wake.wait()

    async def _play_paced(self) -> None:
        t0 = time.monotonic()
        n = 0
        while self._running and not self._closed:
            self._write(self._render(PERIOD_SAMPLES, pad=True))
            n += 1
            delay = t0 + n * PERIOD_MS / 1000 - time.monotonic()
            await asyncio.sleep(max(0.0, delay))

    def _write(self, pcm: bytes) -> None:
        if self._wav is not None:
            self._wav.writeframes(pcm)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._wav is not None:
            self._wav.close()
