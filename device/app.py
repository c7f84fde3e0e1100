"""Wiring: builds the adapters, feeds the state machine, carries out its commands.

One asyncio loop owns all state. Microphone frames, server events, playout reports, button
edges and a 10 Hz tick all end up in `_handle`, which runs the machine and applies the
commands it returns, synchronously and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapters.cloud import CloudSession, auth_headers
from .adapters.control import ControlServer, Reply
from .adapters.denoise import denoiser
from .adapters.echo import FAR_FRAME, EchoGuard
from .adapters.entra import EntraTokens
from .adapters.gpio import GpioButton, Leds, make_leds, make_pin_factory
from .adapters.hooks import Hooks
from .adapters.mic import Mic, MicFailure, PyAudioMic, WavMic
from .adapters.portaudio import DeviceNotFound, find_device, reinitialize
from .adapters.room import Room
from .adapters.speaker import PyAudioSpeaker, Speaker, WavSpeaker
from .adapters.store import Remembered, StateStore
from .adapters.systemd import CONTEXT, REDACT, Notifier
from .adapters.vad import Vad
from .adapters.wakeword import WakeEngine, load_engine
from .config import Config, realtime_endpoint
from .core import realtime as rt
from .core import states as st
from .core.audio import (
    CLOUD_RATE,
    FRAME_SAMPLES,
    MIC_RATE,
    ItemStarted,
    PlayoutEvent,
    PlayoutStopped,
    PreRoll,
    ResponsePlayed,
    Uplink,
    ms_to_samples,
    samples_to_ms,
)
from .core.backoff import BackoffPolicy
from .core.earcons import earcon
from .core.endpoint import EndpointSettings
from .core.leds import pattern_name, with_overrides
from .core.wake import WakeFilter
from .events import EventLog
from .tools import Toolbox

log = logging.getLogger(__name__)

TICK_S = 0.1
SPEAKER_WAIT_S = 30
"""With --wait-for-devices, how long a speaker missing at start-up is looked for (a USB
speaker still being set up at boot) before the daemon gives up on it as it would without."""


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


def machine_settings(cfg: Config) -> st.Settings:
    t = cfg.turn
    return st.Settings(
        rate=MIC_RATE,
        preroll_ms=cfg.audio.preroll_ms,
        no_speech_ms=t.no_speech_timeout_ms,
        follow_up_ms=t.follow_up_ms,
        reply_timeout_s=cfg.cloud.reply_timeout_s,
        server_turns=t.detection != "local",
        hold_to_talk=cfg.button.mode == "hold-to-talk",
        double_press=cfg.button.double_press,
        double_press_s=cfg.button.double_press_ms / 1000,
        backoff=BackoffPolicy(cfg.cloud.backoff_initial_s, cfg.cloud.backoff_max_s),
        endpoint=EndpointSettings(
            rate=MIC_RATE,
            frame_samples=FRAME_SAMPLES,
            silence_ms=t.silence_ms,
            max_turn_ms=t.max_turn_ms,
        ),
    )


def session_settings(cfg: Config, tools: tuple[rt.Tool, ...]) -> rt.SessionSettings:
    a = cfg.assistant
    return rt.SessionSettings(
        model=cfg.cloud.deployment,
        instructions=a.instructions,
        voice=a.voice,
        reasoning_effort=a.reasoning_effort,
        speed=a.speed,
        turn_detection=rt.turn_detection(cfg.turn.detection, cfg.turn.silence_ms),
        tools=tools,
        dialect=realtime_endpoint(cfg.cloud).dialect,
    )


EARCON_TAIL_MS = 150
"""While listening, the VAD ignores the device's own sounds and this much of their echo."""
WAKE_STATES = (
    st.State.IDLE,
    st.State.ERROR,
    st.State.FOLLOW_UP,
    st.State.THINKING,
    st.State.PREAMBLE,
    st.State.ANSWERING,
)
"""Where a wake word means something: to wake, or to interrupt a reply (barge-in)."""
VAD_STATES = (st.State.CONNECTING, st.State.LISTENING, st.State.FOLLOW_UP)
MAX_TOOL_ROUNDS = 4
"""Tool calls answered in a row for one turn; a model stuck calling tools is stopped."""
EARCON = "earcon:"
"""Response-id prefix of the device's own sounds, which the state machine never hears of."""
REPLAY = "replay:"
"""Response-id prefix of a repeated answer (double press): played again from memory."""
MAX_REPLAY_S = 60
"""The last answer is kept in RAM for a repeat, up to this long (never written anywhere)."""
REPLY_OVER = (st.State.IDLE, st.State.FOLLOW_UP, st.State.ERROR, st.State.MUTED)
"""Where an `ask` from the control socket has its answer."""


