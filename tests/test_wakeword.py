"""The wake word's second look at a high voice (`adapters.wakeword.SecondLook`), on real
espeak speech: who it lets in, who it keeps out, and what the service then receives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.adapters.wakeword import SecondLook, load_engine
from device.bench import corpus as C
from device.bench.harness import read_jsonl
from device.bench.uplink import Integrity, received, run_device, user_audio
from device.core.audio import MIC_RATE, pitch_hz

HIGH = "en+f5"
"""A woman's voice (about 200 Hz) the model scores 0.5 to 0.6 on "okay nabu": not taken."""


def _best(engine: object, pcm: bytes) -> float:
    best = 0.0
    for at in range(0, len(pcm), 640):
        best = max(best, engine.process(pcm[at : at + 640])[0])  # type: ignore[attr-defined]
    return best


def test_pitch_tells_the_corpus_low_voices_from_the_high_ones() -> None:
    """The look's gate on real speech: every low voice of the corpus under 160 Hz at every
    pitch espeak is given, every high one (`HIGH_VOICES`) over it; silence and noise are not a
    voice."""
    for voice in ("en-us", "en-gb-scotland", "en-us+m3", "en-029"):
        for p in C.PITCHES:
            said = C.say(C.Utterance("okay nabu, what time is it", voice, 165, p))
            assert 80 < pitch_hz(said) < SecondLook.HIGH_VOICE_HZ, (voice, p)
    for voice in ("en+f2", "en+f5", "en+Annie", "en+anika"):
        said = C.say(C.Utterance("okay nabu, what time is it", voice, 165, 50))
        assert SecondLook.HIGH_VOICE_HZ <= pitch_hz(said) < 400, voice
    rng = np.random.default_rng(3)
    assert pitch_hz(np.zeros(MIC_RATE * 2)) == 0.0
    assert pitch_hz(rng.normal(0, 3000, MIC_RATE * 2)) == 0.0
    assert pitch_hz(np.zeros(100)) == 0.0


def test_a_high_voice_the_model_nearly_missed_is_taken_on_a_second_look() -> None:
    said = user_audio(340, HIGH) + bytes(MIC_RATE)
    plain = load_engine("micro", ["okay_nabu"])
    assert 0.5 <= _best(plain, said) < 0.85  # (the model alone lets it go)
    looking = load_engine("micro", ["okay_nabu"], second_look=True)
    assert _best(looking, said) >= 0.85
    assert looking.looks == 1  # type: ignore[attr-defined]


def test_a_low_voices_near_miss_is_never_looked_at_again() -> None:
    """ "okay nana" in a Scottish voice scores 0.81: shifted down it would be taken (0.98),
    which is why only a high voice is looked at again."""
    phrase, voice = C.NEAR_MISSES.index("okay nana"), C.VOICES.index("en-gb-scotland")
    clip = C.near_miss_clips()[phrase * len(C.VOICES) + voice].tobytes() + bytes(MIC_RATE)
    looking = load_engine("micro", ["okay_nabu"], second_look=True)
    assert 0.5 <= _best(looking, clip) < 0.85
    assert looking.looks == 0  # type: ignore[attr-defined]
    x = np.frombuffer(clip, "<i2").astype(np.float32)
    import soxr

    lower = np.clip(soxr.resample(x, int(MIC_RATE * 0.9), MIC_RATE), -32768, 32767)
    assert _best(load_engine("micro", ["okay_nabu"]), lower.astype("<i2").tobytes()) >= 0.85


def test_high_voices_talking_wake_nothing_and_the_look_holds_two_seconds_at_most() -> None:
    """Four minutes of household talk in the high voices: no wake at the default
    threshold, few looks, and no more than the look's two seconds of audio kept."""
    talk = C.negative_speech(4, seed=9, voices=C.HIGH_VOICES).tobytes()
    looking = load_engine("micro", ["okay_nabu"], second_look=True)
    assert isinstance(looking, SecondLook)
    keep = SecondLook.HEARD_MS * MIC_RATE // 1000 * 2
    for at in range(0, len(talk), 640):
        assert looking.process(talk[at : at + 640])[0] < 0.85, at / 2 / MIC_RATE
        assert sum(map(len, looking._heard)) <= keep
    assert looking.looks <= 10


async def test_a_high_voice_that_runs_straight_on_wakes_the_device_and_arrives_whole(
    tmp_path: Path,
) -> None:
    """Through the real daemon (no echo path): "okay nabu what is the weather…" in a woman's
    voice with no pause between the two. The second look wakes the device 200 ms after the
    model first came near the word; the turn still starts before the command does (it
    would start 16 ms into it if the wake were placed where the look took it), and every
    window of the command reaches the service whole. With the look off, the device never
    wakes."""
    from device.adapters.echo import AEC_LAG
    from device.bench.uplink import WAKE, voiced
    from device.emulator.voice import espeak

    said = user_audio(0, HIGH)
    command_starts = MIC_RATE // 2 + len(voiced(espeak(WAKE, MIC_RATE, voice=HIGH))) // 2
    events = await run_device(said, None, True, tmp_path / "on")
    log = read_jsonl(events)
    assert len([e for e in log if e["event"] == "wake"]) == 1
    (turn,) = [e for e in log if e["event"] == "turn_end"]
    assert turn["start_sample"] <= command_starts
    whole: Integrity = received(said, events, tmp_path / "on" / "turns", AEC_LAG)
    assert whole.windows > 15 and whole.whole == whole.windows, whole.worst
    events = await run_device(said, None, True, tmp_path / "off", {"second_look": False})
    assert not [e for e in read_jsonl(events) if e["event"] == "wake"]


@pytest.mark.parametrize("second_look", [True, False])
def test_the_setting_is_read_and_checked(second_look: bool) -> None:
    from device.config import parse_config

    cfg = parse_config({"wake": {"second_look": second_look}})
    assert cfg.wake.second_look is second_look


def test_a_mistaken_setting_names_the_key() -> None:
    from device.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"wake\.second_look must be true or false"):
        parse_config({"wake": {"second_look": "yes"}})
