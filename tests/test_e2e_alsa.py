"""End to end through the real audio stack: `voice-device run` and `voice-device emulator` as
separate processes, speech from espeak-ng played into PyAudio → PortAudio → ALSA through an
ALSA `file` plugin microphone, the reply captured by a `file` plugin speaker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.emulator import Scenario
from tests.helpers import (
    QUESTION,
    alsa_daemon,
    asoundrc,
    check_conversation,
    emulator_process,
    read_jsonl,
    read_wav,
    reply_heard,
    silence,
    speech,
    states,
    stop_daemon,
    wait_for_events,
)

KEY = "e2e-key-not-a-real-one"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    record = tmp_path / "record.jsonl"
    turns = tmp_path / "turns"
    with emulator_process(
        "--record", str(record), "--save-audio", str(turns), "--api-key", KEY
    ) as port:
        yield port, record


def converse(
    tmp_path: Path, port: int, alsa: Path, config: str
) -> tuple[list[dict[str, Any]], str]:
    """`voice-device run` on the devices of `alsa` through one whole conversation (the
    session closed and the device idle again), then stopped; its events and stderr."""
    daemon = alsa_daemon(tmp_path, port, alsa, config, KEY)
    try:
        events = wait_for_events(
            tmp_path / "events.jsonl",
            lambda ev: (
                any(e["event"] == "session_closed" for e in ev) and states(ev)[-1:] == ["idle"]
            ),
            90,
        )
    finally:
        stderr = stop_daemon(daemon, 10)
    return events, stderr


def test_conversation_through_alsa(tmp_path: Path, emulator: tuple[int, Path]) -> None:
    port, record = emulator
    mic_pcm = silence(0.5) + speech(QUESTION) + silence(2.0)
    (tmp_path / "mic.raw").write_bytes(mic_pcm)
    speaker = tmp_path / "speaker.raw"
    alsa = asoundrc(tmp_path, tmp_path / "mic.raw", speaker)
    # echo cancellation off: the server must get the microphone's audio bit for bit
    config = (
        '[gpio]\npin_factory = "mock"\n[audio]\necho_cancellation = false\n'
        '[turn]\nfollow_up = "always"\n'  # (the whole conversation, follow-up included)
    )
    events, stderr = converse(tmp_path, port, alsa, config)

    ready = events[0]
    assert ready["event"] == "ready" and ready["mic"] == "testmic" and ready["speaker"] == "testspk"
    sc = Scenario()
    check_conversation(
        events,
        read_jsonl(record),
        mic_pcm=mic_pcm,
        received_turn=read_wav(tmp_path / "turns" / "turn-001-001.wav"),
        played=speaker.read_bytes(),
        heard=reply_heard(sc),
    )

    # ALSA and JACK probing noise stays out of the log; the key never appears in it
    assert "ALSA lib" not in stderr and "jack server" not in stderr
    assert KEY not in stderr


def test_missing_microphone_is_named_with_a_way_to_list_devices(tmp_path: Path) -> None:
    alsa = asoundrc(tmp_path, tmp_path / "mic.raw", tmp_path / "speaker.raw")
    (tmp_path / "mic.raw").write_bytes(b"")
    env = {**os.environ, "ALSA_CONFIG_PATH": str(alsa), "AZURE_OPENAI_API_KEY": KEY}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "device",
            "run",
            "--endpoint",
            "http://127.0.0.1:9",
            "--input-device",
            "usb-mic-that-is-not-there",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78
    assert "microphone 'usb-mic-that-is-not-there' not found" in r.stderr
    assert "voice-device devices" in r.stderr


def test_devices_lists_the_alsa_devices(tmp_path: Path) -> None:
    alsa = asoundrc(tmp_path, tmp_path / "mic.raw", tmp_path / "speaker.raw")
    env = {**os.environ, "ALSA_CONFIG_PATH": str(alsa)}
    r = subprocess.run(
        [sys.executable, "-m", "device", "devices"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "testmic" in r.stdout and "testspk" in r.stdout


def test_a_48k_stereo_microphone_with_the_voice_on_one_channel(
    tmp_path: Path, emulator: tuple[int, Path]
) -> None:
    """Like a 2-mic HAT: 48 kHz, two channels, the useful one chosen by audio.input_channel.
    Channel 0 carries other speech, which must not be what the server hears."""
    import numpy as np

    from device.core.audio import resample as rs

    port, _ = emulator
    voice16 = silence(0.5) + speech(QUESTION) + silence(2.0)
    other16 = speech("the quick brown fox jumps over the lazy dog, again and again") + silence(3.0)
    voice = np.frombuffer(rs(voice16, 16_000, 48_000), "<i2")
    other = np.frombuffer(rs(other16, 16_000, 48_000), "<i2")[: len(voice)]
    other = np.pad(other, (0, len(voice) - len(other)))
    (tmp_path / "mic.raw").write_bytes(np.stack([other, voice], axis=1).astype("<i2").tobytes())
    alsa = asoundrc(tmp_path, tmp_path / "mic.raw", tmp_path / "speaker.raw")
    config = (
        '[gpio]\npin_factory = "mock"\n'
        "[audio]\necho_cancellation = false\n"
        "input_rate = 48000\ninput_channels = 2\ninput_channel = 1\n"
    )
    events, stderr = converse(tmp_path, port, alsa, config)
    assert "captured at 48000 Hz x2" in stderr
    assert [e["word"] for e in events if e["event"] == "wake"] == ["Okay Nabu"]
    # what the server got is channel 1, converted 48 → 16 → 24 kHz, sample for sample
    heard16 = rs(np.ascontiguousarray(voice).tobytes(), 48_000, 16_000)
    turn = next(e for e in events if e["event"] == "turn_end")
    heard16 += bytes(2 * turn["end_sample"])
    expected = rs(heard16[2 * turn["start_sample"] : 2 * turn["end_sample"]], 16_000, 24_000)
    assert read_wav(tmp_path / "turns" / "turn-001-001.wav") == expected