class App:
    def __init__(self, cfg: Config, opts: RunOptions, credential: Any = None) -> None:
        """`credential`: an azure-identity TokenCredential for Entra auth (default: the
        DefaultAzureCredential chain)."""
        self.cfg = cfg
        self.opts = opts
        self._credential = credential
        self.store = StateStore(opts.state_dir) if opts.state_dir is not None else None
        self.remembered = self.store.load() if self.store is not None else Remembered()
        self.machine = st.Machine(machine_settings(cfg), muted=self.remembered.muted)
        self.patterns = with_overrides(cfg.leds.patterns)
        self.hooks = Hooks(cfg.hooks.command, cfg.hooks.states)
        self.control: ControlServer | None = None
        self.started = time.monotonic()
        self.last_error: tuple[str, str, float] | None = None
        self._asks: list[asyncio.Future[Reply]] = []
        self._ask_answer: list[str] = []
        self._answer_pcm: dict[str, bytearray] = {}
        """Final-answer audio of the responses in progress, by response id."""
        self.last_answer = b""
        self._replays = 0
        self._speaker_failures = 0
        self._speaker_suspect = False
        """A failure was reported and no response has played to its end since."""
        self._heard_from: set[str] = set()
        """Responses whose first audio has arrived (the `reply_audio` event, once each)."""
        self.events = EventLog(opts.events_log)
        self.notifier = Notifier()
        self.endpoint = realtime_endpoint(cfg.cloud)
        self.toolbox = Toolbox(cfg.assistant.tools)
        self.tool_rounds = 0
        self._earcons = 0
        self.pos = 0
        """Microphone samples seen so far: the audio clock."""
        self.preroll = PreRoll(ms_to_samples(cfg.audio.preroll_ms, MIC_RATE))
        self.wake_filter = WakeFilter(ms_to_samples(cfg.wake.refractory_ms, MIC_RATE))
        self.uplink: Uplink | None = None
        self.session: CloudSession | None = None
        self.conversation = rt.Conversation()
        self.client = rt.ClientEvents()
        self.discard_next_response = False
        self.stopped = asyncio.Event()
        self._pending: deque[st.Input] = deque()
        self._handling = False
        self._warned: set[str] = set()
        self._last_played = -(10**9)
        self._mic_failure: Exception | None = None
        self._overflows_logged = 0
        self._overflow_log_t = -60.0
        self._vad_fed = False
        self._shown_state = self.machine.state
        self.tg: asyncio.TaskGroup | None = None
        self.button: GpioButton | None = None
        self._apply_table: dict[type, Callable[[Any], None]] = {
            st.Enter: self._enter,
            st.OpenSession: self._open_session,
            st.CloseSession: self._close_session,
            st.StartTurn: self._start_turn,
            st.EndTurn: self._end_turn,
            st.SubmitTurn: self._submit_turn,
            st.DiscardTurn: self._discard_turn,
            st.CancelResponse: self._cancel_response,
            st.StopPlayback: lambda c: self.speaker.stop(),
            st.Truncate: self._truncate,
            st.DeleteItems: self._delete_items,
            st.CloseMic: lambda c: self._spawn(self.mic.close()),
            st.OpenMic: lambda c: self._spawn(self.mic.open()),
            st.ReportError: self._report_error,
            st.ReportRecovery: self._report_recovery,
            st.PlayEarcon: lambda c: self._play_earcon(c.kind),
            st.SendText: self._send_text,
            st.ReplayAnswer: self._replay_answer,
        }
        self._server_table: dict[type, Callable[[Any], None]] = {
            rt.AudioDelta: self._on_audio,
            rt.ResponseCreated: self._on_response_created,
            rt.ResponseDone: self._on_response_done,
            rt.OutputItemAdded: self.conversation_apply,
            rt.OutputItemDone: self.conversation_apply,
            rt.InputCommitted: lambda ev: self._handle(st.ServerCommitted()),
            rt.ServerError: self._on_server_error,
            rt.TranscriptDone: self._on_transcript,
            rt.InputTranscript: self._on_transcript,
            rt.SpeechStarted: lambda ev: log.debug("server heard speech start"),
            rt.SpeechStopped: lambda ev: log.debug("server heard speech stop"),
            rt.FunctionCallDone: lambda ev: log.debug("model calls %s", ev.name),
            rt.RateLimits: self._on_rate_limits,
            rt.Malformed: self._on_bad_event,
            rt.Unknown: self._on_bad_event,
        }

    # -- building ---------------------------------------------------------------------------

    def build(self) -> None:
        """Load the model and open the devices; raises the user-facing errors of each."""
        cfg, opts = self.cfg, self.opts
        self.wake, self.echo = self._detectors(cfg)
        self.vad = Vad(cfg.turn.vad_aggressiveness)
        self.denoise = denoiser(cfg.audio.noise_suppression)
        a = cfg.audio
        if opts.room is not None:
            self.mic: Mic = opts.room.mic
            self.speaker: Speaker = opts.room.speaker
            self.speaker.volume = a.volume
        else:
            self.mic = (
                WavMic(opts.input_wav, paced=not opts.fast)
                if opts.input_wav
                else PyAudioMic(a.input_device, a.input_rate, a.input_channels, a.input_channel)
            )
            self.speaker = (
                WavSpeaker(opts.output_wav, a.jitter_ms, paced=not opts.fast, volume=a.volume)
                if opts.output_wav
                else PyAudioSpeaker(a.output_device, a.jitter_ms, a.volume)
            )
        r = self.remembered
        if r.volume is not None and r.volume_config == a.volume:
            self.speaker.volume = r.volume  # set with `voice-device volume` since
        self._build_gpio(cfg)
        entra = cfg.cloud.auth == "entra"
        self._bearer = EntraTokens(self._credential).bearer if entra else None

    @staticmethod
    def _detectors(cfg: Config) -> tuple[WakeEngine, EchoGuard]:
        w = cfg.wake
        wake = load_engine(w.engine, w.models, w.thresholds)
        reference = (
            load_engine(w.engine, w.models, role="echo-match reference")
            if w.during_playback == "echo-match"
            else None
        )
        return wake, EchoGuard(reference, cfg.audio.echo_tail_ms, cfg.audio.echo_cancellation)

    def _build_gpio(self, cfg: Config) -> None:
        backend = self.opts.leds or cfg.leds.backend
        factory = None
        if backend == "gpio" or cfg.button.enabled:
            factory = make_pin_factory(cfg.gpio)
        self.leds: Leds = make_leds(cfg.leds, factory, backend)
        self.button = (
            GpioButton(cfg.button, factory, self._on_button) if cfg.button.enabled else None
        )

    # -- reloading (SIGHUP, systemctl reload) -------------------------------------------------

    RESTART_KEYS = (
        "audio.input_device",
        "audio.output_device",
        "audio.input_rate",
        "audio.input_channels",
        "audio.input_channel",
        "audio.jitter_ms",
        "gpio.pin_factory",
    )
    """What a reload cannot change under a running daemon: the audio devices and pin library."""

    def request_reload(self) -> None:
        if self.tg is not None and self.opts.reload is not None:
            self._spawn(self._reload())

    async def _reload(self) -> None:
        """Read the configuration again and apply it; the wake word keeps listening meanwhile.
        A configuration with a mistake is reported and the running one kept."""
        assert self.opts.reload is not None
        self.notifier.reloading()
        log.info("reloading the configuration")
        try:
            new = await asyncio.to_thread(self.opts.reload)
            wake, echo = await asyncio.to_thread(self._detectors, new)
        except Exception as e:  # ConfigError, a model that does not load…
            log.error("configuration not reloaded, keeping the running one: %s", e)
            self.notifier.ready(f"{self._status_text()} (reload failed: {e})")
            return
        REDACT.add(new.api_key.reveal())
        self._apply(new, wake, echo)
        self.notifier.ready(self._status_text())

    def _apply(self, new: Config, wake: WakeEngine, echo: EchoGuard) -> None:
        old = self.cfg
        later = [k for k in self.RESTART_KEYS if _get(old, k) != _get(new, k)]
        if later:
            log.warning("%s changed: takes effect at the next restart", ", ".join(later))
        self.wake, self.echo = wake, echo
        self.wake_filter = WakeFilter(ms_to_samples(new.wake.refractory_ms, MIC_RATE))
        self.vad = Vad(new.turn.vad_aggressiveness)
        self.denoise = denoiser(new.audio.noise_suppression)
        if new.audio.preroll_ms != old.audio.preroll_ms:
            self.preroll = PreRoll(ms_to_samples(new.audio.preroll_ms, MIC_RATE))
        self.machine.reconfigure(machine_settings(new))
        if new.audio.volume != old.audio.volume:  # the file changed it: the file wins
            self.speaker.volume = new.audio.volume
        self.patterns = with_overrides(new.leds.patterns)
        if (new.leds, new.button, new.gpio) != (old.leds, old.button, old.gpio):
            self.leds.close()
            if self.button is not None:
                self.button.close()
            self._build_gpio(new)
        self._show_leds(self.machine.state)
        self.hooks.command, self.hooks.states = new.hooks.command, set(new.hooks.states)
        self.toolbox = Toolbox(new.assistant.tools)
        self.endpoint = realtime_endpoint(new.cloud)
        if new.cloud.auth == "entra" and self._bearer is None:
            self._bearer = EntraTokens(self._credential).bearer
        self.cfg = new
        log.info("configuration reloaded (the next session uses it)")

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> int:
        if self.opts.control_socket is not None:
            # first of all: a second daemon stops here, before it touches any device
            self.control = ControlServer(self.opts.control_socket, self._on_control)
            await self.control.start()
        try:
            return await self._run()
        finally:
            if self.control is not None:
                await self.control.close()

    async def _wait_for_speaker(self) -> None:
        """Look for a missing speaker again every second for up to SPEAKER_WAIT_S, restarting
        PortAudio to see new devices (nothing is open yet, so it can be). If it does not
        come, `build()` names it and the daemon exits 78, as without --wait-for-devices:
        a device that cannot answer is not left half-running."""
        spec = self.cfg.audio.output_device
        deadline = time.monotonic() + SPEAKER_WAIT_S
        warned = False
        while True:
            try:
                await asyncio.to_thread(find_device, spec, "output")
            except DeviceNotFound as e:
                if time.monotonic() >= deadline:
                    return
                if not warned:
                    warned = True
                    log.warning("%s; looking for it for up to %d s", e, SPEAKER_WAIT_S)
                    self.notifier.status(f"waiting for the speaker: {e}")
                await asyncio.sleep(1)
                await asyncio.to_thread(reinitialize)
                continue
            if warned:
                log.info("speaker '%s' found", spec)
            return

    async def _run(self) -> int:
        o = self.opts
        if o.wait_for_devices and o.room is None and o.output_wav is None:
            await self._wait_for_speaker()
        self.build()
        loop = asyncio.get_running_loop()
        self.speaker.attach(self._on_playout)
        mic_missing: Exception | None = None
        muted = self.machine.state is st.State.MUTED
        try:
            if not muted:
                await self.mic.open()
        except (DeviceNotFound, OSError) as e:
            if not self.opts.wait_for_devices:
                raise
            mic_missing = e
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.events.emit(
            "ready",
            0,
            clock_origin=self.events.origin,
            wake_word=self._phrases(),
            mic=self.mic.name,
            speaker=self.speaker.name,
        )
        self._show_leds(self.machine.state)
        self.notifier.ready(self._status_text())
        if muted:
            log.info("muted (as when last stopped): the microphone stays closed until unmuted")
        else:
            log.info("ready: listening for %s on '%s'", self._phrases(), self.mic.name)
        if mic_missing is not None:
            self._mic_failure = mic_missing  # (not a stall: waiting for it feeds the watchdog)
        try:
            async with asyncio.TaskGroup() as tg:
                self.tg = tg
                tasks = [
                    tg.create_task(self._audio_loop(), name="audio"),
                    tg.create_task(self._ticker(), name="tick"),
                    tg.create_task(self.speaker.run(), name="speaker"),
                    tg.create_task(self.hooks.run(), name="hooks"),
                ]
                await self.stopped.wait()
                self._shutdown()
                for t in tasks:
                    t.cancel()
        finally:
            self.notifier.stopping()
            self.tg = None
            self._answer_asks({"ok": False, "error": "the daemon is stopping"})
            await self.mic.close()
            self.speaker.close()
            self.leds.close()
            if self.button:
                self.button.close()
            self.events.emit("stopped", self._audio_ms())
            self.events.close()
        return 0

    def request_stop(self) -> None:
        self.stopped.set()

    def _shutdown(self) -> None:
        log.info("stopping")
        self.notifier.stopping()
        if self.session is not None:
            self.speaker.stop()
            self._close_session(st.CloseSession("shutting down"))

    def _spawn(self, coro: Any) -> None:
        assert self.tg is not None
        self.tg.create_task(coro)

    def _report_overflows(self) -> None:
        """Audio the microphone lost because the loop fell behind: counted, logged at most
        once a minute, never fatal."""
        lost = self.mic.overflows + getattr(self.mic, "dropped", 0)
        if lost > self._overflows_logged and time.monotonic() - self._overflow_log_t > 60:
            log.warning("microphone overflowed %d times so far (the CPU fell behind)", lost)
            self._overflows_logged, self._overflow_log_t = lost, time.monotonic()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._report_overflows()
            self._check_speaker()
            if self.machine.state is st.State.MUTED:
                self.notifier.audio_alive()  # closed on purpose; the loop itself is alive
            quiet = self.session.quiet_s(time.monotonic()) if self.session else None
            self._handle(st.Tick(quiet))
            self.notifier.status(self._status_text())

    def _check_speaker(self) -> None:
        """A speaker that hangs or goes away mid-reply must not leave the device answering
        for ever: show the error, end the conversation, and open the output afresh."""
        problem = self.speaker.failure(time.monotonic())
        if problem is None:
            return
        self._speaker_failures += 1
        self._speaker_suspect = True
        self.speaker.recover()
        self._handle(st.SpeakerFailed(f"{problem}; reopening it"))

    async def _audio_loop(self) -> None:
        while True:
            if self._mic_failure is not None:
                await self._recover_mic(self._mic_failure)
                self._mic_failure = None
            try:
                frame = await self.mic.read()
            except MicFailure as e:
                self._mic_failure = e
                continue
            self._on_frame(frame)
            if self.mic.eof and self._conversation_over():
                log.info("input file ended and the device is idle: exiting")
                self.request_stop()
                return

    async def _recover_mic(self, failure: Exception) -> None:
        """Error state, then try to get the microphone back, with backoff, until it is."""
        log.warning("%s; trying to get it back", failure)
        self._handle(st.MicLost(str(failure)))
        t0, delay = time.monotonic(), 0.5
        absent = isinstance(failure, DeviceNotFound) or not isinstance(failure, MicFailure)
        while not self.stopped.is_set():
            if absent:
                # waiting for a microphone that is not there is not a hang: no restart. A
                # stalled capture, or a close stuck in PortAudio, does not feed the watchdog.
                self.notifier.audio_alive()
            try:
                await self.mic.reopen(self._refresh_devices)
                break
            except (MicFailure, DeviceNotFound, OSError) as e:
                absent = not isinstance(e, MicFailure)
                log.debug("microphone not back yet: %s", e)
                self.notifier.status(f"error: {failure}; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        else:
            return
        log.info("microphone '%s' back after %.0f s", self.mic.name, time.monotonic() - t0)
        self._handle(st.MicBack())

    async def _refresh_devices(self) -> None:
        """Re-enumerate PortAudio's devices so a re-plugged microphone is found again."""
        if not isinstance(self.speaker, PyAudioSpeaker):
            await asyncio.to_thread(reinitialize)
            return
        await asyncio.to_thread(self.speaker.suspend)
        try:
            await asyncio.to_thread(reinitialize)
        finally:
            await asyncio.to_thread(self.speaker.resume)

    def _conversation_over(self) -> bool:
        return self.session is None and self.machine.state in (st.State.IDLE, st.State.MUTED)

    def _phrases(self) -> str:
        return " or ".join(f"'{w.phrase}'" for w in self.wake.words)

    def _on_frame(self, frame: bytes) -> None:
        self.pos += len(frame) // 2
        self.notifier.audio_alive()
        playing = self.speaker.playing
        far = self.speaker.take_far_end(FAR_FRAME)
        frame = self.echo.process(frame, far, playing, self.pos)
        if playing and far.strip(b"\0"):
            # the device made a sound during this frame: an output that is merely running
            # (filling its buffer, or not yet stopped on a busy machine) deafens nothing
            self._last_played = self.pos
        self.preroll.append(frame)
        if self.uplink is not None and not self.uplink.finished:
            self.uplink.push(frame)
            self._pump_uplink()
        heard = self.denoise.process(frame)  # what the device's own detectors listen to
        scores = self.wake.process(heard)
        if self.machine.state in WAKE_STATES:
            self._offer_wake(scores)
        state = self.machine.state
        # The VAD ignores the device's own sound: a beep while someone is already talking
        # costs a few frames; a reply's echo must never open a follow-up turn.
        tail_ms = self.cfg.audio.echo_tail_ms if state is st.State.FOLLOW_UP else EARCON_TAIL_MS
        deaf = self.pos - self._last_played < tail_ms * MIC_RATE // 1000
        listening = state in VAD_STATES and not deaf
        if listening and not self._vad_fed:
            self.vad.reset()  # no stale hangover from before the gap
        self._vad_fed = listening
        speech = self.vad.is_speech(heard) if listening else False
        self._handle(st.Heard(self.pos, speech))

    def _offer_wake(self, scores: list[float]) -> None:
        """The best wake word over its threshold, under the playback rules while the device
        is (or was just) speaking, and outside the refractory period."""
        w = self.cfg.wake
        during_playback = self.echo.active(self.pos)
        if during_playback and w.during_playback == "off":
            return
        best: tuple[int, float] | None = None
        for i, (word, score) in enumerate(zip(self.wake.words, scores, strict=True)):
            threshold = word.threshold
            if during_playback and w.during_playback == "threshold":
                threshold = max(threshold, w.playback_threshold)
            if score >= threshold and (best is None or score > best[1]):
                best = (i, score)
        if best is None:
            return
        i, score = best
        word = self.wake.words[i]
        echo_match = during_playback and w.during_playback == "echo-match"
        if echo_match and self.echo.said_by_device(i, self.pos):
            log.debug("ignored '%s': the device said it itself", word.phrase)
            self.wake_filter.quiet_until(self.pos + self.wake_filter.refractory_samples)
            return
        hit = self.wake_filter.offer(word.phrase, score, word.threshold, self.pos)
        if hit is None:
            return
        self.events.emit("wake", self._audio_ms(), word=hit.word, score=round(hit.score, 3))
        log.info("wake word '%s' (score %.2f)", hit.word, hit.score)
        self._handle(st.Wake(hit.word, hit.score, hit.end_sample))

    def _audio_ms(self) -> int:
        return samples_to_ms(self.pos, MIC_RATE)

    # -- the machine ------------------------------------------------------------------------

    def _handle(self, event: st.Input) -> None:
        self._pending.append(event)
        if self._handling:
            return  # an input raised while applying commands waits its turn
        self._handling = True
        try:
            while self._pending:
                ev = self._pending.popleft()
                for cmd in self.machine.handle(ev, time.monotonic()):
                    self._apply_table[type(cmd)](cmd)
        finally:
            self._handling = False

    def _status_text(self) -> str:
        state = self.machine.state
        outage = self.machine.outage
        if outage.ongoing and state in (st.State.IDLE, st.State.ERROR):
            wait = outage.wait(time.monotonic())
            later = f"next try in {wait:.0f} s" if wait else "will try on the next wake"
            return f"offline: {later}; listening for {self._phrases()}"
        if state is st.State.IDLE:
            return f"idle, listening for {self._phrases()}"
        return str(state.value).replace("_", " ")

    def _show_leds(self, state: st.State) -> None:
        """The pattern of `state` (idle shows `offline` during an outage)."""
        pattern = self.patterns[pattern_name(state, self.machine.outage.ongoing)]
        self.leds.show(pattern)
        self.events.emit(
            "led",
            self._audio_ms(),
            pattern=pattern.name,
            color=pattern.hex,
            effect=pattern.effect.value,
        )

    def _enter(self, c: st.Enter) -> None:
        previous = self._shown_state
        self._shown_state = c.state
        CONTEXT["STATE"] = c.state.value
        self.events.emit("state", self._audio_ms(), state=c.state.value, reason=c.reason)
        self._show_leds(c.state)
        self.notifier.status(self._status_text())
        log.info("state: %s (%s)", c.state.value, c.reason)
        self.hooks.state_changed(c.state.value, previous.value, c.reason)
        if (c.state is st.State.MUTED) != (previous is st.State.MUTED):
            self._remember(muted=c.state is st.State.MUTED)
        if c.state in REPLY_OVER and self._asks:
            answer = " ".join(self._ask_answer)
            reply: Reply = {"ok": True, "state": c.state.value, "answer": answer}
            if c.state is st.State.ERROR and self.last_error is not None:
                reply = {"ok": False, "error": f"{self.last_error[0]}: {self.last_error[1]}"}
            elif c.state is not st.State.FOLLOW_UP:
                reply = {"ok": False, "error": f"no answer ({c.reason})"}
            self._answer_asks(reply)

    def _remember(self, **changes: Any) -> None:
        if self.store is None:
            return
        self.remembered = dataclasses.replace(self.remembered, **changes)
        self.store.save(self.remembered)

    def _report_error(self, c: st.ReportError) -> None:
        self.last_error = (c.code, c.message, time.monotonic())
        self.events.emit("error", self._audio_ms(), code=c.code, message=c.message)
        # an outage is logged when it starts and when it ends, not at every failed attempt
        level = logging.DEBUG if c.repeat else logging.WARNING
        log.log(level, "%s: %s", c.code, c.message, extra={"ERROR_CODE": c.code})

    def _report_recovery(self, c: st.ReportRecovery) -> None:
        self.events.emit("recovered", self._audio_ms(), outage_s=round(c.outage_s, 1))
        log.info("the cloud answers again after %.0f s", c.outage_s)

    def _play_earcon(self, kind: str) -> None:
        if ("mute" if kind.startswith("mute") else kind) not in self.cfg.audio.earcons:
            return
        self._earcons += 1
        name = f"{EARCON}{kind}:{self._earcons}"
        self.events.emit("earcon", self._audio_ms(), kind=kind)
        self.speaker.play(name, name, "earcon", earcon(kind, self.cfg.audio.earcon_volume))
        self.speaker.end(name)

    # -- the session ------------------------------------------------------------------------

    def _open_session(self, c: st.OpenSession) -> None:
        assert self.tg is not None
        self._heard_from.clear()
        self.conversation = rt.Conversation()
        self.client = rt.ClientEvents()
        self.discard_next_response = False
        self.tool_rounds = 0
        session = CloudSession(
            self.endpoint,
            auth_headers(self.endpoint.kind, self.cfg.api_key, self._bearer),
            session_settings(self.cfg, self.toolbox.declarations),
            self.client,
            on_event=lambda ev: self._on_server_event(session, ev),
            on_status=lambda ev: self._on_session_status(session, ev),
            connect_timeout_s=self.cfg.cloud.connect_timeout_s,
            keepalive_s=self.cfg.cloud.keepalive_s,
        )
        self.session = session
        session.start(self.tg)

    def _close_session(self, c: st.CloseSession) -> None:
        session, self.session = self.session, None
        CONTEXT["SESSION_ID"] = ""
        if session is not None:
            log.info("session %s closed (%s)", session.session_id or "(not open)", c.reason)
            session.close(c.reason)
            self.events.emit("session_closed", self._audio_ms(), reason=c.reason)
        self.uplink = None

    def _on_session_status(self, session: CloudSession, ev: st.Input) -> None:
        if session is not self.session:
            return  # a session we already let go of
        if isinstance(ev, st.SessionReady):
            CONTEXT["SESSION_ID"] = session.session_id
            log.info("session %s open", session.session_id)
            self.events.emit("session_open", self._audio_ms(), session_id=session.session_id)
            self._pump_uplink()
        elif isinstance(ev, st.SessionFailed | st.SessionLost):
            CONTEXT["SESSION_ID"] = ""
            self.session = None
            self.uplink = None
            self.events.emit("session_closed", self._audio_ms(), reason=ev.code)
        self._handle(ev)

    def _send(self, event: dict[str, Any]) -> None:
        if self.session is not None:
            self.session.send(event)

    # -- the user's turn --------------------------------------------------------------------

    def _start_turn(self, c: st.StartTurn) -> None:
        start = max(c.start_sample, self.preroll.start)
        self.uplink = Uplink(start)
        self.uplink.push(self.preroll.since(start))
        self._pump_uplink()

    def _end_turn(self, c: st.EndTurn) -> None:
        up = self.uplink
        if up is None:
            return
        up.finish()
        self.events.emit(
            "turn_end",
            self._audio_ms(),
            reason=c.reason,
            start_sample=up.start_sample,
            end_sample=up.end_sample,
        )
        self._pump_uplink()

    def _pump_uplink(self, up: Uplink | None = None) -> None:
        up, session = up or self.uplink, self.session
        if up is None or session is None or not session.ready:
            return
        for chunk in up.take():
            session.send(self.client.append_audio(chunk))

    def _submit_turn(self, c: st.SubmitTurn) -> None:
        up = self.uplink
        self.uplink = None
        self.tool_rounds = 0
        if up is None or self.session is None:
            return
        if c.commit:
            self._pump_uplink(up)
            self._send(self.client.commit())
            self._send(self.client.create_response())
        # else the server committed the turn itself: audio not yet sent belongs to no turn
        self.events.emit("audio_sent", self._audio_ms(), ms=up.sent_ms)

    def _discard_turn(self, c: st.DiscardTurn) -> None:
        up, self.uplink = self.uplink, None
        if up is not None and up.sent_bytes and self.session is not None:
            self.events.emit("audio_sent", self._audio_ms(), ms=up.sent_ms, discarded=True)
            self._send(self.client.clear_input())

    # -- the reply --------------------------------------------------------------------------

    def _on_server_event(self, session: CloudSession, ev: rt.ServerEvent) -> None:
        if session is not self.session:
            return
        handler = self._server_table.get(type(ev))
        if handler is not None:
            handler(ev)

    def conversation_apply(self, ev: rt.ServerEvent) -> None:
        self.conversation.apply(ev)

    def _on_response_created(self, ev: rt.ResponseCreated) -> None:
        self.conversation.apply(ev)
        if self.discard_next_response:
            self.discard_next_response = False
            self.conversation.discard(ev.response_id)
            return
        self._handle(st.ResponseStarted(ev.response_id))

    def _on_audio(self, ev: rt.AudioDelta) -> None:
        if self.conversation.audible(ev.response_id):
            phase = self.conversation.phase_of(ev.item_id)
            if ev.response_id not in self._heard_from:
                self._heard_from.add(ev.response_id)
                self.events.emit("reply_audio", self._audio_ms(), response_id=ev.response_id)
            self.speaker.play(ev.response_id, ev.item_id, phase, ev.pcm)
            if phase == "final_answer":  # kept (in RAM) for a repeat
                kept = self._answer_pcm.setdefault(ev.response_id, bytearray())
                if len(kept) < MAX_REPLAY_S * CLOUD_RATE * 2:
                    kept += ev.pcm

    def _on_response_done(self, ev: rt.ResponseDone) -> None:
        self.conversation.apply(ev)
        if not self.conversation.audible(ev.response_id):
            return
        log.info("response %s: %s", ev.response_id, ev.status)
        self.speaker.end(ev.response_id)
        answer = self._answer_pcm.pop(ev.response_id, None)
        if answer and ev.status == "completed":
            self.last_answer = bytes(answer)
        calls = ev.function_calls if ev.status == "completed" else ()
        continues = bool(calls) and self.tool_rounds < MAX_TOOL_ROUNDS
        if continues:
            self.tool_rounds += 1
            for call in calls:
                output = self.toolbox.call(call.name or "", call.arguments or "")
                self.events.emit("tool_call", self._audio_ms(), name=call.name)
                self._send(self.client.function_output(call.call_id or "", output))
            self._send(self.client.create_response())
        elif calls:
            log.warning("the model kept calling tools (%d rounds); stopping here", self.tool_rounds)
        self._handle(st.ResponseEnded(ev.response_id, ev.status, continues))

    def _on_transcript(self, ev: rt.TranscriptDone | rt.InputTranscript) -> None:
        # the user's words and the reply's are personal: only in debug logs, never at INFO
        if isinstance(ev, rt.TranscriptDone):
            phase = self.conversation.phase_of(ev.item_id)
            log.debug("assistant (%s): %s", phase, ev.transcript)
            if self._asks and phase == "final_answer":
                self._ask_answer.append(ev.transcript)  # for the `ask` waiting for it
        elif ev.final:
            log.debug("user: %s", ev.text)

    def _on_rate_limits(self, ev: rt.RateLimits) -> None:
        for name, remaining, reset in ev.limits:
            log.debug("rate limit %s: %g left, resets in %gs", name, remaining, reset)

    def _on_server_error(self, ev: rt.ServerError) -> None:
        code = ev.code or ev.kind or "error"
        reaction = rt.reaction_to(code)
        if reaction is rt.Reaction.IGNORE:
            log.debug("server: %s (%s)", code, ev.message)
        elif reaction is rt.Reaction.CONTINUE:
            self.events.emit("error", self._audio_ms(), code=code, message=ev.message)
            log.warning("server error %s: %s", code, ev.message)
        else:
            back_off = reaction is rt.Reaction.BACK_OFF
            self._handle(st.CloudError(code, ev.message or code, back_off))

    def _on_bad_event(self, ev: rt.Malformed | rt.Unknown) -> None:
        key = f"{type(ev).__name__}:{ev.type}"
        if key not in self._warned:  # once per kind, not per event
            self._warned.add(key)
            what = ev.reason if isinstance(ev, rt.Malformed) else "unknown event type"
            log.warning("ignoring server event %s: %s", ev.type or "?", what)

    def _cancel_response(self, c: st.CancelResponse) -> None:
        active = self.conversation.active_response
        if active is not None:
            self.conversation.discard(active)
        else:
            self.discard_next_response = True
        self._send(self.client.cancel_response())

    def _truncate(self, c: st.Truncate) -> None:
        if self.session is not None:
            self._send(self.client.truncate(c.item_id, c.audio_end_ms))

    def _delete_items(self, c: st.DeleteItems) -> None:
        if self.session is not None:
            for item_id in c.item_ids:
                self._send(self.client.delete_item(item_id))

    def _on_playout(self, ev: PlayoutEvent) -> None:
        ms = self._audio_ms()
        if isinstance(ev, ResponsePlayed) and self._speaker_suspect:
            self._speaker_suspect = False
            log.info("speaker '%s' plays again", self.speaker.name)
        if isinstance(ev, ItemStarted | ResponsePlayed) and ev.response_id.startswith(EARCON):
            return  # the device's own sounds are not part of the conversation
        if isinstance(ev, PlayoutStopped):
            # the device's own sounds and repeats are not in the server's conversation
            ours = (EARCON, REPLAY)
            current = None if (ev.item_id or "").startswith(ours) else ev.item_id
            unplayed = tuple(i for i in ev.unplayed_item_ids if not i.startswith(ours))
            ev = PlayoutStopped(current, ev.played_ms, unplayed)
        if isinstance(ev, ItemStarted):
            self.events.emit("playback_start", ms, phase=ev.phase, item_id=ev.item_id)
            self._handle(st.PlaybackStarted(ev.response_id, ev.item_id, ev.phase))
        elif isinstance(ev, ResponsePlayed):
            self.events.emit("playback_end", ms, response_id=ev.response_id)
            self._handle(st.PlaybackFinished(ev.response_id))
        elif isinstance(ev, PlayoutStopped):
            if ev.item_id is not None:
                self.events.emit("barge_in", ms, item_id=ev.item_id, played_ms=ev.played_ms)
                self.events.emit("playback_end", ms, stopped=True)
            self._handle(st.PlaybackStopped(ev.item_id, ev.played_ms, ev.unplayed_item_ids))

    # -- typed questions and repeats --------------------------------------------------------

    def _send_text(self, c: st.SendText) -> None:
        self.tool_rounds = 0
        self._send(self.client.user_text(c.text))
        self._send(self.client.create_response())

    def _replay_answer(self, c: st.ReplayAnswer) -> None:
        if not self.last_answer:
            log.info("double press: no answer to repeat yet")
            self._play_earcon("error")
            self._handle(st.PlaybackFinished(REPLAY + "none"))
            return
        self._replays += 1
        rid = f"{REPLAY}{self._replays}"
        self.events.emit("replay", self._audio_ms(), ms=len(self.last_answer) // 48)
        self.speaker.play(rid, rid + ":answer", "final_answer", self.last_answer)
        self.speaker.end(rid)

    # -- the control socket -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        m = self.machine
        session = None
        if self.session is not None:
            session = {"id": self.session.session_id, "ready": self.session.ready}
        error = None
        if self.last_error is not None:
            code, message, at = self.last_error
            error = {"code": code, "message": message, "ago_s": round(now - at, 1)}
        return {
            "state": m.state.value,
            "status": self._status_text(),
            "muted": m.state is st.State.MUTED,
            "offline": m.outage.ongoing,
            "session": session,
            "last_error": error,
            "uptime_s": round(now - self.started, 1),
            "volume": round(self.speaker.volume * 100),
            "wake_words": [w.phrase for w in self.wake.words],
            "microphone": self.mic.name,
            "microphone_open": self.mic.is_open,
            "speaker": {
                "name": self.speaker.name,
                "output_latency_ms": round(self.speaker.output_latency_s * 1000, 1),
                "audible_after_stop_ms": round(self.speaker.audible_after_stop / 24, 1),
                "underruns": self.speaker.underruns,
                "failures": self._speaker_failures,
            },
            "pid": os.getpid(),
        }

    async def _on_control(self, verb: str, arg: str) -> Reply:
        if self.tg is None or self.stopped.is_set():
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
            if state is st.State.MUTED:
                return {"ok": False, "error": "muted: unmute first (voice-device mute off)"}
            self._handle(st.Summon(self.pos))
            return {"ok": True, "state": self.machine.state.value}
        if verb == "ask":
            return await self._ask(arg)
        if verb == "volume":
            return self._set_volume(arg)
        known = "status, mute on|off, wake, ask TEXT, volume [0-200]"
        return {"ok": False, "error": f"unknown command {verb!r} ({known})"}

    async def _ask(self, text: str) -> Reply:
        state = self.machine.state
        if not text:
            return {"ok": False, "error": "usage: ask TEXT"}
        if state is st.State.MUTED:
            return {"ok": False, "error": "muted: unmute first (voice-device mute off)"}
        if state not in (st.State.IDLE, st.State.ERROR, st.State.FOLLOW_UP) or self._asks:
            return {"ok": False, "error": f"busy ({state.value}); try again when idle"}
        answered: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._asks.append(answered)
        self._ask_answer = []
        self._handle(st.AskText(text))
        return await answered

    def _answer_asks(self, reply: Reply) -> None:
        asks, self._asks = self._asks, []
        for f in asks:
            if not f.done():
                f.set_result(reply)

    def _set_volume(self, arg: str) -> Reply:
        if arg:
            try:
                percent = int(arg.rstrip("%"))
            except ValueError:
                percent = -1
            if not 0 <= percent <= 200:
                return {"ok": False, "error": "usage: volume N, N from 0 to 200 (100: as sent)"}
            self.speaker.volume = percent / 100
            self._remember(volume=percent / 100, volume_config=self.cfg.audio.volume)
            log.info("volume %d%%", percent)
        return {"ok": True, "volume": round(self.speaker.volume * 100)}

    # -- the button -------------------------------------------------------------------------

    def _on_button(self, edge: str) -> None:
        if edge == "down":
            self._handle(st.ButtonDown(self.pos))
        elif edge == "held":
            self._handle(st.ButtonHeld())
        else:
            self._handle(st.ButtonUp())


def _get(cfg: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)
