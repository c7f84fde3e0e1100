"""The rules the daemon lives by, with plain values: which wake word wins, when the VAD is
deaf to the device's own sound, which states hear what, and which replies are played."""

from __future__ import annotations

import pytest

from device.core.earcons import EARCON_SWITCHES, Earcon
from device.core.hearing import EARCON_TAIL_MS, VAD_STATES, WAKE_STATES, DeafWindow
from device.core.replies import MAX_TOOL_ROUNDS, Replies
from device.core.states import State
from device.core.wake import Candidate, DuringPlayback, choose_wake

ECHO_TAIL_MS = 500


@pytest.mark.parametrize(
    "during_playback, rule, expected",
    [
        (False, DuringPlayback.ECHO_MATCH, Candidate(1, 0.9)),  # the best over its threshold
        (True, DuringPlayback.ECHO_MATCH, Candidate(1, 0.9)),  # echo-match: checked later
        (True, DuringPlayback.THRESHOLD, None),  # 0.9 is under the playback threshold
        (True, DuringPlayback.OFF, None),
        (False, DuringPlayback.OFF, Candidate(1, 0.9)),  # only while the device plays
    ],
)
def test_the_best_wake_word_over_its_threshold_wins_under_the_playback_rule(
    during_playback: bool, rule: DuringPlayback, expected: Candidate | None
) -> None:
    chosen = choose_wake([0.5, 0.6, 0.95], [0.7, 0.9, 0.2], during_playback, rule, 0.97)
    assert chosen == expected


def test_a_word_under_its_own_threshold_never_wins() -> None:
    assert choose_wake([0.8, 0.8], [0.79, 0.5], False, DuringPlayback.THRESHOLD, 0.97) is None
    louder = choose_wake([0.5], [0.99], True, DuringPlayback.THRESHOLD, 0.97)
    assert louder == Candidate(0, 0.99)


def test_the_wake_word_counts_where_it_acts_and_the_vad_where_speech_is_awaited() -> None:
    assert State.MUTED not in WAKE_STATES and State.MUTED not in VAD_STATES
    assert {State.CONNECTING, State.LISTENING} <= VAD_STATES - WAKE_STATES  # already awake
    assert {State.THINKING, State.PREAMBLE, State.ANSWERING} <= WAKE_STATES - VAD_STATES
    assert State.FOLLOW_UP in WAKE_STATES & VAD_STATES


def test_the_vad_is_deaf_to_an_earcon_and_its_tail_while_listening() -> None:
    w = DeafWindow(ECHO_TAIL_MS, rate=16_000)
    assert w.vad_runs(State.LISTENING, 320) == (True, True)  # first frame: a fresh VAD
    assert w.vad_runs(State.LISTENING, 640) == (True, False)
    w.sounded(640)  # the device beeped during this frame
    tail = EARCON_TAIL_MS * 16
    assert w.deaf(State.LISTENING, 640 + tail - 1)
    assert not w.deaf(State.LISTENING, 640 + tail)
    assert w.vad_runs(State.LISTENING, 960) == (False, False)
    assert w.vad_runs(State.LISTENING, 640 + tail) == (True, True)  # fresh after the gap


def test_in_the_follow_up_window_the_vad_is_deaf_for_the_whole_echo_tail() -> None:
    w = DeafWindow(ECHO_TAIL_MS, rate=16_000)
    w.sounded(16_000)  # the reply's last sound
    assert w.deaf(State.FOLLOW_UP, 16_000 + EARCON_TAIL_MS * 16)  # an earcon's tail is not enough
    assert not w.deaf(State.FOLLOW_UP, 16_000 + ECHO_TAIL_MS * 16)


def test_the_vad_does_not_run_where_no_speech_is_awaited() -> None:
    w = DeafWindow(ECHO_TAIL_MS, rate=16_000)
    for state in set(State) - VAD_STATES:
        assert w.vad_runs(state, 10**6) == (False, False)


def test_a_cancel_before_its_response_discards_that_response_only() -> None:
    r = Replies()
    r.cancelled(active_response=None)  # the user interrupted before response.created
    assert r.created() is False  # that response is not played
    assert r.created() is True  # the next one is
    r.cancelled(active_response="resp_1")  # discarded by id: nothing pending
    assert r.created() is True


