"""The device's state machine: inputs in, commands out. No I/O, no threads, no clocks.

Every (state, input) pair of the product is in one of two places at the bottom of this file:
a row of `TRANSITIONS`, which names the handler and every state it may lead to, or the
state's set in `IGNORED`, inputs that mean nothing there on purpose (the world is full of
harmless races: a late playback report after a barge-in, a wake word while already
listening). Ignored inputs are logged at debug level. A handler that enters a state its row
does not name raises `TransitionError`: a bug in this file, never the world's doing. What
the button means in each state is the table `BUTTON` beside them.

Time comes in two kinds, both passed in. Audio positions (samples of the microphone stream)
drive everything about the user's speech: endpointing, the no-speech timeout, the follow-up
window. `now` (monotonic seconds) drives waiting on the outside world: the reply timeout and
how long an error is shown.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .backoff import BackoffPolicy, Outage
from .earcons import Earcon
from .endpoint import (
    Endpointer,
    EndpointSettings,
    NoSpeech,
    SpeechResumed,
    SpeechStarted,
    TurnEnded,
    TurnPaused,
)
from .realtime import Phase

log = logging.getLogger(__name__)


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
    RINGING = "ringing"
    """A timer or alarm ended: the device rings until stopped (button, wake word, command) or
    for `ring_timeout_s`. No session; the wake word still listens (to stop it and listen)."""

    # Members are singletons compared by identity: hashed by identity too, in C. (Enum's own
    # hash is a Python call, made several times a frame: sets of states, the transition
    # table's keys.)
    __hash__ = object.__hash__


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
    """One microphone frame went by; `speech` is the VAD's verdict on it, `firm` whether it
    is also as loud as the user's own voice (see `Endpointer.feed`)."""

    end_sample: int
    speech: bool
    firm: bool = True


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
    clean: bool = False
    """The server closed it normally (1000, 1001): nothing was cut, nothing is wrong."""


@dataclass(frozen=True)
class CloudError:
    """An `error` event the session cannot go on after."""

    code: str
    message: str
    back_off: bool = False
    """Rate limited: wait before trying the service again."""
    quiet: bool = False
    """Not a failure: the session simply ended (its 60 minutes are up)."""


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
    phase: Phase


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
class TimersRang:
    """Timers or alarms ended (their names)."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class StopRinging:
    """`voice-device timers stop`."""


@dataclass(frozen=True)
class EndConversation:
    """The model called `end_conversation`: no follow-up window after this reply."""


@dataclass(frozen=True)
class ReplyInvites:
    """What the final answer's words say of the follow-up window (`turn.follow_up = auto`):
    True if it invites a reply (a question)."""

    invites: bool


@dataclass(frozen=True)
class Announce:
    """`voice-device announce "…"`: the text spoken, out of any conversation."""

    text: str


@dataclass(frozen=True)
class TalkedOver:
    """The user talks over the reply (`core.hearing.TalkOver`), from `start_sample`."""

    start_sample: int


@dataclass(frozen=True)
class HandledElsewhere:
    """Another device that heard the same wake word answers it (`core.arbitration`)."""

    device: str


ELSEWHERE = "handled elsewhere"
"""The reason of the idle state entered then (the light shows it a moment)."""


@dataclass(frozen=True)
class Tick:
    server_quiet_s: float | None = None
    """Seconds since the awaited reply last made progress (None: no session)."""


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
    | TimersRang
    | StopRinging
    | EndConversation
    | ReplyInvites
    | Announce
    | HandledElsewhere
    | TalkedOver
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
    arbitrate: bool = False
    """Woken by the wake word: other devices that heard it too may answer instead
    (`HandledElsewhere`); the session opens only if this device wins."""


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
class CommitEarly:
    """The user paused for `commit_ms`: send the turn so far and ask for the answer now, but
    hold the answer back (unheard, its tools not run) until `SubmitTurn` confirms the turn
    is over. Audio heard meanwhile is kept, not sent."""

    at_sample: int


@dataclass(frozen=True)
class Withdraw:
    """The user spoke again after `CommitEarly`: cancel the held answer, take the turn's
    first part out of the conversation and send the turn again, whole, as it goes on."""

    at_sample: int


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
    """A short sound that needs no words (see `core.earcons`)."""

    kind: Earcon


@dataclass(frozen=True)
class StartRing:
    """These timers ring now (the ring sound, their names told)."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class StopRing:
    names: tuple[str, ...]
    reason: str
    """button, wake, command, timeout, or error (the speaker failed)."""


@dataclass(frozen=True)
class SendAnnouncement:
    """Ask the session for an out-of-band response speaking `text` word for word."""

    text: str


Command = (
    Enter
    | OpenSession
    | CloseSession
    | StartTurn
    | EndTurn
    | SubmitTurn
    | DiscardTurn
    | CommitEarly
    | Withdraw
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
    | StartRing
    | StopRing
    | SendAnnouncement
)


# ---------------------------------------------------------------------------------------------


class DoublePress(enum.StrEnum):
    """What a second short press within `double_press_s` does."""

    NONE = "none"
    """Nothing: short presses act at once."""
    REPEAT = "repeat"
    """Play the last answer again, from memory."""
    CANCEL = "cancel"
    """End whatever is going on."""
    MUTE = "mute"
    """Mute or unmute."""


class FollowUp(enum.StrEnum):
    """When the follow-up window opens after a reply."""

    AUTO = "auto"
    """When the answer invites a reply (`ReplyInvites`)."""
    ALWAYS = "always"
    NEVER = "never"


class ButtonMode(enum.StrEnum):
    PRESS = "press"
    """A short press wakes, a long one mutes."""
    HOLD_TO_TALK = "hold-to-talk"
    """The turn lasts while the button is held."""


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
    double_press: DoublePress = DoublePress.NONE
    """Other than none, short presses wait double_press_s for a second one."""
    double_press_s: float = 0.4
    follow_up: FollowUp = FollowUp.ALWAYS
    ring_timeout_s: float = 300.0
    """A ring nobody stops ends by itself after this long."""
    ring_period_s: float = 2.0
    """The ring sound repeats this often."""
    talk_over: bool = False
    """turn.barge_in = "voice": the user may interrupt a reply by talking over it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "double_press", DoublePress(self.double_press))
        object.__setattr__(self, "follow_up", FollowUp(self.follow_up))


class Turn(enum.Enum):
    NONE = "none"
    OPEN = "open"
    """Capturing the user's audio."""
    ENDED = "ended"
    """Captured; waiting for the session to be ready to submit it."""


