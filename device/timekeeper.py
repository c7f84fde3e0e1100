"""The device's timers and alarms: set by the model's tools or the command line, kept in the
state directory, checked on every microphone frame and every tick, told to the machine when
they end.

The clock is the wall clock on a real device. With a simulated microphone (a WAV file, the
simulated room) it is the audio clock from a given start, so that tests and benchmarks can
let a five-minute timer run out in a second of computing, and ring at an exact sample.
Saving goes to a thread of its own (an fsync on an SD card must not hold up the audio
loop), one write after another in order.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .adapters.store import read_json, write_json
from .core.timers import Kind, Timer, Timers
from .events import EventLog

log = logging.getLogger(__name__)

FILE_NAME = "timers.json"
MAX_BYTES = 16_384


class Timekeeper:
    def __init__(
        self,
        directory: Path | None,
        events: EventLog,
        audio_ms: Callable[[], int],
        clock: Callable[[], float],
        rang: Callable[[list[Timer]], None],
        saver: Executor | None = None,
    ) -> None:
        """`directory`: where timers.json is kept (None: memory only); `clock`: seconds
        since the epoch; `rang`: told the timers that have just ended."""
        self.path = directory / FILE_NAME if directory is not None else None
        self.events = events
        self._audio_ms = audio_ms
        self.clock = clock
        self._rang = rang
        self._saver = saver or ThreadPoolExecutor(1, thread_name_prefix="timers-save")
        saved = read_json(self.path, MAX_BYTES) if self.path is not None else None
        self.timers = Timers.from_json(saved)
        self._next = self.timers.next_end()
        self.on_change: Callable[[], None] = lambda: None
        """Told after every change (the idle light shows whether a timer runs)."""

    def now_local(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock()).astimezone()

    def start(self) -> None:
        """At start: ring what ended a moment ago while the device was off; log the rest."""
        ring, missed = self.timers.restored(self.clock())
        for t in missed:
            when = dt.datetime.fromtimestamp(t.ends_at).astimezone().strftime("%Y-%m-%d %H:%M")
            log.warning("the %s '%s' ended at %s while the device was off", t.kind, t.name, when)
            self.events.emit("timer_missed", self._audio_ms(), name=t.name, kind=t.kind)
        if ring or missed:
            self._changed()
        if ring:
            self._rang(ring)

    # -- what the tools and the command line ask ----------------------------------------------

    def set_timer(self, seconds: Any, name: Any = None) -> Timer:
        t = self.timers.set_timer(seconds, name, self.clock())
        self._set(t)
        return t

    def set_alarm(self, at: Any, name: Any = None) -> Timer:
        t = self.timers.set_alarm(at, name, self.now_local())
        self._set(t)
        return t

    def cancel(self, name: Any = None, kind: Kind | None = None) -> Timer:
        t = self.timers.cancel(name, kind)
        self.events.emit("timer_stop", self._audio_ms(), name=t.name, reason="cancelled")
        log.info("%s '%s' cancelled", t.kind, t.name)
        self._changed()
        return t

    def listing(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [t.spoken(now) for t in self.timers.running()]

    def _set(self, t: Timer) -> None:
        seconds = t.seconds or round(t.ends_at - self.clock())
        self.events.emit("timer_set", self._audio_ms(), name=t.name, seconds=seconds)
        what = f"for {t.seconds} s" if t.kind == "timer" else f"at {t.at}"
        log.info("%s '%s' set %s", t.kind, t.name, what)
        self._changed()

    # -- time -------------------------------------------------------------------------------

    def check(self) -> None:
        """Called often (every frame, every tick): cheap unless something is due."""
        if self._next is None or self.clock() < self._next:
            return
        ended = self.timers.due(self.clock())
        self._changed()
        if ended:
            self._rang(ended)

    def _changed(self) -> None:
        self._next = self.timers.next_end()
        self.on_change()
        if self.path is not None:
            self._saver.submit(write_json, self.path, self.timers.to_json())

    def close(self) -> None:
        """Wait for the last save (at shutdown)."""
        if isinstance(self._saver, ThreadPoolExecutor):
            self._saver.shutdown(wait=True)
