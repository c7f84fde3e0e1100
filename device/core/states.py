"""The device's state machine: inputs in, commands out. No I/O, no threads, no clocks.

Every transition is a row of `TRANSITIONS` at the bottom of this file: (state, input type) →
handler. An input with no row in the current state is ignored on purpose (the world is full
of harmless races: a late playback report after a barge-in, a wake word while already
listening) and counted in `Machine.ignored`.

Time comes in two kinds, both passed in. Audio positions (samples of the microphone stream)
drive everything about the user's speech: endpointing, the no-speech timeout, the follow-up
window. `now` (monotonic seconds) drives waiting on the outside world: the reply timeout and
how long an error is shown.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .backoff import BackoffPolicy, Outage
from .endpoint import Endpointer, EndpointSettings, NoSpeech, SpeechStarted, TurnEnded


class State(enum.Enum):
    IDLE = "idle"
    """Wake word armed; no socket."""
    CONNECTING = "connecting"
    """Woken; the session is opening and the user's speech is buffered in RAM."""
    LISTENING = "listening"
    """The user's turn is being streamed to the cloud."""
    THINKING = "thinking"
    """The turn ended; nothing audible yet."""
    PREAMBLE = "preamble"
    """The user is hearing commentary (\"let me check that…\")."""
    ANSWERING = "answering"
    """The user is hearing the final answer."""
    FOLLOW_UP = "follow_up"
    """Reply over; speaking now starts another turn without the wake word. Nothing is streamed."""
    MUTED = "muted"
    """Microphone closed."""
    ERROR = "error"
    """Something failed; shown for a moment, then back to idle."""


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Wake:
    word: str
    score: float
    end_sample: int


@dataclass(frozen=True)
class ButtonDown:
    sample: int


@dataclass(frozen=True)
class ButtonHeld:
    pass


@dataclass(frozen=True)
class ButtonUp:
    pass


@dataclass(frozen=True)
class Heard:
    """One microphone frame went by; `speech` is the VAD's verdict on it."""

    end_sample: int
    speech: bool


@dataclass(frozen=True)
class SessionReady:
    pass


@dataclass(frozen=True)
class SessionFailed:
    """The session could not be opened."""

    code: str
    message: str
    retryable: bool = False
    """A network or service problem (back off), not a configuration one (no point retrying)."""
    retry_after_s: float | None = None


@dataclass(frozen=True)
class SessionLost:
    """An open session ended without us closing it (network loss, keepalive timeout…)."""

    code: str
    message: str


@dataclass(frozen=True)
class CloudError:
    """An `error` event the session cannot go on after."""

    code: str
    message: str
    back_off: bool = False
    """Rate limited: wait before trying the service again."""


@dataclass(frozen=True)
class ServerCommitted:
    """Server turn detection decided the user's turn is over and committed it."""


@dataclass(frozen=True)
class ResponseStarted:
    response_id: str


@dataclass(frozen=True)
class ResponseEnded:
    response_id: str
    status: str
    continues: bool = False
    """Tool results were sent and another response was asked for: the reply goes on."""


@dataclass(frozen=True)
class PlaybackStarted:
    response_id: str
    item_id: str
    phase: str


@dataclass(frozen=True)
class PlaybackFinished:
    response_id: str


@dataclass(frozen=True)
class PlaybackStopped:
    item_id: str | None
    played_ms: int
    unplayed_item_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SetMute:
    """`voice-device mute on|off`."""

    on: bool


@dataclass(frozen=True)
class Summon:
    """`voice-device wake`: like a short press of the button, from the command line."""

    sample: int


@dataclass(frozen=True)
class AskText:
    """`voice-device ask "…"`: a typed question, answered aloud."""

    text: str


@dataclass(frozen=True)
class MicLost:
    """The microphone stopped delivering audio (unplugged, failed, stalled)."""

    message: str


@dataclass(frozen=True)
class MicBack:
    """The microphone delivers audio again."""


@dataclass(frozen=True)
class SpeakerFailed:
    """The speaker stopped taking audio, or could not start (hung, unplugged)."""

    message: str


@dataclass(frozen=True)
class Tick:
    server_quiet_s: float | None = None
    """Seconds since the session last heard from the server (None: no session)."""


