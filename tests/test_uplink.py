"""What the service receives of the user, through the real daemon in the simulated room: the
wake chime plays as the user speaks, the canceller is on (the default), and the turn the
emulator saved is compared with what the user said, window by window (`bench uplink`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.bench.uplink import (
    PAUSES_MS,
    REVERBS,
    WAITS_FOR_CHIME_MS,
    Integrity,
    one_run,
    one_run_after_answer,
    user_audio,
)

LIVELY = {"delay_ms": REVERBS[1][0], "reverb_ms": REVERBS[1][1]}


@pytest.mark.parametrize("gain", [0.1, 0.3, 0.7])
async def test_echo_cancellation_never_costs_the_user_a_word(tmp_path: Path, gain: float) -> None:
    """Over a user who runs the command on, pauses briefly, or waits for the chime: with
    the canceller on, every window that reaches the service whole with it off does so with
    it on (it used to erase ~600 ms under and after the chime)."""
    on, off = Integrity(), Integrity()
    for pause in PAUSES_MS:
        room = {"echo_gain": gain, **LIVELY}
        on += await one_run(user_audio(pause), room, True, tmp_path / f"on{pause}")
        off += await one_run(user_audio(pause), room, False, tmp_path / f"off{pause}")
    assert on.windows == off.windows > 80
    assert on.whole >= off.whole, (on.worst, off.worst)


async def test_a_user_who_waits_for_the_chime_is_received_whole_in_every_room(
    tmp_path: Path,
) -> None:
    for gain in (0.1, 0.3, 0.7):
        for delay, reverb in REVERBS:
            room = {"echo_gain": gain, "delay_ms": delay, "reverb_ms": reverb}
            r = await one_run(
                user_audio(WAITS_FOR_CHIME_MS), room, True, tmp_path / f"{gain}-{reverb}"
            )
            assert r.whole == r.windows, (gain, reverb, r.worst)


async def test_once_it_has_spoken_the_chimes_echo_is_taken_off_the_users_first_words(
    tmp_path: Path,
) -> None:
    """A command begun 340 ms after the wake word lands on the chime's echo. Once the device
    has answered a question (its subtractor has learnt the room), the chime's echo is
    subtracted from what is sent while it sounds, and the command arrives whole at echo 0.3
    and 0.7 in the livelier room (the microphone as heard lost one or two windows)."""
    for gain in (0.3, 0.7):
        room = {"echo_gain": gain, **LIVELY}
        r = await one_run_after_answer(user_audio(PAUSES_MS[1]), room, tmp_path / f"{gain}")
        assert r.windows > 15 and r.whole == r.windows, (gain, r.worst)


async def test_a_user_who_goes_straight_on_is_not_chimed_over(tmp_path: Path) -> None:
    """Saying "okay nabu what's the weather" in one breath: by the time the wake word fires the
    command has begun, so the chime is left out rather than played over it (it cost 3 of
    the command's first windows at echo 0.3 and 0.7); the light still shows listening."""
    from tests.helpers import read_jsonl

    for gain in (0.0, 0.3, 0.7):
        room = {"echo_gain": gain, **LIVELY}
        r = await one_run(user_audio(PAUSES_MS[0]), room, True, tmp_path / f"{gain}")
        assert r.whole == r.windows > 20, (gain, r.worst)
        events = read_jsonl(tmp_path / f"{gain}" / "events.jsonl")
        assert not [e for e in events if e["event"] == "earcon"]
        listening = [e for e in events if e["event"] == "led" and e["pattern"] == "listening"]
        assert listening


async def test_a_user_who_pauses_hears_the_chime(tmp_path: Path) -> None:
    """...at once, in the same frame as the wake word: deciding costs no time."""
    from tests.helpers import read_jsonl

    await one_run(user_audio(PAUSES_MS[1]), None, True, tmp_path)
    events = read_jsonl(tmp_path / "events.jsonl")
    wake = next(e["audio_ms"] for e in events if e["event"] == "wake")
    assert [(e["kind"], e["audio_ms"] - wake) for e in events if e["event"] == "earcon"] == [
        ("wake", 0)
    ]


def test_simulate_echo_from_the_command_line(tmp_path: Path) -> None:
    """`run --simulate-echo` is the room for anyone: the output WAV holds what the speaker
    played on the microphone's clock (the wake chime where the wake was heard), and the
    service received the user whole."""
    import os
    import subprocess
    import sys

    import numpy as np

    from device.adapters.echo import AEC_LAG
    from device.bench.uplink import received
    from device.core.audio import CLOUD_RATE
    from tests.helpers import emulator_process, read_jsonl, read_wav, write_wav

    user = user_audio(WAITS_FOR_CHIME_MS)
    write_wav(tmp_path / "in.wav", user + bytes(32_000))
    env = {**os.environ, "AZURE_OPENAI_API_KEY": "k"}
    with emulator_process("--save-audio", str(tmp_path / "turns"), "--speedup", "20") as port:
        r = subprocess.run(
            [sys.executable, "-m", "device", "run", "--endpoint", f"http://127.0.0.1:{port}",
             "--input-wav", str(tmp_path / "in.wav"), "--output-wav", str(tmp_path / "out.wav"),
             "--fast", "--simulate-echo", "0.3:20:60", "--no-control-socket", "--leds", "none",
             "--events-log", str(tmp_path / "ev.jsonl"), "--state-dir", str(tmp_path / "st")],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    events = read_jsonl(tmp_path / "ev.jsonl")
    chime_ms = next(e["audio_ms"] for e in events if e["event"] == "earcon")
    played = np.frombuffer(read_wav(tmp_path / "out.wav"), "<i2")
    at = chime_ms * CLOUD_RATE // 1000
    assert not played[: at - 480].any()  # nothing before the wake (20 ms of slack)
    assert np.abs(played[at - 480 : at + 3840]).max() > 3000  # the chime, where it was heard
    result = received(user, tmp_path / "ev.jsonl", tmp_path / "turns", AEC_LAG)
    assert result.whole == result.windows > 20, result.worst


def test_simulate_echo_needs_a_room_it_can_build(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import silence, write_wav

    write_wav(tmp_path / "in.wav", silence(0.1))
    for spec, words in (("loud", "expected GAIN"), ("0.3:-5", "delay must be between")):
        r = subprocess.run(
            [sys.executable, "-m", "device", "run", "--input-wav", str(tmp_path / "in.wav"),
             "--output-wav", str(tmp_path / "o.wav"), "--simulate-echo", spec],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 2 and words in r.stderr, r.stderr


def test_the_devices_own_sounds_are_not_taken_for_the_rooms_speech() -> None:
    """An error sound's echo just before a wake (it is heard while idle) must not set the
    background gate: the user's next words would not count as speech."""
    import math

    from device.core.states import State
    from device.events import EventLog
    from device.front import FrontEnd
    from tests.helpers import config, speech

    class Speaker:
        playing = False

        def take_far_end(self, samples: int) -> bytes:
            return b"\x10\x20" * samples if self.playing else bytes(2 * samples)

    state = [State.IDLE]
    front = FrontEnd(
        config("http://127.0.0.1:9"), EventLog(None), lambda e: None, lambda: state[0],
        lambda f: None,
    )  # fmt: skip
    spk = Speaker()
    loud = speech("this is what the device itself is saying out loud")
    quiet = bytes(640)
    for _ in range(25):
        front.hear(quiet, spk)  # type: ignore[arg-type]
    spk.playing = True
    for i in range(0, min(len(loud), 640 * 75) - 639, 640):
        front.hear(loud[i : i + 640], spk)  # type: ignore[arg-type]
    spk.playing = False
    for _ in range(60):
        front.hear(quiet, spk)  # type: ignore[arg-type]
    state[0] = State.CONNECTING
    front.hear(quiet, spk)  # type: ignore[arg-type]
    assert front.background.gate_db == -math.inf
