"""Turns end over a television: the real daemon hears the user over other voices (espeak
babble) 15 and 10 dB down, and ends the turn when the user stops, not when the room does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from device.app import App, RunOptions
from device.bench import corpus as C
from device.emulator import Emulator, Scenario
from tests.helpers import config, read_jsonl, write_wav


@pytest.mark.parametrize("snr_db", [15, 10])
async def test_the_turn_ends_when_the_user_stops_talking_over_a_television(
    tmp_path: Path, snr_db: int
) -> None:
    question = "okay nabu, what will the weather be like tomorrow?"
    user = C.say(C.Utterance(question, "en-us", 165, 50))
    spoken_end = C.speech_end(user)
    lead = 3 * C.RATE  # the room before the wake word
    clean = np.concatenate([np.zeros(lead, "<i2"), user, np.zeros(12 * C.RATE, "<i2")])
    heard = C.with_noise(clean, snr_db, "babble", 3)  # the TV goes on throughout
    emu = Emulator(Scenario(preambles=[], answer="Sunny.", speedup=50.0))
    await emu.start("127.0.0.1", 0)
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "in.wav", heard.tobytes()),
        fast=True,
        output_wav=tmp_path / "reply.wav",
        events_log=tmp_path / "ev.jsonl",
    )
    cfg = config(f"http://127.0.0.1:{emu.port}", turn={"follow_up_ms": 0})
    try:
        assert await asyncio.wait_for(App(cfg, opts).run(), 90) == 0
    finally:
        await emu.close()
    events = read_jsonl(tmp_path / "ev.jsonl")
    assert [e["word"] for e in events if e["event"] == "wake"] == ["Okay Nabu"]
    turn = next(e for e in events if e["event"] == "turn_end")
    assert turn["reason"] == "silence"  # not the 30 s limit
    late_ms = (turn["end_sample"] - (lead + spoken_end)) / 16
    # silence_ms (700) + 300 at 15 dB, + 500 at 10 dB; never before the user stopped
    assert 0 <= late_ms <= 700 + (300 if snr_db == 15 else 500), late_ms
