"""Endpointing on per-frame VAD verdicts, counted in samples."""

from __future__ import annotations

import dataclasses

from device.core.endpoint import (
    Endpointer,
    EndpointSettings,
    NoSpeech,
    SpeechResumed,
    SpeechStarted,
    TurnEnded,
    TurnPaused,
)

F = 320
S = EndpointSettings(rate=16_000, frame_samples=F, silence_ms=700, max_turn_ms=10_000)


def run(
    pattern: str, timeout_ms: int | None = 5000, start: int = 0, settings: EndpointSettings = S
) -> list[tuple[int, object]]:
    """'1' = voiced frame, '0' = unvoiced; returns (frame index, event) for each event."""
    e = Endpointer(settings)
    e.wait_for_speech(start, timeout_ms)
    out = []
    pos = start
    for i, c in enumerate(pattern):
        pos += F
        ev = e.feed(pos, c == "1")
        if ev is not None:
            out.append((i, ev))
    return out


def test_speech_needs_three_of_five_voiced_frames() -> None:
    assert run("1010000000") == []
    [(i, ev)] = run("0001110000")
    assert i == 5 and ev == SpeechStarted(3 * F)


def test_turn_ends_after_the_configured_silence() -> None:
    silence_frames = 700 // 20
    events = run("0" * 10 + "1" * 50 + "0" * (silence_frames + 5))
    assert [type(ev) for _, ev in events] == [SpeechStarted, TurnEnded]
    _, end = events[1]
    assert isinstance(end, TurnEnded)
    assert end.reason == "silence"
    assert end.speech_end_sample == 60 * F  # end of the last voiced frame
    assert end.end_sample - end.speech_end_sample == 700 * 16  # exactly 700 ms of audio later


def test_pauses_between_words_do_not_end_the_turn() -> None:
    words = ("1" * 15 + "0" * 20) * 6  # 400 ms gaps between 300 ms words
    events = run(words + "0" * 40)
    ends = [ev for _, ev in events if isinstance(ev, TurnEnded)]
    assert len(ends) == 1 and ends[0].speech_end_sample == (len(words) - 20) * F


def test_a_lone_click_in_the_silence_does_not_keep_the_turn_alive() -> None:
    quiet = "0" * 20 + "1" + "0" * 20
    events = run("1" * 20 + quiet)
    end = next(ev for _, ev in events if isinstance(ev, TurnEnded))
    assert end.speech_end_sample == 20 * F


def test_no_speech_after_wake_times_out() -> None:
    events = run("0" * 300, timeout_ms=2000)
    assert events == [(99, NoSpeech(100 * F))]


def test_endless_speech_is_cut_at_the_maximum_turn_length() -> None:
    events = run("1" * 600)
    end = next(ev for _, ev in events if isinstance(ev, TurnEnded))
    assert end.reason == "max_length"
    assert end.end_sample - 0 <= 10_000 * 16 + F


def test_onset_never_precedes_the_start_of_listening() -> None:
    e = Endpointer(S)
    e.wait_for_speech(1000 * F, None)
    ev = None
    for k in range(3):
        ev = e.feed(1000 * F + (k + 1) * F, True)
    assert ev == SpeechStarted(1000 * F)


def test_faint_sound_is_never_speech_however_speech_like() -> None:
    """Echo cancellation leaves a faint residue of the device's voice (about -68 dBFS);
    webrtcvad alone may call it speech, the energy floor does not."""
    import numpy as np

    from device.adapters.vad import Vad
    from device.core.audio import rms_dbfs
    from tests.helpers import speech

    talk = np.frombuffer(speech("what's the weather like today"), "<i2").astype(np.float64)
    faint = (talk * 10 ** (-48 / 20)).astype("<i2").tobytes()  # the same words, 48 dB down
    loud = talk.astype("<i2").tobytes()
    frames = lambda pcm: [pcm[i : i + 640] for i in range(0, len(pcm) - 640, 640)]  # noqa: E731
    voiced = [f for f in frames(loud) if rms_dbfs(f) > -40]
    assert sum(Vad(2).is_speech(f) for f in voiced) > 0.8 * len(voiced)
    assert not any(Vad(2).is_speech(f) for f in frames(faint))


