"""End to end through the real audio stack: `voice-device run` and `voice-device emulator` as
separate processes, speech from espeak-ng played into PyAudio → PortAudio → ALSA through an
ALSA `file` plugin microphone, the reply captured by a `file` plugin speaker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.emulator import Scenario
from tests.helpers import (
    asoundrc,
    check_conversation,
    read_jsonl,
    read_wav,
    reply_heard,
    silence,
    speech,
    states,
)

QUESTION = "okay nabu, what's the weather like today?"
KEY = "e2e-key-not-a-real-one"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    record = tmp_path / "record.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device",
            "emulator",
            "--port",
            "0",
            "--record",
            str(record),
            "--save-audio",
            str(tmp_path / "turns"),
            "--api-key",
            KEY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("emulator listening on ws://127.0.0.1:"), line
    yield int(line.rsplit(":", 1)[1]), record
    proc.terminate()
    proc.wait(10)


def wait_for(path: Path, done, timeout: float) -> list[dict]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = read_jsonl(path)
        if done(events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"timed out; events so far: {read_jsonl(path)}")


def test_conversation_through_alsa(tmp_path: Path, emulator: tuple[int, Path]) -> None:
    port, record = emulator
    mic_pcm = silence(0.5) + speech(QUESTION) + silence(2.0)
    (tmp_path / "mic.raw").write_bytes(mic_pcm)
    speaker = tmp_path / "speaker.raw"
    alsa = asoundrc(tmp_path, tmp_path / "mic.raw", speaker)
    cfg = tmp_path / "config.toml"
    # echo cancellation off: the server must get the microphone's audio bit for bit
    cfg.write_text('[gpio]\npin_factory = "mock"\n[audio]\necho_cancellation = false\n')
    log = tmp_path / "events.jsonl"
    env = {**os.environ, "ALSA_CONFIG_PATH": str(alsa), "AZURE_OPENAI_API_KEY": KEY}
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device",
            "run",
            "--config",
            str(cfg),
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--input-device",
            "testmic",
            "--output-device",
            "testspk",
            "--events-log",
            str(log),
            "--leds",
            "none",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        events = wait_for(
            log,
            lambda ev: (
                any(e["event"] == "session_closed" for e in ev) and states(ev)[-1:] == ["idle"]
            ),
            90,
        )
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        daemon.kill()
    stderr = daemon.stderr.read() if daemon.stderr else ""

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
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[gpio]\npin_factory = "mock"\n'
        "[audio]\necho_cancellation = false\n"
        "input_rate = 48000\ninput_channels = 2\ninput_channel = 1\n"
    )
    log = tmp_path / "events.jsonl"
    env = {**os.environ, "ALSA_CONFIG_PATH": str(alsa), "AZURE_OPENAI_API_KEY": KEY}
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "device",
            "run",
            "--config",
            str(cfg),
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--input-device",
            "testmic",
            "--output-device",
            "testspk",
            "--events-log",
            str(log),
            "--leds",
            "none",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        events = wait_for(
            log,
            lambda ev: (
                any(e["event"] == "session_closed" for e in ev) and states(ev)[-1:] == ["idle"]
            ),
            90,
        )
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
    finally:
        daemon.kill()
    stderr = daemon.stderr.read() if daemon.stderr else ""
    assert "captured at 48000 Hz x2" in stderr
    assert [e["word"] for e in events if e["event"] == "wake"] == ["Okay Nabu"]
    # what the server got is channel 1, converted 48 → 16 → 24 kHz, sample for sample
    heard16 = rs(np.ascontiguousarray(voice).tobytes(), 48_000, 16_000)
    turn = next(e for e in events if e["event"] == "turn_end")
    heard16 += bytes(2 * turn["end_sample"])
    expected = rs(heard16[2 * turn["start_sample"] : 2 * turn["end_sample"]], 16_000, 24_000)
    assert read_wav(tmp_path / "turns" / "turn-001-001.wav") == expected
