"""Turns end over a television: the real daemon hears the user over other voices (espeak
babble) 15 and 10 dB down, and ends the turn when the user stops, not when the room does.
And turns are sent sooner: at a pause of `turn.commit_ms`, with the answer held back until
the pause is long enough to end the turn, and withdrawn if the user goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.app import App, RunOptions
from device.bench import corpus as C
from device.core.audio import CLOUD_RATE, MIC_RATE, resample
from device.emulator import Emulator, Scenario
from tests.helpers import config, read_jsonl, read_wav, write_wav


async def one_question(
    heard: np.ndarray, tmp_path: Path, fast: bool = True
) -> list[dict[str, Any]]:
    """The daemon hears `heard` (a WAV microphone, as fast as it goes, or `fast` False: at
    the pace of a microphone) and answers one question; its events log."""
    emu = Emulator(Scenario(preambles=[], answer="Sunny.", speedup=50.0))
    await emu.start("127.0.0.1", 0)
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "in.wav", heard.tobytes()),
        fast=fast,
        output_wav=tmp_path / "reply.wav",
        events_log=tmp_path / "ev.jsonl",
    )
    cfg = config(f"http://127.0.0.1:{emu.port}", turn={"follow_up_ms": 0})
    try:
        assert await asyncio.wait_for(App(cfg, opts).run(), 90) == 0
    finally:
        await emu.close()
    return read_jsonl(tmp_path / "ev.jsonl")


@pytest.mark.parametrize("snr_db", [15, 10])
async def test_the_turn_ends_when_the_user_stops_talking_over_a_television(
    tmp_path: Path, snr_db: int
) -> None:
    question = "okay nabu, what will the weather be like tomorrow?"
    user = C.say(C.Utterance(question, "en-us", 165, 50))
    spoken_end = C.speech_end(user)
    lead = 3 * C.RATE  # the room before the wake word
    clean = np.concatenate([np.zeros(lead, "<i2"), user, np.zeros(4 * C.RATE, "<i2")])
    heard = C.with_noise(clean, snr_db, "babble", 3)  # the TV goes on throughout
    # paced as a microphone is, so that Silero (loaded as the conversation begins) judges
    # what the background gate holds back, as on a device: the television must not hold
    # the turn open through it (`core.hearing.HeldBack`)
    events = await one_question(heard, tmp_path, fast=False)
    assert [e["word"] for e in events if e["event"] == "wake"] == ["Okay Nabu"]
    turn = next(e for e in events if e["event"] == "turn_end")
    assert turn["reason"] == "silence"  # not the 30 s limit
    # the turn is over (as the device decided): silence_ms (700) + 300 at 15 dB, + 500 at
    # 10 dB; what was sent never ends before the user stopped
    late_ms = (turn["audio_ms"] * 16 - (lead + spoken_end)) / 16
    assert 0 <= late_ms <= 700 + (300 if snr_db == 15 else 500) + 20, late_ms
    assert turn["end_sample"] >= lead + spoken_end


async def test_a_pause_inside_a_command_does_not_cut_it_and_a_finished_one_is_sent_sooner(
    tmp_path: Path,
) -> None:
    """ "okay nabu, set a timer for … ten minutes" (half a second's pause), then, after the
    answer, "what time is it?" in the follow-up window; paced as a microphone would be."""
    voice = C.Utterance("okay nabu, set a timer for", "en-us", 165, 50)
    said = C.say(voice)
    first = said[: C.speech_end(said)]
    rest = C.say(C.Utterance("ten minutes", "en-us", 165, 50))
    rest = rest[: C.speech_end(rest)]
    question = C.say(C.Utterance("what time is it?", "en-us", 165, 50))
    question = question[: C.speech_end(question)]
    lead = np.zeros(MIC_RATE // 2, "<i2")
    pause = np.zeros(MIC_RATE // 2, "<i2")
    command = np.concatenate([lead, first, pause, rest])
    spoken = [len(command)]  # where the user stops, each time
    gap = np.zeros(4 * MIC_RATE, "<i2")  # the answer plays meanwhile
    mic = np.concatenate([command, gap, question])
    spoken.append(len(mic))
    mic = np.concatenate([mic, np.zeros(3 * MIC_RATE, "<i2")])
    emu = Emulator(
        Scenario(preambles=[], answer="Done.", think_ms=150), save_audio=tmp_path / "turns"
    )
    await emu.start("127.0.0.1", 0)
    log = tmp_path / "ev.jsonl"
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "in.wav", mic.tobytes()),
        output_wav=tmp_path / "reply.wav",
        events_log=log,
    )
    cfg = config(
        f"http://127.0.0.1:{emu.port}",
        audio={"echo_cancellation": False},  # (so what is sent is the microphone, exactly)
        turn={"follow_up": "always", "follow_up_ms": 6000},
    )
    try:
        assert await asyncio.wait_for(App(cfg, opts).run(), 90) == 0
    finally:
        await emu.close()
    events = read_jsonl(log)
    turns = [e for e in events if e["event"] == "turn_end"]
    assert len(turns) == 2
    # the pause was taken for a possible end, sent, and withdrawn when the user went on
    withdrawn = [e for e in events if e["event"] == "turn_withdrawn"]
    assert len(withdrawn) == 1 and withdrawn[0]["audio_ms"] * 16 < turns[0]["end_sample"]
    # the model sees each turn whole, as one item, and one answer to each: the first part
    # and the withdrawn answer were deleted
    [conversation] = emu.conversations.values()
    assert [i["role"] for i in conversation.values()] == ["user", "assistant"] * 2
    saved = sorted((tmp_path / "turns").glob("*.wav"))
    assert len(saved) == 3  # the first part, then each turn whole
    m = mic.tobytes()
    for turn, wav in zip(turns, saved[1:], strict=True):
        start, end = turn["start_sample"], turn["end_sample"]
        assert read_wav(wav) == resample(m[2 * start : 2 * end], MIC_RATE, CLOUD_RATE)
    # each turn was sent within 400 ms of the user's last word (700 before), never before it
    for turn, stop in zip(turns, spoken, strict=True):
        assert 0 <= (turn["end_sample"] - stop) / 16 <= 400, (turn["end_sample"] - stop) / 16
    # and an answer is heard only once the turn is over: never over the user's pause
    starts = [e["audio_ms"] * 16 for e in events if e["event"] == "playback_start"]
    assert len(starts) == 2
    for at, turn in zip(starts, turns, strict=True):
        assert at >= turn["audio_ms"] * 16


async def test_in_a_reverberant_room_the_turn_is_sent_when_the_words_end_not_their_echo(
    tmp_path: Path,
) -> None:
    """The room's tail of the last word keeps webrtcvad voiced: the early commit counts its
    pause from the last frame as loud as the user's own voice (`core.hearing.FIRM_DB`), so
    the turn is sent within 400 ms of the last word; the turn still ends (and what is sent
    never stops) before the tail is over, as before."""
    question = "okay nabu, what will the weather be like tomorrow?"
    user = C.say(C.Utterance(question, "en-us", 165, 50))
    spoken_end = C.speech_end(user)
    lead = MIC_RATE
    clean = np.concatenate([np.zeros(lead, "<i2"), user, np.zeros(3 * MIC_RATE, "<i2")])
    events = await one_question(C.reverberate(clean), tmp_path)
    [commit] = [e for e in events if e["event"] == "turn_commit"]
    [turn] = [e for e in events if e["event"] == "turn_end"]
    assert commit["early"] and turn["reason"] == "silence"
    late_ms = (commit["sample"] - (lead + spoken_end)) / 16
    assert 0 <= late_ms <= 400, late_ms
    assert not [e for e in events if e["event"] == "turn_withdrawn"]


@pytest.mark.parametrize(
    ("voice", "wpm", "first", "rest", "pause_s", "seed"),
    [
        ("en-029", 190, "play some", "music", 0.5, 23),
        ("en", 140, "turn on", "the kitchen lights", 0.5, 7),
    ],
)
async def test_over_music_a_soft_word_after_a_pause_is_the_users_and_the_turn_waits_for_it(
    tmp_path: Path, voice: str, wpm: int, first: str, rest: str, pause_s: float, seed: int
) -> None:
    """Over music 10 dB down the background gate sits at the music's loud notes, and the
    soft words after the user's pause ("what time … is it") are no louder: the gate alone
    ended these turns before them. Silero, asked about the frames the gate holds back
    (`core.hearing.HeldBack`), hears a voice in the words and none in the music; the turn
    ends when the user has finished, not at the pause. Paced as a microphone is: Silero
    loads (in a thread) as the conversation begins, well before any pause."""
    wake = C.say(C.Utterance("okay nabu", voice, wpm, 50))
    parts = [C.say(C.Utterance(words, voice, wpm, 50)) for words in (first, rest)]
    a, b = (x[: C.speech_end(x)] for x in parts)
    lead = 3 * C.RATE  # the music before the wake word
    user = np.concatenate(
        [wake[: C.speech_end(wake)], np.zeros(C.RATE * 3 // 10, "<i2"), a,
         np.zeros(int(C.RATE * pause_s), "<i2"), b]
    )  # fmt: skip
    clean = np.concatenate([np.zeros(lead, "<i2"), user, np.zeros(2 * C.RATE, "<i2")])
    events = await one_question(C.with_noise(clean, 10, "music", seed), tmp_path, fast=False)
    assert [e["word"] for e in events if e["event"] == "wake"] == ["Okay Nabu"]
    [turn] = [e for e in events if e["event"] == "turn_end"]
    assert turn["reason"] == "silence"
    late_ms = (turn["end_sample"] - (lead + len(user))) / 16
    assert 0 <= late_ms <= 700 + 500, late_ms