def test_a_pause_of_commit_ms_says_the_turn_may_be_over_and_talking_on_takes_it_back() -> None:
    early = dataclasses.replace(S, commit_ms=300)
    words = "1" * 20 + "0" * 25 + "1" * 20  # a 500 ms pause inside the command
    events = run(words + "0" * 40, settings=early)
    kinds = [type(ev) for _, ev in events]
    assert kinds == [SpeechStarted, TurnPaused, SpeechResumed, TurnPaused, TurnEnded]
    first, last = events[1][1], events[3][1]
    assert isinstance(first, TurnPaused) and isinstance(last, TurnPaused)
    assert first.at_sample - first.speech_end_sample == 300 * 16  # 300 ms of audio after
    end = events[4][1]
    assert isinstance(end, TurnEnded)
    # the turn ends exactly where it did without the early commit
    assert end == next(ev for _, ev in run(words + "0" * 40) if isinstance(ev, TurnEnded))
    assert last.speech_end_sample == end.speech_end_sample


def test_no_early_commit_when_it_is_off_or_not_shorter_than_the_silence() -> None:
    words = "1" * 20 + "0" * 25 + "1" * 20 + "0" * 40
    for commit_ms in (0, 700, 900):
        events = run(words, settings=dataclasses.replace(S, commit_ms=commit_ms))
        assert [type(ev) for _, ev in events] == [SpeechStarted, TurnEnded]


def test_a_turn_whose_speech_another_detector_heard_begin_ends_on_its_silence() -> None:
    """The user talked over a reply: their words began before the turn did. A word as short
    as "stop" is over by the time the turn opens, so it must not wait for speech (it would
    time out and the word never reach the service): it ends `silence_ms` after the word."""
    e = Endpointer(S)
    e.wait_for_speech(10_000, 1500)
    e.speaking(6_000, 10_000)
    events = []
    pos = 10_000
    for _ in range(60):  # silence from here on
        pos += F
        ev = e.feed(pos, False)
        if ev is not None:
            events.append(ev)
    assert events == [TurnEnded(10_000 + 700 * 16, 10_000, "silence")], events
    # and speech going on keeps it open, as any turn
    e.speaking(6_000, 10_000)
    assert [e.feed(10_000 + i * F, True) for i in range(1, 60)] == [None] * 59


def test_the_early_commit_counts_from_firm_speech_and_the_end_from_any() -> None:
    """Words ('1', firm), then the room's tail of them ('t': voiced, not firm), then
    silence: the pause is taken commit_ms after the words, the tail neither takes it back
    nor is cut off (the turn ends silence_ms after it, as it would without the gate); a
    firm word after the pause takes it back."""
    early = dataclasses.replace(S, commit_ms=300)

    def feed(pattern: str) -> list[tuple[int, object]]:
        e = Endpointer(early)
        e.wait_for_speech(0, 5000)
        out = []
        for i, c in enumerate(pattern):
            ev = e.feed((i + 1) * F, c in "1t", c == "1")
            if ev is not None:
                out.append((i, ev))
        return out

    events = feed("1" * 20 + "t" * 10 + "0" * 40)
    kinds = [type(ev) for _, ev in events]
    assert kinds == [SpeechStarted, TurnPaused, TurnEnded], events
    paused, end = events[1][1], events[2][1]
    assert isinstance(paused, TurnPaused) and isinstance(end, TurnEnded)
    assert paused.at_sample == 20 * F + 300 * 16 and paused.speech_end_sample == 20 * F
    assert end.speech_end_sample == 30 * F  # (the tail's last voiced frame, as before)
    events = feed("1" * 20 + "t" * 10 + "0" * 10 + "1" * 10 + "0" * 40)
    assert [type(ev) for _, ev in events] == [
        SpeechStarted,
        TurnPaused,
        SpeechResumed,
        TurnPaused,
        TurnEnded,
    ], events
