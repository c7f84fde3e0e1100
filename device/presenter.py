"""What the user (and the system) is shown of the device's state.

Entering a state shows it on the LEDs, writes it to the events log and the journal, puts it
in systemd's status line, runs the user's hook, and remembers a mute across restarts. The
device's own short sounds (earcons) are played from here too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .adapters.gpio import Leds
from .adapters.hooks import Hooks
from .adapters.speaker import Speaker
from .adapters.store import Memory
from .adapters.systemd import CONTEXT, Notifier
from .config import Config
from .core import states as st
from .core.audio import Source
from .core.backoff import Outage
from .core.earcons import Earcon, earcon
from .core.leds import ELSEWHERE_S, Pattern, pattern_name, with_overrides
from .events import EventLog

log = logging.getLogger(__name__)


class Presenter:
    def __init__(
        self,
        cfg: Config,
        events: EventLog,
        notifier: Notifier,
        memory: Memory,
        outage: Outage,
        audio_ms: Callable[[], int],
        phrases: Callable[[], str],
        shown: st.State,
    ) -> None:
        self.events = events
        self.notifier = notifier
        self.memory = memory
        self.outage = outage
        self._audio_ms = audio_ms
        self._phrases = phrases
        self.shown = shown
        """The state the user was last shown."""
        self.hooks = Hooks(cfg.hooks.command, cfg.hooks.states)
        self.leds: Leds | None = None
        self.speaker: Speaker | None = None
        self.timer_running: Callable[[], bool] = lambda: False
        self.mic_live: Callable[[], bool] = lambda: False
        """Whether the user may talk over the reply now (the microphone is live)."""
        self._earcons = 0
        self._entered = 0
        """States entered so far (a flash ends only if no other state came since)."""
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        self.patterns: dict[str, Pattern] = with_overrides(cfg.leds.patterns)
        self.hooks.command, self.hooks.states = cfg.hooks.command, set(cfg.hooks.states)
        self.earcon_switches = frozenset(cfg.audio.earcons)
        self.earcon_volume = cfg.audio.earcon_volume
        idle_led = cfg.timers.idle_led
        self.timer_led = idle_led == "on" or (idle_led == "auto" and cfg.leds.kind != "single")

    def ready(self, state: st.State, mic: str, speaker: str) -> None:
        """The daemon is up: what it listens for, and on which devices."""
        self.events.emit(
            "ready",
            0,
            clock_origin=self.events.origin,
            wake_word=self._phrases(),
            mic=mic,
            speaker=speaker,
        )
        self.show_leds(state)
        self.notifier.ready(self.status_text(state))
        if state is st.State.MUTED:
            log.info("muted (as when last stopped): the microphone stays closed until unmuted")
        else:
            log.info("ready: listening for %s on '%s'", self._phrases(), mic)

    def enter(self, c: st.Enter) -> None:
        previous, self.shown = self.shown, c.state
        self._entered += 1
        CONTEXT["STATE"] = c.state.value
        self.events.emit("state", self._audio_ms(), state=c.state.value, reason=c.reason)
        if c.state is st.State.IDLE and c.reason == st.ELSEWHERE:
            self._flash("elsewhere", ELSEWHERE_S)
        else:
            self.show_leds(c.state)
        self.notifier.status(self.status_text(c.state))
        log.info("state: %s (%s)", c.state.value, c.reason)
        self.hooks.state_changed(c.state.value, previous.value, c.reason)
        if (c.state is st.State.MUTED) != (previous is st.State.MUTED):
            self.memory.update(muted=c.state is st.State.MUTED)

    def _flash(self, name: str, seconds: float) -> None:
        """Show the pattern `name` for a moment, then the state's own again (if the state
        is still the one shown)."""
        if self.leds is None:
            return
        self._show(self.patterns[name])
        shown, entered = self.shown, self._entered

        def back() -> None:
            if self.shown is shown and self._entered == entered:
                self.show_leds(shown)

        asyncio.get_running_loop().call_later(seconds, back)

    def show_leds(self, state: st.State) -> None:
        """The pattern of `state` (idle shows `offline` during an outage)."""
        if self.leds is None:
            return
        timer = self.timer_led and self.timer_running()
        live = self.mic_live()
        self._show(self.patterns[pattern_name(state, self.outage.ongoing, timer, live)])

    def _show(self, pattern: Pattern) -> None:
        assert self.leds is not None
        self.leds.show(pattern)
        self.events.emit(
            "led",
            self._audio_ms(),
            pattern=pattern.name,
            color=pattern.hex,
            effect=pattern.effect.value,
        )

    def status_text(self, state: st.State) -> str:
        """systemd's status line (and `voice-device status`)."""
        if self.outage.ongoing and state in (st.State.IDLE, st.State.ERROR):
            wait = self.outage.wait(time.monotonic())
            later = f"next try in {wait:.0f} s" if wait else "will try on the next wake"
            return f"offline: {later}; listening for {self._phrases()}"
        if state is st.State.IDLE:
            return f"idle, listening for {self._phrases()}"
        return str(state.value).replace("_", " ")

    def play_earcon(self, kind: Earcon) -> None:
        switch = kind.switch
        if (switch is not None and switch not in self.earcon_switches) or self.speaker is None:
            return
        self._earcons += 1
        name = f"{kind.value} {self._earcons}"
        self.events.emit("earcon", self._audio_ms(), kind=kind.value)
        self.speaker.play(name, name, None, earcon(kind, self.earcon_volume), Source.EARCON)
        self.speaker.end(name, Source.EARCON)

    def report_error(self, c: st.ReportError) -> None:
        self.events.emit("error", self._audio_ms(), code=c.code, message=c.message)
        # an outage is logged when it starts and when it ends, not at every failed attempt
        level = logging.DEBUG if c.repeat else logging.WARNING
        log.log(level, "%s: %s", c.code, c.message, extra={"ERROR_CODE": c.code})

    def report_recovery(self, c: st.ReportRecovery) -> None:
        self.events.emit("recovered", self._audio_ms(), outage_s=round(c.outage_s, 1))
        log.info("the cloud answers again after %.0f s", c.outage_s)
