"""The daemon in-process: WAV microphone and speaker, the real emulator over a real socket,
gpiozero's MockFactory for the button. Everything is checked from the outside: the events
log, the emulator's record of what the device sent, and the reply WAV."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.adapters.echo import AEC_LAG
from device.adapters.mic import WavMic
from device.adapters.room import Room, RoomSpeaker
from device.app import App, RunOptions
from device.config import Secret
from device.core.audio import CLOUD_RATE, MIC_RATE, resample
from device.core.earcons import earcon
from device.emulator import Emulator, Scenario
from device.emulator.voice import speak
from tests.helpers import (
    CONVERSATION,
    QUESTION,
    check_conversation,
    config,
    nonzero,
    read_jsonl,
    read_wav,
    reply_heard,
    silence,
    sounds,
    speech,
    states,
    wait_until,
    write_wav,
)


@pytest.fixture(scope="module")
def question_pcm() -> bytes:
    return silence(0.5) + speech(QUESTION) + silence(1.5)


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    emu = Emulator(
        Scenario(),
        api_key="test-key",
        record=tmp_path / "record.jsonl",
        save_audio=tmp_path / "turns",
    )
    await emu.start("127.0.0.1", 0)
    yield emu
    await emu.close()


def endpoint(emu: Emulator) -> str:
    return f"http://127.0.0.1:{emu.port}"


async def test_a_whole_conversation(
    tmp_path: Path, emulator: Emulator, question_pcm: bytes
) -> None:
    wav = write_wav(tmp_path / "question.wav", question_pcm)
    opts = RunOptions(
        input_wav=wav,
        fast=True,
        output_wav=tmp_path / "reply.wav",
        events_log=tmp_path / "ev.jsonl",
    )
    # without echo cancellation, what is sent is the microphone's audio, bit for bit
    cfg = config(endpoint(emulator), audio={"echo_cancellation": False})
    assert await asyncio.wait_for(App(cfg, opts).run(), 60) == 0

    events = read_jsonl(tmp_path / "ev.jsonl")
    sc = emulator.scenario
    check_conversation(
        events,
        read_jsonl(tmp_path / "record.jsonl"),
        mic_pcm=question_pcm,
        received_turn=read_wav(tmp_path / "turns" / "turn-001-001.wav"),
        played=read_wav(tmp_path / "reply.wav"),
        heard=reply_heard(sc),
    )
    assert events[-1]["event"] == "stopped"


async def test_button_interrupts_the_answer(tmp_path: Path, question_pcm: bytes) -> None:
    # real-time delivery, so the response is still streaming when the button is pressed
    emu = Emulator(Scenario(speedup=1.0, think_ms=100), record=tmp_path / "record.jsonl")
    await emu.start("127.0.0.1", 0)
    wav = write_wav(tmp_path / "question.wav", question_pcm)
    log = tmp_path / "ev.jsonl"
    opts = RunOptions(input_wav=wav, fast=False, output_wav=tmp_path / "reply.wav", events_log=log)
    app = App(config(endpoint(emu), turn={"no_speech_timeout_ms": 1000}), opts)
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: "answering" in states(read_jsonl(log)), 30, "the answer")
        await asyncio.sleep(0.5)
        assert app.button is not None
        pin = app.button.pin
        pin.drive_low()
        await asyncio.sleep(0.1)
        pin.drive_high()
        assert await asyncio.wait_for(run, 30) == 0
    finally:
        run.cancel()
        await emu.close()

    events = read_jsonl(log)
    after = states(events)[states(events).index("answering") :]
    assert after[:2] == ["answering", "listening"]
    assert next(
        e
        for e in events
        if e["event"] == "state" and e["state"] == "listening" and e["reason"] == "barge-in"
    )
    barge = next(e for e in events if e["event"] == "barge_in")
    assert 300 <= barge["played_ms"] <= 2000

    record = [r["event"] for r in read_jsonl(tmp_path / "record.jsonl") if "event" in r]
    types = [r["type"] for r in record]
    assert "response.cancel" in types
    truncate = next(r for r in record if r["type"] == "conversation.item.truncate")
    assert truncate["item_id"] == barge["item_id"]
    assert truncate["audio_end_ms"] == barge["played_ms"]

    # the speaker stopped at once: it holds the preamble and exactly the played part of the answer
    sc = emu.scenario
    preamble = b"".join(speak(t, "commentary") for t in sc.preambles)
    answer = speak(sc.answer, "final_answer")
    heard = earcon("wake") + preamble + answer[: barge["played_ms"] * 48]
    assert np.array_equal(nonzero(read_wav(tmp_path / "reply.wav")), nonzero(heard))


async def test_unreachable_cloud_shows_an_error_and_the_wake_word_still_works(
    tmp_path: Path, question_pcm: bytes
) -> None:
    twice = question_pcm + silence(1.0) + question_pcm
    wav = write_wav(tmp_path / "twice.wav", twice)
    log = tmp_path / "ev.jsonl"
    opts = RunOptions(input_wav=wav, fast=True, output_wav=tmp_path / "reply.wav", events_log=log)
    # nothing listens on port 9 of the loopback: the connection is refused
    code = await asyncio.wait_for(App(config("http://127.0.0.1:9"), opts).run(), 60)
    assert code == 0
    events = read_jsonl(log)
    assert len([e for e in events if e["event"] == "wake"]) == 2
    errors = [e for e in events if e["event"] == "error"]
    # the second wake comes within the backoff window: it fails at once, no connection attempt
    assert [e["code"] for e in errors] == ["unreachable", "offline"]
    assert errors[0]["message"].startswith("cannot reach 127.0.0.1:9: connection refused")
    assert states(events) == ["connecting", "error", "error", "idle"]
    assert [e["pattern"] for e in events if e["event"] == "led"][-2:] == ["error", "offline"]
    assert sounds(events) == ["error", "error"]


async def test_wrong_key_is_reported_as_such(
    tmp_path: Path, emulator: Emulator, question_pcm: bytes
) -> None:
    wav = write_wav(tmp_path / "question.wav", question_pcm)
    log = tmp_path / "ev.jsonl"
    cfg = dataclasses.replace(config(endpoint(emulator)), api_key=Secret("rotated-away"))
    opts = RunOptions(input_wav=wav, fast=True, output_wav=tmp_path / "reply.wav", events_log=log)
    assert await asyncio.wait_for(App(cfg, opts).run(), 60) == 0
    error = next(e for e in read_jsonl(log) if e["event"] == "error")
    assert error["code"] == "auth_failed"
    assert "AZURE_OPENAI_API_KEY" in error["message"]
    assert "rotated-away" not in (tmp_path / "ev.jsonl").read_text()


async def press(pin: Any, seconds: float) -> None:
    pin.drive_low()
    await asyncio.sleep(seconds)
    pin.drive_high()


async def test_button_wakes_and_holding_it_mutes(tmp_path: Path, emulator: Emulator) -> None:
    wav = write_wav(tmp_path / "quiet.wav", silence(6.0))
    log = tmp_path / "ev.jsonl"
    opts = RunOptions(input_wav=wav, fast=False, output_wav=tmp_path / "reply.wav", events_log=log)
    app = App(
        config(endpoint(emulator), turn={"no_speech_timeout_ms": 1000}, button={"hold_ms": 400}),
        opts,
    )
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: read_jsonl(log)[:1] != [], 10, "ready")
        assert app.button is not None
        pin = app.button.pin
        # a short press wakes the device; nobody speaks, so it gives up and closes the session
        await press(pin, 0.1)
        await wait_until(lambda: states(read_jsonl(log))[-1:] == ["idle"], 10, "idle again")
        # a long press mutes: the microphone is closed, so the audio clock stops
        await press(pin, 0.6)
        await wait_until(lambda: "muted" in states(read_jsonl(log)), 5, "muted")
        await asyncio.sleep(1.0)
        await press(pin, 0.6)
        assert await asyncio.wait_for(run, 30) == 0
    finally:
        run.cancel()

    events = read_jsonl(log)
    assert states(events) == ["connecting", "listening", "idle", "muted", "idle"]
    woke = next(e for e in events if e["event"] == "state" and e["state"] == "connecting")
    assert woke["reason"] == "button"
    assert [e["event"] for e in events if e["event"].startswith("session")] == [
        "session_open",
        "session_closed",
    ]
    muted = next(e for e in events if e["event"] == "state" and e["state"] == "muted")
    unmuted = [e for e in events if e["event"] == "state"][-1]
    assert unmuted["t"] - muted["t"] > 1.0  # a second of wall time passed while muted…
    assert unmuted["audio_ms"] - muted["audio_ms"] <= 40  # …and no audio was captured
    assert not any(e["event"] == "wake" for e in events)
    record = [r["event"]["type"] for r in read_jsonl(tmp_path / "record.jsonl") if "event" in r]
    assert "input_audio_buffer.commit" not in record  # nothing said, nothing submitted


async def test_barge_in_during_the_preamble_deletes_the_unheard_answer(
    tmp_path: Path, question_pcm: bytes
) -> None:
    # the whole reply arrives at once, so the answer is queued, unheard, when the button goes
    emu = Emulator(Scenario(speedup=100.0, think_ms=100), record=tmp_path / "record.jsonl")
    await emu.start("127.0.0.1", 0)
    log = tmp_path / "ev.jsonl"
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "q.wav", question_pcm),
        output_wav=tmp_path / "reply.wav",
        events_log=log,
    )
    app = App(config(endpoint(emu), turn={"no_speech_timeout_ms": 1000}), opts)
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: "preamble" in states(read_jsonl(log)), 30, "the preamble")
        await asyncio.sleep(0.3)
        assert app.button is not None
        await press(app.button.pin, 0.1)
        assert await asyncio.wait_for(run, 30) == 0
    finally:
        run.cancel()
        await emu.close()
    events = read_jsonl(log)
    assert "answering" not in states(events)
    barge = next(e for e in events if e["event"] == "barge_in")
    sent = [r["event"] for r in read_jsonl(tmp_path / "record.jsonl") if "event" in r]
    truncate = next(e for e in sent if e["type"] == "conversation.item.truncate")
    assert (truncate["item_id"], truncate["audio_end_ms"]) == (barge["item_id"], barge["played_ms"])
    deleted = [e["item_id"] for e in sent if e["type"] == "conversation.item.delete"]
    started = [e["item_id"] for e in events if e["event"] == "playback_start"]
    assert len(deleted) == 1 and deleted[0] not in started  # the answer nobody heard
    assert "response.cancel" not in [e["type"] for e in sent]  # it had finished arriving


async def test_the_user_reaches_the_service_whole_across_the_wake_chime(
    tmp_path: Path, emulator: Emulator, question_pcm: bytes
) -> None:
    """Default settings (echo cancellation on, the wake chime playing as the user goes on
    talking) and a microphone with no echo path: the turn the service receives is what the
    microphone heard, sample for sample after resampling, and as late as the canceller's
    output is (8 ms), so that switching it in and out never repeats or drops a sound. (The
    canceller, not yet converged on the room, used to erase ~600 ms under and after the
    chime.)"""
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "q.wav", question_pcm),
        fast=True,
        output_wav=tmp_path / "reply.wav",
        events_log=tmp_path / "ev.jsonl",
    )
    assert await asyncio.wait_for(App(config(endpoint(emulator)), opts).run(), 60) == 0
    events = read_jsonl(tmp_path / "ev.jsonl")
    assert next(e["kind"] for e in events if e["event"] == "earcon") == "wake"
    turn = next(e for e in events if e["event"] == "turn_end")
    start, end = turn["start_sample"], turn["end_sample"]
    late = bytes(2 * AEC_LAG) + question_pcm
    raw = resample(late[2 * start : 2 * end], MIC_RATE, CLOUD_RATE)
    assert read_wav(tmp_path / "turns" / "turn-001-001.wav") == raw


@pytest.mark.parametrize("delay_ms", [0, 300, 2000])
async def test_the_turn_is_sample_exact_whatever_the_connect_time(
    tmp_path: Path, question_pcm: bytes, delay_ms: int
) -> None:
    emu = Emulator(Scenario(session_delay_ms=delay_ms), save_audio=tmp_path / "turns")
    await emu.start("127.0.0.1", 0)
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "q.wav", question_pcm),
        fast=False,  # real time: the user keeps talking while the session is opening
        output_wav=tmp_path / "reply.wav",
        events_log=tmp_path / "ev.jsonl",
    )
    cfg = config(endpoint(emu), audio={"echo_cancellation": False}, turn={"follow_up_ms": 0})
    try:
        assert await asyncio.wait_for(App(cfg, opts).run(), 60) == 0
    finally:
        await emu.close()
    events = read_jsonl(tmp_path / "ev.jsonl")
    wake = next(e for e in events if e["event"] == "wake")
    opened = next(e for e in events if e["event"] == "session_open")
    assert opened["audio_ms"] - wake["audio_ms"] >= delay_ms - 20  # speech waited in RAM
    turn = next(e for e in events if e["event"] == "turn_end")
    mic = question_pcm + bytes(2 * turn["end_sample"])
    expected = resample(
        mic[2 * turn["start_sample"] : 2 * turn["end_sample"]], MIC_RATE, CLOUD_RATE
    )
    assert read_wav(tmp_path / "turns" / "turn-001-001.wav") == expected


async def test_a_follow_up_question_needs_no_wake_word(tmp_path: Path, question_pcm: bytes) -> None:
    emu = Emulator(
        Scenario(preambles=[], answer="It is sunny.", speedup=20.0), record=tmp_path / "r.jsonl"
    )
    await emu.start("127.0.0.1", 0)
    follow_up = speech("and what about tomorrow?")
    # the follow-up comes 1 s after the first answer ends; the device decides when that is
    log = tmp_path / "ev.jsonl"
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "q.wav", question_pcm + silence(8.0)),
        fast=False,
        output_wav=tmp_path / "reply.wav",
        events_log=log,
    )
    app = App(config(endpoint(emu)), opts)
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: "follow_up" in states(read_jsonl(log)), 30, "the follow-up window")
        await asyncio.sleep(1.0)
        assert isinstance(app.mic, WavMic)
        app.mic.say(follow_up)
        assert await asyncio.wait_for(run, 60) == 0
    finally:
        run.cancel()
        await emu.close()
    events = read_jsonl(log)
    assert len([e for e in events if e["event"] == "wake"]) == 1
    assert states(events) == [
        "connecting",
        "listening",
        "thinking",
        "answering",
        "follow_up",
        "listening",
        "thinking",
        "answering",
        "follow_up",
        "idle",
    ]
    follow = [e for e in events if e["event"] == "state" and e["reason"] == "follow-up"]
    assert len(follow) == 1
    record = read_jsonl(tmp_path / "r.jsonl")
    assert len([r for r in record if r.get("connection") == "open"]) == 1  # one session, two turns
    assert [r["event"]["type"] for r in record if "event" in r].count(
        "input_audio_buffer.commit"
    ) == 2


async def test_a_double_press_repeats_the_last_answer_from_memory(
    tmp_path: Path, question_pcm: bytes
) -> None:
    sc = Scenario(preambles=[], answer="It is sunny.", speedup=20.0)
    emu = Emulator(sc, record=tmp_path / "r.jsonl")
    await emu.start("127.0.0.1", 0)
    log = tmp_path / "ev.jsonl"
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "q.wav", question_pcm + silence(20.0)),
        output_wav=tmp_path / "reply.wav",
        events_log=log,
    )
    cfg = config(
        endpoint(emu),
        button={"double_press": "repeat"},
        turn={"follow_up_ms": 1000},
        audio={"earcons": []},
    )
    app = App(cfg, opts)
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: states(read_jsonl(log))[-1:] == ["idle"], 30, "the answer")
        assert app.button is not None
        await press(app.button.pin, 0.08)
        await asyncio.sleep(0.1)
        await press(app.button.pin, 0.08)
        await wait_until(lambda: states(read_jsonl(log))[-2:] == ["answering", "idle"], 10, "again")
        app.request_stop()
        assert await asyncio.wait_for(run, 10) == 0
    finally:
        run.cancel()
        await emu.close()
    events = read_jsonl(log)
    assert states(events) == [
        "connecting",
        "listening",
        "thinking",
        "answering",
        "follow_up",
        "idle",
        "answering",
        "idle",
    ]
    again = [e["reason"] for e in events if e["event"] == "state"][-2:]
    assert again == ["repeat", "repeated"]
    # played twice, the second time from memory: no new session, nothing sent
    record = read_jsonl(tmp_path / "r.jsonl")
    assert len([r for r in record if r.get("connection") == "open"]) == 1
    answer = speak(sc.answer, "final_answer")
    assert np.array_equal(nonzero(read_wav(tmp_path / "reply.wav")), nonzero(answer + answer))


async def test_hold_to_talk_streams_exactly_while_the_button_is_held(
    tmp_path: Path, emulator: Emulator
) -> None:
    log = tmp_path / "ev.jsonl"
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "quiet.wav", silence(20.0)),
        output_wav=tmp_path / "reply.wav",
        events_log=log,
    )
    app = App(config(endpoint(emulator), button={"mode": "hold-to-talk"}), opts)
    # a pause far longer than the endpointer's silence does not end a held turn
    words = speech("what's the weather") + silence(1.5) + speech("like today?")
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: read_jsonl(log)[:1] != [], 10, "ready")
        assert app.button is not None and isinstance(app.mic, WavMic)
        app.button.pin.drive_low()
        await asyncio.sleep(0.3)
        app.mic.say(words)
        await asyncio.sleep(len(words) / 32000 + 0.5)
        app.button.pin.drive_high()
        await wait_until(lambda: "follow_up" in states(read_jsonl(log)), 30, "the answer")
        app.request_stop()
        assert await asyncio.wait_for(run, 10) == 0
    finally:
        run.cancel()
    events = read_jsonl(log)
    assert states(events)[:3] == ["connecting", "listening", "thinking"]
    woke = next(e for e in events if e["event"] == "state")
    assert woke["reason"] == "hold"
    turn = next(e for e in events if e["event"] == "turn_end")
    assert turn["reason"] == "released"
    assert abs(turn["start_sample"] - woke["audio_ms"] * 16) <= 320  # from the press, ±1 frame
    held_s = (turn["end_sample"] - turn["start_sample"]) / 16000
    assert len(words) / 32000 + 0.6 < held_s < len(words) / 32000 + 1.2
    received = read_wav(tmp_path / "turns" / "turn-001-001.wav")
    assert len(received) == (turn["end_sample"] - turn["start_sample"]) * 3  # 24 kHz, 2 bytes


class OpenOutput(RoomSpeaker):
    """An output that is never stopped and plays silence between sounds, as one kept open to
    avoid a click does, or one slow to stop on a busy machine."""

    def _settle(self) -> None:
        pass


async def test_an_output_left_running_deafens_nothing(
    tmp_path: Path, emulator: Emulator, question_pcm: bytes
) -> None:
    """Only the sound the device makes (the wake chime, the reply) may deafen the VAD: a
    question said right after the chime is heard even though the output goes on running."""
    room = Room(question_pcm, paced=False)
    room.speaker = OpenOutput(60)
    opts = RunOptions(room=room, events_log=tmp_path / "ev.jsonl", leds="none")
    assert await asyncio.wait_for(App(config(endpoint(emulator)), opts).run(), 60) == 0
    events = read_jsonl(tmp_path / "ev.jsonl")
    assert room.speaker.playing  # it was never stopped
    assert states(events) == CONVERSATION