def test_tool_rounds_are_capped_per_turn() -> None:
    r = Replies()
    assert [r.tool_round(1) for _ in range(MAX_TOOL_ROUNDS + 1)] == [True] * MAX_TOOL_ROUNDS + [
        False
    ]
    assert r.tool_round(0) is False  # no calls: nothing more to ask for
    r.new_turn()
    assert r.tool_round(2) is True


def test_each_earcon_has_one_switch_in_the_configuration() -> None:
    assert EARCON_SWITCHES == ("wake", "end_of_turn", "error", "mute")
    assert {k.switch for k in (Earcon.MUTE_ON, Earcon.MUTE_OFF, Earcon.MUTED)} == {"mute"}
    assert Earcon.WAKE.switch == "wake"


def test_a_cancel_the_server_refuses_discards_no_later_reply() -> None:
    r = Replies()
    r.cancelled(active_response=None, event_id="dev_000007")
    r.cancel_refused("dev_000003")  # an error about something else
    assert r.discard_next is True
    r.cancel_refused("dev_000007")  # response_cancel_not_active: there was nothing to cancel
    assert r.created() is True  # the user's next real reply is played


def test_background_speech_sets_a_gate_only_in_a_room_that_has_some() -> None:
    import math

    from device.core.hearing import BackgroundSpeech

    quiet = BackgroundSpeech()
    for _ in range(200):
        quiet.observe(-80.0, False)
    assert quiet.turn_starts() == -math.inf and quiet.users(-60.0)
    tv = BackgroundSpeech(margin_db=3.0)
    for n in range(100):  # two seconds of a TV: voiced, -45 to -35 dBFS
        tv.observe(-45.0 + (n % 11), True)
    for _ in range(60):  # then the wake word, loud: not the room's level
        tv.observe(-15.0, True)
    gate = tv.turn_starts()
    assert -36.0 <= gate <= -31.0
    assert tv.users(-20.0) and not tv.users(-40.0)
    # stationary noise the VAD mostly rejects: no gate, soft words still count
    fan = BackgroundSpeech()
    for n in range(160):
        fan.observe(-50.0, n % 5 == 0)
    assert fan.turn_starts() == -math.inf


def test_background_speech_learns_only_from_the_idle_time_just_before_a_turn() -> None:
    """A wake soon after a conversation: the last one's wake word is not the room's level."""
    import math

    from device.core.hearing import BackgroundSpeech

    room = BackgroundSpeech()
    for _ in range(40):
        room.observe(-90.0, False)
    for _ in range(60):
        room.observe(-15.0, True)  # okay nabu, loud
    room.turn_starts()
    for _ in range(20):  # half a second of quiet, then the next wake word
        room.observe(-90.0, False)
    for _ in range(60):
        room.observe(-15.0, True)
    assert room.turn_starts() == -math.inf and room.users(-30.0)


def test_a_frame_the_gate_holds_back_is_asked_about_only_near_the_users_voice_and_words() -> None:
    """Silero is asked about a voiced frame under the background gate only within 10 dB of
    the user's loudest and within a second of their last frame over the gate: a room's
    voices (which Silero calls voices too) can hold a turn open that long at most."""
    from device.core.hearing import HELD_BACK_DB, HeldBack

    held = HeldBack()
    user = [-20.0] * 20  # the user's loudest 200 ms: -20 dBFS
    assert not held.worth_asking(-25.0, user, 16_000)  # (nothing over the gate yet)
    held.passed(16_000)
    assert held.worth_asking(-25.0, user, 16_000 + 320)
    assert not held.worth_asking(-25.0, [], 16_000 + 320)  # (how loud the user is: unknown)
    assert held.worth_asking(-20.0 - HELD_BACK_DB, user, 32_000)  # a second later, just
    assert not held.worth_asking(-20.0 - HELD_BACK_DB - 1, user, 16_320)  # too soft
    assert not held.worth_asking(-25.0, user, 32_320)  # too long after the user's last
    held.passed(40_000)
    assert held.worth_asking(-25.0, user, 40_320)
    held.turn_starts()  # a new turn: nothing over the gate in it yet
    assert not held.worth_asking(-25.0, user, 40_640)
