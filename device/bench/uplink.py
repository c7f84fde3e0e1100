"""Does the service receive the user whole? The uplink-integrity measure.

The real daemon runs in the simulated room (its speaker, wake chime included, heard by its
microphone with delay and reverberation) against the emulator, which keeps every committed
turn as a WAV. The user says the wake word, pauses, and asks a question. What the service
received is compared with what the user said (the clean recording, resampled as the device
resamples it) over the turn, in 100 ms windows where the user is speaking: a window is
*whole* when it correlates ≥ 0.9 with the user's clean speech and is within 3 dB of its
level. Nothing here is timed by the wall clock: the room runs on the microphone's clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters.echo import AEC_LAG
from ..app import App, RunOptions
from ..config import Config
from ..core.audio import CLOUD_RATE, MIC_RATE, resample
from ..emulator import Emulator, Scenario
from ..emulator.voice import espeak
from .harness import config, read_jsonl, read_wav

WAKE = "okay nabu"
COMMAND = "what is the weather like in Paris tomorrow?"
WINDOW = CLOUD_RATE // 10
"""100 ms at the service's rate."""
MIN_CORRELATION = 0.9
MAX_LEVEL_DB = 3.0
SPEECH_BELOW_PEAK_DB = 30.0
"""A window is the user speaking when its level is within this of the loudest window."""
GAINS = (0.1, 0.3, 0.7)
REVERBS = ((5.0, 30.0), (25.0, 120.0))
"""(delay ms, reverberation time constant ms): a speaker next to the mic in a small room,
and one across a larger, livelier one."""
PAUSES_MS = (60, 340, 590, 940)
"""Silence between the end of the wake word and the command: straight on (the wake word
fires about 200 ms after the word ends, so the user is already speaking), the pause espeak
leaves after a phrase, a longer one, and waiting for the chime."""
WAITS_FOR_CHIME_MS = PAUSES_MS[-1]
AFTER_AN_ANSWER = "after an answer"


@dataclass
class Integrity:
    windows: int = 0
    whole: int = 0
    worst: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)
    """(seconds into the turn, correlation, level dB) of the windows that were not whole."""

    @property
    def share(self) -> float:
        return self.whole / self.windows if self.windows else 1.0

    def __iadd__(self, other: Integrity) -> Integrity:
        self.windows += other.windows
        self.whole += other.whole
        self.worst += other.worst
        return self


def compare(sent: np.ndarray, clean: np.ndarray) -> Integrity:
    """`sent` and `clean`: int16 at 24 kHz, the same span of the turn."""
    n = min(len(sent), len(clean)) // WINDOW
    s = sent[: n * WINDOW].astype(np.float64).reshape(n, WINDOW)
    c = clean[: n * WINDOW].astype(np.float64).reshape(n, WINDOW)
    rms_c = np.sqrt(np.mean(c**2, axis=1)) + 1e-9
    rms_s = np.sqrt(np.mean(s**2, axis=1)) + 1e-9
    speaking = 20 * np.log10(rms_c / rms_c.max()) > -SPEECH_BELOW_PEAK_DB
    result = Integrity()
    for i in np.flatnonzero(speaking):
        a, b = s[i] - s[i].mean(), c[i] - c[i].mean()
        corr = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))
        level = float(20 * np.log10(rms_s[i] / rms_c[i]))
        result.windows += 1
        if corr >= MIN_CORRELATION and abs(level) <= MAX_LEVEL_DB:
            result.whole += 1
        else:
            result.worst.append((round(i * 0.1, 1), round(corr, 2), round(level, 1)))
    return result