Input = (
    Wake
    | ButtonDown
    | ButtonHeld
    | ButtonUp
    | Heard
    | SessionReady
    | SessionFailed
    | SessionLost
    | CloudError
    | ServerCommitted
    | ResponseStarted
    | ResponseEnded
    | PlaybackStarted
    | PlaybackFinished
    | PlaybackStopped
    | SetMute
    | Summon
    | AskText
    | MicLost
    | MicBack
    | SpeakerFailed
    | Tick
)


# ---------------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True)
class Enter:
    state: State
    reason: str


@dataclass(frozen=True)
class OpenSession:
    pass


@dataclass(frozen=True)
class CloseSession:
    reason: str


@dataclass(frozen=True)
class StartTurn:
    """Capture the user's audio from `start_sample` (taken from the pre-roll if in the past)."""

    start_sample: int
    reason: str


@dataclass(frozen=True)
class EndTurn:
    """Stop capturing: the turn is the audio up to `end_sample`."""

    end_sample: int
    reason: str


@dataclass(frozen=True)
class SubmitTurn:
    """Send what is left of the turn, commit it and ask for a response.

    With `commit` False the server has already committed the turn (server turn detection)
    and creates the response itself: nothing more is sent.
    """

    commit: bool = True


@dataclass(frozen=True)
class DiscardTurn:
    """Drop the turn's audio, and clear what the server already has of it."""


@dataclass(frozen=True)
class CancelResponse:
    pass


@dataclass(frozen=True)
class StopPlayback:
    pass


@dataclass(frozen=True)
class Truncate:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class DeleteItems:
    item_ids: tuple[str, ...]


@dataclass(frozen=True)
class CloseMic:
    pass


@dataclass(frozen=True)
class OpenMic:
    pass


@dataclass(frozen=True)
class ReportError:
    code: str
    message: str
    repeat: bool = False
    """Another failure in an outage already reported: worth recording, not shouting about."""


@dataclass(frozen=True)
class ReportRecovery:
    """The cloud answered again after an outage of `outage_s` seconds."""

    outage_s: float


@dataclass(frozen=True)
class SendText:
    """Add a typed user message to the conversation and ask for a response."""

    text: str


@dataclass(frozen=True)
class ReplayAnswer:
    """Play the last answer again, from memory; report it played like a response."""


@dataclass(frozen=True)
class PlayEarcon:
    """A short sound that needs no words: `error` for now."""

    kind: str


Command = (
    Enter
    | OpenSession
    | CloseSession
    | StartTurn
    | EndTurn
    | SubmitTurn
    | DiscardTurn
    | CancelResponse
    | StopPlayback
    | Truncate
    | DeleteItems
    | CloseMic
    | OpenMic
    | ReportError
    | ReportRecovery
    | PlayEarcon
    | SendText
    | ReplayAnswer
)


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    rate: int = 16_000
    preroll_ms: int = 300
    no_speech_ms: int = 5_000
    follow_up_ms: int = 5_000
    reply_timeout_s: float = 20.0
    """While a reply is expected or arriving, the server may not go quiet for longer."""
    error_hold_s: float = 3.0
    max_session_s: float = 55 * 60.0
    """Sessions end at 60 minutes; a conversation is not continued past this age."""
    server_turns: bool = False
    """The server's VAD ends turns (server_vad / semantic_vad); the local VAD only guards."""
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    hold_to_talk: bool = False
    """The button streams while held and ends the turn when released (no mute on hold)."""
    double_press: str = "none"
    """none, repeat, cancel or mute; other than none, short presses wait double_press_s."""
    double_press_s: float = 0.4


class Turn(enum.Enum):
    NONE = "none"
    OPEN = "open"
    """Capturing the user's audio."""
    ENDED = "ended"
    """Captured; waiting for the session to be ready to submit it."""


Handler = Callable[["Machine", Input, float], list[Command]]


