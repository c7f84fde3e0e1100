"""The measurement suites, in miniature: they keep working, and what they found stays true."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.adapters.wakeword import load_engine
from device.bench import accuracy
from device.bench import corpus as C
from device.bench.accuracy import LEAD_S, in_condition, run_endpointer, scores_per_clip
from device.bench.echo import PLAIN_ANSWER, ROOMS, SELF_ANSWER, SETUPS, one_run
from device.bench.perf import (
    cpu_bare,
    cpu_engine,
    cpu_pipeline,
    idle_audio,
    latencies,
    memory_and_startup,
)
from device.config import AudioConfig
from device.core.endpoint import EndpointSettings


async def test_the_device_does_not_wake_itself_but_hears_the_user(tmp_path: Path) -> None:
    """In a simulated room the device's answer contains 'okay nabu'. Without a guard it wakes
    on its own voice; with the defaults (echo-match and AEC) it does not, and still hears a
    user who says the wake word over it."""
    room = ROOMS[2]  # echo at 0.3 of the user's level, short reverberation
    unguarded = next(s for s in SETUPS if s.name == "no guard")
    default = next(s for s in SETUPS if s.name == "echo-match + AEC")
    assert await one_run(unguarded, room, SELF_ANSWER, False, tmp_path / "a") is True
    assert await one_run(default, room, SELF_ANSWER, False, tmp_path / "b") is False
    assert await one_run(default, ROOMS[0], PLAIN_ANSWER, True, tmp_path / "c") is True


def test_accuracy_and_endpointing_pieces_on_a_few_utterances() -> None:
    utterances = C.positive_utterances("okay_nabu")[:4]
    clips = [in_condition(C.say(u), "quiet", n) for n, u in enumerate(utterances)]
    scores = scores_per_clip(load_engine("micro", ["okay_nabu"]), clips)
    assert scores.shape == (4, 1) and (scores[:, 0] >= 0.85).sum() >= 3
    x = C.padded(C.say(C.Utterance("set a timer for ten minutes", "en-us", 165, 50)), 0.3, 2.0)
    lead = np.zeros(int(LEAD_S * C.RATE), "<i2")
    got = run_endpointer(np.concatenate([lead, x]), EndpointSettings(silence_ms=700, commit_ms=300))
    true_end = C.speech_end(x)
    assert got is not None and 600 <= (got.end - true_end) / 16 <= 800
    assert 200 <= (got.commit - true_end) / 16 <= 400  # sent at the pause that stood
    assert np.all(C.with_noise(x, 10, "pink", 1).shape == x.shape)


async def test_perf_pieces_run_and_what_does_not_depend_on_the_machine_holds(
    tmp_path: Path,
) -> None:
    """`bench perf` in miniature: its parts still run; memory stays under its target and a
    barge-in renders not one sample of the reply after the press (counted in samples). The
    CPU ratio and wall-clock latencies are left to the benchmark: they depend on the load."""
    audio = idle_audio(0.2)
    C.write_wav(tmp_path / "idle.wav", audio)
    cpu_bare(audio.tobytes())
    cpu_engine(audio.tobytes())
    await cpu_pipeline(tmp_path / "idle.wav", tmp_path)
    memory = await memory_and_startup(tmp_path, 3)  # raises unless all 3 are answered
    assert memory["rss_idle_mb"] < 80
    lat = await latencies(tmp_path)
    assert lat["barge_in_audible_after_press_ms"] == 0


def test_suppressing_noise_only_in_noise_hears_the_wake_word_as_well_or_better(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Noise suppression runs only in a noisy room, and there it is what it was: okay nabu
    at 10 dB SNR (white, pink and brown noise in turn) is accepted as often as with it
    always on, and more often than without it; a far talker in quiet, more often."""
    utterances = C.positive_utterances("okay_nabu")
    clips = [in_condition(C.say(u), "10 dB", n) for n, u in enumerate(utterances)]

    def accepted(level: int, above_db: float) -> int:
        monkeypatch.setattr(accuracy, "NOISE_SUPPRESSION", level)
        monkeypatch.setattr(accuracy, "SUPPRESS_ABOVE_DB", above_db)
        scores = scores_per_clip(load_engine("micro", ["okay_nabu"]), clips)
        return int((scores[:, 0] >= 0.85).sum())

    default = accepted(3, AudioConfig.noise_suppression_above_db)
    assert default == accepted(3, -120.0)
    assert default > accepted(0, AudioConfig.noise_suppression_above_db) + 3
    # a far or quiet talker in a quiet room: suppression stays off, and the wake word is
    # heard at least 90 % of the time (64 of 72 with it always on: it dulls a faint voice)
    clips = [in_condition(C.say(u), "far", n) for n, u in enumerate(utterances)]
    far = accepted(3, AudioConfig.noise_suppression_above_db)
    assert far >= 0.9 * len(clips)
    assert far > accepted(3, -120.0)
