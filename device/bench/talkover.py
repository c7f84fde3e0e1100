"""Talking over the answer (`turn.barge_in = "voice"`), in the simulated room.

The real daemon runs in the room (its speaker heard by its microphone, with delay and
reverberation) against the emulator, as in `bench echo`. Each run is a conversation: a
question with the wake word, the answer, a follow-up question without it (so the canceller
has heard the room once, as it has on a device that has spoken before), and a second answer
over which something happens 0.8 s in:

- nothing (an answer with the wake word in it, or without): any interruption is the device
  interrupting itself;
- the user says "stop", or a correction of several words: an interruption is a success if
  it comes within 300 ms of the words' onset (in samples, exactly), and the words must
  reach the service whole (the uplink-integrity measure of `bench uplink`: 100 ms windows
  correlating ≥ 0.9 with what the user said, within 3 dB);
- a cough, a door, or another voice 15 dB under the user's: an interruption is a false one.

The user speaks with another voice than the device's. Nothing here is timed by the wall
clock: the room runs on the microphone's clock.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters.echo import AEC_LAG
from ..app import App, RunOptions
from ..core.audio import CLOUD_RATE, FRAME_MS, FRAME_SAMPLES, MIC_RATE, resample
from ..emulator import Emulator, Scenario
from ..emulator.voice import espeak
from .echo import PLAIN_ANSWER, QUESTION, SELF_ANSWER
from .harness import config, louder, read_jsonl, read_wav
from .uplink import GAINS, REVERBS, Integrity, compare

AGAIN = "and what about tomorrow?"
STOP = "stop"
CORRECTION = "no, I meant the one in Paris"
BACKGROUND = "and then she told me the whole story about the garden and the neighbours"


def user_says(text: str) -> bytes:
    """The user's voice: not the device's (espeak's en-us)."""
    return espeak(text, MIC_RATE, voice="en-gb-x-rp", pitch=65)


def other_says(text: str) -> bytes:
    """Someone else in the room."""
    return espeak(text, MIC_RATE, voice="en-029", pitch=35)


WORDS = ("stop", "correction")
"""What the user says over the answer (the rest must not interrupt it)."""
AT_MS = 800
WITHIN_MS = 300


def _sound(spec: list[str], seconds: float, gain_db: float) -> bytes:
    """A sound made by sox: a cough (a short burst of band-limited noise) or a door."""
    out = subprocess.run(
        [
            *("sox", "-R", "-n", "-r", str(MIC_RATE), "-b", "16", "-c", "1", "-t", "raw", "-"),
            *("synth", str(seconds)),
            *spec,
            *("gain", "-n", str(gain_db)),
        ],
        capture_output=True,
        check=True,
    )
    return out.stdout


def sounds() -> dict[str, bytes]:
    """What happens over the answer, at the user's level (espeak's) or as stated."""
    return {
        "stop": user_says(STOP),
        "correction": user_says(CORRECTION),
        "cough": _sound(
            ["pinknoise", "band", "900", "700", "fade", "q", "0.02", "0.35", "0.28"], 0.35, -6
        ),
        "door": _sound(["brownnoise", "fade", "q", "0.005", "0.25", "0.24"], 0.25, -3),
        "background speech -15 dB": louder(other_says(BACKGROUND), -15),
    }


def onset(pcm: bytes, below_peak_db: float = 30.0) -> int:
    """The first sample of the first 20 ms frame within `below_peak_db` of the loudest."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    n = len(x) // FRAME_SAMPLES
    rms = np.sqrt(np.mean(x[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES) ** 2, axis=1)) + 1e-9
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > -below_peak_db)
    return int(loud[0]) * FRAME_SAMPLES if len(loud) else 0


@dataclass
class Run:
    interrupted: bool
    latency_ms: float | None = None
    """From the words' onset to the interruption (None: none, or before the words)."""
    integrity: Integrity = field(default_factory=Integrity)
    answers: int = 0
    words_at: int | None = None
    """The microphone sample where the words over the answer began (if any were said)."""


async def one_run(room_kw: dict[str, Any], answer: str, over: bytes | None, tmp: Path) -> Run:
    from ..adapters.room import Room

    tmp.mkdir(parents=True, exist_ok=True)
    emu = Emulator(
        Scenario(preambles=[], answer=answer, think_ms=50, speedup=50.0),
        save_audio=tmp / "turns",
        record=tmp / "record.jsonl",
    )
    await emu.start("127.0.0.1", 0)
    cfg = config(
        f"http://127.0.0.1:{emu.port}",
        button={"enabled": False},
        turn={"follow_up_ms": 3000, "no_speech_timeout_ms": 1500, "barge_in": "voice"},
        audio={"earcons": []},
    )
    question = user_says(QUESTION)
    again = user_says(AGAIN)
    room = Room(bytes(8000) + question + bytes(32_000), paced=False, jitter_ms=30_000, **room_kw)
    events = tmp / "events.jsonl"
    app = App(cfg, RunOptions(room=room, events_log=events, leds="none", signals=False))
    seen = {"answers": 0}
    shown = {"state": ""}
    at: dict[str, int] = {}

    def cue(frame: int) -> bytes | None:
        state = app.machine.state.value
        if state != shown["state"]:
            shown["state"] = state
            if state == "answering":
                seen["answers"] += 1
                at["answer"] = frame
            if state == "follow_up" and seen["answers"] == 1:
                return again
        if (
            over is not None
            and seen["answers"] == 2
            and "over" not in at
            and frame - at["answer"] == AT_MS // FRAME_MS
        ):
            at["over"] = frame
            return over
        return None

    room.cue = cue
    try:
        await asyncio.wait_for(app.run(), 120)
    finally:
        await emu.close()
    log = read_jsonl(events)
    cut = [e for e in log if e["event"] == "state" and e.get("reason") == "talked over"]
    run = Run(bool(cut), answers=seen["answers"])
    if not cut or over is None or "over" not in at:
        return run
    start = at["over"] * FRAME_SAMPLES - FRAME_SAMPLES  # (the cue is before the frame it is in)
    words_at = run.words_at = start + onset(over)
    cut_at = cut[0]["audio_ms"] * MIC_RATE // 1000
    if cut_at >= words_at:
        run.latency_ms = (cut_at - words_at) * 1000 / MIC_RATE
        run.integrity = _words_received(room.mic.recording, log, tmp / "turns", words_at, over)
    return run


def _words_received(
    user: bytes, log: list[dict[str, Any]], turns: Path, words_at: int, words: bytes
) -> Integrity:
    """How whole the words said over the answer reached the service: the turn the
    interruption opened (committed after it, the last one saved), against the words alone,
    over their span. Words in no turn the service was sent (a turn given up as "no
    speech") did not reach it: none of their windows is whole."""
    cut = next(i for i, e in enumerate(log) if e.get("reason") == "talked over")
    ends = [e for e in log[cut:] if e["event"] == "turn_end"]
    committed = any(e["event"] == "turn_commit" for e in log[cut:])
    words_end = words_at + len(words) // 2
    if not ends or not committed:
        clean = np.frombuffer(
            resample(user[2 * words_at : 2 * words_end], MIC_RATE, CLOUD_RATE), "<i2"
        )
        return compare(np.zeros_like(clean), clean)
    turn = ends[-1]
    saved = sorted(turns.glob("*.wav"))[-1]
    sent = np.frombuffer(read_wav(saved), "<i2")
    start = turn["start_sample"]
    # what the user said over the words' span; what of it came before the turn is lost
    end = min(words_end, turn["end_sample"])
    clean = np.frombuffer(resample(user[2 * words_at : 2 * end], MIC_RATE, CLOUD_RATE), "<i2")
    offset = (words_at - start + AEC_LAG) * CLOUD_RATE // MIC_RATE  # (the canceller is on)
    if offset >= 0:
        return compare(sent[offset : offset + len(clean)], clean)
    got = sent[: len(clean) + offset]
    return compare(np.concatenate((np.zeros(-offset, sent.dtype), got)), clean)


@dataclass
class Row:
    runs: int = 0
    answers: int = 0
    interrupted: int = 0
    """Runs (or answers, with nothing over them) the device interrupted; with words over
    the answer, only interruptions after the words began count."""
    in_time: int = 0
    latencies: list[float] = field(default_factory=list)
    integrity: Integrity = field(default_factory=Integrity)

    def add(self, r: Run, words: bool) -> None:
        self.runs += 1
        self.answers += r.answers
        self.interrupted += r.latency_ms is not None if words else r.interrupted
        if r.latency_ms is not None:
            self.latencies.append(r.latency_ms)
            self.in_time += r.latency_ms <= WITHIN_MS
        self.integrity += r.integrity

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "runs": self.runs,
            "answers": self.answers,
            "interrupted": self.interrupted,
            "within_300_ms": self.in_time,
            "latency_ms_median": lat[len(lat) // 2] if lat else None,
            "latency_ms_max": lat[-1] if lat else None,
            "windows_whole": self.integrity.whole,
            "windows": self.integrity.windows,
        }


async def measure(runs: int) -> dict[str, dict[str, Row]]:
    """Per echo gain: each situation's row, over both reverberation profiles."""
    what = sounds()
    table: dict[str, dict[str, Row]] = {}
    with tempfile.TemporaryDirectory() as d:
        for gain in GAINS:
            rows = table.setdefault(str(gain), {})
            for delay, reverb in REVERBS:
                room = {"echo_gain": gain, "delay_ms": delay, "reverb_ms": reverb}
                for i in range(runs):
                    folder = Path(d) / f"{gain}-{reverb}-{i}"
                    answer = SELF_ANSWER if i % 2 else PLAIN_ANSWER
                    rows.setdefault("nothing", Row()).add(
                        await one_run(room, answer, None, folder / "n"), False
                    )
                    for name, sound in what.items():
                        rows.setdefault(name, Row()).add(
                            await one_run(room, answer, sound, folder / name.split()[0]),
                            name in WORDS,
                        )
    return table


def measure_and_print(quick: bool = False) -> dict[str, Any]:
    """The table, printed; returned as data."""
    table = asyncio.run(measure(2 if quick else 13))
    print("\nTalking over the answer (turn.barge_in = voice), over the second answer of a")
    print("conversation in the simulated room, both reverberation profiles per echo level:")
    print(
        f"{'echo':<6}{'over the answer':<26}{'interrupted':>14}{'≤ 300 ms':>10}"
        f"{'median':>8}{'words whole':>14}"
    )
    for gain, rows in table.items():
        for name, row in rows.items():
            d = row.as_dict()
            base = row.answers if name == "nothing" else row.runs
            unit = "answers" if name == "nothing" else "runs"
            whole = f"{d['windows_whole']}/{d['windows']}" if d["windows"] else "—"
            median = f"{d['latency_ms_median']:.0f}" if d["latency_ms_median"] is not None else "—"
            timely = f"{d['within_300_ms']}" if name in WORDS else "—"
            print(
                f"{gain:<6}{name:<26}{d['interrupted']:>5} / {base:<3} {unit:<7}"
                f"{timely:>4}{median:>8}{whole:>14}"
            )
    return {g: {n: r.as_dict() for n, r in rows.items()} for g, rows in table.items()}
