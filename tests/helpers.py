"""Shared test helpers: speech from espeak-ng, WAV files, ALSA file devices, event logs."""

from __future__ import annotations

import asyncio
import contextlib
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


def poll(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """`wait_until` for tests that drive processes from plain (not async) code."""
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


def asoundrc(tmp: Path, mic_raw: Path, speaker_raw: Path, mic: str = "testmic") -> Path:
    """ALSA config whose `mic` reads `mic_raw` (a file, or a FIFO fed at real time) and
    `testspk` writes `speaker_raw` (a file, or a FIFO drained at real time)."""
    path = tmp / "asoundrc"
    path.write_text(
        "</usr/share/alsa/alsa.conf>\n"
        f'pcm.{mic} {{ type file; slave.pcm "null"; file "/dev/null"; infile "{mic_raw}"; '
        'format "raw"; hint { show on description "test mic" } }\n'
        f'pcm.testspk {{ type file; slave.pcm "null"; file "{speaker_raw}"; format "raw"; '
        'hint { show on description "test speaker" } }\n'
    )
    return path


CONVERSATION = ["connecting", "listening", "thinking", "preamble", "answering", "follow_up", "idle"]


def check_conversation(
    events: list[dict[str, Any]],
    record: list[dict[str, Any]],
    mic_pcm: bytes,
    received_turn: bytes,
    played: bytes,
    heard: bytes,
    preroll_ms: int = 300,
) -> None:
    """What one woken conversation must look like from the outside, whatever the audio path.

    `events`: the daemon's events log; `record`: the emulator's record of client events;
    `mic_pcm`: what the microphone heard; `received_turn`: the turn audio the emulator
    saved; `played`: what reached the speaker; `heard`: what should have (see `reply_heard`).
    """
    from device.core.audio import CLOUD_RATE, MIC_RATE, resample
    from tests.sdk import validate_client_event

    assert [e["word"] for e in events if e["event"] == "wake"] == ["Okay Nabu"]
    assert states(events) == CONVERSATION
    leds = [e["pattern"] for e in events if e["event"] == "led"]
    assert leds == ["idle", *CONVERSATION], leds
    phases = [e["phase"] for e in events if e["event"] == "playback_start"]
    assert phases == ["commentary", "final_answer"]

    # nothing left the device before the wake word: the only connection came after it
    origin = next(e["clock_origin"] for e in events if e["event"] == "ready")
    wake = next(e for e in events if e["event"] == "wake")
    opened = [r for r in record if r.get("connection") == "open"]
    assert len(opened) == 1 and opened[0]["mono"] > origin + wake["t"]

    # every client event is one the SDK knows, with no field it does not declare
    sent = [r["event"] for r in record if "event" in r]
    for ev in sent:
        validate_client_event(ev)
    assert sent[0]["type"] == "session.update"
    assert [e["type"] for e in sent[-2:]] == ["input_audio_buffer.commit", "response.create"]

    # the server received the microphone audio from the pre-roll point to the turn's end,
    # every sample exactly once, resampled to 24 kHz
    turn = next(e for e in events if e["event"] == "turn_end")
    assert turn["start_sample"] == wake["audio_ms"] * 16 - preroll_ms * 16
    mic = mic_pcm + bytes(2 * turn["end_sample"])  # silence after the recording ends
    expected = resample(
        mic[2 * turn["start_sample"] : 2 * turn["end_sample"]], MIC_RATE, CLOUD_RATE
    )
    assert received_turn == expected
    assert next(e["ms"] for e in events if e["event"] == "audio_sent") == len(expected) // 48

    # the speaker got exactly the wake sound and what the server sent (an unpaced output pads
    # gaps with zeros)
    assert np.array_equal(nonzero(played), nonzero(heard))


def reply_heard(scenario: Any, earcons: tuple[str, ...] = ("wake",)) -> bytes:
    """What the speaker plays in one default conversation: the wake sound, the preambles and
    the answer the emulator speaks."""
    from device.core.earcons import earcon
    from device.emulator.voice import speak

    sounds = b"".join(earcon(kind) for kind in earcons)
    preambles = b"".join(speak(t, "commentary") for t in scenario.preambles)
    return sounds + preambles + speak(scenario.answer, "final_answer")


class _PacedFifo:
    """One end of a FIFO that an ALSA `file` device has at the other, worked by a thread at
    the pace of real audio (one `chunk` every 20 ms), that can `stall` (stop, keep it open)
    like a failing device. PortAudio opens and closes every device when it starts: the
    thread reopens the FIFO whenever the other side goes away."""

    mode = "rb"

    def __init__(self, path: Path) -> None:
        import os
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
        import os

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


class Daemon:
    """`voice-device run` as its own process, hearing silence (a paced WAV), with a control
    socket, its state in the test's folder, and a configuration file the test may rewrite."""

    def __init__(self, tmp: Path, port: int, env: dict[str, str] | None = None) -> None:
        import os
        import sys

        self.tmp = tmp
        self.socket = tmp / "run" / "control.sock"
        self.hooks = tmp / "hooks.txt"
        self.config = tmp / "config.toml"
        self.log = tmp / "daemon.log"
        self.events = tmp / "events.jsonl"
        hook = "echo $VOICE_DEVICE_STATE $VOICE_DEVICE_PREVIOUS_STATE $VOICE_DEVICE_REASON"
        self.base_config = f"""
[cloud]
endpoint = "http://127.0.0.1:{port}"
[turn]
follow_up_ms = 1000
no_speech_timeout_ms = 1000
[button]
enabled = false
[leds]
backend = "none"
[hooks]
command = '{hook} >> {self.hooks}'
"""
        self.config.write_text(self.base_config)
        self.wav = write_wav(tmp / "quiet.wav", silence(300))
        self.proc: Any = None
        self.argv = [
            *(sys.executable, "-m", "device", "run", "--input-wav", str(self.wav)),
            *("--output-wav", str(tmp / "reply.wav")),
            *("--control-socket", str(self.socket), "--state-dir", str(tmp / "state")),
            *("--events-log", str(self.events)),
        ]
        self.env = {
            **os.environ,
            "AZURE_OPENAI_API_KEY": "test-key",
            "VOICE_DEVICE_CONFIG": str(self.config),
            **(env or {}),
        }

    async def start(self, wrapper: list[str] | None = None) -> None:
        import asyncio

        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *(wrapper or []), *self.argv, env=self.env, stderr=err
            )
        await wait_until(self.answers, 30, "the control socket")

    def answers(self) -> bool:
        from device.adapters.control import ControlError, request

        if self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"the daemon exited: {self.log.read_text()[-2000:]}")
        try:
            return bool(request("status", self.socket, 1)["ok"])
        except ControlError:
            return False

    async def ask(self, line: str, timeout: float = 30) -> dict[str, Any]:
        import asyncio

        from device.adapters.control import request

        return await asyncio.to_thread(request, line, self.socket, timeout)

    def states(self) -> list[str]:
        return [e["state"] for e in read_jsonl(self.events) if e["event"] == "state"]

    async def stop(self) -> int:
        import asyncio
        import signal

        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return int(await asyncio.wait_for(self.proc.wait(), 10))

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def cli(self, *args: str) -> Any:
        import subprocess
        import sys

        return subprocess.run(
            [sys.executable, "-m", "device", *args, "--control-socket", str(self.socket)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
