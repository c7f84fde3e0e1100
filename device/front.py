"""The audio front end: microphone frames in, the state machine's inputs out.

Each 20 ms frame is cleaned of the device's own echo, kept in the pre-roll, denoised for the
device's own detectors, shown to the wake word model and (where `core.hearing` says) to the
VAD. What it means is decided in `core`: which wake word wins (`core.wake`), which states
hear it, and when the VAD must not trust its ears (`core.hearing`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable

from .adapters.denoise import Suppression
from .adapters.echo import FAR_FRAME, EchoGuard
from .adapters.speaker import Speaker
from .adapters.vad import NeuralVad, Vad
from .adapters.wakeword import SecondLook, WakeEngine, load_engine
from .config import Config
from .core import states as st
from .core.audio import (
    MAX_PREROLL_MS,
    MIC_RATE,
    PreRoll,
    ms_to_samples,
    rms_dbfs,
    samples_to_ms,
)
from .core.hearing import (
    IDLE_STATES,
    REPLY_VOICE,
    USER_FRAMES,
    WAKE_STATES,
    WAKE_WORD_FRAMES,
    BackgroundSpeech,
    DeafWindow,
    HeldBack,
    TalkOver,
    UplinkChoice,
    is_firm,
    speech_level,
)
from .core.wake import DuringPlayback, WakeFilter, choose_wake
from .events import EventLog

log = logging.getLogger(__name__)

TURN_STATES = frozenset({st.State.CONNECTING, st.State.LISTENING})
"""Where the user has the turn: the wake word is past and the turn is not over."""


def detectors(cfg: Config) -> tuple[WakeEngine, EchoGuard]:
    """The wake word model, and the echo guard with its reference model if echo-match is on.
    Slow (models load): called off the event loop on a reload."""
    w = cfg.wake
    wake = load_engine(w.engine, w.models, w.thresholds, second_look=w.second_look)
    reference = (
        load_engine(w.engine, w.models, role="echo-match reference")
        if DuringPlayback(w.during_playback) is DuringPlayback.ECHO_MATCH
        else None
    )
    a = cfg.audio
    voice = cfg.turn.barge_in == "voice"
    return wake, EchoGuard(reference, a.echo_tail_ms, a.echo_cancellation, subtract=voice)


def held_before_wake(cfg: Config) -> int:
    """Samples the pre-roll ring keeps: `audio.preroll_ms`, and while a second look at a
    wake word waits (`SecondLook.WAIT_MS`), what came since the word ended; never more than
    `MAX_PREROLL_MS`. What is sent stays `preroll_ms` before the word's end."""
    wait = SecondLook.WAIT_MS if cfg.wake.second_look else 0
    return ms_to_samples(min(cfg.audio.preroll_ms + wait, MAX_PREROLL_MS), MIC_RATE)


