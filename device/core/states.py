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
from collections.abc import Callable
from dataclasses import dataclass, field

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
    code: str
    message: str


@dataclass(frozen=True)
class SessionLost:
    code: str
    message: str


@dataclass(frozen=True)
class CloudError:
    """An `error` event the session cannot go on after."""

    code: str
    message: str


@dataclass(frozen=True)
class ResponseStarted:
    response_id: str


@dataclass(frozen=True)
class ResponseEnded:
    response_id: str
    status: str


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
class Tick:
    pass


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
    | ResponseStarted
    | ResponseEnded
    | PlaybackStarted
    | PlaybackFinished
    | PlaybackStopped
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
    """Send what is left of the turn, commit it and ask for a response."""


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
)


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    rate: int = 16_000
    preroll_ms: int = 300
    no_speech_ms: int = 5_000
    follow_up_ms: int = 5_000
    reply_timeout_s: float = 20.0
    error_hold_s: float = 3.0
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)


class Turn(enum.Enum):
    NONE = "none"
    OPEN = "open"
    """Capturing the user's audio."""
    ENDED = "ended"
    """Captured; waiting for the session to be ready to submit it."""


Handler = Callable[["Machine", Input, float], list[Command]]


class Machine:
    def __init__(self, settings: Settings | None = None) -> None:
        self.s = settings or Settings()
        self.state = State.IDLE
        self.entered_at = 0.0
        self.endpointer = Endpointer(self.s.endpoint)
        self.audio_pos = 0
        """Newest microphone sample seen (from `Heard`)."""
        self.session_open = False
        self.turn = Turn.NONE
        self.response_id: str | None = None
        """The response being generated, between response.created and response.done."""
        self.response_expected = False
        """A turn was submitted and its response has not been created yet."""
        self.press_sample: int | None = None
        self.press_consumed = False
        self.ignored = 0

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

    def _samples(self, ms: int) -> int:
        return ms * self.s.rate // 1000

    def _start_turn(self, start_sample: int, reason: str, wait_for_speech: bool) -> list[Command]:
        self.turn = Turn.OPEN
        if wait_for_speech:
            self.endpointer.wait_for_speech(self.audio_pos, self.s.no_speech_ms)
        return [StartTurn(max(0, start_sample), reason)]

    def _end_turn(self, end_sample: int, reason: str) -> list[Command]:
        self.endpointer.stop()
        self.turn = Turn.ENDED
        return [EndTurn(end_sample, reason)]

    def _submit(self, reason: str) -> list[Command]:
        self.turn = Turn.NONE
        self.response_expected = True
        return [SubmitTurn(), Enter(State.THINKING, reason)]

    def _teardown(self, reason: str) -> list[Command]:
        """Abandon whatever conversation is going on."""
        cmds: list[Command] = []
        if self.state in (State.THINKING, State.PREAMBLE, State.ANSWERING):
            cmds.append(StopPlayback())
        # No response.cancel: closing the session ends any response with it.
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

    def _fail(self, code: str, message: str) -> list[Command]:
        return [*self._teardown(code), ReportError(code, message), Enter(State.ERROR, code)]

    # -- waking -----------------------------------------------------------------------------

    def _wake(self, start_sample: int, reason: str) -> list[Command]:
        self.session_open = True
        return [
            *self._start_turn(start_sample, reason, wait_for_speech=True),
            OpenSession(),
            Enter(State.CONNECTING, reason),
        ]

    def on_wake(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Wake)
        return self._wake(e.end_sample - self._samples(self.s.preroll_ms), "wake word")

    def on_wake_in_session(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Wake)
        start = e.end_sample - self._samples(self.s.preroll_ms)
        return [*self._start_turn(start, "wake word", True), Enter(State.LISTENING, "wake word")]

    # -- the user's turn --------------------------------------------------------------------

    def on_heard_in_turn(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Heard)
        ev = self.endpointer.feed(e.end_sample, e.speech)
        if isinstance(ev, TurnEnded):
            cmds = self._end_turn(ev.end_sample, ev.reason)
            if self.state is State.LISTENING:
                cmds += self._submit("end of speech")
            return cmds
        if isinstance(ev, NoSpeech):
            return [*self._teardown("no speech"), Enter(State.IDLE, "no speech")]
        return []

    def on_session_ready(self, e: Input, now: float) -> list[Command]:
        cmds: list[Command] = [Enter(State.LISTENING, "session ready")]
        if self.turn is Turn.ENDED:
            cmds += self._submit("turn ended while connecting")
        return cmds

    def on_session_failed(self, e: Input, now: float) -> list[Command]:
        """The connection failed or dropped: there is nothing left to close."""
        assert isinstance(e, SessionFailed | SessionLost)
        self.session_open = False
        return self._fail(e.code, e.message)

    def on_cloud_error(self, e: Input, now: float) -> list[Command]:
        """The server said the session cannot go on: close it ourselves."""
        assert isinstance(e, CloudError)
        return self._fail(e.code, e.message)

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
        return []

    def on_playback_started(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, PlaybackStarted)
        target = State.PREAMBLE if e.phase == "commentary" else State.ANSWERING
        if target is self.state:
            return []
        return [Enter(target, e.phase)]

    def on_playback_finished(self, e: Input, now: float) -> list[Command]:
        self.endpointer.wait_for_speech(self.audio_pos, self.s.follow_up_ms)
        return [Enter(State.FOLLOW_UP, "reply played")]

    def on_heard_in_follow_up(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Heard)
        ev = self.endpointer.feed(e.end_sample, e.speech)
        if isinstance(ev, SpeechStarted):
            start = ev.onset_sample - self._samples(self.s.preroll_ms)
            self.turn = Turn.OPEN  # the endpointer is already following this speech
            return [StartTurn(max(0, start), "follow-up"), Enter(State.LISTENING, "follow-up")]
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
        self.press_sample = e.sample
        self.press_consumed = False
        return []

    def on_barge_in(self, e: Input, now: float) -> list[Command]:
        """Button pressed during a reply: silence it now, on the press, not the release."""
        assert isinstance(e, ButtonDown)
        self.press_sample = e.sample
        self.press_consumed = True
        cmds: list[Command] = [StopPlayback()]
        if self.response_id or self.response_expected:
            cmds.append(CancelResponse())
        self.response_id = None
        self.response_expected = False
        cmds += self._start_turn(e.sample, "barge-in", wait_for_speech=True)
        return [*cmds, Enter(State.LISTENING, "barge-in")]

    def _take_short_press(self) -> int | None:
        """The press's sample if this release ends a short press nobody has acted on yet."""
        sample, consumed = self.press_sample, self.press_consumed
        self.press_sample = None
        return None if consumed or sample is None else sample

    def on_press_to_wake(self, e: Input, now: float) -> list[Command]:
        sample = self._take_short_press()
        return [] if sample is None else self._wake(sample, "button")

    def on_press_to_end_turn(self, e: Input, now: float) -> list[Command]:
        if self._take_short_press() is None:
            return []
        cmds = self._end_turn(self.audio_pos, "button")
        if self.state is State.LISTENING:
            cmds += self._submit("button")
        return cmds

    def on_press_to_speak_again(self, e: Input, now: float) -> list[Command]:
        sample = self._take_short_press()
        if sample is None:
            return []
        return [*self._start_turn(sample, "button", True), Enter(State.LISTENING, "button")]

    def on_release_ignored(self, e: Input, now: float) -> list[Command]:
        self._take_short_press()
        return []

    def on_hold(self, e: Input, now: float) -> list[Command]:
        self.press_consumed = True
        if self.state is State.MUTED:
            return [OpenMic(), Enter(State.IDLE, "unmuted")]
        return [*self._teardown("muted"), CloseMic(), Enter(State.MUTED, "muted")]

    # -- time -------------------------------------------------------------------------------

    def on_tick_thinking(self, e: Input, now: float) -> list[Command]:
        if now - self.entered_at < self.s.reply_timeout_s:
            return []
        return self._fail("no_reply", f"no reply within {self.s.reply_timeout_s:g} s")

    def on_tick_error(self, e: Input, now: float) -> list[Command]:
        if now - self.entered_at < self.s.error_hold_s:
            return []
        return [Enter(State.IDLE, "error shown")]


