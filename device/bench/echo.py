"""Does the device wake itself, and does it still hear the user over its own voice?

The real daemon runs in a simulated room (its speaker heard by its microphone, with delay
and reverberation, at several loudnesses) against the emulator. Two situations:

- self: the assistant's answer contains the wake word, twice; nobody else speaks. Any
  barge-in is the device waking itself.
- user: the answer has no wake word; 0.8 s into it the user says "okay nabu, stop". A
  barge-in is a success.

Then the rows of `bench.talkover`: talking over the answer without the wake word.

Each wake-during-playback rule (and echo cancellation) is measured on the same runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..app import App, RunOptions
from ..config import Secret, parse_config
from ..core.audio import FRAME_MS, MIC_RATE
from ..emulator import Emulator, Scenario
from ..emulator.voice import espeak

QUESTION = "okay nabu, can you tell me something?"
SELF_ANSWER = "Okay nabu. That is all you need to say to wake me: okay nabu."
"""Said clearly enough that without a guard it wakes the device in every room and at every
alignment of the model's 30 ms stride (the peak score is 0.94 or more; a sentence that only
just crossed the threshold made the test depend on the machine's load)."""
PLAIN_ANSWER = (
    "Here is something. The tallest mountain on Earth is Mount Everest, at about eight "
    "thousand eight hundred metres above the sea."
)
BARGE_IN = "okay nabu, stop"


@dataclass(frozen=True)
class Setup:
    name: str
    during_playback: str
    echo_cancellation: bool
    playback_threshold: float = 0.97


SETUPS = [
    Setup("no guard", "threshold", False, playback_threshold=0.01),
    Setup("threshold 0.97", "threshold", False),
    Setup("echo-match", "echo-match", False),
    Setup("AEC only", "threshold", True, playback_threshold=0.01),
    Setup("echo-match + AEC", "echo-match", True),
]
ROOMS: list[dict[str, Any]] = [
    {"echo_gain": g, "delay_ms": d, "reverb_ms": r}
    for g in (0.1, 0.3, 0.7)
    for d, r in ((5, 30), (25, 120))
]


async def one_run(
    setup: Setup, room_kw: dict[str, Any], answer: str, user_barge_in: bool, tmp: Path
) -> bool:
    """One conversation in the room; True if a barge-in happened during the answer."""
    from ..adapters.room import Room

    tmp.mkdir(parents=True, exist_ok=True)
    emu = Emulator(Scenario(preambles=[], answer=answer, think_ms=50, speedup=50.0))
    await emu.start("127.0.0.1", 0)
    cfg = parse_config(
        {
            "cloud": {"endpoint": f"http://127.0.0.1:{emu.port}"},
            "gpio": {"pin_factory": "mock"},
            "button": {"enabled": False},
            # (the wake word over the answer: talking over it is measured in `talkover`)
            "turn": {"follow_up_ms": 500, "no_speech_timeout_ms": 1500, "barge_in": "wake"},
            "audio": {"echo_cancellation": setup.echo_cancellation, "earcons": []},
            "wake": {
                "during_playback": setup.during_playback,
                "playback_threshold": setup.playback_threshold,
            },
        }
    )
    cfg = dataclasses.replace(cfg, api_key=Secret("bench"))
    question = espeak(QUESTION, MIC_RATE)
    room = Room(bytes(8000) + question + bytes(32_000), paced=False, jitter_ms=30_000, **room_kw)
    app = App(
        cfg, RunOptions(room=room, events_log=tmp / "events.jsonl", leds="none", signals=False)
    )
    said: dict[str, int] = {}
    barge_in = espeak(BARGE_IN, MIC_RATE)

    def cue(frame: int) -> bytes | None:
        state = app.machine.state.value
        if state == "answering" and "answering" not in said:
            said["answering"] = frame
        start = said.get("answering")
        if user_barge_in and start is not None and frame - start == 800 // FRAME_MS:
            return barge_in
        return None

    room.cue = cue
    try:
        await asyncio.wait_for(app.run(), 30)
    except TimeoutError:
        return True  # it kept waking itself: a conversation with its own echo never ends
    finally:
        await emu.close()
    events = [json.loads(x) for x in (tmp / "events.jsonl").read_text().splitlines()]
    return any(e["event"] == "state" and e.get("reason") == "barge-in" for e in events)


async def measure(quick: bool) -> dict[str, Any]:
    rooms = ROOMS[::3] if quick else ROOMS
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        for setup in SETUPS:
            per_gain: dict[str, dict[str, int]] = {}
            for n, room_kw in enumerate(rooms):
                folder = Path(d) / f"{setup.name}-{n}"
                row = per_gain.setdefault(
                    str(room_kw["echo_gain"]), {"runs": 0, "self": 0, "user": 0}
                )
                row["runs"] += 1
                row["self"] += await one_run(setup, room_kw, SELF_ANSWER, False, folder / "s")
                row["user"] += await one_run(setup, room_kw, PLAIN_ANSWER, True, folder / "u")
            results[setup.name] = per_gain
    return results


def run(quick: bool = False, out: Path | None = None) -> int:
    logging.getLogger().setLevel(logging.ERROR)
    results = asyncio.run(measure(quick))
    gains = sorted({g for r in results.values() for g in r}, key=float)
    print("The wake word while the device speaks: a simulated room, the device's voice reaching")
    print("the microphone at 0.1, 0.3 and 0.7 of the user's level, two reverberation profiles.")
    print("woke itself: runs where its own 'okay nabu' interrupted it (lower is better)")
    print("heard the user: runs where the user's 'okay nabu' interrupted it (higher is better)\n")
    head = "".join(f"  echo {g:<4}" for g in gains)
    print(f"{'rule':<18}{'woke itself':>12}{'heard the user':>16}   heard the user by echo level")
    print(f"{'':<46}{head}")
    for name, per_gain in results.items():
        runs = sum(r["runs"] for r in per_gain.values())
        woke = sum(r["self"] for r in per_gain.values())
        heard = sum(r["user"] for r in per_gain.values())
        by_gain = "".join(f"  {per_gain[g]['user']:>3} / {per_gain[g]['runs']:<3}" for g in gains)
        print(f"{name:<18}{woke:>6} / {runs:<5}{heard:>9} / {runs:<5}{by_gain}")
    from . import talkover

    talk = talkover.measure_and_print(quick)
    if out is not None:
        out.write_text(json.dumps({**results, "talk_over": talk}, indent=2))
    return 0