def user_audio(pause_ms: int, voice: str = "en-us") -> bytes:
    """Half a second of quiet, the wake word, `pause_ms` of silence, the command."""
    pause = bytes(2 * MIC_RATE * pause_ms // 1000)
    wake, command = (espeak(text, MIC_RATE, voice=voice) for text in (WAKE, COMMAND))
    return bytes(16_000) + voiced(wake) + pause + command


def voiced(pcm: bytes, floor: int = 100) -> bytes:
    """`pcm` without the silence espeak leaves after the phrase."""
    x = np.frombuffer(pcm, "<i2")
    return pcm[: 2 * (int(np.flatnonzero(np.abs(x) > floor)[-1]) + 1)]


async def _service(
    tmp: Path, answer: str, wake: dict[str, Any] | None = None, **audio: Any
) -> tuple[Emulator, Config]:
    """The emulator (keeping each committed turn in `tmp`/turns) answering `answer`, and
    the device's configuration for it (`audio`: settings of the audio section; `wake`: of
    the wake section)."""
    tmp.mkdir(parents=True, exist_ok=True)
    emu = Emulator(
        Scenario(preambles=[], answer=answer, think_ms=0, speedup=50.0), save_audio=tmp / "turns"
    )
    await emu.start("127.0.0.1", 0)
    cfg = config(
        f"http://127.0.0.1:{emu.port}",
        button={"enabled": False},
        turn={"follow_up_ms": 0},
        **({"audio": audio} if audio else {}),
        **({"wake": wake} if wake else {}),
    )
    return emu, cfg


async def one_run(
    user: bytes,
    room_kw: dict[str, Any] | None,
    echo_cancellation: bool,
    tmp: Path,
) -> Integrity:
    """One wake and question; `room_kw` None: a microphone with no echo path at all."""
    events = await run_device(user, room_kw, echo_cancellation, tmp)
    return received(user, events, tmp / "turns", AEC_LAG if echo_cancellation else 0)


async def run_device(
    user: bytes,
    room_kw: dict[str, Any] | None,
    echo_cancellation: bool,
    tmp: Path,
    wake: dict[str, Any] | None = None,
) -> Path:
    """The daemon hearing `user` in the room until it is over; its events log."""
    from ..adapters.room import Room

    emu, cfg = await _service(tmp, "Sunny.", wake, echo_cancellation=echo_cancellation)
    room = Room(user + bytes(64_000), paced=False, **(room_kw or {"echo_gain": 0.0}))
    events = tmp / "events.jsonl"
    app = App(cfg, RunOptions(room=room, events_log=events, leds="none", signals=False))
    try:
        await asyncio.wait_for(app.run(), 60)
    finally:
        await emu.close()
    return events


async def one_run_after_answer(user: bytes, room_kw: dict[str, Any], tmp: Path) -> Integrity:
    """The same wake and question, once the device has answered a first question (a
    conversation earlier, so its echo canceller and subtractor have heard the room, as on
    a device that has spoken since it started): the second turn is measured."""
    from ..adapters.room import Room
    from .echo import PLAIN_ANSWER

    emu, cfg = await _service(tmp, PLAIN_ANSWER)
    first = bytes(16_000) + espeak(f"{WAKE}, {COMMAND}", MIC_RATE)
    room = Room(first + bytes(32_000), paced=False, jitter_ms=30_000, **room_kw)
    events = tmp / "events.jsonl"
    app = App(cfg, RunOptions(room=room, events_log=events, leds="none", signals=False))
    seen = {"answered": False, "asked": False}

    def cue(frame: int) -> bytes | None:
        state = app.machine.state.value
        seen["answered"] |= state == "answering"
        if seen["answered"] and state in ("follow_up", "idle") and not seen["asked"]:
            seen["asked"] = True
            return user + bytes(64_000)
        return None

    room.cue = cue
    try:
        await asyncio.wait_for(app.run(), 90)
    finally:
        await emu.close()
    return received(room.mic.recording, events, tmp / "turns", AEC_LAG, turn=1)


def received(user: bytes, events_log: Path, turns: Path, lag: int = 0, turn: int = 0) -> Integrity:
    """How whole turn `turn` (0: the first) the emulator saved in `turns` is, against
    `user` (what the user said, 16 kHz, from the start of the microphone stream) over the
    span the events log's `turn_end` names. `lag`: samples by which the device's stream runs
    late (the canceller's, when it is on: `adapters.echo.AEC_LAG`)."""
    events = read_jsonl(events_log)
    ended = [e for e in events if e["event"] == "turn_end"][turn]
    start, end = ended["start_sample"], ended["end_sample"]
    heard = (user + bytes(2 * end))[2 * start : 2 * end]
    clean = np.frombuffer(resample(heard, MIC_RATE, CLOUD_RATE), "<i2")
    sent = np.frombuffer(read_wav(standing_turn(events, turns, turn)), "<i2")
    return compare(sent[lag * CLOUD_RATE // MIC_RATE :], clean)


def standing_turn(events: list[dict[str, Any]], turns: Path, turn: int = 0) -> Path:
    """The emulator's saved turn that turn `turn` of the events log ended as: one sent at
    a pause the user then spoke on after was saved as well, before it was sent again whole
    (`turn_withdrawn`)."""
    sent = [i for i, e in enumerate(events) if e["event"] == "audio_sent"][turn]
    commits = sum(1 for e in events[:sent] if e["event"] == "turn_commit")
    return sorted(turns.glob("*.wav"))[commits - 1]


async def measure(quick: bool) -> dict[str, dict[str, Integrity]]:
    rooms: list[tuple[str, dict[str, Any] | None]] = [("no echo path", None)]
    for gain in GAINS:
        for delay, reverb in REVERBS[:1] if quick else REVERBS:
            rooms.append(
                (
                    f"gain {gain} / {reverb:g} ms",
                    {"echo_gain": gain, "delay_ms": delay, "reverb_ms": reverb},
                )
            )
    pauses = PAUSES_MS[:2] if quick else PAUSES_MS
    table: dict[str, dict[str, Integrity]] = {}
    with tempfile.TemporaryDirectory() as d:
        for aec in (True, False):
            for name, room_kw in rooms:
                row = table.setdefault(name, {})
                total = row.setdefault("AEC on" if aec else "AEC off", Integrity())
                for pause in pauses:
                    folder = Path(d) / f"{name}-{aec}-{pause}".replace(" ", "_").replace("/", "")
                    total += await one_run(user_audio(pause), room_kw, aec, folder)
        for name, room_kw in rooms:  # the same, on a device that has spoken before
            after = table[name].setdefault(AFTER_AN_ANSWER, Integrity())
            if room_kw is None:
                continue  # (no echo path: nothing to learn)
            for pause in pauses:
                folder = Path(d) / f"{name}-after-{pause}".replace(" ", "_").replace("/", "")
                after += await one_run_after_answer(user_audio(pause), room_kw, folder)
    return table


def run(quick: bool = False, out: Path | None = None) -> int:
    table = asyncio.run(measure(quick))
    print("uplink integrity: user's 100 ms speech windows received whole (corr ≥ 0.9, ±3 dB);")
    print(f"'{AFTER_AN_ANSWER}': AEC on, the device having answered a question before")
    print(f"{'room':<22} {'AEC on':>16} {'AEC off':>16} {AFTER_AN_ANSWER:>16}")
    for name, row in table.items():
        cells = [
            f"{r.whole}/{r.windows} {100 * r.share:5.1f} %" if r.windows else "—"
            for r in row.values()
        ]
        print(f"{name:<22} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16}")
    if out is not None:
        data = {
            name: {
                k: {"windows": v.windows, "whole": v.whole, "worst": v.worst[:20]}
                for k, v in row.items()
            }
            for name, row in table.items()
        }
        out.write_text(json.dumps(data, indent=1) + "\n")
    return 0
