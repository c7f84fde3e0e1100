"""Hundreds of conversations in a row, with everything that goes wrong: `voice-device bench soak`.

The real daemon (in this process, so its tasks, threads, file descriptors and memory can be
counted) against the emulator, with a microphone that hears silence until the soak makes
someone speak, as fast as the machine goes. Each conversation is drawn at random (seeded):

- plain: "okay nabu, what time is it?", the answer, the follow-up window runs out
- follow-up: a second question in the follow-up window, without the wake word
- barge-in: the button, or the wake word, during the reply
- typed: `ask` over the control path
- fault: the next connection is refused (503, 401), dropped after a few events, stalled,
  answered with an error, or sent garbage
- mute: muted and unmuted between conversations

After each one the device must be back to idle (or muted, then unmuted) within a timeout:
a conversation that does not end is a stuck state. Resources are sampled after a warm-up
and at the end.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..adapters.speaker import WavSpeaker
from ..app import App, RunOptions
from ..config import Secret, parse_config
from ..core import states as st
from ..core.audio import FRAME_SAMPLES, MIC_RATE, SAMPLE_BYTES
from ..emulator import Emulator, Faults, Scenario
from ..emulator.voice import espeak

FRAME_BYTES = FRAME_SAMPLES * SAMPLE_BYTES
KINDS = ["plain", "follow-up", "button barge-in", "wake barge-in", "typed", "fault", "mute"]
WEIGHTS = [30, 15, 12, 8, 10, 20, 5]
FAULTS: list[dict[str, Any]] = [
    {"reject_status": 503},
    {"reject_status": 401},
    {"drop_after": 3},
    {"drop_after": 8},
    {"drop_after": 20},
    {"stall_after": 6, "stall_s": 2.0},
    {"error_code": "server_error"},
    {"error_code": "rate_limit_exceeded"},
    {"garbage": True},
]
STUCK_S = 15.0
"""A conversation not over after this long (wall time) is stuck."""


class SoakMic:
    """Silence, as fast as it is read, except what the soak makes someone say."""

    name = "soak microphone"
    eof = False
    overflows = 0

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._pending = bytearray()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def open(self) -> None:
        self._open.set()

    async def close(self) -> None:
        self._open.clear()

    async def reopen(self, refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        await self.open()

    def say(self, pcm: bytes) -> None:
        self._pending += pcm

    async def read(self) -> bytes:
        await self._open.wait()
        await asyncio.sleep(0)
        chunk = bytes(self._pending[:FRAME_BYTES])
        del self._pending[:FRAME_BYTES]
        return chunk.ljust(FRAME_BYTES, b"\0")


@dataclasses.dataclass
class Room:
    """What RunOptions.room needs: a microphone and a speaker."""

    mic: SoakMic
    speaker: WavSpeaker
    delay_ms: float = 0.0
    """No echo path: the speaker is never heard by the microphone."""


async def settled_resources(emu: Emulator, app: App) -> dict[str, float]:
    """Resources once the last conversation's connection is gone at both ends (a stalled one
    can take the emulator a second to let go of). A leak does not settle: after 5 s the
    count is taken as it is."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (emu.open_connections or app.link.session is not None):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)  # the handlers' last callbacks
    return resources()


def resources() -> dict[str, float]:
    gc.collect()
    rss = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "tasks": len(asyncio.all_tasks()),
        "rss_mb": rss,
    }


@dataclasses.dataclass
class SoakResult:
    conversations: int = 0
    kinds: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    states: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    stuck: list[str] = dataclasses.field(default_factory=list)
    missed_wakes: int = 0
    barge_ins: int = 0
    warm: dict[str, float] = dataclasses.field(default_factory=dict)
    end: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations,
            "kinds": dict(self.kinds),
            "errors": dict(self.errors),
            "states": dict(self.states),
            "stuck": self.stuck,
            "missed_wakes": self.missed_wakes,
            "barge_ins": self.barge_ins,
            "resources_after_warm_up": self.warm,
            "resources_at_end": self.end,
            "seconds": round(self.seconds, 1),
        }


