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

from device.app import App, RunOptions
from device.config import Config, Secret, parse_config
from device.core.audio import CLOUD_RATE, MIC_RATE, resample
from device.emulator import Emulator, Scenario
from device.emulator.voice import speak
from tests.helpers import (
    nonzero,
    read_jsonl,
    read_wav,
    silence,
    speech,
    states,
    wait_until,
    write_wav,
)
from tests.sdk import validate_client_event

QUESTION = "okay nabu, what's the weather like today?"


@pytest.fixture(scope="module")
def question_pcm() -> bytes:
    return silence(0.5) + speech(QUESTION) + silence(1.5)


def config(endpoint: str, **sections: dict[str, Any]) -> Config:
    data: dict[str, dict[str, Any]] = {
        "cloud": {"endpoint": endpoint},
        "gpio": {"pin_factory": "mock"},
        **sections,
    }
    return dataclasses.replace(parse_config(data), api_key=Secret("test-key"))


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
    assert await asyncio.wait_for(App(config(endpoint(emulator)), opts).run(), 60) == 0

    events = read_jsonl(tmp_path / "ev.jsonl")
    assert [e["word"] for e in events if e["event"] == "wake"] == ["Okay Nabu"]
    assert states(events) == [
        "connecting",
        "listening",
        "thinking",
        "preamble",
        "answering",
        "follow_up",
        "idle",
    ]
    leds = [e["pattern"] for e in events if e["event"] == "led"]
    assert leds == [
        "connecting",
        "listening",
        "thinking",
        "preamble",
        "answering",
        "follow_up",
        "idle",
    ]
    assert [e["phase"] for e in events if e["event"] == "playback_start"] == [
        "commentary",
        "final_answer",
    ]

    # nothing left the device before the wake word: the only connection came after it
    record = read_jsonl(tmp_path / "record.jsonl")
    origin = events[0]["clock_origin"]
    wake_t = next(e["t"] for e in events if e["event"] == "wake")
    connections = [r for r in record if r.get("connection") == "open"]
    assert len(connections) == 1 and connections[0]["mono"] > origin + wake_t

    # every client event is what the SDK expects
    for r in record:
        if "event" in r:
            validate_client_event(r["event"])
    sent = [r["event"]["type"] for r in record if "event" in r]
    assert sent[0] == "session.update"
    assert sent[-2:] == ["input_audio_buffer.commit", "response.create"]

    # the server received the microphone audio from the pre-roll point to the turn's end,
    # every sample once, resampled to 24 kHz
    turn = next(e for e in events if e["event"] == "turn_end")
    wake_sample = next(e["audio_ms"] for e in events if e["event"] == "wake") * 16
    assert turn["start_sample"] == wake_sample - 300 * 16
    mic = question_pcm + bytes(2 * turn["end_sample"])
    expected = resample(
        mic[2 * turn["start_sample"] : 2 * turn["end_sample"]], MIC_RATE, CLOUD_RATE
    )
    received = read_wav(tmp_path / "turns" / "turn-001-001.wav")
    assert received == expected
    assert next(e["ms"] for e in events if e["event"] == "audio_sent") == len(expected) // 48

    # the reply written is exactly what the server sent, preamble then answer
    sc = emulator.scenario
    server_audio = b"".join(speak(t, "commentary") for t in sc.preambles) + speak(
        sc.answer, "final_answer"
    )
    assert np.array_equal(nonzero(read_wav(tmp_path / "reply.wav")), nonzero(server_audio))
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
    heard = preamble + answer[: barge["played_ms"] * 48]
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
    assert [e["code"] for e in errors] == ["unreachable", "unreachable"]
    assert "127.0.0.1:9" in errors[0]["message"]
    assert states(events) == ["connecting", "error", "connecting", "error", "idle"]
    assert [e["pattern"] for e in events if e["event"] == "led"][-2:] == ["error", "idle"]


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