class Machine:
    def __init__(
        self,
        settings: Settings | None = None,
        rng: random.Random | None = None,
        muted: bool = False,
    ) -> None:
        self.s = settings or Settings()
        self.outage = Outage(self.s.backoff, (rng or random.Random()).random)
        self.session_opened_at = 0.0
        self.state = State.MUTED if muted else State.IDLE
        self.entered_at = 0.0
        self.endpointer = Endpointer(self.s.endpoint)
        self.audio_pos = 0
        """Newest microphone sample seen (from `Heard`)."""
        self.session_open = False
        self.turn = Turn.NONE
        self.turn_start = 0
        self.response_id: str | None = None
        """The response being generated, between response.created and response.done."""
        self.response_expected = False
        """A turn was submitted and its response has not been created yet."""
        self.press_sample: int | None = None
        self.press_consumed = False
        self.mic_down = False
        """The microphone failed: the error shows until it is back."""
        self.held_turn = False
        """This turn lasts as long as the button is held (hold-to-talk)."""
        self.pending_press: tuple[int, State] | None = None
        """A short press held back (its sample, and the state it was meant for): a second
        press may yet make it a double press."""
        self.double_until = -1.0
        """A press before this time (`now`) is the second of a double press."""
        self.pending_text: str | None = None
        """A typed question waiting for the session to be ready."""
        self.replay_from: State | None = None
        """Replaying the last answer; where to return when it is over."""
        self.ignored = 0

    def reconfigure(self, settings: Settings) -> None:
        """New settings (a reloaded configuration), keeping the conversation and any outage."""
        self.s = settings
        self.outage.policy = settings.backoff
        self.endpointer.reconfigure(settings.endpoint)

    # -- entry point ------------------------------------------------------------------------

    def handle(self, event: Input, now: float) -> list[Command]:
        if isinstance(event, Heard):
            self.audio_pos = event.end_sample
        handler = TRANSITIONS.get((self.state, type(event)))
        if handler is None:
            if not isinstance(event, Heard | Tick):
                self.ignored += 1
            return []
        commands = handler(self, event, now)
        for c in commands:
            if isinstance(c, Enter):
                self.state = c.state
                self.entered_at = now
        return commands

    # -- building blocks --------------------------------------------------------------------

    def _samples(self, ms: float) -> int:
        return int(ms * self.s.rate // 1000)

    def _start_turn(self, start_sample: int, reason: str, wait_for_speech: bool) -> list[Command]:
        self.turn = Turn.OPEN
        self.held_turn = reason == "hold"
        self.turn_start = max(0, start_sample)
        if wait_for_speech:
            self.endpointer.wait_for_speech(self.audio_pos, self.s.no_speech_ms)
        return [StartTurn(self.turn_start, reason)]

    def _end_turn(self, end_sample: int, reason: str) -> list[Command]:
        self.endpointer.stop()
        self.turn = Turn.ENDED
        return [EndTurn(end_sample, reason)]

    def _submit(self, reason: str, commit: bool = True) -> list[Command]:
        self.turn = Turn.NONE
        self.response_expected = True
        return [SubmitTurn(commit), PlayEarcon("end_of_turn"), Enter(State.THINKING, reason)]

    def _teardown(self, reason: str) -> list[Command]:
        """Abandon whatever conversation is going on."""
        cmds: list[Command] = []
        if self.state in (State.THINKING, State.PREAMBLE, State.ANSWERING):
            cmds.append(StopPlayback())
        # No response.cancel: closing the session ends any response with it.
        self.pending_text = None
        self.replay_from = None
        self.response_id = None
        self.response_expected = False
        if self.turn is Turn.OPEN:
            cmds.append(EndTurn(self.audio_pos, reason))
        if self.turn is not Turn.NONE:
            cmds.append(DiscardTurn())
        self.turn = Turn.NONE
        self.endpointer.stop()
        if self.session_open:
            cmds.append(CloseSession(reason))
        self.session_open = False
        return cmds

    def _fail(
        self,
        code: str,
        message: str,
        now: float,
        retryable: bool,
        retry_after: float | None = None,
        earcon: bool = True,
    ) -> list[Command]:
        """Show an error. A retryable one starts (or extends) an outage: see `core.backoff`."""
        repeat = False
        if retryable:
            repeat = not self.outage.failed(now, retry_after)
            message += f" (next try after {self.outage.wait(now):.0f} s)"
        return [
            *self._teardown(code),
            ReportError(code, message, repeat),
            *([PlayEarcon("error")] if earcon else []),
            Enter(State.ERROR, code),
        ]

    # -- waking -----------------------------------------------------------------------------

    def _wake(self, start_sample: int, reason: str) -> list[Command]:
        self.session_open = True
        return [
            *self._start_turn(start_sample, reason, wait_for_speech=True),
            OpenSession(),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, reason),
        ]

    def on_wake(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Wake)
        wait = self.outage.wait(now)
        if wait > 0:  # an outage is on: fail at once, without a connection attempt
            message = (
                f"the cloud is unreachable; next try after {wait:.0f} s (the button tries now)"
            )
            return [
                ReportError("offline", message, True),
                PlayEarcon("error"),
                Enter(State.ERROR, "offline"),
            ]
        return self._wake(e.end_sample - self._samples(self.s.preroll_ms), "wake word")

    def on_wake_in_session(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Wake)
        start = e.end_sample - self._samples(self.s.preroll_ms)
        return [
            *self._start_turn(start, "wake word", True),
            PlayEarcon("wake"),
            Enter(State.LISTENING, "wake word"),
        ]

    # -- the user's turn --------------------------------------------------------------------

    def on_heard_in_turn(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Heard)
        if self.turn is not Turn.OPEN:
            return []  # connecting for a typed question, or the turn already ended
        ev = self.endpointer.feed(e.end_sample, e.speech)
        if isinstance(ev, NoSpeech):
            return [*self._teardown("no speech"), Enter(State.IDLE, "no speech")]
        if self.s.server_turns or self.held_turn:
            # The server (or the button) ends the turn; locally only an endless one is cut.
            limit = self._samples(self.s.endpoint.max_turn_ms + self.s.no_speech_ms)
            if e.end_sample - self.turn_start < limit:
                return []
            ev = TurnEnded(e.end_sample, e.end_sample, "max_length")
        if isinstance(ev, TurnEnded):
            cmds = self._end_turn(ev.end_sample, ev.reason)
            if self.state is State.LISTENING:
                cmds += self._submit("end of speech")
            return cmds
        return []

    def on_server_committed(self, e: Input, now: float) -> list[Command]:
        if not self.s.server_turns or self.turn is not Turn.OPEN:
            return []
        return [*self._end_turn(self.audio_pos, "server"), *self._submit("end of speech", False)]

    def on_session_ready(self, e: Input, now: float) -> list[Command]:
        cmds: list[Command] = []
        lasted = self.outage.succeeded(now)
        if lasted is not None:
            cmds.append(ReportRecovery(lasted))
        self.session_opened_at = now
        if self.pending_text is not None:
            text, self.pending_text = self.pending_text, None
            self.response_expected = True
            return [*cmds, SendText(text), Enter(State.THINKING, "typed question")]
        cmds.append(Enter(State.LISTENING, "session ready"))
        if self.turn is Turn.ENDED:
            cmds += self._submit("turn ended while connecting")
        return cmds

    def on_session_failed(self, e: Input, now: float) -> list[Command]:
        """The connection failed or dropped: there is nothing left to close."""
        assert isinstance(e, SessionFailed | SessionLost)
        self.session_open = False
        if isinstance(e, SessionFailed):
            return self._fail(e.code, e.message, now, e.retryable, e.retry_after_s)
        return self._fail(e.code, e.message, now, retryable=True)

    def on_cloud_error(self, e: Input, now: float) -> list[Command]:
        """The server said the session cannot go on: close it ourselves."""
        assert isinstance(e, CloudError)
        return self._fail(e.code, e.message, now, retryable=e.back_off)

    def on_session_ended_quietly(self, e: Input, now: float) -> list[Command]:
        """The session ended during the follow-up window: the conversation was over anyway."""
        assert isinstance(e, SessionLost | CloudError)
        if isinstance(e, SessionLost):
            self.session_open = False
        return [*self._teardown(e.code), Enter(State.IDLE, e.code)]

    # -- the reply --------------------------------------------------------------------------

    def on_response_started(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, ResponseStarted)
        self.response_id = e.response_id
        self.response_expected = False
        return []

    def on_response_ended(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, ResponseEnded)
        if self.response_id == e.response_id:
            self.response_id = None
        if e.continues:
            self.response_expected = True
        return []

    def on_playback_started(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, PlaybackStarted)
        target = State.PREAMBLE if e.phase == "commentary" else State.ANSWERING
        if target is self.state:
            return []
        return [Enter(target, e.phase)]

    def on_playback_finished(self, e: Input, now: float) -> list[Command]:
        if self.replay_from is not None:
            back, self.replay_from = self.replay_from, None
            if back is State.FOLLOW_UP and self.session_open:
                self.endpointer.wait_for_speech(self.audio_pos, self.s.follow_up_ms)
                return [Enter(State.FOLLOW_UP, "repeated")]
            return [Enter(State.IDLE, "repeated")]
        if self.response_expected or self.response_id:
            # A tool ran and the rest of the reply is coming: nothing audible meanwhile.
            if self.state is State.THINKING:
                return []
            return [Enter(State.THINKING, "waiting for the rest of the reply")]
        if now - self.session_opened_at >= self.s.max_session_s:
            return [*self._teardown("session age"), Enter(State.IDLE, "session age")]
        self.endpointer.wait_for_speech(self.audio_pos, self.s.follow_up_ms)
        return [Enter(State.FOLLOW_UP, "reply played")]

    def on_heard_in_follow_up(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Heard)
        ev = self.endpointer.feed(e.end_sample, e.speech)
        if isinstance(ev, SpeechStarted):
            start = max(0, ev.onset_sample - self._samples(self.s.preroll_ms))
            self.turn = Turn.OPEN  # the endpointer is already following this speech
            self.turn_start = start
            return [StartTurn(start, "follow-up"), Enter(State.LISTENING, "follow-up")]
        if isinstance(ev, NoSpeech):
            return [*self._teardown("conversation over"), Enter(State.IDLE, "conversation over")]
        return []

    def on_playback_stopped(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, PlaybackStopped)
        cmds: list[Command] = []
        if e.item_id is not None and self.session_open:
            cmds.append(Truncate(e.item_id, e.played_ms))
        if e.unplayed_item_ids and self.session_open:
            cmds.append(DeleteItems(e.unplayed_item_ids))
        return cmds

    # -- the button -------------------------------------------------------------------------

    def on_button_down(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, ButtonDown)
        if now <= self.double_until:
            self.pending_press, self.double_until = None, -1.0
            self.press_sample = e.sample
            self.press_consumed = True
            return self._double_press(now)
        self.pending_press = None
        self.press_sample = e.sample
        self.press_consumed = False
        if self.s.hold_to_talk:
            return self._hold_to_talk_down(e.sample)
        return []

    def _hold_to_talk_down(self, sample: int) -> list[Command]:
        self.press_consumed = True
        if self.state in (State.IDLE, State.ERROR):
            return self._wake(sample, "hold")
        if self.state is State.FOLLOW_UP:
            return [*self._start_turn(sample, "hold", True), Enter(State.LISTENING, "hold")]
        if self.state is State.MUTED:
            return [PlayEarcon("muted")]
        return []

    def _interrupt(self, start_sample: int, reason: str = "barge-in") -> list[Command]:
        """Silence the reply, cancel what is still being generated, and listen."""
        cmds: list[Command] = [StopPlayback()]
        if self.replay_from is not None:
            # A repeated answer: nothing is being generated, and there may be no session.
            self.replay_from = None
            if not self.session_open:
                return [*cmds, *self._wake(start_sample, reason)]
        if self.response_id or self.response_expected:
            cmds.append(CancelResponse())
        self.response_id = None
        self.response_expected = False
        cmds += self._start_turn(start_sample, reason, wait_for_speech=True)
        return [*cmds, Enter(State.LISTENING, reason)]

    def on_barge_in(self, e: Input, now: float) -> list[Command]:
        """Button pressed during a reply: silence it now, on the press, not the release."""
        assert isinstance(e, ButtonDown)
        self.press_sample = e.sample
        self.press_consumed = True
        if self.s.double_press != "none":
            self.double_until = now + self.s.double_press_s  # a second press may follow
        return self._interrupt(e.sample, "hold" if self.s.hold_to_talk else "barge-in")

    def on_wake_barge_in(self, e: Input, now: float) -> list[Command]:
        """The wake word said over a reply interrupts it, like the button."""
        assert isinstance(e, Wake)
        return self._interrupt(e.end_sample - self._samples(self.s.preroll_ms))

    def _take_short_press(self, now: float) -> int | None:
        """The press's sample if this release ends a short press nobody has acted on yet.

        With a double-press action configured, the press is held back instead, to be acted
        on by a Tick once the double-press window has passed (or replaced by a double press).
        """
        sample, consumed = self.press_sample, self.press_consumed
        self.press_sample = None
        if consumed or sample is None:
            return None
        if self.s.double_press != "none":
            self.pending_press = (sample, self.state)
            self.double_until = now + self.s.double_press_s
            return None
        return sample

    def _short_press(self, sample: int) -> list[Command]:
        """What a short press means in the current state."""
        if self.state in (State.IDLE, State.ERROR):
            return self._wake(sample, "button")
        if self.state in (State.CONNECTING, State.LISTENING):
            if self.turn is not Turn.OPEN:
                return []
            cmds = self._end_turn(self.audio_pos, "button")
            if self.state is State.LISTENING:
                cmds += self._submit("button")
            return cmds
        if self.state is State.FOLLOW_UP:
            return [*self._start_turn(sample, "button", True), Enter(State.LISTENING, "button")]
        if self.state is State.MUTED:
            return [PlayEarcon("muted")]
        return []

    def on_button_up(self, e: Input, now: float) -> list[Command]:
        if self.s.hold_to_talk and self.held_turn and self.turn is Turn.OPEN:
            self.press_sample = None
            cmds = self._end_turn(self.audio_pos, "released")
            if self.state is State.LISTENING:
                cmds += self._submit("released")
            return cmds
        sample = self._take_short_press(now)
        return [] if sample is None else self._short_press(sample)

    def on_tick_pending_press(self, now: float) -> list[Command]:
        if self.pending_press is None or now <= self.double_until:
            return []
        (sample, meant_for), self.pending_press = self.pending_press, None
        if meant_for is not self.state:
            return []  # overtaken (the wake word, the reply ended…): the press meant that
        return self._short_press(sample)

    def _double_press(self, now: float) -> list[Command]:
        action = self.s.double_press
        if action == "mute":
            return self._toggle_mute(self.state is not State.MUTED)
        if action == "cancel":
            if self.state in (State.IDLE, State.MUTED, State.ERROR):
                return []
            return [*self._teardown("cancelled"), Enter(State.IDLE, "cancelled")]
        if action == "repeat" and self.state in (State.IDLE, State.FOLLOW_UP, State.ERROR):
            self.replay_from = self.state
            self.endpointer.stop()
            return [ReplayAnswer(), Enter(State.ANSWERING, "repeat")]
        return []

    def on_release_ignored(self, e: Input, now: float) -> list[Command]:
        self.press_sample = None
        return []

    def on_hold(self, e: Input, now: float) -> list[Command]:
        if self.s.hold_to_talk:
            return []  # holding is talking
        self.press_consumed = True
        return self._toggle_mute(self.state is not State.MUTED)

    def _toggle_mute(self, on: bool) -> list[Command]:
        if not on:
            if self.state is not State.MUTED:
                return []
            return [OpenMic(), PlayEarcon("mute_off"), Enter(State.IDLE, "unmuted")]
        if self.state is State.MUTED:
            return []
        self.pending_press = None
        return [
            *self._teardown("muted"),
            CloseMic(),
            PlayEarcon("mute_on"),
            Enter(State.MUTED, "muted"),
        ]

    def on_set_mute(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, SetMute)
        return self._toggle_mute(e.on)

    def on_summon(self, e: Input, now: float) -> list[Command]:
        """`voice-device wake`: as a short press, acted on at once."""
        assert isinstance(e, Summon)
        if self.state in (State.THINKING, State.PREAMBLE, State.ANSWERING):
            return self._interrupt(e.sample)
        return self._short_press(e.sample)

    def on_ask(self, e: Input, now: float) -> list[Command]:
        """A typed question is asked in a session of its own, like a new conversation."""
        assert isinstance(e, AskText)
        cmds = self._teardown("typed question") if self.state is State.FOLLOW_UP else []
        self.session_open = True
        self.pending_text = e.text
        return [*cmds, OpenSession(), Enter(State.CONNECTING, "typed question")]

    # -- time -------------------------------------------------------------------------------

    def on_tick(self, e: Input, now: float) -> list[Command]:
        """Time passes: deferred short presses, and the state's own timers."""
        cmds = self.on_tick_pending_press(now)
        if cmds:
            return cmds
        if self.state in (State.THINKING, State.PREAMBLE, State.ANSWERING):
            return self.on_tick_in_reply(e, now)
        if self.state is State.ERROR:
            return self.on_tick_error(e, now)
        return []

    def on_tick_in_reply(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Tick)
        if self.replay_from is not None:
            return []
        waiting = self.response_id is not None or self.response_expected
        quiet = e.server_quiet_s
        if not waiting or quiet is None or quiet < self.s.reply_timeout_s:
            return []
        return self._fail(
            "no_reply", f"the service went quiet for {quiet:.0f} s", now, retryable=True
        )

    def on_tick_error(self, e: Input, now: float) -> list[Command]:
        if self.mic_down or now - self.entered_at < self.s.error_hold_s:
            return []
        return [Enter(State.IDLE, "error shown")]

    # -- the microphone ---------------------------------------------------------------------

    def on_mic_lost(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, MicLost)
        self.mic_down = True
        return self._fail("mic_lost", e.message, now, retryable=False)

    # -- the speaker ------------------------------------------------------------------------

    def on_speaker_failed(self, e: Input, now: float) -> list[Command]:
        """Whatever was going on is over: the user cannot hear it. No error sound either (it
        would go to the same speaker); the light says it. The next wake tries again."""
        assert isinstance(e, SpeakerFailed)
        return self._fail("speaker_failed", e.message, now, retryable=False, earcon=False)

    def on_mic_back(self, e: Input, now: float) -> list[Command]:
        self.mic_down = False
        if self.state is State.ERROR:
            return [Enter(State.IDLE, "microphone back")]
        return []