class Soak:
    def __init__(self, emu: Emulator, app: App, mic: SoakMic, rng: random.Random) -> None:
        self.emu, self.app, self.mic, self.rng = emu, app, mic, rng
        self.question = espeak("okay nabu, what time is it?", MIC_RATE)
        self.follow_up = espeak("and what about tomorrow?", MIC_RATE)
        self.base = emu.scenario

    @property
    def state(self) -> st.State:
        return self.app.machine.state

    async def until(self, done: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    def over(self) -> bool:
        return self.state in (st.State.IDLE, st.State.MUTED) and self.app.link.session is None

    async def settle(self, what: str, result: SoakResult) -> None:
        """Wait for the conversation to end; an error state ends on its own."""
        if not await self.until(self.over, STUCK_S):
            result.stuck.append(f"{what}: still {self.state.value} after {STUCK_S:g} s")
            raise RuntimeError(result.stuck[-1])
        # after a failure the device backs off: let the outage window pass
        await self.until(lambda: self.app.machine.outage.wait(time.monotonic()) == 0, 2)

    async def wake(self, result: SoakResult) -> bool:
        self.mic.say(self.question)
        if await self.until(lambda: not self.over(), 5):
            return True
        result.missed_wakes += 1
        return False

    async def one(self, kind: str, result: SoakResult) -> None:
        if kind == "typed":
            await self.app.verbs("ask", "what time is it?")
        elif kind == "mute":
            self.app.handle(st.SetMute(True))
            await self.until(lambda: not self.mic.is_open, 2)
            await asyncio.sleep(self.rng.uniform(0, 0.05))
            self.app.handle(st.SetMute(False))
            await self.until(lambda: self.state is st.State.IDLE, 2)
            return
        elif kind == "fault":
            fault = self.rng.choice(FAULTS)
            self.emu.scenario = dataclasses.replace(self.base, faults=Faults(**fault))
            try:
                await self.wake(result)
                await self.settle(f"fault {fault}", result)
            finally:
                self.emu.scenario = self.base
            if self.app.machine.refusal is not None:
                # a refused key is not asked again until the user fixes it and reloads; the
                # machine's part of a reload (models are not loaded again: it takes seconds)
                self.app.machine.reconfigure(self.app.machine.s)
            return
        elif await self.wake(result):
            if kind == "follow-up":
                if await self.until(lambda: self.state is st.State.FOLLOW_UP, 10):
                    self.mic.say(self.follow_up)
            elif kind.endswith("barge-in"):
                replying = (st.State.THINKING, st.State.PREAMBLE, st.State.ANSWERING)
                if await self.until(lambda: self.state in replying, 10):
                    await asyncio.sleep(self.rng.uniform(0, 0.06))
                    if self.state in replying:
                        result.barge_ins += 1
                        if kind.startswith("button"):
                            self.app.handle(st.ButtonDown(self.app.pos))
                            self.app.handle(st.ButtonUp())
                        else:
                            self.mic.say(self.question)
        await self.settle(kind, result)


async def soak(
    conversations: int, seed: int, tmp: Path, progress: Callable[[str], None] | None = None
) -> SoakResult:
    scenario = Scenario(preambles=["One moment."], answer="It is noon.", think_ms=0, speedup=50)
    emu = Emulator(scenario)
    await emu.start("127.0.0.1", 0)
    cfg = dataclasses.replace(
        parse_config(
            {
                "cloud": {
                    "endpoint": f"http://127.0.0.1:{emu.port}",
                    "reply_timeout_s": 1.0,
                    "keepalive_s": 0.5,
                    "backoff_initial_s": 0.05,
                    "backoff_max_s": 0.2,
                },
                "turn": {"follow_up_ms": 1500, "no_speech_timeout_ms": 1500},
                "button": {"enabled": False},
                "leds": {"backend": "none"},
            }
        ),
        api_key=Secret("soak-key"),
    )
    mic = SoakMic()
    room: Any = Room(mic, WavSpeaker(None, cfg.audio.jitter_ms, paced=False))
    events = tmp / "events.jsonl"
    app = App(cfg, RunOptions(room=room, events_log=events, leds="none", signals=False))
    # an error shows for 3 s on a device; here a moment is enough to see it handled
    app.machine.reconfigure(dataclasses.replace(app.machine.s, error_hold_s=0.1))
    run = asyncio.ensure_future(app.run())
    rng = random.Random(seed)
    result = SoakResult()
    t0 = time.monotonic()
    try:
        await asyncio.sleep(0.5)
        s = Soak(emu, app, mic, rng)
        for i in range(conversations):
            kind = rng.choices(KINDS, WEIGHTS)[0]
            result.kinds[kind] += 1
            await s.one(kind, result)
            result.conversations += 1
            if i + 1 == min(20, conversations):
                result.warm = await settled_resources(emu, app)
            if progress and (i + 1) % 50 == 0:
                now = resources()
                progress(
                    f"{i + 1} conversations; " + ", ".join(f"{k} {v:g}" for k, v in now.items())
                )
        result.end = await settled_resources(emu, app)
    finally:
        result.seconds = time.monotonic() - t0
        app.request_stop()
        await asyncio.wait_for(run, 30)
        await emu.close()
    for line in events.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "state":
            result.states[e["state"]] += 1
        elif e["event"] == "error":
            result.errors[e["code"]] += 1
    return result


def run(conversations: int = 500, seed: int = 1, out: Path | None = None) -> int:
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        print(f"  [{time.monotonic() - t0:5.0f} s] {msg}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(soak(conversations, seed, Path(tmp), progress))
    print(f"\n{r.conversations} conversations in {r.seconds:.0f} s (seed {seed})")
    print("  kinds:  " + ", ".join(f"{k} {n}" for k, n in r.kinds.most_common()))
    print("  states: " + ", ".join(f"{k} {n}" for k, n in r.states.most_common()))
    print("  errors: " + (", ".join(f"{k} {n}" for k, n in r.errors.most_common()) or "none"))
    print(f"  barge-ins {r.barge_ins}, missed wake words {r.missed_wakes}, stuck {len(r.stuck)}")
    print(f"\n{'resource':<10} {'after warm-up':>14} {'at the end':>11}")
    for key in ("fds", "threads", "tasks", "rss_mb"):
        print(f"{key:<10} {r.warm.get(key, 0):>14.1f} {r.end.get(key, 0):>11.1f}")
    if out is not None:
        out.write_text(json.dumps(r.as_dict(), indent=2) + "\n")
        print(f"\nwritten to {out}")
    return 1 if r.stuck else 0
