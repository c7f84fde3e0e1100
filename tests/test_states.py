"""The state machine as a table: (state, input) → (state, commands), with plain values."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from device.core.backoff import BackoffPolicy
from device.core.endpoint import EndpointSettings
from device.core.states import (
    IGNORED,
    TRANSITIONS,
    Announce,
    AskText,
    ButtonDown,
    ButtonHeld,
    ButtonUp,
    CancelResponse,
    CloseMic,
    CloseSession,
    CloudError,
    Command,
    CommitEarly,
    DeleteItems,
    DiscardTurn,
    EndConversation,
    EndTurn,
    Enter,
    HandledElsewhere,
    Heard,
    Input,
    Machine,
    MicBack,
    MicLost,
    OpenMic,
    OpenSession,
    PlaybackFinished,
    PlaybackStarted,
    PlaybackStopped,
    PlayEarcon,
    ReplayAnswer,
    ReplyInvites,
    ReportError,
    ReportRecovery,
    ResponseEnded,
    ResponseStarted,
    SendAnnouncement,
    SendText,
    ServerCommitted,
    SessionFailed,
    SessionLost,
    SessionReady,
    SetMute,
    Settings,
    SpeakerFailed,
    StartRing,
    StartTurn,
    State,
    StopPlayback,
    StopRing,
    StopRinging,
    SubmitTurn,
    Summon,
    TalkedOver,
    Tick,
    TimersRang,
    TransitionError,
    Truncate,
    Turn,
    Wake,
    Withdraw,
)

F = 320  # samples per 20 ms frame
SETTINGS = Settings(
    rate=16_000,
    preroll_ms=300,
    no_speech_ms=1000,
    follow_up_ms=1000,
    reply_timeout_s=5.0,
    error_hold_s=2.0,
    backoff=BackoffPolicy(initial_s=2.0, max_s=30.0, jitter=0.0),
    endpoint=EndpointSettings(silence_ms=200, max_turn_ms=3000),
)
PREROLL = 4800
WAKE_AT = 50 * F  # 1 s into the stream


def frames(m: Machine, n: int, speech: bool, now: float = 0.0) -> list[Command]:
    out: list[Command] = []
    for _ in range(n):
        out += m.handle(Heard(m.audio_pos + F, speech), now)
    return out


def idle() -> Machine:
    m = Machine(SETTINGS)
    frames(m, 50, False)
    return m


def connecting() -> Machine:
    m = idle()
    m.handle(Wake("okay nabu", 0.97, m.audio_pos), 0)
    return m


def listening() -> Machine:
    m = connecting()
    m.handle(SessionReady(), 0)
    return m


def thinking() -> Machine:
    m = listening()
    frames(m, 10, True)
    frames(m, 10, False)
    assert m.state is State.THINKING
    m.handle(ResponseStarted("r1"), 0)
    return m


def preamble() -> Machine:
    m = thinking()
    m.handle(PlaybackStarted("r1", "i1", "commentary"), 1)
    return m


def answering() -> Machine:
    m = preamble()
    m.handle(PlaybackStarted("r1", "i2", "final_answer"), 2)
    return m


def answering_after_response_done() -> Machine:
    m = answering()
    m.handle(ResponseEnded("r1", "completed"), 2)
    return m


def follow_up() -> Machine:
    m = answering_after_response_done()
    m.handle(PlaybackFinished("r1"), 3)
    return m


def muted() -> Machine:
    m = idle()
    m.handle(ButtonDown(m.audio_pos), 0)
    m.handle(ButtonHeld(), 0)
    return m


def after_an_outage() -> Machine:
    """Idle again after the service failed at t=10 s and asked for 30 s of quiet."""
    m = connecting()
    m.handle(SessionFailed("rate_limited", "429", retryable=True, retry_after_s=30), 10)
    m.handle(Tick(), 13)
    assert m.state is State.IDLE
    return m


def server_turns() -> Machine:
    m = Machine(dataclasses.replace(SETTINGS, server_turns=True))
    frames(m, 50, False)
    m.handle(Wake("okay nabu", 0.97, m.audio_pos), 0)
    m.handle(SessionReady(), 0)
    return m


def answering_with_a_tool_call_pending() -> Machine:
    m = preamble()
    m.handle(ResponseEnded("r1", "completed", continues=True), 2)
    return m


def error() -> Machine:
    m = connecting()
    m.handle(SessionFailed("unreachable", "cannot reach host"), 10)
    return m


def ringing() -> Machine:
    m = idle()
    m.handle(TimersRang(("tea",)), 100)
    return m


Step = Callable[[Machine], list[Command]]


def send(*events: Input, now: float = 0.0) -> Step:
    def step(m: Machine) -> list[Command]:
        out: list[Command] = []
        for e in events:
            out += m.handle(e, now)
        return out

    return step


def press(now: float = 0.0) -> Step:
    def step(m: Machine) -> list[Command]:
        return m.handle(ButtonDown(m.audio_pos), now) + m.handle(ButtonUp(), now)

    return step


def speak_then_pause(speech_frames: int = 10, pause_frames: int = 10) -> Step:
    def step(m: Machine) -> list[Command]:
        return frames(m, speech_frames, True) + frames(m, pause_frames, False)

    return step


def silence(n: int) -> Step:
    return lambda m: frames(m, n, False)


POS = WAKE_AT  # audio position in every prepared state except after speech
END_OF_SPEECH = WAKE_AT + 20 * F  # 10 voiced + 10 silent frames after the wake

# (name, prepared state, step, expected state, expected commands)
TABLE: list[tuple[str, Callable[[], Machine], Step, State, list[Command]]] = [
    # idle
    (
        "wake word opens a session with pre-roll",
        idle,
        send(Wake("okay nabu", 0.9, POS)),
        State.CONNECTING,
        [
            StartTurn(POS - PREROLL, "wake word"),
            OpenSession(arbitrate=True),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "wake word"),
        ],
    ),
    (
        "button press wakes from its own sample",
        idle,
        press(),
        State.CONNECTING,
        [
            StartTurn(POS, "button"),
            OpenSession(),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "button"),
        ],
    ),
    (
        "another device answers the wake word: back to idle, nothing sent",
        connecting,
        send(HandledElsewhere("hall")),
        State.IDLE,
        [
            EndTurn(POS, "handled elsewhere"),
            DiscardTurn(),
            CloseSession("handled elsewhere"),
            Enter(State.IDLE, "handled elsewhere"),
        ],
    ),
    ("button down alone does nothing yet", idle, send(ButtonDown(POS)), State.IDLE, []),
    (
        "long press mutes: the mic closes",
        idle,
        send(ButtonDown(POS), ButtonHeld()),
        State.MUTED,
        [CloseMic(), PlayEarcon("mute_on"), Enter(State.MUTED, "muted")],
    ),
    (
        "release after a hold is not a short press",
        idle,
        send(ButtonDown(POS), ButtonHeld(), ButtonUp()),
        State.MUTED,
        [CloseMic(), PlayEarcon("mute_on"), Enter(State.MUTED, "muted")],
    ),
    ("stray session event is ignored", idle, send(SessionReady()), State.IDLE, []),
    (
        "stray playback event is ignored",
        idle,
        send(PlaybackStarted("r", "i", "final_answer")),
        State.IDLE,
        [],
    ),
    # connecting
    (
        "session ready: stream what was buffered",
        connecting,
        send(SessionReady()),
        State.LISTENING,
        [Enter(State.LISTENING, "session ready")],
    ),
    (
        "connect failure shows the error",
        connecting,
        send(SessionFailed("unreachable", "down")),
        State.ERROR,
        [
            EndTurn(POS, "unreachable"),
            DiscardTurn(),
            ReportError("unreachable", "down"),
            PlayEarcon("error"),
            Enter(State.ERROR, "unreachable"),
        ],
    ),
    (
        "second wake while connecting is ignored",
        connecting,
        send(Wake("okay nabu", 0.9, POS)),
        State.CONNECTING,
        [],
    ),
    (
        "turn can end before the session is ready",
        connecting,
        speak_then_pause(),
        State.CONNECTING,
        [EndTurn(END_OF_SPEECH, "silence")],
    ),
    (
        "…and is submitted once it is",
        connecting,
        lambda m: speak_then_pause()(m) + m.handle(SessionReady(), 0),
        State.THINKING,
        [
            EndTurn(END_OF_SPEECH, "silence"),
            Enter(State.LISTENING, "session ready"),
            SubmitTurn(),
            PlayEarcon("end_of_turn"),
            Enter(State.THINKING, "turn ended while connecting"),
        ],
    ),
    (
        "no speech after wake: give up quietly",
        connecting,
        silence(50),
        State.IDLE,
        [
            EndTurn(POS + 50 * F, "no speech"),
            DiscardTurn(),
            CloseSession("no speech"),
            Enter(State.IDLE, "no speech"),
        ],
    ),
    (
        "mute while connecting drops everything",
        connecting,
        send(ButtonDown(POS), ButtonHeld()),
        State.MUTED,
        [
            EndTurn(POS, "muted"),
            DiscardTurn(),
            CloseSession("muted"),
            CloseMic(),
            PlayEarcon("mute_on"),
            Enter(State.MUTED, "muted"),
        ],
    ),
    # listening
    (
        "silence after speech ends the turn",
        listening,
        speak_then_pause(),
        State.THINKING,
        [
            EndTurn(END_OF_SPEECH, "silence"),
            SubmitTurn(),
            PlayEarcon("end_of_turn"),
            Enter(State.THINKING, "end of speech"),
        ],
    ),
    ("short pauses between words do not", listening, speak_then_pause(10, 5), State.LISTENING, []),
    (
        "button ends the turn",
        listening,
        press(),
        State.THINKING,
        [
            EndTurn(POS, "button"),
            SubmitTurn(),
            PlayEarcon("end_of_turn"),
            Enter(State.THINKING, "button"),
        ],
    ),
    (
        "lost connection while listening",
        listening,
        send(SessionLost("connection_lost", "gone")),
        State.ERROR,
        [
            EndTurn(POS, "connection_lost"),
            DiscardTurn(),
            ReportError("connection_lost", "gone (next try after 2 s)"),
            PlayEarcon("error"),
            Enter(State.ERROR, "connection_lost"),
        ],
    ),
    (
        "fatal server error closes the session",
        listening,
        send(CloudError("invalid_api_key", "bad key")),
        State.ERROR,
        [
            EndTurn(POS, "invalid_api_key"),
            DiscardTurn(),
            CloseSession("invalid_api_key"),
            ReportError("invalid_api_key", "bad key"),
            PlayEarcon("error"),
            Enter(State.ERROR, "invalid_api_key"),
        ],
    ),
    # thinking
    (
        "first commentary sample played → preamble",
        thinking,
        send(PlaybackStarted("r1", "i1", "commentary")),
        State.PREAMBLE,
        [Enter(State.PREAMBLE, "commentary")],
    ),
    (
        "first answer sample played → answering",
        thinking,
        send(PlaybackStarted("r1", "i1", "final_answer")),
        State.ANSWERING,
        [Enter(State.ANSWERING, "final_answer")],
    ),
    (
        "a response with no audio still ends",
        thinking,
        send(ResponseEnded("r1", "failed"), PlaybackFinished("r1")),
        State.FOLLOW_UP,
        [Enter(State.FOLLOW_UP, "reply played")],
    ),
    (
        "button while thinking cancels and listens",
        thinking,
        send(ButtonDown(END_OF_SPEECH)),
        State.LISTENING,
        [
            StopPlayback(),
            CancelResponse(),
            StartTurn(END_OF_SPEECH, "barge-in"),
            Enter(State.LISTENING, "barge-in"),
        ],
    ),
    (
        "patience before the reply timeout",
        thinking,
        send(Tick(server_quiet_s=4.9), now=30),
        State.THINKING,
        [],
    ),
    (
        "no reply in time is an error",
        thinking,
        send(Tick(server_quiet_s=5.0), now=30),
        State.ERROR,
        [
            StopPlayback(),
            CloseSession("no_reply"),
            ReportError("no_reply", "the service went quiet for 5 s (next try after 2 s)"),
            PlayEarcon("error"),
            Enter(State.ERROR, "no_reply"),
        ],
    ),
    # preamble / answering
    (
        "answer follows the preamble",
        preamble,
        send(PlaybackStarted("r1", "i2", "final_answer")),
        State.ANSWERING,
        [Enter(State.ANSWERING, "final_answer")],
    ),
    (
        "a second commentary item keeps the preamble",
        preamble,
        send(PlaybackStarted("r1", "i3", "commentary")),
        State.PREAMBLE,
        [],
    ),
    (
        "barge-in during the preamble cancels the response",
        preamble,
        send(ButtonDown(END_OF_SPEECH)),
        State.LISTENING,
        [
            StopPlayback(),
            CancelResponse(),
            StartTurn(END_OF_SPEECH, "barge-in"),
            Enter(State.LISTENING, "barge-in"),
        ],
    ),
    (
        "the release after a barge-in is not another press",
        preamble,
        send(ButtonDown(END_OF_SPEECH), ButtonUp()),
        State.LISTENING,
        [
            StopPlayback(),
            CancelResponse(),
            StartTurn(END_OF_SPEECH, "barge-in"),
            Enter(State.LISTENING, "barge-in"),
        ],
    ),
    (
        "barge-in after response.done: nothing to cancel",
        answering_after_response_done,
        send(ButtonDown(END_OF_SPEECH)),
        State.LISTENING,
        [StopPlayback(), StartTurn(END_OF_SPEECH, "barge-in"), Enter(State.LISTENING, "barge-in")],
    ),
    (
        "played out → follow-up",
        answering_after_response_done,
        send(PlaybackFinished("r1")),
        State.FOLLOW_UP,
        [Enter(State.FOLLOW_UP, "reply played")],
    ),
    (
        # (the app lets a wake word through during a reply only if it is not the device's own)
        "the wake word over the answer interrupts it",
        answering,
        send(Wake("okay nabu", 0.99, END_OF_SPEECH)),
        State.LISTENING,
        [
            StopPlayback(),
            CancelResponse(),
            StartTurn(END_OF_SPEECH - PREROLL, "barge-in"),
            Enter(State.LISTENING, "barge-in"),
        ],
    ),
    (
        "what was cut is truncated, what never played deleted",
        answering,
        send(PlaybackStopped("i2", 1234, ("i3",))),
        State.ANSWERING,
        [Truncate("i2", 1234), DeleteItems(("i3",))],
    ),
    (
        "mute during the answer stops everything",
        answering,
        send(ButtonDown(END_OF_SPEECH), ButtonHeld()),
        State.MUTED,
        [
            StopPlayback(),
            CancelResponse(),
            StartTurn(END_OF_SPEECH, "barge-in"),
            Enter(State.LISTENING, "barge-in"),
            EndTurn(END_OF_SPEECH, "muted"),
            DiscardTurn(),
            CloseSession("muted"),
            CloseMic(),
            PlayEarcon("mute_on"),
            Enter(State.MUTED, "muted"),
        ],
    ),
    # follow-up
    (
        "speaking again starts a turn with pre-roll",
        follow_up,
        lambda m: frames(m, 3, True),
        State.LISTENING,
        [StartTurn(END_OF_SPEECH - PREROLL, "follow-up"), Enter(State.LISTENING, "follow-up")],
    ),
    (
        "silence through the window ends the conversation",
        follow_up,
        silence(50),
        State.IDLE,
        [CloseSession("conversation over"), Enter(State.IDLE, "conversation over")],
    ),
    (
        "wake word in the window listens at once",
        follow_up,
        send(Wake("okay nabu", 0.9, END_OF_SPEECH)),
        State.LISTENING,
        [
            StartTurn(END_OF_SPEECH - PREROLL, "wake word"),
            PlayEarcon("wake"),
            Enter(State.LISTENING, "wake word"),
        ],
    ),
    (
        "button in the window listens at once",
        follow_up,
        press(),
        State.LISTENING,
        [StartTurn(END_OF_SPEECH, "button"), Enter(State.LISTENING, "button")],
    ),
    (
        "session ending in the window is not an error",
        follow_up,
        send(SessionLost("session_expired", "60 min")),
        State.IDLE,
        [Enter(State.IDLE, "session_expired")],
    ),
    # muted
    (
        "long press unmutes",
        muted,
        send(ButtonDown(POS), ButtonHeld()),
        State.IDLE,
        [OpenMic(), PlayEarcon("mute_off"), Enter(State.IDLE, "unmuted")],
    ),
    (
        "a short press does not unmute; a sound says so",
        muted,
        press(),
        State.MUTED,
        [PlayEarcon("muted")],
    ),
    # outages: the next wake inside the backoff window fails at once; the button tries anyway
    (
        "a wake during an outage fails at once",
        after_an_outage,
        send(Wake("okay nabu", 0.9, POS), now=20),
        State.ERROR,
        [
            ReportError(
                "offline",
                "the cloud is unreachable; next try after 20 s (the button tries now)",
                True,
            ),
            PlayEarcon("error"),
            Enter(State.ERROR, "offline"),
        ],
    ),
    (
        "after the window the wake word tries again",
        after_an_outage,
        send(Wake("okay nabu", 0.9, POS), now=41),
        State.CONNECTING,
        [
            StartTurn(POS - PREROLL, "wake word"),
            OpenSession(arbitrate=True),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "wake word"),
        ],
    ),
    (
        "the button always tries",
        after_an_outage,
        lambda m: m.handle(ButtonDown(POS), 20) + m.handle(ButtonUp(), 20),
        State.CONNECTING,
        [
            StartTurn(POS, "button"),
            OpenSession(),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "button"),
        ],
    ),
    (
        "success ends the outage",
        after_an_outage,
        send(Wake("okay nabu", 0.9, POS), SessionReady(), now=41),
        State.LISTENING,
        [
            StartTurn(POS - PREROLL, "wake word"),
            OpenSession(arbitrate=True),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "wake word"),
            ReportRecovery(31.0),
            Enter(State.LISTENING, "session ready"),
        ],
    ),
    (
        "rate limited mid-session: error and back off",
        thinking,
        send(CloudError("rate_limit_exceeded", "slow down", back_off=True), now=5),
        State.ERROR,
        [
            StopPlayback(),
            CloseSession("rate_limit_exceeded"),
            ReportError("rate_limit_exceeded", "slow down (next try after 2 s)"),
            PlayEarcon("error"),
            Enter(State.ERROR, "rate_limit_exceeded"),
        ],
    ),
    # server turn detection: the local VAD does not end the turn, the server's commit does
    (
        "server turns: a pause does not end the turn",
        server_turns,
        speak_then_pause(10, 40),
        State.LISTENING,
        [],
    ),
    (
        "server turns: the server's commit does",
        server_turns,
        lambda m: speak_then_pause(10, 40)(m) + m.handle(ServerCommitted(), 0),
        State.THINKING,
        [
            EndTurn(WAKE_AT + 50 * F, "server"),
            SubmitTurn(commit=False),
            PlayEarcon("end_of_turn"),
            Enter(State.THINKING, "end of speech"),
        ],
    ),
    (
        "server turns: a turn that never ends is cut locally",
        server_turns,
        lambda m: [c for c in frames(m, 250, True) if not isinstance(c, Enter)][:2],
        State.THINKING,
        [EndTurn(WAKE_AT - PREROLL + 200 * F, "max_length"), SubmitTurn(commit=True)],
    ),
    (
        "a server commit means nothing with local turns",
        listening,
        send(ServerCommitted()),
        State.LISTENING,
        [],
    ),
    # a tool call: the preamble ends, the device waits for the rest of the reply
    (
        "tool running: the preamble ends, nothing audible",
        answering_with_a_tool_call_pending,
        send(PlaybackFinished("r1"), now=3),
        State.THINKING,
        [Enter(State.THINKING, "waiting for the rest of the reply")],
    ),
    (
        "the answer after the tool",
        answering_with_a_tool_call_pending,
        send(
            PlaybackFinished("r1"),
            ResponseStarted("r2"),
            PlaybackStarted("r2", "i9", "final_answer"),
            ResponseEnded("r2", "completed"),
            PlaybackFinished("r2"),
            now=3,
        ),
        State.FOLLOW_UP,
        [
            Enter(State.THINKING, "waiting for the rest of the reply"),
            Enter(State.ANSWERING, "final_answer"),
            Enter(State.FOLLOW_UP, "reply played"),
        ],
    ),
    (
        "an old session is not kept for a follow-up",
        answering_after_response_done,
        send(PlaybackFinished("r1"), now=55 * 60),
        State.IDLE,
        [StopPlayback(), CloseSession("session age"), Enter(State.IDLE, "session age")],
    ),
    # error
    ("the error shows for a while", error, send(Tick(), now=11.9), State.ERROR, []),
    (
        "then the device is idle again",
        error,
        send(Tick(), now=12.0),
        State.IDLE,
        [Enter(State.IDLE, "error shown")],
    ),
    (
        "the wake word works in the error state",
        error,
        send(Wake("okay nabu", 0.9, POS)),
        State.CONNECTING,
        [
            StartTurn(POS - PREROLL, "wake word"),
            OpenSession(arbitrate=True),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "wake word"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("prepare", "step", "state", "commands"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_transition(
    prepare: Callable[[], Machine], step: Step, state: State, commands: list[Command]
) -> None:
    m = prepare()
    assert step(m) == commands
    assert m.state is state


def test_follow_up_turn_start_includes_preroll_before_onset() -> None:
    m = follow_up()
    frames(m, 30, False)
    cmds = frames(m, 3, True)
    onset = END_OF_SPEECH + 30 * F  # the first voiced frame starts here
    assert cmds[0] == StartTurn(onset - PREROLL, "follow-up")


def test_turn_ends_at_max_length_even_without_silence() -> None:
    m = listening()
    cmds = frames(m, 200, True)
    ends = [c for c in cmds if isinstance(c, EndTurn)]
    assert ends and ends[0].reason == "max_length"
    assert m.state is State.THINKING


def test_a_pause_sends_the_turn_early_and_speech_after_it_withdraws_it() -> None:
    early = dataclasses.replace(SETTINGS, endpoint=EndpointSettings(silence_ms=200, commit_ms=100))
    m = Machine(early)
    frames(m, 50, False)
    m.handle(Wake("okay nabu", 0.97, m.audio_pos), 0)
    m.handle(SessionReady(), 0)
    cmds = frames(m, 10, True) + frames(m, 6, False)  # 120 ms of silence
    assert [type(c) for c in cmds] == [CommitEarly]
    assert m.state is State.LISTENING  # still listening: the light stays on
    cmds = frames(m, 10, True)
    assert [type(c) for c in cmds] == [Withdraw]
    cmds = frames(m, 6, False) + frames(m, 5, False)  # paused again, then long enough
    kinds = [type(c) for c in cmds]
    assert kinds[0] is CommitEarly and EndTurn in kinds and SubmitTurn in kinds
    assert m.state is State.THINKING


def test_no_early_commit_when_the_server_ends_the_turn() -> None:
    endpoint = EndpointSettings(silence_ms=200, commit_ms=100)
    m = Machine(dataclasses.replace(SETTINGS, server_turns=True, endpoint=endpoint))
    frames(m, 50, False)
    m.handle(Wake("okay nabu", 0.97, m.audio_pos), 0)
    m.handle(SessionReady(), 0)
    cmds = frames(m, 10, True) + frames(m, 20, False) + frames(m, 10, True)
    assert not any(isinstance(c, CommitEarly | Withdraw) for c in cmds)


def test_every_prepared_state_is_reachable() -> None:
    prepared = {
        f().state
        for f in (
            idle,
            connecting,
            listening,
            thinking,
            preamble,
            answering,
            follow_up,
            muted,
            error,
            ringing,
        )
    }
    assert prepared == set(State)


# ---------------------------------------------------------------------------------------------
# Property: whatever happens, the machine stays coherent

inputs = hst.one_of(
    hst.builds(Wake, hst.just("okay nabu"), hst.floats(0.5, 1.0), hst.just(0)),
    hst.builds(ButtonDown, hst.just(0)),
    hst.just(ButtonHeld()),
    hst.just(ButtonUp()),
    hst.builds(Heard, hst.just(0), hst.booleans()),
    hst.just(SessionReady()),
    hst.builds(
        SessionFailed,
        hst.sampled_from(["unreachable", "auth_failed"]),
        hst.just("x"),
        hst.booleans(),
        hst.one_of(hst.none(), hst.floats(0, 100)),
    ),
    hst.just(ServerCommitted()),
    hst.builds(SessionLost, hst.just("connection_lost"), hst.just("x"), hst.booleans()),
    hst.builds(
        CloudError, hst.just("invalid_api_key"), hst.just("x"), hst.booleans(), hst.booleans()
    ),
    hst.builds(ResponseStarted, hst.sampled_from(["r1", "r2"])),
    hst.builds(
        ResponseEnded, hst.sampled_from(["r1", "r2"]), hst.just("completed"), hst.booleans()
    ),
    hst.builds(
        PlaybackStarted,
        hst.just("r1"),
        hst.sampled_from(["i1", "i2"]),
        hst.sampled_from(["commentary", "final_answer"]),
    ),
    hst.builds(PlaybackFinished, hst.just("r1")),
    hst.builds(PlaybackStopped, hst.sampled_from([None, "i1"]), hst.integers(0, 5000)),
    hst.builds(Tick, hst.one_of(hst.none(), hst.floats(0, 60))),
    hst.builds(SetMute, hst.booleans()),
    hst.builds(Summon, hst.just(0)),
    hst.builds(AskText, hst.just("what time is it?")),
    hst.builds(TimersRang, hst.sampled_from([("tea",), ("tea", "eggs")])),
    hst.just(StopRinging()),
    hst.just(EndConversation()),
    hst.builds(ReplyInvites, hst.booleans()),
    hst.builds(Announce, hst.just("dinner is ready")),
)
VARIANTS = {
    "local turns": SETTINGS,
    "server turns": dataclasses.replace(SETTINGS, server_turns=True),
    "hold-to-talk": dataclasses.replace(SETTINGS, hold_to_talk=True, double_press="cancel"),
    "double press repeats": dataclasses.replace(SETTINGS, double_press="repeat"),
    "double press mutes": dataclasses.replace(SETTINGS, double_press="mute"),
    "follow-up auto": dataclasses.replace(SETTINGS, follow_up="auto"),
}


@settings(max_examples=300, deadline=None)
@given(hst.lists(hst.tuples(inputs, hst.integers(1, 20), hst.booleans()), max_size=60))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_random_inputs_keep_the_machine_coherent(
    variant: str, steps: list[tuple[Input, int, bool]]
) -> None:
    m = Machine(VARIANTS[variant])
    now = 0.0
    pos = 0
    for event, frames_later, over_budget in steps:
        # the month's budget is spent, or not, at any moment (the app sets it from the meter)
        m.budget_note = "this month's budget is spent" if over_budget else None
        pos += frames_later * F
        now += frames_later * 0.02
        if isinstance(event, Heard):
            event = Heard(pos, event.speech)
        elif isinstance(event, Wake):
            event = Wake(event.word, event.score, pos)
        elif isinstance(event, ButtonDown):
            event = ButtonDown(pos)
        elif isinstance(event, Summon):
            event = Summon(pos)
        m.handle(Heard(pos, False), now)
        was_open = m.session_open
        commands = m.handle(event, now)
        opens = sum(isinstance(c, OpenSession) for c in commands)
        closes = sum(isinstance(c, CloseSession) for c in commands)
        assert opens <= 1 and closes <= 1
        kinds = [type(c) for c in commands]
        if opens:  # (an announcement waiting opens its own once a conversation closes)
            closed_first = closes and kinds.index(CloseSession) < kinds.index(OpenSession)
            assert not was_open or closed_first, "a second session opened over the first"
        if closes:
            assert was_open, "closing a session that is not open"
        # the listening LED is on exactly when the turn is being streamed
        assert (m.state is State.LISTENING) <= (m.turn is Turn.OPEN and m.session_open)
        if m.turn is Turn.OPEN:
            assert m.state in (State.CONNECTING, State.LISTENING)
        if m.state in (State.IDLE, State.MUTED, State.ERROR):
            assert not m.session_open and m.turn is Turn.NONE
        if m.state in (State.CONNECTING, State.LISTENING):
            assert m.session_open
        if m.state in (State.THINKING, State.PREAMBLE, State.ANSWERING):
            # (a repeated answer plays from memory: it needs no session; a reply the server
            # sent whole and then closed the session normally plays out without one)
            finished = m.response_id is None and not m.response_expected
            assert m.session_open or m.replay_from is not None or finished
        if m.state is State.MUTED:
            assert m.pending_text is None
        # a ring: no session, something rings, and each name is told when it starts
        if m.state is State.RINGING:
            assert not m.session_open and m.turn is Turn.NONE and m.ringing
        else:
            assert not m.ringing
        started = [n for c in commands if isinstance(c, StartRing) for n in c.names]
        assert len(started) == len(set(started))
        if any(isinstance(c, StopRing) for c in commands):
            assert m.state is not State.RINGING or started


def test_a_lost_microphone_ends_the_conversation_and_shows_until_it_is_back() -> None:
    m = answering()
    cmds = m.handle(MicLost("no audio for 2 s"), 10)
    assert cmds == [
        StopPlayback(),
        CloseSession("mic_lost"),
        ReportError("mic_lost", "no audio for 2 s"),
        PlayEarcon("error"),
        Enter(State.ERROR, "mic_lost"),
    ]
    assert m.handle(Tick(), 100) == []  # long past the usual error time: still an error
    assert m.handle(MicBack(), 101) == [Enter(State.IDLE, "microphone back")]
    assert m.handle(MicLost("x"), 102)[-1] == Enter(State.ERROR, "mic_lost")
    muted_machine = muted()
    assert muted_machine.handle(MicLost("x"), 0) == []  # closed on purpose


def test_a_failed_speaker_ends_the_answer_silently_and_the_error_passes() -> None:
    m = answering()
    cmds = m.handle(SpeakerFailed("speaker 'x' took no audio for 2 s"), 10)
    assert cmds == [
        StopPlayback(),
        CloseSession("speaker_failed"),
        ReportError("speaker_failed", "speaker 'x' took no audio for 2 s"),
        Enter(State.ERROR, "speaker_failed"),
    ]  # no error earcon: it would go to the same speaker
    assert m.handle(Tick(), 10 + SETTINGS.error_hold_s + 0.1) == [Enter(State.IDLE, "error shown")]
    assert muted().handle(SpeakerFailed("x"), 0) == []


# ---------------------------------------------------------------------------------------------
# Button modes, double presses and the control socket's commands

HOLD = dataclasses.replace(SETTINGS, hold_to_talk=True)


def with_settings(settings: Settings, prepare: Callable[[], Machine]) -> Callable[[], Machine]:
    def make() -> Machine:
        m = prepare()
        m.s = settings
        return m

    return make


def double(action: str, prepare: Callable[[], Machine]) -> Callable[[], Machine]:
    return with_settings(
        dataclasses.replace(SETTINGS, double_press=action, double_press_s=0.4), prepare
    )


def held_listening() -> Machine:
    m = with_settings(HOLD, idle)()
    m.handle(ButtonDown(m.audio_pos), 0)
    m.handle(SessionReady(), 0)
    return m


def typed_connecting() -> Machine:
    m = idle()
    m.handle(AskText("what time is it?"), 0)
    return m


def replaying() -> Machine:
    m = double("repeat", idle)()
    press(0.0)(m)
    press(0.2)(m)
    return m


def down_up(at: float, up_at: float | None = None) -> Step:
    def step(m: Machine) -> list[Command]:
        return m.handle(ButtonDown(m.audio_pos), at) + m.handle(
            ButtonUp(), at if up_at is None else up_at
        )

    return step


def steps(*parts: Step) -> Step:
    return lambda m: [c for part in parts for c in part(m)]


HELD_END = WAKE_AT + 60 * F

MODES = [
    # hold-to-talk: the turn is exactly as long as the button is held
    (
        "hold-to-talk: pressing wakes and streams from the press",
        with_settings(HOLD, idle),
        send(ButtonDown(POS)),
        State.CONNECTING,
        [
            StartTurn(POS, "hold"),
            OpenSession(),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "hold"),
        ],
    ),
    (
        "hold-to-talk: pauses do not end the turn, and holding does not mute",
        held_listening,
        steps(speak_then_pause(10, 50), send(ButtonHeld())),
        State.LISTENING,
        [],
    ),
    (
        "hold-to-talk: releasing ends the turn and asks for the answer",
        held_listening,
        steps(speak_then_pause(10, 50), send(ButtonUp())),
        State.THINKING,
        [
            EndTurn(HELD_END, "released"),
            SubmitTurn(),
            PlayEarcon("end_of_turn"),
            Enter(State.THINKING, "released"),
        ],
    ),
    (
        "hold-to-talk: pressing during the answer interrupts it and streams",
        with_settings(HOLD, answering),
        send(ButtonDown(END_OF_SPEECH)),
        State.LISTENING,
        [
            StopPlayback(),
            CancelResponse(),
            StartTurn(END_OF_SPEECH, "hold"),
            Enter(State.LISTENING, "hold"),
        ],
    ),
    (
        "hold-to-talk: a muted device plays the muted sound",
        with_settings(HOLD, muted),
        send(ButtonDown(POS)),
        State.MUTED,
        [PlayEarcon("muted")],
    ),
    # double press
    (
        "with a double-press action, a single press waits to see",
        double("repeat", idle),
        press(0.0),
        State.IDLE,
        [],
    ),
    (
        "…and wakes once the double-press time has passed",
        double("repeat", idle),
        steps(press(0.0), send(Tick(), now=0.3), send(Tick(), now=0.41)),
        State.CONNECTING,
        [
            StartTurn(POS, "button"),
            OpenSession(),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "button"),
        ],
    ),
    (
        "a press overtaken by the wake word is dropped",
        double("repeat", idle),
        steps(press(0.0), send(Wake("okay nabu", 0.9, POS)), send(Tick(), now=0.5)),
        State.CONNECTING,
        [
            StartTurn(POS - PREROLL, "wake word"),
            OpenSession(arbitrate=True),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "wake word"),
        ],
    ),
    (
        "double press: repeat the last answer, without a session",
        double("repeat", idle),
        steps(press(0.0), press(0.2)),
        State.ANSWERING,
        [ReplayAnswer(), Enter(State.ANSWERING, "repeat")],
    ),
    (
        "the repeat over, the device is idle again",
        replaying,
        send(PlaybackFinished("replay:1"), now=5),
        State.IDLE,
        [Enter(State.IDLE, "repeated")],
    ),
    (
        "a press during the repeat wakes the device",
        replaying,
        down_up(1.0),
        State.CONNECTING,
        [
            StopPlayback(),
            StartTurn(POS, "barge-in"),
            OpenSession(),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "barge-in"),
        ],
    ),
    (
        "double press: repeat in the follow-up window, which then reopens",
        double("repeat", follow_up),
        steps(press(3.0), press(3.2), send(PlaybackFinished("replay:1"), now=6)),
        State.FOLLOW_UP,
        [
            ReplayAnswer(),
            Enter(State.ANSWERING, "repeat"),
            Enter(State.FOLLOW_UP, "repeated"),
        ],
    ),
    (
        "double press: cancel everything while listening",
        double("cancel", listening),
        steps(press(0.0), press(0.2)),
        State.IDLE,
        [
            EndTurn(POS, "cancelled"),
            DiscardTurn(),
            CloseSession("cancelled"),
            Enter(State.IDLE, "cancelled"),
        ],
    ),
    (
        "double press: cancel during the answer (the first press already interrupted)",
        double("cancel", answering),
        steps(down_up(2.0), down_up(2.2)),
        State.IDLE,
        [
            StopPlayback(),
            CancelResponse(),
            StartTurn(END_OF_SPEECH, "barge-in"),
            Enter(State.LISTENING, "barge-in"),
            EndTurn(END_OF_SPEECH, "cancelled"),
            DiscardTurn(),
            CloseSession("cancelled"),
            Enter(State.IDLE, "cancelled"),
        ],
    ),
    (
        "double press: mute",
        double("mute", idle),
        steps(press(0.0), press(0.2)),
        State.MUTED,
        [CloseMic(), PlayEarcon("mute_on"), Enter(State.MUTED, "muted")],
    ),
    (
        "two presses further apart are two single presses",
        double("mute", idle),
        steps(press(0.0), send(Tick(), now=0.5), press(0.6), send(Tick(), now=1.1)),
        State.CONNECTING,  # woken by the first, turn ended by the second
        [
            StartTurn(POS, "button"),
            OpenSession(),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "button"),
            EndTurn(POS, "button"),
        ],
    ),
    # the control socket
    (
        "mute on from the command line",
        idle,
        send(SetMute(True)),
        State.MUTED,
        [CloseMic(), PlayEarcon("mute_on"), Enter(State.MUTED, "muted")],
    ),
    ("mute on when muted changes nothing", muted, send(SetMute(True)), State.MUTED, []),
    (
        "mute off from the command line",
        muted,
        send(SetMute(False)),
        State.IDLE,
        [OpenMic(), PlayEarcon("mute_off"), Enter(State.IDLE, "unmuted")],
    ),
    ("`wake` is ignored while muted", muted, send(Summon(POS)), State.MUTED, []),
    (
        "`wake` wakes at once (no double-press wait)",
        double("repeat", idle),
        send(Summon(POS)),
        State.CONNECTING,
        [
            StartTurn(POS, "button"),
            OpenSession(),
            PlayEarcon("wake"),
            Enter(State.CONNECTING, "button"),
        ],
    ),
    (
        "`wake` during an answer interrupts it",
        answering,
        send(Summon(END_OF_SPEECH)),
        State.LISTENING,
        [
            StopPlayback(),
            CancelResponse(),
            StartTurn(END_OF_SPEECH, "barge-in"),
            Enter(State.LISTENING, "barge-in"),
        ],
    ),
    (
        "`ask` opens a session of its own; nothing is captured",
        idle,
        steps(send(AskText("what time is it?")), silence(100)),
        State.CONNECTING,
        [OpenSession(), Enter(State.CONNECTING, "typed question")],
    ),
    (
        "…and sends the text when the session is ready",
        typed_connecting,
        send(SessionReady()),
        State.THINKING,
        [SendText("what time is it?"), Enter(State.THINKING, "typed question")],
    ),
    (
        "`ask` in the follow-up window starts a new session",
        follow_up,
        send(AskText("and tomorrow?")),
        State.CONNECTING,
        [CloseSession("typed question"), OpenSession(), Enter(State.CONNECTING, "typed question")],
    ),
    ("`ask` is refused while listening", listening, send(AskText("x")), State.LISTENING, []),
]


@pytest.mark.parametrize(
    ("prepare", "step", "state", "commands"),
    [row[1:] for row in MODES],
    ids=[row[0] for row in MODES],
)
def test_modes_and_commands(
    prepare: Callable[[], Machine], step: Step, state: State, commands: list[Command]
) -> None:
    m = prepare()
    assert step(m) == commands
    assert m.state is state


def test_a_device_muted_when_it_stopped_starts_muted() -> None:
    m = Machine(SETTINGS, muted=True)
    assert m.state is State.MUTED
    assert m.handle(Wake("okay nabu", 0.99, POS), 0) == []
    assert m.handle(ButtonDown(POS), 0) + m.handle(ButtonUp(), 0) == [PlayEarcon("muted")]


def test_every_input_in_every_state_is_a_row_or_ignored_on_purpose() -> None:
    for state in State:
        for kind in typing.get_args(Input):
            in_a_row = (state, kind) in TRANSITIONS
            ignored = kind in IGNORED[state]
            assert in_a_row or ignored, (
                f"{kind.__name__} in {state.value}: neither a row nor ignored"
            )
            assert not (in_a_row and ignored), f"{kind.__name__} in {state.value}: both"
    assert set(IGNORED) == set(State)


def test_a_handler_that_enters_a_state_its_row_does_not_name_is_a_named_error() -> None:
    m = idle()
    row = TRANSITIONS[(State.IDLE, Wake)]
    TRANSITIONS[(State.IDLE, Wake)] = dataclasses.replace(row, leads_to=frozenset())
    try:
        with pytest.raises(TransitionError, match="Wake in idle entered connecting"):
            m.handle(Wake("okay nabu", 0.9, WAKE_AT), 0)
    finally:
        TRANSITIONS[(State.IDLE, Wake)] = row


def test_a_normal_close_after_the_whole_reply_lets_it_play_out_then_ends_quietly() -> None:
    m = answering_after_response_done()
    assert m.handle(SessionLost("connection_lost", "code 1000", clean=True), 3) == []
    assert m.state is State.ANSWERING  # nothing cut, no error, no barge-in
    assert m.handle(PlaybackFinished("r1"), 5) == [Enter(State.IDLE, "conversation over")]
    assert m.handle(Tick(), 100) == []  # no outage was started


def test_a_normal_close_in_the_middle_of_a_reply_is_still_a_lost_session() -> None:
    m = answering()  # the response is still being generated
    cmds = m.handle(SessionLost("connection_lost", "code 1000", clean=True), 3)
    assert cmds[-1] == Enter(State.ERROR, "connection_lost")


def test_pressing_over_a_reply_whose_session_is_gone_opens_a_new_one() -> None:
    m = answering_after_response_done()
    m.handle(SessionLost("connection_lost", "code 1001", clean=True), 3)
    cmds = m.handle(ButtonDown(WAKE_AT + 100 * F), 4)
    assert StopPlayback() in cmds and OpenSession() in cmds
    assert cmds[-1] == Enter(State.CONNECTING, "barge-in")


@pytest.mark.parametrize("prepare", [connecting, listening, follow_up])
def test_a_reply_nobody_asked_for_is_cancelled_unheard(prepare: Callable[[], Machine]) -> None:
    m = prepare()
    state = m.state
    assert m.handle(ResponseStarted("r9"), 3) == [CancelResponse()]
    assert m.state is state and m.response_id is None


def test_an_expired_session_ends_quietly_and_the_next_wake_opens_a_new_one() -> None:
    m = listening()
    cmds = m.handle(CloudError("session_expired", "60 minutes", quiet=True), 3)
    assert cmds[-1] == Enter(State.IDLE, "session_expired")
    assert not [c for c in cmds if isinstance(c, ReportError | PlayEarcon)]
    assert m.handle(Wake("okay nabu", 0.9, WAKE_AT + 500 * F), 4)[-1] == Enter(
        State.CONNECTING, "wake word"
    )


def test_an_answer_that_had_all_arrived_plays_out_when_the_session_expires() -> None:
    m = answering_after_response_done()
    assert m.handle(CloudError("session_expired", "60 minutes", quiet=True), 3) == [
        CloseSession("session_expired")
    ]
    assert m.handle(PlaybackFinished("r1"), 5) == [Enter(State.IDLE, "conversation over")]


def test_a_refusal_only_the_configuration_can_fix_is_not_asked_again_by_the_wake_word() -> None:
    m = connecting()
    m.handle(SessionFailed("auth_failed", "the key was refused"), 10)
    m.handle(Tick(), 20)
    assert m.state is State.IDLE
    cmds = m.handle(Wake("okay nabu", 0.97, m.audio_pos), 30)
    assert not [c for c in cmds if isinstance(c, OpenSession)]
    assert cmds[0] == ReportError("auth_failed", cmds[0].message, True)  # logged once
    assert "the key was refused" in cmds[0].message and m.state is State.ERROR
    # the button asks again; an opened session clears the refusal for the wake word too
    m.handle(Tick(), 40)
    assert OpenSession() in m.handle(Summon(m.audio_pos), 41)
    m.handle(SessionReady(), 42)
    assert m.refusal is None
    # a reload clears it as well; a retryable failure never sets it
    m = connecting()
    m.handle(CloudError("insufficient_quota", "quota spent"), 10)
    m.reconfigure(SETTINGS)
    m.handle(Tick(), 20)
    assert OpenSession(arbitrate=True) in m.handle(Wake("okay nabu", 0.97, m.audio_pos), 30)
    m.handle(SessionFailed("unreachable", "down", retryable=True), 31)
    assert m.refusal is None


# ---------------------------------------------------------------------------------------------
# Timers ringing, the end of a conversation, announcements


def test_a_timer_rings_at_once_when_idle() -> None:
    m = idle()
    assert m.handle(TimersRang(("tea",)), 100) == [
        StartRing(("tea",)),
        PlayEarcon("ring"),
        Enter(State.RINGING, "timer"),
    ]


@pytest.mark.parametrize(
    ("how", "reason", "state"),
    [
        (lambda m: m.handle(ButtonDown(m.audio_pos), 101), "button", State.IDLE),
        (lambda m: m.handle(StopRinging(), 101), "command", State.IDLE),
        (lambda m: m.handle(Summon(m.audio_pos), 101), "command", State.IDLE),
        (lambda m: m.handle(Wake("okay nabu", 0.9, m.audio_pos), 101), "wake", State.CONNECTING),
        (lambda m: m.handle(Tick(), 100 + 300), "timeout", State.IDLE),
        (lambda m: m.handle(SetMute(True), 101), "command", State.MUTED),
    ],
    ids=["button", "command", "summon", "wake word", "timeout", "mute"],
)
def test_each_way_of_stopping_the_ring(
    how: Callable[[Machine], list[Command]], reason: str, state: State
) -> None:
    m = ringing()
    cmds = how(m)
    assert StopRing(("tea",), reason) in cmds and StopPlayback() in cmds
    assert m.state is state
    if state is State.CONNECTING:  # the wake word stops it and listens
        assert OpenSession(arbitrate=True) in cmds and any(isinstance(c, StartTurn) for c in cmds)


def test_the_ring_repeats_until_it_times_out_and_a_press_that_stopped_it_does_not_mute() -> None:
    m = ringing()
    assert m.handle(Tick(), 101) == []
    assert m.handle(Tick(), 102) == [PlayEarcon("ring")]
    assert m.handle(Tick(), 399) == [PlayEarcon("ring")]
    m.handle(ButtonDown(m.audio_pos), 399.5)
    assert m.handle(ButtonHeld(), 400) == []  # held on: still not muted
    assert m.handle(ButtonUp(), 400) == [] and m.state is State.IDLE


def test_a_timer_that_ends_during_a_conversation_waits_for_the_answer() -> None:
    m = answering_after_response_done()
    assert m.handle(TimersRang(("tea",)), 2.5) == []
    assert m.state is State.ANSWERING
    cmds = m.handle(PlaybackFinished("r1"), 3)
    # the answer was heard: the follow-up window gives way to the ring
    assert cmds[-3:] == [StartRing(("tea",)), PlayEarcon("ring"), Enter(State.RINGING, "timer")]
    assert CloseSession("timer") in cmds and not m.session_open


def test_a_timer_rings_while_muted_and_the_device_stays_muted() -> None:
    m = muted()
    assert m.handle(TimersRang(("tea",)), 5)[-1] == Enter(State.RINGING, "timer")
    cmds = m.handle(ButtonDown(m.audio_pos), 6)
    assert cmds == [
        StopRing(("tea",), "button"),
        StopPlayback(),
        Enter(State.MUTED, "ring stopped (button)"),
    ]


def test_another_timer_ending_while_one_rings_joins_it() -> None:
    m = ringing()
    assert m.handle(TimersRang(("eggs",)), 150) == [StartRing(("eggs",))]
    assert m.handle(StopRinging(), 151)[0] == StopRing(("tea", "eggs"), "command")


def test_end_conversation_closes_after_the_reply_instead_of_the_follow_up() -> None:
    m = answering_after_response_done()
    m.handle(EndConversation(), 2)
    cmds = m.handle(PlaybackFinished("r1"), 3)
    assert cmds[-1] == Enter(State.IDLE, "conversation over")
    assert CloseSession("conversation over") in cmds


@pytest.mark.parametrize(
    ("mode", "invites", "state"),
    [
        ("auto", True, State.FOLLOW_UP),
        ("auto", False, State.IDLE),
        ("auto", None, State.FOLLOW_UP),
        ("always", False, State.FOLLOW_UP),
        ("never", True, State.IDLE),
    ],
)
def test_the_follow_up_window_fits_the_answer(
    mode: str, invites: bool | None, state: State
) -> None:
    m = Machine(dataclasses.replace(SETTINGS, follow_up=mode))
    frames(m, 50, False)
    m.handle(Wake("okay nabu", 0.97, m.audio_pos), 0)
    m.handle(SessionReady(), 0)
    frames(m, 10, True)
    frames(m, 40, False)
    m.handle(ResponseStarted("r1"), 1)
    m.handle(PlaybackStarted("r1", "i1", "final_answer"), 1)
    if invites is not None:
        m.handle(ReplyInvites(invites), 1)
    m.handle(ResponseEnded("r1", "completed"), 1)
    m.handle(PlaybackFinished("r1"), 2)
    assert m.state is state


def test_an_announcement_is_spoken_in_a_session_of_its_own_and_waits_while_busy() -> None:
    m = answering_after_response_done()
    assert m.handle(Announce("dinner is ready"), 2) == []
    m.handle(PlaybackFinished("r1"), 3)
    assert m.state is State.FOLLOW_UP  # the conversation goes on first
    cmds: list[Command] = []
    for _ in range(400):  # the follow-up window closes
        cmds = m.handle(Heard(m.audio_pos + F, False), 4)
        if m.state is not State.FOLLOW_UP:
            break
    assert cmds[-3:] == [
        PlayEarcon("announce"),
        OpenSession(),
        Enter(State.CONNECTING, "announcement"),
    ]
    assert m.handle(SessionReady(), 5) == [
        SendAnnouncement("dinner is ready"),
        Enter(State.THINKING, "announcement"),
    ]
    m.handle(ResponseStarted("r9"), 5)
    m.handle(PlaybackStarted("r9", "i9", "final_answer"), 5)
    m.handle(ResponseEnded("r9", "completed"), 5)
    cmds = m.handle(PlaybackFinished("r9"), 6)
    assert cmds[-1] == Enter(State.IDLE, "announced") and not m.session_open


def test_an_announcement_with_the_cloud_unreachable_is_the_chime_and_the_error_light() -> None:
    m = after_an_outage()
    cmds = m.handle(Announce("dinner is ready"), 14)
    assert cmds[0] == PlayEarcon("announce")
    assert isinstance(cmds[1], ReportError) and cmds[1].code == "announce_failed"
    assert cmds[-1] == Enter(State.ERROR, "announcement not spoken")


def talking_over(state: Callable[[], Machine]) -> Machine:
    m = state()
    m.reconfigure(dataclasses.replace(SETTINGS, talk_over=True))
    return m


def test_talking_over_the_reply_interrupts_it_from_where_the_user_began() -> None:
    for during in (preamble, answering):
        m = talking_over(during)
        assert m.hears_talk_over
        began = m.audio_pos - 4000
        cmds = m.handle(TalkedOver(began), 5)
        assert cmds == [
            StopPlayback(),
            CancelResponse(),
            StartTurn(began, "talked over"),
            Enter(State.LISTENING, "talked over"),
        ], cmds
        assert m.state is State.LISTENING and not m.hears_talk_over
    # from no further back than the pre-roll holds
    m = talking_over(answering)
    cmds = m.handle(TalkedOver(m.audio_pos - 10 * 16_000), 5)
    assert StartTurn(m.audio_pos - 300 * 16, "talked over") in cmds


def test_words_said_over_the_reply_are_sent_even_if_they_ended_before_the_turn_opened() -> None:
    """A lone "stop" is over by the time the detector is sure of it: the turn follows the
    speech that began at `began` (it does not wait for more, time out as "no speech", and
    lose the word), ends `silence_ms` after the verdict and is sent."""
    m = talking_over(answering)
    m.handle(TalkedOver(m.audio_pos - 4000), 5)
    heard = m.audio_pos
    cmds = frames(m, 10, False, 5)  # nothing more is said: 200 ms of silence ends it
    assert EndTurn(heard + 10 * F, "silence") in cmds, cmds
    assert SubmitTurn(True) in cmds and m.state is State.THINKING


def test_with_server_turn_detection_the_talked_over_turn_is_the_services_to_end() -> None:
    """`turn.detection` on the service: the device's detector interrupts the reply, then the
    turn is the server's to end; a silence is not taken for its end locally."""
    m = server_turns()
    m.reconfigure(dataclasses.replace(m.s, talk_over=True))
    frames(m, 10, True)
    m.handle(ServerCommitted(), 0)
    m.handle(ResponseStarted("r1"), 0)
    m.handle(PlaybackStarted("r1", "i2", "final_answer"), 2)
    assert m.state is State.ANSWERING and m.hears_talk_over
    cmds = m.handle(TalkedOver(m.audio_pos - 4000), 5)
    assert StartTurn(m.audio_pos - 4000, "talked over") in cmds and m.state is State.LISTENING
    assert not any(isinstance(c, EndTurn) for c in frames(m, 60, False, 5))  # 1.2 s of silence
    assert m.state is State.LISTENING
    cmds = m.handle(ServerCommitted(), 6)
    assert m.state is State.THINKING, cmds


def test_talking_over_means_nothing_without_the_mode_or_a_conversation() -> None:
    m = answering()  # turn.barge_in = "wake"
    assert not m.hears_talk_over and m.handle(TalkedOver(m.audio_pos), 5) == []
    assert m.state is State.ANSWERING
    m = talking_over(follow_up)
    assert not m.hears_talk_over and m.handle(TalkedOver(m.audio_pos), 5) == []