S = State
M = Machine
_REPLY = (S.THINKING, S.PREAMBLE, S.ANSWERING)
_SESSION = (S.LISTENING, *_REPLY)

TRANSITIONS: dict[tuple[State, type], Handler] = {
    # waking
    (S.IDLE, Wake): M.on_wake,
    (S.ERROR, Wake): M.on_wake,
    (S.FOLLOW_UP, Wake): M.on_wake_in_session,
    # the user's turn
    (S.CONNECTING, Heard): M.on_heard_in_turn,
    (S.LISTENING, Heard): M.on_heard_in_turn,
    (S.CONNECTING, SessionReady): M.on_session_ready,
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
    # the button: down records the press (or interrupts a reply at once), up acts on a short
    # press, held toggles mute
    **{(s, ButtonDown): M.on_button_down for s in State if s not in _REPLY},
    **{(s, ButtonDown): M.on_barge_in for s in _REPLY},
    **{(s, ButtonHeld): M.on_hold for s in State},
    (S.IDLE, ButtonUp): M.on_press_to_wake,
    (S.ERROR, ButtonUp): M.on_press_to_wake,
    (S.CONNECTING, ButtonUp): M.on_press_to_end_turn,
    (S.LISTENING, ButtonUp): M.on_press_to_end_turn,
    (S.FOLLOW_UP, ButtonUp): M.on_press_to_speak_again,
    **{(s, ButtonUp): M.on_release_ignored for s in (*_REPLY, S.MUTED)},
    # time
    (S.THINKING, Tick): M.on_tick_thinking,
    (S.ERROR, Tick): M.on_tick_error,
}
