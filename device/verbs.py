"""The control socket's verbs: `voice-device status|mute|wake|ask|volume|timers|announce`.

Each verb becomes one of the state machine's inputs (the same path as the button or the
wake word); whether it means anything in the current state is the machine's table's to say
(`core.states.accepts`), not a second rule kept here. `ask` answers when the spoken reply is
over (or failed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .adapters.control import Reply
from .adapters.mic import Mic
from .adapters.speaker import Speaker
from .adapters.store import Memory
from .core import states as st
from .core.audio import CLOUD_RATE
from .core.timers import TimerError, parse_duration
from .front import FrontEnd
from .link import CloudLink
from .supervise import Supervisor

log = logging.getLogger(__name__)

REPLY_OVER = (st.State.IDLE, st.State.FOLLOW_UP, st.State.ERROR, st.State.MUTED)
"""Where an `ask` from the control socket has its answer."""
MUTED = "muted: unmute first (voice-device mute off)"
KNOWN = (
    "status, mute on|off, wake, ask TEXT, volume [0-200], "
    "timers [set DURATION [NAME] | cancel [NAME] | stop], announce TEXT"
)
MAX_ANNOUNCEMENT = 1000
"""Characters: a notice, not a book."""


class ControlVerbs:
    def __init__(
        self,
        machine: st.Machine,
        handle: Callable[[st.Input], None],
        position: Callable[[], int],
        status: Callable[[], dict[str, Any]],
        speaker: Callable[[], Speaker],
        memory: Memory,
    ) -> None:
        """`position`: the microphone's sample count (where a `wake` starts the turn)."""
        self.machine = machine
        self._handle = handle
        self._position = position
        self._status = status
        self._speaker = speaker
        self.memory = memory
        self.volume_config = 1.0
        """audio.volume of the configuration in force (a later change to it wins)."""
        self.started = time.monotonic()
        self.last_error: tuple[str, str, float] | None = None
        self.reload_failed: tuple[str, float] | None = None
        """Why the last reload was refused, and when (None: it worked, or none was tried)."""
        self.serving = False
        """False while starting up or stopping: verbs are refused."""
        self._asks: list[asyncio.Future[Reply]] = []
        self._ask_answer: list[str] = []
        self.timekeeper: Any = None
        """The device's timers (`Timekeeper`), set by the app."""
        self.announce_per_hour = 20
        self._announced: deque[float] = deque()
        self._announcement: asyncio.Future[Reply] | None = None

    async def __call__(self, verb: str, arg: str) -> Reply:
        if not self.serving:
            return {"ok": False, "error": "starting up or stopping; try again in a moment"}
        state = self.machine.state
        if verb == "status":
            return {"ok": True, **self.status()}
        if verb == "mute":
            if arg not in ("on", "off"):
                return {"ok": False, "error": "usage: mute on|off"}
            self._handle(st.SetMute(arg == "on"))
            return {"ok": True, "state": self.machine.state.value}
        if verb == "wake":
            if not st.accepts(state, st.Summon):
                return {"ok": False, "error": MUTED}
            self._handle(st.Summon(self._position()))
            return {"ok": True, "state": self.machine.state.value}
        if verb == "ask":
            return await self._ask(arg)
        if verb == "volume":
            return self._volume(arg)
        if verb == "timers":
            return self._timers(arg)
        if verb == "announce":
            return await self._announce(arg)
        return {"ok": False, "error": f"unknown command {verb!r} ({KNOWN})"}

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        error = None
        if self.last_error is not None:
            code, message, at = self.last_error
            error = {"code": code, "message": message, "ago_s": round(now - at, 1)}
        reload = None
        if self.reload_failed is not None:
            why, at = self.reload_failed
            reload = {"error": why, "ago_s": round(now - at, 1)}
        return {
            "state": self.machine.state.value,
            **self._status(),
            "muted": self.machine.state is st.State.MUTED,
            "offline": self.machine.outage.ongoing,
            "last_error": error,
            "reload_failed": reload,
            "uptime_s": round(now - self.started, 1),
            "pid": os.getpid(),
        }

    async def _ask(self, text: str) -> Reply:
        state = self.machine.state
        if not text:
            return {"ok": False, "error": "usage: ask TEXT"}
        if state is st.State.MUTED:
            return {"ok": False, "error": MUTED}
        if self.machine.budget_note is not None:
            return {"ok": False, "error": self.machine.budget_note}
        if not st.accepts(state, st.AskText) or self._asks:
            return {"ok": False, "error": f"busy ({state.value}); try again when idle"}
        answered: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._asks.append(answered)
        self._ask_answer = []
        self._handle(st.AskText(text))
        return await answered

    def answer_text(self, text: str) -> None:
        """A final answer's transcript: the answer of the `ask` waiting, if one is."""
        if self._asks:
            self._ask_answer.append(text)

    def error(self, c: st.ReportError) -> None:
        self.last_error = (c.code, c.message, time.monotonic())

    def entered(self, c: st.Enter) -> None:
        """An `ask` waiting for its reply to be over gets its answer (or why there is none);
        an `announce` waiting hears whether it was spoken."""
        waiting = self._announcement
        if waiting is not None and c.state in (st.State.IDLE, st.State.ERROR):
            self._announcement = None
            if not waiting.done():
                spoken = c.reason == "announced"
                why = self.last_error[1] if self.last_error else c.reason
                waiting.set_result(
                    {"ok": True, "spoken": True}
                    if spoken
                    else {"ok": False, "error": f"not spoken: {why}"}
                )
        if c.state not in REPLY_OVER or not self._asks:
            return
        reply: Reply = {"ok": True, "state": c.state.value, "answer": " ".join(self._ask_answer)}
        if c.state is st.State.ERROR and self.last_error is not None:
            reply = {"ok": False, "error": f"{self.last_error[0]}: {self.last_error[1]}"}
        elif c.state is not st.State.FOLLOW_UP and not self._ask_answer:
            reply = {"ok": False, "error": f"no answer ({c.reason})"}
        self.answer_asks(reply)

    def answer_asks(self, reply: Reply) -> None:
        asks, self._asks = self._asks, []
        for f in asks:
            if not f.done():
                f.set_result(reply)

    def _volume(self, arg: str) -> Reply:
        if arg:
            try:
                percent = int(arg.rstrip("%"))
            except ValueError:
                percent = -1
            if not 0 <= percent <= 200:
                return {"ok": False, "error": "usage: volume N, N from 0 to 200 (100: as sent)"}
            self.set_volume(percent)
        return {"ok": True, "volume": round(self._speaker().volume * 100)}

    def set_volume(self, percent: int) -> int:
        """The volume in percent of the sound as sent, remembered (the CLI, the model)."""
        self._speaker().volume = percent / 100
        self.memory.update(volume=percent / 100, volume_config=self.volume_config)
        log.info("volume %d%%", percent)
        return percent

    def _timers(self, arg: str) -> Reply:
        keeper = self.timekeeper
        if keeper is None:
            return {"ok": False, "error": "timers are not available"}
        what, _, rest = arg.partition(" ")
        try:
            if what == "":
                return {"ok": True, "timers": keeper.listing()}
            if what == "set":
                duration, _, name = rest.strip().partition(" ")
                t = keeper.set_timer(parse_duration(duration), name.strip() or None)
                return {"ok": True, "set": t.name, "seconds": t.seconds}
            if what == "cancel":
                return {"ok": True, "cancelled": keeper.cancel(rest.strip() or None).name}
            if what == "stop":
                if not st.accepts(self.machine.state, st.StopRinging):
                    return {"ok": False, "error": "nothing is ringing"}
                self._handle(st.StopRinging())
                return {"ok": True, "state": self.machine.state.value}
        except TimerError as e:
            return {"ok": False, "error": str(e)}
        return {"ok": False, "error": "usage: timers [set DURATION [NAME] | cancel [NAME] | stop]"}

    async def _announce(self, text: str) -> Reply:
        """Spoken now if the device is idle (the reply waits until it has been), queued if
        it is busy; refused while muted, and past `announce.max_per_hour`."""
        text = " ".join(text.split())
        if not text or len(text) > MAX_ANNOUNCEMENT:
            return {"ok": False, "error": f"usage: announce TEXT (1 to {MAX_ANNOUNCEMENT} chars)"}
        state = self.machine.state
        if state is st.State.MUTED:
            return {"ok": False, "error": MUTED}
        now = time.monotonic()
        while self._announced and now - self._announced[0] > 3600:
            self._announced.popleft()
        if len(self._announced) >= self.announce_per_hour:
            return {
                "ok": False,
                "error": f"refused: {self.announce_per_hour} announcements in the last hour "
                "(announce.max_per_hour)",
            }
        self._announced.append(now)
        idle = state is st.State.IDLE and self._announcement is None
        waiting: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        if idle:
            self._announcement = waiting
        self._handle(st.Announce(text))
        if not idle:
            return {"ok": True, "queued": True, "state": state.value}
        return await waiting


def device_status(
    link: CloudLink,
    front: FrontEnd,
    mic: Mic,
    speaker: Speaker,
    supervisor: Supervisor,
    status_text: str,
) -> dict[str, Any]:
    """What `voice-device status` shows of the devices and the session."""
    session = link.session
    return {
        "status": status_text,
        "session": None if session is None else {"id": session.session_id, "ready": session.ready},
        "volume": round(speaker.volume * 100),
        "wake_words": [w.phrase for w in front.wake.words],
        "microphone": mic.name,
        "microphone_open": mic.is_open,
        "speaker": {
            "name": speaker.name,
            "output_latency_ms": round(speaker.output_latency_s * 1000, 1),
            "audible_after_stop_ms": round(speaker.audible_after_stop * 1000 / CLOUD_RATE, 1),
            "underruns": speaker.underruns,
            "failures": supervisor.speaker_failures,
        },
    }
