"""One harness for the tests and the benchmarks: speech, WAV files, ALSA file devices, the
daemon and the emulator as processes, events logs, and waiting for something to happen.

Everything here drives the real thing (espeak-ng, PortAudio on ALSA `file` plugin devices,
`voice-device run` as a process); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, Secret, parse_config
from ..core.audio import MIC_RATE
from ..emulator.voice import espeak

QUESTION = "okay nabu, what's the weather like today?"
"""The question the tests and benchmarks ask, wake word first."""


def config(endpoint: str, **sections: dict[str, Any]) -> Config:
    """A configuration for a daemon in a test or benchmark: `endpoint`, simulated pins, a
    made-up key, and `sections` over the defaults. The follow-up window opens after every
    reply (`turn.follow_up = "always"`) unless `turn` says otherwise: the emulator's
    answers are statements, which `auto` would not listen on after."""
    data: dict[str, dict[str, Any]] = {
        "cloud": {"endpoint": endpoint},
        "gpio": {"pin_factory": "mock"},
        **sections,
    }
    data["turn"] = {"follow_up": "always", **data.get("turn", {})}
    return dataclasses.replace(parse_config(data), api_key=Secret("test-key"))


# ---------------------------------------------------------------------------------------------
# Audio


def speech(text: str, voice: str = "en-us", wpm: int = 160) -> bytes:
    """`text` spoken by espeak-ng as 16 kHz mono int16."""
    return espeak(text, MIC_RATE, voice=voice, wpm=wpm)


def louder(pcm: bytes, gain_db: float) -> bytes:
    """int16 `pcm` scaled by `gain_db` (negative: quieter), rounded and clipped."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64) * 10 ** (gain_db / 20)
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def silence(seconds: float, rate: int = MIC_RATE) -> bytes:
    return bytes(int(seconds * rate) * 2)


def write_wav(path: Path, pcm: bytes, rate: int = MIC_RATE) -> Path:
    """Mono int16 `pcm` as a WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def read_wav(path: Path) -> bytes:
    """The samples of a WAV file, as written."""
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def asoundrc(
    tmp: Path,
    mic_raw: Path,
    speaker_raw: Path | None,
    mic: str = "testmic",
    speaker: str = "testspk",
) -> Path:
    """ALSA config whose `mic` reads `mic_raw` (a file, or a FIFO fed at real time) and whose
    `speaker` writes `speaker_raw` (a file, or a FIFO drained at real time; None: plays into
    nothing). PortAudio lists both by name."""
    if speaker_raw is None:
        out = f'pcm.{speaker} {{ type null; hint {{ show on description "{speaker}" }} }}\n'
    else:
        out = (
            f'pcm.{speaker} {{ type file; slave.pcm "null"; file "{speaker_raw}"; '
            f'format "raw"; hint {{ show on description "{speaker}" }} }}\n'
        )
    path = tmp / "asoundrc"
    path.write_text(
        "</usr/share/alsa/alsa.conf>\n"
        f'pcm.{mic} {{ type file; slave.pcm "null"; file "/dev/null"; infile "{mic_raw}"; '
        f'format "raw"; hint {{ show on description "{mic}" }} }}\n' + out
    )
    return path


class _PacedFifo:
    """One end of a FIFO that an ALSA `file` device has at the other, worked by a thread at
    the pace of real audio (one `chunk` every 20 ms), that can `stall` (stop, keep it open)
    like a failing device. PortAudio opens and closes every device when it starts: the
    thread reopens the FIFO whenever the other side goes away."""

    mode = "rb"

    def __init__(self, path: Path) -> None:
        import threading

        self.path = path
        os.mkfifo(path)
        self.stalled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _step(self, f: Any) -> bool:
        """Move one chunk; False when the other side has gone."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                f = open(self.path, self.mode)  # noqa: SIM115 - reopened when the other side leaves
            except OSError:
                time.sleep(0.05)
                continue
            t0, n = time.monotonic(), 0
            try:
                with f:
                    while not self._stop.is_set():
                        if self.stalled.is_set():
                            time.sleep(0.02)
                            t0, n = time.monotonic(), 0
                            continue
                        if not self._step(f):
                            break
                        n += 1
                        time.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))
            except (BrokenPipeError, ValueError):
                pass

    def close(self) -> None:

        self._stop.set()
        self.stalled.clear()
        other = os.O_RDONLY if self.mode == "wb" else os.O_WRONLY
        with contextlib.suppress(OSError):  # unblock the thread if it waits in open()
            os.close(os.open(self.path, other | os.O_NONBLOCK))


