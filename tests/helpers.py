"""Shared test helpers: speech from espeak-ng, WAV files, ALSA file devices, event logs."""

from __future__ import annotations

import asyncio
import contextlib
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


class FifoMic:
    """A real-time microphone for the ALSA tests: an ALSA `file` device reads a FIFO that a
    thread keeps fed at the pace of a real microphone (silence unless told to `say`
    something), and that can `stall` (stop feeding, keep it open) like a failing device.

    PortAudio opens and closes every device when it starts; the writer simply reopens the
    FIFO whenever its reader goes away.
    """

    FRAME = 640  # 20 ms at 16 kHz

    def __init__(self, path: Path) -> None:
        import os
        import queue
        import threading

        self.path = path
        os.mkfifo(path)
        self._pending: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.stalled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def say(self, pcm: bytes) -> None:
        for i in range(0, len(pcm), self.FRAME):
            self._pending.put(pcm[i : i + self.FRAME].ljust(self.FRAME, b"\0"))

    def _next(self) -> bytes:
        try:
            return self._pending.get_nowait()
        except Exception:
            return bytes(self.FRAME)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                f = open(self.path, "wb")  # noqa: SIM115 - reopened whenever the reader leaves
            except OSError:
                time.sleep(0.05)
                continue
            t0, n = time.monotonic(), 0
            try:
                while not self._stop.is_set():
                    if self.stalled.is_set():
                        time.sleep(0.02)
                        t0, n = time.monotonic(), 0
                        continue
                    f.write(self._next())
                    f.flush()
                    n += 1
                    time.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))
            except (BrokenPipeError, ValueError):
                pass
            finally:
                with contextlib.suppress(OSError):
                    f.close()

    def close(self) -> None:
        self._stop.set()
        import os

        with contextlib.suppress(OSError):  # unblock a writer waiting in open()
            os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))


def fifo_asoundrc(tmp: Path, fifo: Path, speaker_raw: Path) -> Path:
    path = tmp / "asoundrc"
    path.write_text(
        "</usr/share/alsa/alsa.conf>\n"
        f'pcm.livemic {{ type file; slave.pcm "null"; file "/dev/null"; infile "{fifo}"; '
        'format "raw"; hint { show on description "real-time test mic" } }\n'
        f'pcm.testspk {{ type file; slave.pcm "null"; file "{speaker_raw}"; format "raw"; '
        'hint { show on description "test speaker" } }\n'
    )
    return path
