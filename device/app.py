"""Wiring: builds the adapters, runs the tasks, feeds the state machine, applies its commands.

One asyncio loop owns all state. Microphone frames (`front`), server events and playout
reports (`link`), button edges, control verbs (`verbs`) and a 10 Hz tick all end up in
`handle`, which runs the machine and applies the commands it returns through one table
(`_commands`), synchronously and in order. Each command belongs to one module: the session
and the reply to `link`, what the user is shown to `presenter`, the devices to `supervise`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapters.control import ControlServer
from .adapters.gpio import GpioButton, Leds, make_leds, make_pin_factory
from .adapters.mic import Mic, MicFailure
from .adapters.portaudio import DeviceNotFound
from .adapters.room import Room
from .adapters.speaker import Speaker
from .adapters.store import Memory
from .adapters.systemd import Notifier
from .config import Config, ConfigError, machine_settings
from .core import states as st
from .core.arbitration import Verdict
from .core.audio import MIC_RATE
from .core.earcons import Earcon
from .core.timers import ring_notice
from .events import EventLog
from .front import FrontEnd
from .home import Home
from .link import CloudLink
from .meter import CostMeter
from .presenter import Presenter
from .reload import reload
from .supervise import Supervisor, audio_devices
from .timekeeper import Timekeeper
from .tools import Device
from .verbs import ControlVerbs, device_status

log = logging.getLogger(__name__)

TICK_S = 0.1


@dataclass(frozen=True)
class RunOptions:
    input_wav: Path | None = None
    fast: bool = False
    output_wav: Path | None = None
    events_log: Path | None = None
    leds: str | None = None
    room: Room | None = None
    """A simulated room (tests, benchmarks): its microphone hears its speaker."""
    wait_for_devices: bool = False
    """A microphone missing at start-up is waited for (the service) instead of fatal."""
    state_dir: Path | None = None
    """Where mute and volume are remembered across restarts (None: not remembered)."""
    control_socket: Path | None = None
    """Serve `voice-device status|mute|wake|ask|volume` here (None: no control socket)."""
    reload: Callable[[], Config] | None = None
    """Reads the configuration again, for SIGHUP (None: SIGHUP is ignored)."""
    signals: bool = True
    """SIGTERM/SIGINT stop the daemon, SIGHUP reloads; off where the app runs inside another
    program (a benchmark), whose Ctrl-C must stop the program, not one of its daemons."""
    clock_start: float | None = None
    """With a simulated microphone (a WAV file, a room), timers and the time tool run on the
    audio clock from this wall-clock time (seconds since the epoch; None: the time at start)."""


class App:
    def __init__(self, cfg: Config, opts: RunOptions, credential: Any = None) -> None:
        """`credential`: an azure-identity TokenCredential for Entra auth (default: the
        DefaultAzureCredential chain)."""
        self.cfg, self.opts = cfg, opts
        self._credential = credential
        self.memory = Memory(opts.state_dir)
        self.machine = st.Machine(machine_settings(cfg), muted=self.memory.value.muted)
        self.events = EventLog(opts.events_log)
        self.meter = CostMeter(cfg, opts.state_dir, self.events, lambda: self.front.audio_ms)
        self.machine.budget_note = self.meter.budget_note()
        self.timekeeper = Timekeeper(
            opts.state_dir,
            self.events,
            lambda: self.front.audio_ms,
            self._clock(),
            lambda ended: self.handle(st.TimersRang(tuple(t.name for t in ended))),
        )
        self.notifier = Notifier()
        self.stopped = asyncio.Event()
        self.tg: asyncio.TaskGroup | None = None
        self.button: GpioButton | None = None
        self._pending: deque[st.Input] = deque()
        self._handling = False
        self.supervisor = Supervisor(self.notifier, self.handle, self.stopped)
        self.verbs = ControlVerbs(
            self.machine,
            self.handle,
            lambda: self.pos,
            lambda: (
                device_status(
                    self.link,
                    self.front,
                    self.mic,
                    self.speaker,
                    self.supervisor,
                    self.status_text(),
                )
                | {"usage": self.meter.status(), "timers": self.timekeeper.listing()}
                | ({"mqtt": self.home.status()} if self.home is not None else {})
            ),
            lambda: self.speaker,
            self.memory,
        )
        self.verbs.volume_config = cfg.audio.volume
        self.verbs.timekeeper = self.timekeeper
        self.verbs.announce_per_hour = cfg.announce.max_per_hour
        self.home: Home | None = None
        """Home Assistant and the other devices, over MQTT (`mqtt.enabled`)."""
        if cfg.mqtt.enabled:
            self.home = Home(cfg, self.verbs, self.events, lambda: self.front.audio_ms)
        self.tools = Device(
            now=self.timekeeper.now_local,
            timekeeper=self.timekeeper,
            set_volume=self.verbs.set_volume,
            end_conversation=lambda: self.handle(st.EndConversation()),
        )

    def _clock(self) -> Callable[[], float]:
        """Seconds since the epoch for timers: the wall clock, or with a simulated
        microphone the audio clock (so a test can let a timer run out in audio time)."""
        o = self.opts
        if o.room is None and o.input_wav is None:
            return time.time
        start = o.clock_start if o.clock_start is not None else time.time()
        return lambda: start + self.front.pos / MIC_RATE

    # -- building ---------------------------------------------------------------------------

    def build(self) -> None:
        """Load the model and open the devices; raises the user-facing errors of each."""
        cfg, opts, a = self.cfg, self.opts, self.cfg.audio
        self.mic: Mic
        self.speaker: Speaker
        self.front = FrontEnd(
            cfg, self.events, self.handle, lambda: self.machine.state, lambda f: self.link.stream(f)
        )
        self.mic, self.speaker = audio_devices(
            cfg, opts.room, opts.input_wav, opts.output_wav, opts.fast
        )
        r = self.memory.value
        if r.volume is not None and r.volume_config == a.volume:
            self.speaker.volume = r.volume  # set with `voice-device volume` since
        self.supervisor.mic, self.supervisor.speaker = self.mic, self.speaker
        self.presenter = Presenter(
            cfg,
            self.events,
            self.notifier,
            self.memory,
            self.machine.outage,
            lambda: self.front.audio_ms,
            self.front.phrases,
            self.machine.state,
        )
        self.presenter.speaker = self.speaker
        self.presenter.timer_running = lambda: len(self.timekeeper.timers) > 0
        self.presenter.mic_live = lambda: self.machine.hears_talk_over
        self.front.play_chime = lambda: self.presenter.play_earcon(Earcon.WAKE)
        self.front.echo_path = self._echo_path_ms
        self.front.hears_talk_over = lambda: self.machine.hears_talk_over
        self.link = CloudLink(
            cfg,
            self.speaker,
            self.events,
            self.handle,
            lambda: self.front.audio_ms,
            self.presenter.play_earcon,
            self.verbs.answer_text,
            self.meter,
            self._credential,
            self.tools,
        )
        if self.home is not None:
            home = self.home
            self.link.contest = self._contest
            self.link.contest_over = self.front.contest_over
            self.link.transcript = home.transcript
            self.front.woke = lambda w: home.woke(w.word, w.score, self.front.wake_level())
        self.build_gpio(cfg)
        self._commands: dict[type, Callable[[Any], None]] = {
            st.Enter: self._enter,
            st.OpenSession: self._open_session,
            st.CloseSession: self.link.close_session,
            st.StartTurn: lambda c: self.link.start_turn(c, self.front.preroll),
            st.EndTurn: self.link.end_turn,
            st.SubmitTurn: self.link.submit_turn,
            st.DiscardTurn: self.link.discard_turn,
            st.CommitEarly: self.link.commit_early,
            st.Withdraw: self.link.withdraw,
            st.CancelResponse: self.link.cancel_response,
            st.StopPlayback: lambda c: self.speaker.stop(),
            st.Truncate: self.link.truncate,
            st.DeleteItems: self.link.delete_items,
            st.CloseMic: lambda c: self._spawn(self.mic.close()),
            st.OpenMic: lambda c: self._spawn(self.mic.open()),
            st.ReportError: self._report_error,
            st.ReportRecovery: self.presenter.report_recovery,
            st.PlayEarcon: self._earcon,
            st.SendText: self.link.send_text,
            st.ReplayAnswer: self.link.replay_answer,
            st.StartRing: self._start_ring,
            st.StopRing: self._stop_ring,
            st.SendAnnouncement: self.link.send_announcement,
        }

    def build_gpio(self, cfg: Config) -> None:
        """LEDs and button; a pin gpiozero refuses (in use, not on this board) is a
        configuration error, and nothing is left half-built."""
        backend = self.opts.leds or cfg.leds.backend
        factory = None
        if backend == "gpio" or cfg.button.enabled:
            factory = make_pin_factory(cfg.gpio)
        leds: Leds | None = None
        try:
            leds = make_leds(cfg.leds, factory, backend)
            button = None
            if cfg.button.enabled:
                button = GpioButton(cfg.button, factory, self.handle, lambda: self.pos)
        except Exception as e:
            if leds is not None:
                leds.close()
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"GPIO: {e} (check the [leds] and [button] pins)") from e
        self.leds, self.button = leds, button
        self.presenter.leds = leds

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> int:
        if self.opts.control_socket is not None:
            # first of all: a second daemon stops here, before it touches any device
            self.control = ControlServer(self.opts.control_socket, self.verbs)
            await self.control.start()
        try:
            return await self._run()
        finally:
            if self.opts.control_socket is not None:
                await self.control.close()

    async def _run(self) -> int:
        o = self.opts
        if o.wait_for_devices and o.room is None and o.output_wav is None:
            await self.supervisor.wait_for_speaker(self.cfg.audio.output_device)
        self.build()
        loop = asyncio.get_running_loop()
        self.speaker.attach(self._on_playout)
        muted = self.machine.state is st.State.MUTED
        try:
            if not muted:
                await self.mic.open()
        except (DeviceNotFound, OSError) as e:
            if not o.wait_for_devices:
                raise
            self.supervisor.mic_failure = e  # (not a stall: waiting for it feeds the watchdog)
        for sig, handler in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                if o.signals:
                    loop.add_signal_handler(sig, handler)
        self.presenter.ready(self.machine.state, self.mic.name, self.speaker.name)
        self.timekeeper.on_change = self._timers_changed
        self.timekeeper.start()  # (one that ended a moment ago while down rings now)
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = self.link.tg = tg
                self.verbs.serving = True
                tasks = [
                    tg.create_task(self._audio_loop(), name="audio"),
                    tg.create_task(self._ticker(), name="tick"),
                    tg.create_task(self.speaker.run(), name="speaker"),
                    tg.create_task(self.presenter.hooks.run(), name="hooks"),
                ]
                if self.home is not None:
                    self._publish_values()
                    tasks.append(tg.create_task(self.home.run(), name="mqtt"))
                await self.stopped.wait()
                self._shutdown()
                if self.home is not None:
                    await self.home.goodbye()
                for t in tasks:
                    t.cancel()
        finally:
            self.notifier.stopping()
            self.tg = None
            self.verbs.serving = False
            self.verbs.answer_asks({"ok": False, "error": "the daemon is stopping"})
            await self.mic.close()
            self.speaker.close()
            self.leds.close()
            if self.button:
                self.button.close()
            self.timekeeper.close()
            self.events.emit("stopped", self.front.audio_ms)
            self.events.close()
        return 0

    @property
    def pos(self) -> int:
        """Microphone samples seen so far: the audio clock."""
        return self.front.pos

    def request_stop(self) -> None:
        self.stopped.set()

    def request_reload(self) -> None:
        if self.tg is not None and self.opts.reload is not None:
            self._spawn(reload(self))

    def _shutdown(self) -> None:
        log.info("stopping")
        self.notifier.stopping()
        if self.link.session is not None:
            self.speaker.stop()
            self.link.close_session(st.CloseSession("shutting down"))

    def _spawn(self, coro: Any) -> None:
        assert self.tg is not None
        self.tg.create_task(coro)

    async def _ticker(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK_S)
            ticks += 1
            if self.home is not None and ticks % 10 == 0:
                self._publish_values()
            self.supervisor.report_overflows()
            self.supervisor.check_speaker()
            if self.machine.state is st.State.MUTED:
                self.notifier.audio_alive()  # closed on purpose; the loop itself is alive
            self.machine.budget_note = self.meter.budget_note()  # (a month may have turned)
            self.timekeeper.check()  # (while muted no frames come)
            self.handle(st.Tick(self.link.quiet_s(time.monotonic())))
            self.notifier.status(self.status_text())

    async def _audio_loop(self) -> None:
        while not self.stopped.is_set():
            if self.supervisor.mic_failure is not None:
                await self.supervisor.recover_mic()
                continue
            try:
                frame = await self.mic.read()
            except MicFailure as e:
                self.supervisor.mic_failure = e
                continue
            self.notifier.audio_alive()
            self.front.hear(frame, self.speaker)
            self.timekeeper.check()
            if self.mic.eof and self._conversation_over():
                log.info("input file ended and the device is idle: exiting")
                self.request_stop()
                return

    def _echo_path_ms(self) -> float:
        """How late the device's own sound is in the microphone's frames, for the echo
        canceller: the output and input latencies PortAudio reports (in the simulated room,
        its delay; WAV devices have no echo path)."""
        if self.opts.room is not None:
            return self.opts.room.delay_ms
        mic_s = getattr(self.mic, "input_latency_s", 0.0)
        return 1000 * (self.speaker.output_latency_s + mic_s)

    def _conversation_over(self) -> bool:
        idle = self.machine.state in (st.State.IDLE, st.State.MUTED)
        return self.link.session is None and idle

    def _on_playout(self, ev: Any) -> None:
        self.supervisor.played(ev)
        self.link.playout(ev)

    # -- the machine ------------------------------------------------------------------------

    def handle(self, event: st.Input) -> None:
        self._pending.append(event)
        if self._handling:
            return  # an input raised while applying commands waits its turn
        self._handling = True
        try:
            while self._pending:
                ev = self._pending.popleft()
                for cmd in self.machine.handle(ev, time.monotonic()):
                    self._commands[type(cmd)](cmd)
        finally:
            self._handling = False

    def _enter(self, c: st.Enter) -> None:
        self.presenter.enter(c)
        self.verbs.entered(c)
        if self.home is not None:
            self.home.state(c.state)

    def _publish_values(self) -> None:
        """What Home Assistant shows besides the state (published when it changes)."""
        assert self.home is not None
        self.home.state(self.machine.state)
        self.home.volume(round(self.speaker.volume * 100))
        self.home.usage(self.meter.status())
        self.home.timers(self.timekeeper.listing())

    def _open_session(self, c: st.OpenSession) -> None:
        if c.arbitrate and self.home is not None and self.home.arbitrating:
            self.front.hold_chime = True  # (the chime is for the device that answers)
        self.link.open_session(c)

    async def _contest(self) -> Verdict:
        assert self.home is not None
        w = self.front.last_wake
        level = max(-120.0, self.front.wake_level())
        return await self.home.contest(w.score if w is not None else 1.0, level)

    def _earcon(self, c: st.PlayEarcon) -> None:
        if c.kind is Earcon.WAKE:
            self.front.wake_chime()
        else:
            self.front.quiet()
            self.presenter.play_earcon(c.kind)

    def _start_ring(self, c: st.StartRing) -> None:
        for name in c.names:
            self.events.emit("timer_ring", self.front.audio_ms, name=name)
            log.info("timer '%s' rings", name)
        if not self.machine.outage.ongoing:  # the names, in words, if the cloud answers
            self.link.speak_aside(ring_notice(c.names))

    def _stop_ring(self, c: st.StopRing) -> None:
        self.link.stop_aside()
        for name in c.names:
            self.events.emit("timer_stop", self.front.audio_ms, name=name, reason=c.reason)
            log.info("timer '%s' stopped (%s)", name, c.reason)

    def _timers_changed(self) -> None:
        """A timer set or ended: the idle light may show it."""
        if self.machine.state is st.State.IDLE:
            self.presenter.show_leds(self.machine.state)

    def _report_error(self, c: st.ReportError) -> None:
        self.verbs.error(c)
        self.presenter.report_error(c)

    def status_text(self) -> str:
        return self.presenter.status_text(self.machine.state)