class FifoMic(_PacedFifo):
    """A real-time microphone for the ALSA tests: the ALSA device reads the FIFO, kept fed
    with silence unless told to `say` something."""

    mode = "wb"
    FRAME = 640  # 20 ms at 16 kHz

    def __init__(self, path: Path) -> None:
        import queue

        self._pending: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        super().__init__(path)

    def say(self, pcm: bytes) -> None:
        for i in range(0, len(pcm), self.FRAME):
            self._pending.put(pcm[i : i + self.FRAME].ljust(self.FRAME, b"\0"))

    def _step(self, f: Any) -> bool:
        try:
            frame = self._pending.get_nowait()
        except Exception:
            frame = bytes(self.FRAME)
        f.write(frame)
        f.flush()
        return True


class FifoSpeaker(_PacedFifo):
    """A real-time speaker for the ALSA tests: the ALSA device writes into the FIFO, drained
    at the pace of a real output (24 kHz), so PortAudio is clocked by it; when it stalls the
    output hangs as a wedged driver's would."""

    CHUNK = 960  # 20 ms at 24 kHz

    def __init__(self, path: Path) -> None:
        self.received = 0
        super().__init__(path)

    def _step(self, f: Any) -> bool:
        data = f.read(self.CHUNK)
        self.received += len(data)
        return bool(data)


# ---------------------------------------------------------------------------------------------
# Processes


@contextlib.contextmanager
def emulator_process(*args: str) -> Iterator[int]:
    """`voice-device emulator` as a process of its own, with `args`; yields its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "device", "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("emulator listening on ws://127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(10)


def alsa_daemon(
    tmp: Path,
    port: int,
    alsa: Path,
    config: str,
    key: str,
    input_device: str = "testmic",
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    """`voice-device run` as a process of its own on the ALSA devices of the asoundrc
    `alsa` (`input_device`, and `testspk`), with `config` as its configuration file; its
    events go to `tmp`/events.jsonl and its stderr to a pipe (read by `stop_daemon`)."""
    cfg = tmp / "config.toml"
    cfg.write_text(config)
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "device", "run", "--config", str(cfg)),
            *("--endpoint", f"http://127.0.0.1:{port}"),
            *("--input-device", input_device, "--output-device", "testspk"),
            *("--events-log", str(tmp / "events.jsonl"), "--leds", "none"),
            # its own control socket: never the machine's, which another daemon may hold
            *("--control-socket", str(tmp / "control.sock")),
            *args,
        ],
        env={
            **os.environ,
            "ALSA_CONFIG_PATH": str(alsa),
            "AZURE_OPENAI_API_KEY": key,
            **(env or {}),
        },
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_daemon(daemon: subprocess.Popen[str], timeout: float) -> str:
    """SIGTERM, which must end it with status 0 within `timeout`; what it wrote to stderr."""
    daemon.send_signal(signal.SIGTERM)
    try:
        assert daemon.wait(timeout) == 0
    finally:
        daemon.kill()
    return daemon.stderr.read() if daemon.stderr else ""


# ---------------------------------------------------------------------------------------------
# Events logs, and waiting


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


def poll(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """`wait_until` for code that drives processes from plain (not async) code."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_for_events(
    path: Path, done: Callable[[list[dict[str, Any]]], bool], timeout: float
) -> list[dict[str, Any]]:
    """The events log at `path` once `done` holds for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = read_jsonl(path)
        if done(events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"timed out; states so far: {states(read_jsonl(path))}")