Handler = Callable[["Machine", Input, float], list[Command]]
Action = Callable[["Machine", int], list[Command]]
"""Something the button does in one state, given the sample it was pressed at."""


NEEDS_CONFIG = frozenset(
    {
        "session_rejected",
        "auth_failed",
        "not_found",
        "refused",
        "redirected",
        "invalid_api_key",
        "insufficient_quota",
        "model_not_found",
    }
)
"""Refusals only a change of configuration (or of the service's side) can fix: after one,
the wake word does not open another session to hear the same answer."""


class TransitionError(Exception):
    """A handler entered a state that its row in `TRANSITIONS` does not name."""


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
        self.refusal: tuple[str, str] | None = None
        """The service refused something only the configuration can fix (the key, the
        deployment, the session settings, the quota): the wake word shows it again instead of
        asking again, until a reload or a session that opens (the button still tries)."""
        self.budget_note: str | None = None
        """This month's budget is spent (set by the app from the cost meter): a wake, the
        word or the button, plays this notice instead of opening a session."""
        self.budget_told = False
        self.ring_queue: list[str] = []
        """Timers that ended while a conversation went on: they ring once it is over."""
        self.ringing: list[str] = []
        self.ring_since = 0.0
        self.ring_last = 0.0
        self.ring_since_sample = 0
        self.ring_last_sample = 0
        self.ring_return = State.IDLE
        """Where a ring goes back to when it stops (muted, if it rang while muted)."""
        self.ring_press = False
        """The press that stopped a ring: holding it on does not mute."""
        self.announcements: list[str] = []
        """Waiting for the device to be idle (at most MAX_ANNOUNCEMENTS)."""
        self.pending_announcement: str | None = None
        self.announcing = False
        """The reply being played is an announcement: no follow-up after it."""
        self.end_requested = False
        self.reply_invites: bool | None = None

    def reconfigure(self, settings: Settings) -> None:
        """New settings (a reloaded configuration), keeping the conversation and any outage."""
        self.s = settings
        self.outage.policy = settings.backoff
        self.endpointer.reconfigure(settings.endpoint)
        self.refusal = None

    # -- entry point ------------------------------------------------------------------------

    def handle(self, event: Input, now: float) -> list[Command]:
        if isinstance(event, Heard):
            self.audio_pos = event.end_sample
        row = TRANSITIONS.get((self.state, type(event)))
        if row is None:
            if not isinstance(event, Heard | Tick):
                log.debug("%s ignored in %s", type(event).__name__, self.state.value)
            return []
        commands = row.handler(self, event, now)
        for c in commands:
            if isinstance(c, Enter):
                if c.state not in row.leads_to:
                    raise TransitionError(
                        f"{type(event).__name__} in {self.state.value} entered {c.state.value}, "
                        f"which its row does not name"
                    )
                self.state = c.state
                self.entered_at = now
        return commands + self._after(now)

    def _after(self, now: float) -> list[Command]:
        """What waited for the device to be free: a timer that ended during a conversation
        rings once the answer has been heard; an announcement is spoken once idle."""
        follow: list[Command] = []
        if self.ring_queue and self.state in RING_FROM:
            follow = self._ring(now)
        elif self.announcements and self.state is State.IDLE:
            follow = self._announce(self.announcements.pop(0), now)
        for c in follow:
            if isinstance(c, Enter):
                self.state = c.state
                self.entered_at = now
        return follow

    # -- building blocks --------------------------------------------------------------------

    def _samples(self, ms: float) -> int:
        return int(ms * self.s.rate // 1000)

    def _preroll_start(self, end_sample: int) -> int:
        return end_sample - self._samples(self.s.preroll_ms)

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
        self.reply_invites = None
        return [SubmitTurn(commit), PlayEarcon(Earcon.END_OF_TURN), Enter(State.THINKING, reason)]

    def _teardown(self, reason: str) -> list[Command]:
        """Abandon whatever conversation is going on."""
        cmds: list[Command] = []
        if self.state in REPLY:
            cmds.append(StopPlayback())
        # No response.cancel: closing the session ends any response with it.
        self.pending_text = None
        self.replay_from = None
        self.response_id = None
        self.response_expected = False
        self.pending_announcement = None
        self.announcing = False
        self.end_requested = False
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
        elif code in NEEDS_CONFIG:
            repeat = self.refusal is not None and self.refusal[0] == code
            self.refusal = (code, message)
        return [
            *self._teardown(code),
            ReportError(code, message, repeat),
            *([PlayEarcon(Earcon.ERROR)] if earcon else []),
            Enter(State.ERROR, code),
        ]

    def _enter_once(self, state: State, reason: str) -> list[Command]:
        """Enter `state` unless the machine is already there."""
        return [] if self.state is state else [Enter(state, reason)]

    # -- waking -----------------------------------------------------------------------------

    def _wake(self, start_sample: int, reason: str, arbitrate: bool = False) -> list[Command]:
        if self.budget_note is not None:
            told, self.budget_told = self.budget_told, True  # logged once, shown each time
            return [
                ReportError("budget_spent", self.budget_note, told),
                PlayEarcon(Earcon.ERROR),
                Enter(State.ERROR, "budget_spent"),
            ]
        self.budget_told = False
        self.session_open = True
        return [
            *self._start_turn(start_sample, reason, wait_for_speech=True),
            OpenSession(arbitrate),
            PlayEarcon(Earcon.WAKE),
            Enter(State.CONNECTING, reason),
        ]

    def on_wake(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Wake)
        if self.refusal is not None:  # asking again would only be refused again
            code, message = self.refusal
            again = f"{message} (still refused: fix it and reload; the button tries)"
            return [
                ReportError(code, again, True),
                PlayEarcon(Earcon.ERROR),
                Enter(State.ERROR, code),
            ]
        wait = self.outage.wait(now)
        if wait > 0:  # an outage is on: fail at once, without a connection attempt
            message = (
                f"the cloud is unreachable; next try after {wait:.0f} s (the button tries now)"
            )
            return [
                ReportError("offline", message, True),
                PlayEarcon(Earcon.ERROR),
                Enter(State.ERROR, "offline"),
            ]
        return self._wake(self._preroll_start(e.end_sample), "wake word", arbitrate=True)

    @property
    def hears_talk_over(self) -> bool:
        """Whether talking over the reply now interrupts it: a reply of the conversation the
        user opened (not a repeat, nor one whose session is gone), with the mode on."""
        return (
            self.s.talk_over
            and self.state in REPLY
            and self.session_open
            and self.replay_from is None
        )

    def on_talked_over(self, e: Input, now: float) -> list[Command]:
        """The user talks over the reply: as the button would, from where they began."""
        assert isinstance(e, TalkedOver)
        if not self.hears_talk_over:
            return []
        start = max(e.start_sample, self._preroll_start(self.audio_pos))
        cmds = self._interrupt(start, "talked over")
        if self.turn is Turn.OPEN:  # (the user's speech has begun: the turn follows it)
            self.endpointer.speaking(self.turn_start, self.audio_pos)
        return cmds

    def on_handled_elsewhere(self, e: Input, now: float) -> list[Command]:
        """Another device answers the wake word: back to idle, nothing sent."""
        assert isinstance(e, HandledElsewhere)
        return [*self._teardown(ELSEWHERE), Enter(State.IDLE, ELSEWHERE)]

    def on_wake_in_follow_up(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Wake)
        return [
            *self._start_turn(self._preroll_start(e.end_sample), "wake word", True),
            PlayEarcon(Earcon.WAKE),
            Enter(State.LISTENING, "wake word"),
        ]

    def on_wake_over_reply(self, e: Input, now: float) -> list[Command]:
        """The wake word said over a reply interrupts it, like the button."""
        assert isinstance(e, Wake)
        return self._interrupt(self._preroll_start(e.end_sample))

    # -- the user's turn --------------------------------------------------------------------

    def _endpoint(self, e: Heard) -> NoSpeech | TurnPaused | SpeechResumed | TurnEnded | None:
        """What this frame means for the open turn: no speech at all, a pause that may be its
        end, speech again after one, its end, or nothing."""
        ev = self.endpointer.feed(e.end_sample, e.speech, e.firm)
        if isinstance(ev, NoSpeech):
            return ev
        if self.s.server_turns or self.held_turn:
            # The server (or the button) ends the turn; locally only an endless one is cut.
            limit = self._samples(self.s.endpoint.max_turn_ms + self.s.no_speech_ms)
            if e.end_sample - self.turn_start < limit:
                return None
            return TurnEnded(e.end_sample, e.end_sample, "max_length")
        return ev if isinstance(ev, TurnPaused | SpeechResumed | TurnEnded) else None

    def on_heard_connecting(self, e: Input, now: float) -> list[Command]:
        """The turn is captured while the session opens; it is submitted once ready."""
        assert isinstance(e, Heard)
        if self.turn is not Turn.OPEN:
            return []  # connecting for a typed question, or the turn already ended
        ev = self._endpoint(e)
        if isinstance(ev, NoSpeech):
            return [*self._teardown("no speech"), Enter(State.IDLE, "no speech")]
        if isinstance(ev, TurnEnded):
            return self._end_turn(ev.end_sample, ev.reason)
        return []

    def on_heard_listening(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Heard)
        if self.turn is not Turn.OPEN:
            return []
        ev = self._endpoint(e)
        if isinstance(ev, NoSpeech):
            return [*self._teardown("no speech"), Enter(State.IDLE, "no speech")]
        if isinstance(ev, TurnEnded):
            return [*self._end_turn(ev.end_sample, ev.reason), *self._submit("end of speech")]
        if isinstance(ev, TurnPaused):
            return [CommitEarly(ev.at_sample)]
        if isinstance(ev, SpeechResumed):
            return [Withdraw(ev.at_sample)]
        return []

    def on_server_committed(self, e: Input, now: float) -> list[Command]:
        if not self.s.server_turns or self.turn is not Turn.OPEN:
            return []
        return [*self._end_turn(self.audio_pos, "server"), *self._submit("end of speech", False)]

    def on_session_ready(self, e: Input, now: float) -> list[Command]:
        cmds: list[Command] = []
        self.refusal = None
        lasted = self.outage.succeeded(now)
        if lasted is not None:
            cmds.append(ReportRecovery(lasted))
        self.session_opened_at = now
        if self.pending_text is not None:
            text, self.pending_text = self.pending_text, None
            self.response_expected = True
            self.reply_invites = None
            return [*cmds, SendText(text), Enter(State.THINKING, "typed question")]
        if self.pending_announcement is not None:
            text, self.pending_announcement = self.pending_announcement, None
            self.response_expected = True
            self.announcing = True
            return [*cmds, SendAnnouncement(text), Enter(State.THINKING, "announcement")]
        cmds.append(Enter(State.LISTENING, "session ready"))
        if self.turn is Turn.ENDED:
            cmds += self._submit("turn ended while connecting")
        return cmds

    def on_session_failed(self, e: Input, now: float) -> list[Command]:
        """The connection could not be opened: there is nothing left to close."""
        assert isinstance(e, SessionFailed)
        self.session_open = False
        return self._fail(e.code, e.message, now, e.retryable, e.retry_after_s)

    def on_session_lost(self, e: Input, now: float) -> list[Command]:
        """The connection dropped: there is nothing left to close."""
        assert isinstance(e, SessionLost)
        self.session_open = False
        return self._fail(e.code, e.message, now, retryable=True)

    def on_session_lost_in_reply(self, e: Input, now: float) -> list[Command]:
        """A server that closes normally once the reply has all arrived cut nothing: the
        reply plays out, then the conversation is over (there is no session to go on in)."""
        assert isinstance(e, SessionLost)
        if e.clean and self.response_id is None and not self.response_expected:
            self.session_open = False
            return []
        return self.on_session_lost(e, now)

    def on_cloud_error(self, e: Input, now: float) -> list[Command]:
        """The server said the session cannot go on: close it ourselves (quietly, if it just
        ended; a reply that had all arrived plays out first)."""
        assert isinstance(e, CloudError)
        if not e.quiet:
            return self._fail(e.code, e.message, now, retryable=e.back_off)
        if self.state in REPLY and self.response_id is None and not self.response_expected:
            cmds: list[Command] = [CloseSession(e.code)] if self.session_open else []
            self.session_open = False
            return cmds
        return [*self._teardown(e.code), Enter(State.IDLE, e.code)]

    def on_session_lost_in_follow_up(self, e: Input, now: float) -> list[Command]:
        """The session ended during the follow-up window: the conversation was over anyway."""
        assert isinstance(e, SessionLost)
        self.session_open = False
        return [*self._teardown(e.code), Enter(State.IDLE, e.code)]

    def on_cloud_error_in_follow_up(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, CloudError)
        return [*self._teardown(e.code), Enter(State.IDLE, e.code)]

    # -- the reply --------------------------------------------------------------------------

    def on_response_started(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, ResponseStarted)
        self.response_id = e.response_id
        self.response_expected = False
        return []

    def on_response_started_unasked(self, e: Input, now: float) -> list[Command]:
        """A reply nobody asked for while the user speaks (or may speak): it would play
        under the wrong light and deafen the VAD to the user. Cancelled unheard."""
        if self.response_expected:
            return self.on_response_started(e, now)
        return [CancelResponse()]

    def on_response_ended(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, ResponseEnded)
        if self.response_id == e.response_id:
            self.response_id = None
        if e.continues:
            self.response_expected = True
        return []

    def on_playback_started(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, PlaybackStarted)
        target = State.PREAMBLE if e.phase == Phase.COMMENTARY else State.ANSWERING
        return self._enter_once(target, str(e.phase))

    def on_playback_finished(self, e: Input, now: float) -> list[Command]:
        if self.replay_from is not None:
            back, self.replay_from = self.replay_from, None
            if back is State.FOLLOW_UP and self.session_open:
                self.endpointer.wait_for_speech(self.audio_pos, self.s.follow_up_ms)
                return [Enter(State.FOLLOW_UP, "repeated")]
            return [Enter(State.IDLE, "repeated")]
        if self.response_expected or self.response_id:
            # A tool ran and the rest of the reply is coming: nothing audible meanwhile.
            return self._enter_once(State.THINKING, "waiting for the rest of the reply")
        if not self.session_open:  # the server ended the session once the reply was sent
            return [Enter(State.IDLE, "conversation over")]
        if self.announcing:
            return [*self._teardown("announced"), Enter(State.IDLE, "announced")]
        if not self._follow_up_wanted():
            return [*self._teardown("conversation over"), Enter(State.IDLE, "conversation over")]
        if now - self.session_opened_at >= self.s.max_session_s:
            return [*self._teardown("session age"), Enter(State.IDLE, "session age")]
        self.endpointer.wait_for_speech(self.audio_pos, self.s.follow_up_ms)
        return [Enter(State.FOLLOW_UP, "reply played")]

    def _follow_up_wanted(self) -> bool:
        """After this reply: the model said the user is done (`end_conversation`), or the
        setting, or (auto) whether the answer invites a reply (unknown: open, as it closes
        by itself)."""
        if self.end_requested:
            return False
        if self.s.follow_up is FollowUp.AUTO:
            return self.reply_invites is not False
        return self.s.follow_up is FollowUp.ALWAYS

    def on_end_conversation(self, e: Input, now: float) -> list[Command]:
        self.end_requested = True
        return []

    def on_reply_invites(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, ReplyInvites)
        self.reply_invites = e.invites
        return []

    def on_heard_in_follow_up(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Heard)
        ev = self.endpointer.feed(e.end_sample, e.speech)
        if isinstance(ev, SpeechStarted):
            start = max(0, self._preroll_start(ev.onset_sample))
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

    def _interrupt(self, start_sample: int, reason: str = "barge-in") -> list[Command]:
        """Silence the reply, cancel what is still being generated, and listen."""
        cmds: list[Command] = [StopPlayback()]
        self.announcing = False  # the user talks over it: a conversation now
        if self.replay_from is not None or not self.session_open:
            # A repeated answer (nothing is being generated), or a reply whose session the
            # server has already closed: the user is heard in a new session.
            self.replay_from = None
            if not self.session_open:
                return [*cmds, *self._wake(start_sample, reason)]
        if self.response_id or self.response_expected:
            cmds.append(CancelResponse())
        self.response_id = None
        self.response_expected = False
        cmds += self._start_turn(start_sample, reason, wait_for_speech=True)
        return [*cmds, Enter(State.LISTENING, reason)]

    # -- the button: what each kind of press does in a state is in `BUTTON` ------------------

    def on_button_down(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, ButtonDown)
        button = BUTTON[self.state]
        self.ring_press = False
        if now <= self.double_until:
            self.pending_press, self.double_until = None, -1.0
            self.press_sample = e.sample
            self.press_consumed = True
            return button.double.get(self.s.double_press, _nothing)(self, e.sample)
        self.pending_press = None
        self.press_sample = e.sample
        self.press_consumed = False
        if self.s.hold_to_talk:
            self.press_consumed = True
            return button.talk(self, e.sample)
        return []

    def on_button_down_over_reply(self, e: Input, now: float) -> list[Command]:
        """Button pressed during a reply: silence it now, on the press, not the release."""
        assert isinstance(e, ButtonDown)
        self.press_sample = e.sample
        self.press_consumed = True
        self.ring_press = False
        if self.s.double_press is not DoublePress.NONE:
            self.double_until = now + self.s.double_press_s  # a second press may follow
        return self._interrupt(e.sample, "hold" if self.s.hold_to_talk else "barge-in")

    def on_button_up(self, e: Input, now: float) -> list[Command]:
        button = BUTTON[self.state]
        if self.s.hold_to_talk and self.held_turn and self.turn is Turn.OPEN:
            self.press_sample = None
            return button.release_held(self, self.audio_pos)
        sample = self._take_short_press(now)
        return [] if sample is None else button.short(self, sample)

    def on_button_up_over_reply(self, e: Input, now: float) -> list[Command]:
        self.press_sample = None  # the press already interrupted the reply
        return []

    def _take_short_press(self, now: float) -> int | None:
        """The press's sample if this release ends a short press nobody has acted on yet.

        With a double-press action configured, the press is held back instead, to be acted
        on by a Tick once the double-press window has passed (or replaced by a double press).
        """
        sample, consumed = self.press_sample, self.press_consumed
        self.press_sample = None
        if consumed or sample is None:
            return None
        if self.s.double_press is not DoublePress.NONE:
            self.pending_press = (sample, self.state)
            self.double_until = now + self.s.double_press_s
            return None
        return sample

    def on_hold(self, e: Input, now: float) -> list[Command]:
        """A long press mutes (in hold-to-talk mode, holding is talking; a press that
        stopped a ring does nothing more)."""
        if self.s.hold_to_talk or self.ring_press:
            return []
        self.press_consumed = True
        return self._mute(self.audio_pos)

    def on_hold_muted(self, e: Input, now: float) -> list[Command]:
        if self.s.hold_to_talk:
            return []
        self.press_consumed = True
        return self._unmute(self.audio_pos)

    # what a press means, state by state (the rows of `BUTTON`)

    def _press_wakes(self, sample: int) -> list[Command]:
        return self._wake(sample, "button")

    def _press_ends_turn(self, sample: int) -> list[Command]:
        """While connecting: the turn is complete; it is submitted once the session is ready."""
        if self.turn is not Turn.OPEN:
            return []
        return self._end_turn(self.audio_pos, "button")

    def _press_submits_turn(self, sample: int) -> list[Command]:
        if self.turn is not Turn.OPEN:
            return []
        return [*self._end_turn(self.audio_pos, "button"), *self._submit("button")]

    def _press_starts_turn(self, sample: int) -> list[Command]:
        return [*self._start_turn(sample, "button", True), Enter(State.LISTENING, "button")]

    def _press_while_muted(self, sample: int) -> list[Command]:
        return [PlayEarcon(Earcon.MUTED)]

    def _talk_wakes(self, sample: int) -> list[Command]:
        return self._wake(sample, "hold")

    def _talk_starts_turn(self, sample: int) -> list[Command]:
        return [*self._start_turn(sample, "hold", True), Enter(State.LISTENING, "hold")]

    def _release_ends_turn(self, sample: int) -> list[Command]:
        return self._end_turn(sample, "released")

    def _release_submits_turn(self, sample: int) -> list[Command]:
        return [*self._end_turn(sample, "released"), *self._submit("released")]

    def _cancel(self, sample: int) -> list[Command]:
        return [*self._teardown("cancelled"), Enter(State.IDLE, "cancelled")]

    def _repeat(self, sample: int) -> list[Command]:
        self.replay_from = self.state
        self.endpointer.stop()
        return [ReplayAnswer(), Enter(State.ANSWERING, "repeat")]

    def _mute(self, sample: int) -> list[Command]:
        self.pending_press = None
        return [
            *self._teardown("muted"),
            CloseMic(),
            PlayEarcon(Earcon.MUTE_ON),
            Enter(State.MUTED, "muted"),
        ]

    def _unmute(self, sample: int) -> list[Command]:
        return [OpenMic(), PlayEarcon(Earcon.MUTE_OFF), Enter(State.IDLE, "unmuted")]

    # -- commands from `voice-device` on the control socket ---------------------------------

    def on_mute_on(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, SetMute)
        return self._mute(self.audio_pos) if e.on else []

    def on_mute_off(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, SetMute)
        return [] if e.on else self._unmute(self.audio_pos)

    def on_summon(self, e: Input, now: float) -> list[Command]:
        """`voice-device wake`: as a short press, acted on at once."""
        assert isinstance(e, Summon)
        return BUTTON[self.state].short(self, e.sample)

    def on_summon_over_reply(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, Summon)
        return self._interrupt(e.sample)

    def on_ask(self, e: Input, now: float) -> list[Command]:
        """A typed question is asked in a session of its own, like a new conversation."""
        assert isinstance(e, AskText)
        self.session_open = True
        self.pending_text = e.text
        return [OpenSession(), Enter(State.CONNECTING, "typed question")]

    def on_ask_in_follow_up(self, e: Input, now: float) -> list[Command]:
        return [*self._teardown("typed question"), *self.on_ask(e, now)]

    # -- announcements ----------------------------------------------------------------------

    def on_announce(self, e: Input, now: float) -> list[Command]:
        """Spoken at once when idle; otherwise once the device is (a bounded queue)."""
        assert isinstance(e, Announce)
        if len(self.announcements) < MAX_ANNOUNCEMENTS:
            self.announcements.append(e.text)
        return []

    def _announce(self, text: str, now: float) -> list[Command]:
        """A chime, then the text in a session of its own (an out-of-band response); with
        the cloud unreachable, the chime and the error light (the text cannot be spoken)."""
        wait = self.outage.wait(now)
        if wait > 0 or self.refusal is not None or self.budget_note is not None:
            why = (
                f"the cloud is unreachable (next try after {wait:.0f} s)"
                if wait > 0
                else (self.budget_note or (self.refusal or ("", ""))[1])
            )
            return [
                PlayEarcon(Earcon.ANNOUNCE),
                ReportError("announce_failed", f"announcement not spoken: {why}", True),
                Enter(State.ERROR, "announcement not spoken"),
            ]
        self.session_open = True
        self.pending_announcement = text
        return [PlayEarcon(Earcon.ANNOUNCE), OpenSession(), Enter(State.CONNECTING, "announcement")]

    # -- timers ringing ---------------------------------------------------------------------

    def on_timers_rang(self, e: Input, now: float) -> list[Command]:
        """Queued; `_after` rings them as soon as the device is free (at once when it is)."""
        assert isinstance(e, TimersRang)
        self.ring_queue += [n for n in e.names if n not in self.ring_queue]
        return []

    def _ring(self, now: float) -> list[Command]:
        names = tuple(self.ring_queue)
        self.ring_queue = []
        self.ring_since = self.ring_last = now
        self.ring_since_sample = self.ring_last_sample = self.audio_pos
        if self.state is State.RINGING:
            self.ringing += names
            return [StartRing(names)]
        self.ringing = list(names)
        self.ring_return = State.MUTED if self.state is State.MUTED else State.IDLE
        cmds = self._teardown("timer") if self.state is State.FOLLOW_UP else []
        return [*cmds, StartRing(names), PlayEarcon(Earcon.RING), Enter(State.RINGING, "timer")]

    def _stop_ring(self, reason: str, enter: bool = True) -> list[Command]:
        names, self.ringing = tuple(self.ringing), []
        cmds: list[Command] = [StopRing(names, reason), StopPlayback()]
        if not enter:
            return cmds
        back = self.ring_return
        if back is State.IDLE and self.mic_down:
            back = State.ERROR  # the microphone went while it rang: shown until it is back
        return [*cmds, Enter(back, f"ring stopped ({reason})")]

    def on_time_ringing(self, e: Input, now: float) -> list[Command]:
        """The ring repeats and times out by whichever clock is ahead: the wall clock (the
        microphone may be closed, muted) or the audio clock (a simulated room runs faster
        than real time)."""
        rate = self.s.rate
        if (
            now - self.ring_since >= self.s.ring_timeout_s
            or self.audio_pos - self.ring_since_sample >= self.s.ring_timeout_s * rate
        ):
            return self._stop_ring("timeout")
        if (
            now - self.ring_last >= self.s.ring_period_s
            or self.audio_pos - self.ring_last_sample >= self.s.ring_period_s * rate
        ):
            self.ring_last, self.ring_last_sample = now, self.audio_pos
            return [PlayEarcon(Earcon.RING)]
        return []

    def on_button_down_ringing(self, e: Input, now: float) -> list[Command]:
        self.press_sample = None
        self.press_consumed = True
        self.ring_press = True
        return self._stop_ring("button")

    def on_stop_ringing(self, e: Input, now: float) -> list[Command]:
        return self._stop_ring("command")

    def on_wake_ringing(self, e: Input, now: float) -> list[Command]:
        """ "Okay nabu" stops the ring and listens ("…snooze it for five minutes")."""
        assert isinstance(e, Wake)
        return [*self._stop_ring("wake", enter=False), *self.on_wake(e, now)]

    def on_mute_ringing(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, SetMute)
        if e.on:
            return [*self._stop_ring("command", enter=False), *self._mute(self.audio_pos)]
        if self.ring_return is State.MUTED:
            return [*self._stop_ring("command", enter=False), *self._unmute(self.audio_pos)]
        return []

    def on_mic_lost_ringing(self, e: Input, now: float) -> list[Command]:
        """The ring goes on (it needs no microphone); the error shows once it stops."""
        assert isinstance(e, MicLost)
        self.mic_down = True
        return [ReportError("mic_lost", e.message)]

    def on_speaker_failed_ringing(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, SpeakerFailed)
        return [
            *self._stop_ring("error", enter=False),
            *self._fail("speaker_failed", e.message, now, retryable=False, earcon=False),
        ]

    # -- time -------------------------------------------------------------------------------

    def on_tick(self, e: Input, now: float) -> list[Command]:
        """Time passes: a short press held back for a double press is acted on."""
        if self.pending_press is None or now <= self.double_until:
            return []
        (sample, meant_for), self.pending_press = self.pending_press, None
        if meant_for is not self.state:
            return []  # overtaken (the wake word, the reply ended…): the press meant that
        return BUTTON[self.state].short(self, sample)

    def on_tick_in_reply(self, e: Input, now: float) -> list[Command]:
        """…and the reply may not keep the user waiting for ever."""
        assert isinstance(e, Tick)
        cmds = self.on_tick(e, now)
        if cmds or self.replay_from is not None:
            return cmds
        waiting = self.response_id is not None or self.response_expected
        quiet = e.server_quiet_s
        if not waiting or quiet is None or quiet < self.s.reply_timeout_s:
            return []
        return self._fail(
            "no_reply", f"the service went quiet for {quiet:.0f} s", now, retryable=True
        )

    def on_tick_in_error(self, e: Input, now: float) -> list[Command]:
        """…and an error shows for a while (while the microphone is gone: until it is back)."""
        cmds = self.on_tick(e, now)
        if cmds or self.mic_down or now - self.entered_at < self.s.error_hold_s:
            return cmds
        return [Enter(State.IDLE, "error shown")]

    # -- the microphone and the speaker -----------------------------------------------------

    def on_mic_lost(self, e: Input, now: float) -> list[Command]:
        assert isinstance(e, MicLost)
        self.mic_down = True
        return self._fail("mic_lost", e.message, now, retryable=False)

    def on_mic_back(self, e: Input, now: float) -> list[Command]:
        self.mic_down = False
        return []

    def on_mic_back_in_error(self, e: Input, now: float) -> list[Command]:
        self.mic_down = False
        return [Enter(State.IDLE, "microphone back")]

    def on_speaker_failed(self, e: Input, now: float) -> list[Command]:
        """Whatever was going on is over: the user cannot hear it. No error sound either (it
        would go to the same speaker); the light says it. The next wake tries again."""
        assert isinstance(e, SpeakerFailed)
        return self._fail("speaker_failed", e.message, now, retryable=False, earcon=False)


def _nothing(m: Machine, sample: int) -> list[Command]:
    return []


# ---------------------------------------------------------------------------------------------
# The tables


@dataclass(frozen=True)
class Button:
    """What the button does in one state."""

    short: Action = _nothing
    """A short press released (or `voice-device wake`)."""
    talk: Action = _nothing
    """Pressed, in hold-to-talk mode."""
    release_held: Action = _nothing
    """Released at the end of a hold-to-talk turn."""
    double: Mapping[DoublePress, Action] = field(default_factory=dict)
    """A second press soon after the first, by `button.double_press`."""


S = State
M = Machine
REPLY = frozenset({S.THINKING, S.PREAMBLE, S.ANSWERING})
"""The user is waiting for, or hearing, a reply."""
CONVERSATION = frozenset({S.CONNECTING, S.LISTENING, *REPLY, S.FOLLOW_UP})
RING_FROM = frozenset({S.IDLE, S.ERROR, S.FOLLOW_UP, S.MUTED, S.RINGING})
"""Where a timer that ended may ring at once (in follow-up, the answer has been heard)."""
MAX_ANNOUNCEMENTS = 5
_ALL = frozenset(State)
_MUTE = {DoublePress.MUTE: M._mute}
_READY = Button(  # idle, and an error being shown
    short=M._press_wakes,
    talk=M._talk_wakes,
    double={**_MUTE, DoublePress.REPEAT: M._repeat},
)
BUTTON: dict[State, Button] = {
    S.IDLE: _READY,
    S.ERROR: _READY,
    S.CONNECTING: Button(
        short=M._press_ends_turn,
        release_held=M._release_ends_turn,
        double={**_MUTE, DoublePress.CANCEL: M._cancel},
    ),
    S.LISTENING: Button(
        short=M._press_submits_turn,
        release_held=M._release_submits_turn,
        double={**_MUTE, DoublePress.CANCEL: M._cancel},
    ),
    # in a reply a press interrupts at once (`on_button_down_over_reply`), and a second
    # press finds the device listening
    **{s: Button() for s in REPLY},
    S.FOLLOW_UP: Button(
        short=M._press_starts_turn,
        talk=M._talk_starts_turn,
        double={**_MUTE, DoublePress.CANCEL: M._cancel, DoublePress.REPEAT: M._repeat},
    ),
    S.RINGING: Button(),  # a press stops the ring (`on_button_down_ringing`)
    S.MUTED: Button(
        short=M._press_while_muted,
        talk=M._press_while_muted,
        double={DoublePress.MUTE: M._unmute},
    ),
}


@dataclass(frozen=True)
class Row:
    handler: Handler
    leads_to: frozenset[State]
    """Every state the handler may enter (staying where it is needs no mention)."""


def row(handler: Handler, *leads_to: State) -> Row:
    return Row(handler, frozenset(leads_to))


_WAKES = (S.CONNECTING, S.ERROR)  # (ERROR: the month's budget is spent)
"""Where a short press in idle or error leads (the wake)."""

TRANSITIONS: dict[tuple[State, type], Row] = {
    # waking
    (S.IDLE, Wake): row(M.on_wake, S.CONNECTING, S.ERROR),
    (S.ERROR, Wake): row(M.on_wake, S.CONNECTING, S.ERROR),
    (S.FOLLOW_UP, Wake): row(M.on_wake_in_follow_up, S.LISTENING),
    **{(s, Wake): row(M.on_wake_over_reply, S.LISTENING, *_WAKES) for s in REPLY},
    # the user's turn
    (S.CONNECTING, Heard): row(M.on_heard_connecting, S.IDLE),
    (S.LISTENING, Heard): row(M.on_heard_listening, S.IDLE, S.THINKING),
    (S.CONNECTING, SessionReady): row(M.on_session_ready, S.LISTENING, S.THINKING),
    (S.LISTENING, ServerCommitted): row(M.on_server_committed, S.THINKING),
    (S.CONNECTING, SessionFailed): row(M.on_session_failed, S.ERROR),
    (S.CONNECTING, HandledElsewhere): row(M.on_handled_elsewhere, S.IDLE),
    **{(s, TalkedOver): row(M.on_talked_over, S.LISTENING) for s in REPLY},
    **{(s, SessionLost): row(M.on_session_lost, S.ERROR) for s in (S.CONNECTING, S.LISTENING)},
    **{(s, SessionLost): row(M.on_session_lost_in_reply, S.ERROR) for s in REPLY},
    **{
        (s, CloudError): row(M.on_cloud_error, S.ERROR, S.IDLE)
        for s in (S.CONNECTING, S.LISTENING, *REPLY)
    },
    (S.FOLLOW_UP, SessionLost): row(M.on_session_lost_in_follow_up, S.IDLE),
    (S.FOLLOW_UP, CloudError): row(M.on_cloud_error_in_follow_up, S.IDLE),
    # the reply
    **{(s, ResponseStarted): row(M.on_response_started) for s in REPLY},
    **{
        (s, ResponseStarted): row(M.on_response_started_unasked)
        for s in (S.CONNECTING, S.LISTENING, S.FOLLOW_UP)
    },
    **{(s, ResponseEnded): row(M.on_response_ended) for s in (S.LISTENING, *REPLY, S.FOLLOW_UP)},
    **{(s, PlaybackStarted): row(M.on_playback_started, S.PREAMBLE, S.ANSWERING) for s in REPLY},
    **{
        (s, PlaybackFinished): row(M.on_playback_finished, S.FOLLOW_UP, S.IDLE, S.THINKING)
        for s in REPLY
    },
    **{(s, PlaybackStopped): row(M.on_playback_stopped) for s in State},
    (S.FOLLOW_UP, Heard): row(M.on_heard_in_follow_up, S.LISTENING, S.IDLE),
    # the button: down records the press (or interrupts a reply at once, or starts talking in
    # hold-to-talk, or is the second of a double press), up acts on a short press (or ends a
    # held turn), held toggles mute; what each does in a state is in `BUTTON`
    (S.IDLE, ButtonDown): row(M.on_button_down, *_WAKES, S.MUTED, S.ANSWERING),
    (S.ERROR, ButtonDown): row(M.on_button_down, *_WAKES, S.MUTED, S.ANSWERING),
    (S.CONNECTING, ButtonDown): row(M.on_button_down, S.IDLE, S.MUTED),
    (S.LISTENING, ButtonDown): row(M.on_button_down, S.IDLE, S.MUTED),
    (S.FOLLOW_UP, ButtonDown): row(M.on_button_down, S.LISTENING, S.IDLE, S.MUTED, S.ANSWERING),
    (S.MUTED, ButtonDown): row(M.on_button_down, S.IDLE),
    **{(s, ButtonDown): row(M.on_button_down_over_reply, S.LISTENING, *_WAKES) for s in REPLY},
    (S.IDLE, ButtonUp): row(M.on_button_up, *_WAKES),
    (S.ERROR, ButtonUp): row(M.on_button_up, *_WAKES),
    (S.CONNECTING, ButtonUp): row(M.on_button_up),
    (S.LISTENING, ButtonUp): row(M.on_button_up, S.THINKING),
    (S.FOLLOW_UP, ButtonUp): row(M.on_button_up, S.LISTENING),
    (S.MUTED, ButtonUp): row(M.on_button_up),
    **{(s, ButtonUp): row(M.on_button_up_over_reply) for s in REPLY},
    **{(s, ButtonHeld): row(M.on_hold, S.MUTED) for s in _ALL - {S.MUTED, S.RINGING}},
    (S.MUTED, ButtonHeld): row(M.on_hold_muted, S.IDLE),
    # commands from `voice-device` on the control socket
    **{(s, SetMute): row(M.on_mute_on, S.MUTED) for s in _ALL - {S.MUTED}},
    (S.MUTED, SetMute): row(M.on_mute_off, S.IDLE),
    (S.IDLE, Summon): row(M.on_summon, *_WAKES),
    (S.ERROR, Summon): row(M.on_summon, *_WAKES),
    (S.CONNECTING, Summon): row(M.on_summon),
    (S.LISTENING, Summon): row(M.on_summon, S.THINKING),
    (S.FOLLOW_UP, Summon): row(M.on_summon, S.LISTENING),
    **{(s, Summon): row(M.on_summon_over_reply, S.LISTENING, *_WAKES) for s in REPLY},
    (S.IDLE, AskText): row(M.on_ask, S.CONNECTING),
    (S.ERROR, AskText): row(M.on_ask, S.CONNECTING),
    (S.FOLLOW_UP, AskText): row(M.on_ask_in_follow_up, S.CONNECTING),
    # time: a short press held back for a double press is acted on (as `BUTTON` says),
    # and each state's own timers run
    (S.IDLE, Tick): row(M.on_tick, *_WAKES),
    (S.CONNECTING, Tick): row(M.on_tick),
    (S.LISTENING, Tick): row(M.on_tick, S.THINKING),
    **{(s, Tick): row(M.on_tick_in_reply, S.ERROR) for s in REPLY},
    (S.FOLLOW_UP, Tick): row(M.on_tick, S.LISTENING),
    (S.MUTED, Tick): row(M.on_tick),
    (S.ERROR, Tick): row(M.on_tick_in_error, S.IDLE, *_WAKES),
    # the microphone (a muted one is closed on purpose and cannot fail)
    **{(s, MicLost): row(M.on_mic_lost, S.ERROR) for s in _ALL - {S.MUTED}},
    **{(s, MicBack): row(M.on_mic_back) for s in _ALL - {S.ERROR}},
    (S.ERROR, MicBack): row(M.on_mic_back_in_error, S.IDLE),
    # the speaker (a muted device plays nothing that could fail but its own earcons)
    **{(s, SpeakerFailed): row(M.on_speaker_failed, S.ERROR) for s in _ALL - {S.MUTED}},
    # timers: wherever one ends it is queued, and rings as soon as the device is free
    # (`Machine._after`); ringing, anything the user does stops it
    **{(s, TimersRang): row(M.on_timers_rang) for s in State},
    (S.RINGING, Wake): row(M.on_wake_ringing, S.CONNECTING, S.ERROR),
    (S.RINGING, ButtonDown): row(M.on_button_down_ringing, S.IDLE, S.MUTED, S.ERROR),
    (S.RINGING, StopRinging): row(M.on_stop_ringing, S.IDLE, S.MUTED, S.ERROR),
    (S.RINGING, Summon): row(M.on_stop_ringing, S.IDLE, S.MUTED, S.ERROR),
    (S.RINGING, SetMute): row(M.on_mute_ringing, S.MUTED, S.IDLE),
    (S.RINGING, Tick): row(M.on_time_ringing, S.IDLE, S.MUTED, S.ERROR),
    (S.RINGING, Heard): row(M.on_time_ringing, S.IDLE, S.MUTED, S.ERROR),
    (S.RINGING, MicLost): row(M.on_mic_lost_ringing),
    (S.RINGING, SpeakerFailed): row(M.on_speaker_failed_ringing, S.ERROR),
    # what the model says of the conversation's end
    **{(s, EndConversation): row(M.on_end_conversation) for s in CONVERSATION},
    **{(s, ReplyInvites): row(M.on_reply_invites) for s in CONVERSATION},
    # announcements wait for the device to be idle (`Machine._after`)
    **{(s, Announce): row(M.on_announce) for s in _ALL - {S.MUTED}},
}

_SESSION_EVENTS = {
    SessionReady,
    SessionFailed,
    ServerCommitted,
    SessionLost,
    CloudError,
    HandledElsewhere,
}
_REPLY_EVENTS = {ResponseStarted, ResponseEnded, PlaybackStarted, PlaybackFinished, TalkedOver}
_MODEL_SAYS = {EndConversation, ReplyInvites}
"""Late words of a conversation already over."""
IGNORED: dict[State, frozenset[type]] = {
    state: frozenset(inputs)
    for state, inputs in {
        # no session, no turn: only waking, the button, the socket's commands and time
        S.IDLE: {Heard, *_SESSION_EVENTS, *_REPLY_EVENTS, StopRinging, *_MODEL_SAYS},
        S.ERROR: {Heard, *_SESSION_EVENTS, *_REPLY_EVENTS, StopRinging, *_MODEL_SAYS},
        # a wake word while already awake; a reply before the turn is even sent
        S.CONNECTING: {
            Wake,
            ServerCommitted,
            AskText,
            StopRinging,
            *(_REPLY_EVENTS - {ResponseStarted}),
        },
        # (another device's answer comes only while connecting: the session waits for it)
        S.LISTENING: {
            Wake,
            SessionReady,
            SessionFailed,
            HandledElsewhere,
            TalkedOver,
            AskText,
            PlaybackStarted,
            PlaybackFinished,
            StopRinging,
        },
        # the device's own voice is not a turn; a reply is already on its way
        **{
            s: {
                Heard,
                SessionReady,
                SessionFailed,
                ServerCommitted,
                AskText,
                StopRinging,
                HandledElsewhere,
            }
            for s in REPLY
        },
        S.FOLLOW_UP: {
            SessionReady,
            SessionFailed,
            HandledElsewhere,
            TalkedOver,
            ServerCommitted,
            PlaybackStarted,
            PlaybackFinished,
            StopRinging,
        },
        # no session while ringing; a press stopped it already, so its release and hold
        # mean nothing; a question waits for the ring to be stopped
        S.RINGING: {
            *_SESSION_EVENTS,
            *_REPLY_EVENTS,
            *_MODEL_SAYS,
            ButtonUp,
            ButtonHeld,
            AskText,
        },
        # the microphone is closed on purpose: nothing it could hear, nothing to wake or ask
        S.MUTED: {
            Wake,
            Heard,
            *_SESSION_EVENTS,
            *_REPLY_EVENTS,
            Summon,
            AskText,
            MicLost,
            SpeakerFailed,
            StopRinging,
            *_MODEL_SAYS,
            Announce,
        },
    }.items()
}
"""Inputs that mean nothing in a state, on purpose: logged at debug level, nothing else."""


def accepts(state: State, kind: type) -> bool:
    """Whether an input of `kind` means something in `state` (the control socket asks before
    it promises a caller anything)."""
    return (state, kind) in TRANSITIONS