class FrontEnd:
    def __init__(
        self,
        cfg: Config,
        events: EventLog,
        handle: Callable[[st.Input], None],
        state: Callable[[], st.State],
        uplink: Callable[[bytes], None],
    ) -> None:
        """`uplink`: where each cleaned frame goes at once (the turn being streamed, if one
        is), before anything this frame makes happen."""
        self.events = events
        self._handle = handle
        self._state = state
        self._uplink = uplink
        self.pos = 0
        """Microphone samples seen so far: the audio clock."""
        self.preroll = PreRoll(held_before_wake(cfg))
        self.wake, self.echo = detectors(cfg)
        self.loudness: deque[float] = deque(maxlen=WAKE_WORD_FRAMES)
        """Each recent frame's level, dBFS: how loud the wake word was (`wake_level`)."""
        self.user_levels: deque[float] = deque(maxlen=USER_FRAMES)
        """The levels of the user's last voiced frames while listening."""
        self.last_wake: st.Wake | None = None
        self.hears_talk_over: Callable[[], bool] = lambda: False
        """Whether talking over the reply interrupts it now (the machine says)."""
        self.woke: Callable[[st.Wake], None] = lambda w: None
        self.play_chime: Callable[[], None] = lambda: None
        self._chime = False
        """A wake chime waits for the first frame of the conversation (`wake_chime`)."""
        self.hold_chime = False
        """Other devices may answer this wake: the chime waits for the outcome."""
        self._chime_held = False
        self._config_generation = 0
        self._neural_vad_loading = False
        self.echo_path: Callable[[], float] = lambda: 0.0
        """Milliseconds from a sound handed to the speaker to its echo in the microphone's
        frames (the app knows the devices)."""
        self.configure(cfg)

    def configure(self, cfg: Config, found: tuple[WakeEngine, EchoGuard] | None = None) -> None:
        """Apply a (re)loaded configuration; `found`: its detectors, already loaded."""
        if found is not None:
            self.wake, self.echo = found
        self.echo.path_ms = lambda: self.echo_path()
        w = cfg.wake
        self.rule = DuringPlayback(w.during_playback)
        self.playback_threshold = w.playback_threshold
        self.wake_filter = WakeFilter(ms_to_samples(w.refractory_ms, MIC_RATE))
        self._lowest = min((word.threshold for word in self.wake.words), default=math.inf)
        """No score under this can wake (a threshold is only ever raised): most frames."""
        self.vad = Vad(cfg.turn.vad_aggressiveness)
        self.idle_vad = Vad(cfg.turn.vad_aggressiveness)
        """The room while idle, for `background` (its own state: the turn's VAD is reset)."""
        self.background = BackgroundSpeech()
        self.talk_over = TalkOver()
        self.neural_vad: NeuralVad | None = None
        """Silero: the talk-over detector's own VAD (with `turn.barge_in = "voice"`), and the
        judge of frames the background gate holds back in the user's turn (`HeldBack`);
        loaded when the first conversation that needs it begins (`_load_neural_vad`)."""
        self.held_back = HeldBack()
        self.over_gate = Vad(cfg.turn.vad_aggressiveness)
        """webrtcvad first (cheap): only what it calls speech is asked of the neural VAD."""
        self._talks_over = cfg.turn.barge_in == "voice"
        self._config_generation += 1
        self._idle = True
        self.denoise = Suppression(
            cfg.audio.noise_suppression, cfg.audio.noise_suppression_above_db
        )
        self.deaf = DeafWindow(cfg.audio.echo_tail_ms)
        self.uplink_choice = UplinkChoice(cfg.audio.echo_tail_ms)
        preroll = held_before_wake(cfg)
        if preroll != self.preroll.capacity:
            self.preroll = PreRoll(preroll)

    @property
    def audio_ms(self) -> int:
        return samples_to_ms(self.pos, MIC_RATE)

    def phrases(self) -> str:
        return " or ".join(f"'{w.phrase}'" for w in self.wake.words)

    def hear(self, frame: bytes, speaker: Speaker) -> None:
        """Take one microphone frame."""
        self.pos += len(frame) // 2
        playing = speaker.playing
        far = speaker.take_far_end(FAR_FRAME)
        cleaned = self.echo.process(frame, far, playing, self.pos)
        if playing and far.strip(b"\0"):
            self.deaf.sounded(self.pos)
        heard_as_is = self.echo.aligned  # (as late as the canceller's output, if it is on)
        state = self._state()
        choice = self.uplink_choice
        sent = heard_as_is
        reply_echo = choice.cleaned(state, self.pos)
        echo = self.echo
        if (
            echo.active(self.pos)  # (first: nothing more to do while the device is quiet)
            and echo.subtracted_learnt
            and (
                state not in REPLY_VOICE  # (a chime, or the room's tail of the reply)
                or echo.subtracted_holds_more()  # (someone talks over the device)
            )
        ):
            sent = echo.subtracted
        elif reply_echo and choice.took_out(rms_dbfs(heard_as_is), rms_dbfs(cleaned)):
            sent = cleaned
        self.preroll.append(sent)
        self._uplink(sent)
        heard = self.denoise.process(cleaned)  # what the device's own detectors listen to
        scores = self.wake.process(heard)
        if state in WAKE_STATES:
            self._offer_wake(scores)
            state = self._state()  # (woken)
        runs, fresh = self.deaf.vad_runs(state, self.pos)
        loudness = rms_dbfs(heard)
        self.loudness.append(loudness)
        level = loudness if runs or state in IDLE_STATES else -math.inf
        if state in IDLE_STATES:
            if not self.deaf.deaf(state, self.pos):  # (not the echo of its own error sound)
                self.background.observe(level, self.idle_vad.is_speech(heard, level))
                # (the room as it is, for whether to suppress noise: when it is off, that
                # is what the detectors heard)
                self.denoise.hear_room(loudness if heard is cleaned else rms_dbfs(cleaned))
        elif self._idle:  # a conversation begins: how loud is the room's other speech?
            self.background.turn_starts()
            self.held_back.turn_starts()
            self.user_levels.clear()
            if self.neural_vad is None and (
                self._talks_over or self.background.gate_db > -math.inf
            ):
                self._load_neural_vad()
            if self._chime:
                self._chime = False
                if self.background.user_talking:
                    log.debug("no wake chime: the user went straight on with the command")
                elif self.hold_chime:
                    self._chime_held = True
                else:
                    self.play_chime()
        self._idle = state in IDLE_STATES
        if fresh:
            self.vad.reset()  # no stale hangover from before the gap
        voiced = runs and self.vad.is_speech(heard, level)
        speech = voiced and self.background.users(level)
        firm = True
        if state in TURN_STATES:
            speech = self._users(heard, level, voiced, speech)
            if speech:
                self.user_levels.append(level)  # (how loud the user speaks: `talk_over`, `firm`)
        if speech and state is st.State.LISTENING:
            firm = is_firm(level, self.user_levels)
        self._handle(st.Heard(self.pos, speech, firm))
        self._talked_over(heard, loudness, playing, far, frame)

    def _users(self, heard: bytes, level: float, voiced: bool, over_gate: bool) -> bool:
        """Whether a frame of the user's turn is the user speaking: voiced and over the
        background gate, or, in a room with background speech, voiced, held back by the gate
        and a voice to the neural VAD (`HeldBack`)."""
        vad = self.neural_vad
        if vad is None or self.background.gate_db == -math.inf:
            return over_gate
        vad.hear(heard)
        return self.held_back.users(
            voiced, over_gate, level, self.user_levels, self.pos, vad.is_speech
        )

    def _load_neural_vad(self) -> None:
        """Silero VAD, for talking over a reply (or for a room with background speech), is
        loaded in a thread when the first conversation begins (about 0.15 s of CPU here, and
        4 MB): never while the device only listens for its wake word, and ready long before
        the first reply plays. If it cannot be loaded, talking over is off (logged), the wake
        word still interrupts, and the background gate alone decides the user's frames."""
        if self._neural_vad_loading:
            return
        self._neural_vad_loading = True
        generation = self._config_generation

        def load() -> None:
            try:
                vad = NeuralVad()
            except Exception:
                log.exception("Silero VAD did not load: talking over the reply is off")
                return
            finally:
                self._neural_vad_loading = False
            if generation == self._config_generation:  # (not a configuration reloaded since)
                self.neural_vad = vad

        threading.Thread(target=load, name="silero-vad-load", daemon=True).start()

    def _talked_over(
        self, heard: bytes, loudness: float, playing: bool, far: bytes, raw: bytes
    ) -> None:
        """While a reply sounds (with `turn.barge_in = "voice"`): is the user talking over
        it? Checked after the frame's other inputs, on the microphone less the device's
        linear echo once the subtractor has learnt the room (the user's voice whole), on
        what AEC3 left before (its suppressor dulls a word said over the reply)."""
        vad = self.neural_vad
        if vad is None:
            return  # (not loaded: no need, or not yet: `_load_neural_vad`)
        if not playing and not self.talk_over.active:
            return  # (nothing sounds, nor has since it was last reset: as when idle)
        if not self.hears_talk_over():  # (not now, or `turn.barge_in = "wake"`)
            if self.talk_over.active:
                self.talk_over.reset()
                vad.reset()
            return
        t = self.talk_over
        if self.echo.subtracted_learnt:
            heard = self.echo.subtracted
            loudness = rms_dbfs(heard)
        t.far(rms_dbfs(far), rms_dbfs(raw))
        t.user_db = speech_level(self.user_levels)
        vad.hear(heard)
        loud_enough = t.loud_enough(loudness, self.background.gate_db)
        voiced = loud_enough and self.over_gate.is_speech(heard, loudness) and vad.is_speech()
        onset = t.feed(self.pos, loudness, voiced, playing)
        if onset is not None:
            log.info("the user talks over the reply")
            self._handle(st.TalkedOver(onset))

    def wake_chime(self) -> None:
        """The wake chime: never over the user's words. Waking from idle, it is decided on
        the conversation's first frame, once `background` has said whether the user is
        already talking (then it is left out: the light shows that the device listens).
        """
        if self._idle:
            self._chime = True
        else:
            self.play_chime()

    def contest_over(self, won: bool) -> None:
        """The devices agreed who answers: a chime held for it plays if it is this one."""
        held, self._chime_held, self.hold_chime = self._chime_held, False, False
        if not won:
            self._chime = False  # (one not yet due either)
        elif held:
            self.play_chime()

    def quiet(self) -> None:
        """Another of the device's sounds replaces a wake chime not yet played."""
        self._chime = self._chime_held = False

    def _offer_wake(self, scores: list[float]) -> None:
        """The best wake word over its threshold, under the playback rules while the device
        is (or was just) speaking, and outside the refractory period."""
        if max(scores, default=0.0) < self._lowest:
            return
        during_playback = self.echo.active(self.pos)
        words = self.wake.words
        best = choose_wake(
            [w.threshold for w in words],
            scores,
            during_playback,
            self.rule,
            self.playback_threshold,
        )
        if best is None:
            return
        word = words[best.index]
        echo_match = during_playback and self.rule is DuringPlayback.ECHO_MATCH
        if echo_match and self.echo.said_by_device(best.index, self.pos):
            log.debug("ignored '%s': the device said it itself", word.phrase)
            self.wake_filter.quiet_until(self.pos + self.wake_filter.refractory_samples)
            return
        end = self.pos - self.wake.late  # (where the word ended, when a second look took it)
        hit = self.wake_filter.offer(word.phrase, best.score, word.threshold, end)
        if hit is None:
            return
        self.events.emit("wake", self.audio_ms, word=hit.word, score=round(hit.score, 3))
        log.info("wake word '%s' (score %.2f)", hit.word, hit.score)
        self.last_wake = st.Wake(hit.word, hit.score, hit.end_sample)
        self.woke(self.last_wake)
        self._handle(self.last_wake)

    def wake_level(self) -> float:
        """How loud the speech over the last wake word was (dBFS): what another device on
        the broker compares with its own (`core.arbitration`)."""
        return speech_level(self.loudness)