S = State
M = Machine
_REPLY = (S.THINKING, S.PREAMBLE, S.ANSWERING)
_SESSION = (S.LISTENING, *_REPLY)

TRANSITIONS: dict[tuple[State, type], Handler] = {
    # waking
    (S.IDLE, Wake): M.on_wake,
    (S.ERROR, Wake): M.on_wake,
    (S.FOLLOW_UP, Wake): M.on_wake_in_session,
    **{(s, Wake): M.on_wake_barge_in for s in _REPLY},
    # the user's turn
    (S.CONNECTING, Heard): M.on_heard_in_turn,
    (S.LISTENING, Heard): M.on_heard_in_turn,
    (S.CONNECTING, SessionReady): M.on_session_ready,
    (S.LISTENING, ServerCommitted): M.on_server_committed,
    (S.CONNECTING, SessionFailed): M.on_session_failed,
    **{(s, SessionLost): M.on_session_failed for s in (S.CONNECTING, *_SESSION)},
    **{(s, CloudError): M.on_cloud_error for s in (S.CONNECTING, *_SESSION)},
    (S.FOLLOW_UP, SessionLost): M.on_session_ended_quietly,
    (S.FOLLOW_UP, CloudError): M.on_session_ended_quietly,
    # the reply
    **{(s, ResponseStarted): M.on_response_started for s in (*_SESSION, S.FOLLOW_UP)},
    **{(s, ResponseEnded): M.on_response_ended for s in (*_SESSION, S.FOLLOW_UP)},
    **{(s, PlaybackStarted): M.on_playback_started for s in _REPLY},
    **{(s, PlaybackFinished): M.on_playback_finished for s in _REPLY},
    **{(s, PlaybackStopped): M.on_playback_stopped for s in State},
    (S.FOLLOW_UP, Heard): M.on_heard_in_follow_up,
    # the button: down records the press (or interrupts a reply at once, or starts talking in
    # hold-to-talk), up acts on a short press (or ends a held turn), held toggles mute
    **{(s, ButtonDown): M.on_button_down for s in State if s not in _REPLY},
    **{(s, ButtonDown): M.on_barge_in for s in _REPLY},
    **{(s, ButtonHeld): M.on_hold for s in State},
    **{(s, ButtonUp): M.on_button_up for s in State if s not in _REPLY},
    **{(s, ButtonUp): M.on_release_ignored for s in _REPLY},
    # commands from `voice-device` on the control socket
    **{(s, SetMute): M.on_set_mute for s in State},
    **{(s, Summon): M.on_summon for s in State if s is not S.MUTED},
    **{(s, AskText): M.on_ask for s in (S.IDLE, S.ERROR, S.FOLLOW_UP)},
    # time
    **{(s, Tick): M.on_tick for s in State},
    # the microphone (a muted one is closed on purpose and cannot fail)
    **{(s, MicLost): M.on_mic_lost for s in State if s is not S.MUTED},
    **{(s, MicBack): M.on_mic_back for s in State},
    # the speaker (a muted device plays nothing that could fail but its own earcons)
    **{(s, SpeakerFailed): M.on_speaker_failed for s in State if s is not S.MUTED},
}
