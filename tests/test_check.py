"""`voice-device check` as a user runs it: ALSA file devices, the emulator as the cloud."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import asoundrc, emulator_process, speech

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def emulator_port() -> Iterator[int]:
    with emulator_process("--api-key", "good-key") as port:
        yield port


def check(tmp_path: Path, *args: str, key: str = "good-key") -> subprocess.CompletedProcess[str]:
    mic = tmp_path / "mic.raw"
    mic.write_bytes(speech("hello there") * 3)
    env = {
        **os.environ,
        "ALSA_CONFIG_PATH": str(asoundrc(tmp_path, mic, tmp_path / "spk.raw")),
        "AZURE_OPENAI_API_KEY": key,
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "device",
            "check",
            "--input-device",
            "testmic",
            "--output-device",
            "testspk",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_everything_in_place(tmp_path: Path, emulator_port: int) -> None:
    r = check(tmp_path, "--endpoint", f"http://127.0.0.1:{emulator_port}")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "✓ microphone   'testmic' at 16000 Hz, level" in out
    assert "✓ speaker      'testspk' opens at 24000 Hz" in out
    assert "✓ wake word    'Okay Nabu'" in out
    assert "! gpio         simulated" in out
    assert "✓ cloud        session opened in" in out and "settings accepted" in out
    assert out.rstrip().endswith("verdict: ready")
    assert "good-key" not in out + r.stderr


def test_a_refused_key_is_the_verdict(tmp_path: Path, emulator_port: int) -> None:
    r = check(tmp_path, "--endpoint", f"http://127.0.0.1:{emulator_port}", key="old-key")
    assert r.returncode == 1
    assert "✗ cloud        auth_failed:" in r.stdout
    assert "verdict: not ready (cloud)" in r.stdout


def test_missing_devices_and_no_cloud(tmp_path: Path) -> None:
    mic = tmp_path / "mic.raw"
    mic.write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k != "AZURE_OPENAI_API_KEY"}
    env["ALSA_CONFIG_PATH"] = str(asoundrc(tmp_path, mic, tmp_path / "spk.raw"))
    r = subprocess.run(
        [sys.executable, "-m", "device", "check", "--no-cloud", "--input-device", "usb-mic"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "✗ microphone   microphone 'usb-mic' not found; run 'voice-device devices'" in r.stdout
    assert "✗ api key" in r.stdout and "cloud " not in r.stdout.split("verdict")[0].split("gpio")[1]


def test_configuration_errors_exit_78(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("[turn]\ndetection = 'psychic'\n")
    r = subprocess.run(
        [sys.executable, "-m", "device", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78
    assert "turn.detection must be one of local, server_vad, semantic_vad" in r.stdout


@pytest.mark.parametrize("command", ["check", "run"])
def test_the_example_configs_placeholder_endpoint_says_what_to_edit(
    tmp_path: Path, command: str
) -> None:
    """A fresh install's config still names `my-resource`: say so, not a DNS failure at the
    first wake."""
    conf = tmp_path / "config.toml"
    conf.write_text((REPO / "systemd" / "config.example.toml").read_text())
    env = {**os.environ, "AZURE_OPENAI_API_KEY": "sk-placeholder-test"}
    r = subprocess.run(
        [sys.executable, "-m", "device", command, "--config", str(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78, r.stdout + r.stderr
    said = r.stdout + r.stderr
    assert f"edit cloud.endpoint in {conf}" in said
    assert "'https://my-resource.openai.azure.com'" in said


@pytest.mark.parametrize(
    "channel, verdict", [(1, "✓ microphone   'testmic' at 16000 Hz"), (0, "gives digital silence")]
)
def test_the_microphone_is_opened_as_run_opens_it(
    tmp_path: Path, channel: int, verdict: str
) -> None:
    """A 2-mic HAT at 48 kHz with the voice on one channel: `check` honours audio.input_rate,
    input_channels and input_channel as `run` does, so it hears the voice on channel 1 and
    the silence on channel 0 (opened at 16 kHz mono it would hear both, interleaved)."""
    from device.core.audio import resample

    voice = np.frombuffer(resample(speech("hello there") * 3, 16_000, 48_000), "<i2")
    stereo = np.zeros((len(voice), 2), "<i2")
    stereo[:, 1] = voice
    mic = tmp_path / "mic.raw"
    mic.write_bytes(stereo.tobytes())
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"[audio]\ninput_rate = 48000\ninput_channels = 2\ninput_channel = {channel}\n"
        '[gpio]\npin_factory = "mock"\n'
    )
    env = {**os.environ, "ALSA_CONFIG_PATH": str(asoundrc(tmp_path, mic, tmp_path / "spk.raw"))}
    r = subprocess.run(
        [
            *(sys.executable, "-m", "device", "check", "--no-cloud", "--config", str(conf)),
            *("--input-device", "testmic", "--output-device", "testspk"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verdict in r.stdout, r.stdout + r.stderr


def test_a_refused_session_update_is_the_verdict(tmp_path: Path) -> None:
    with emulator_process(
        "--api-key", "good-key", "--reject-update", "session.audio.output.voice"
    ) as port:
        r = check(tmp_path, "--endpoint", f"http://127.0.0.1:{port}")
    assert r.returncode == 1
    assert (
        "✗ cloud        session_rejected: the service refused session.audio.output.voice"
        in r.stdout
    )


def test_the_retired_preview_api_is_named(tmp_path: Path) -> None:
    preview = "https://res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview"
    r = check(tmp_path, "--no-cloud", "--endpoint", preview)
    assert "! endpoint     Azure retired the preview realtime API" in r.stdout


def test_the_mqtt_broker_is_checked_with_the_devices_credentials(
    tmp_path: Path, emulator_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from device.bench.arbitration import Broker, mqtt_config

    with Broker(tmp_path, passwords={"kitchen": "broker-secret"}) as broker:
        config = tmp_path / "config.toml"
        config.write_text(mqtt_config(broker.port, "kitchen", extra='username = "kitchen"\n'))
        endpoint = ("--endpoint", f"http://127.0.0.1:{emulator_port}", "--config", str(config))
        monkeypatch.setenv("VOICE_DEVICE_MQTT_PASSWORD", "wrong")
        refused = check(tmp_path, *endpoint)
        monkeypatch.setenv("VOICE_DEVICE_MQTT_PASSWORD", "broker-secret")
        good = check(tmp_path, *endpoint)
    assert refused.returncode == 1 and "✗ mqtt" in refused.stdout, refused.stdout
    assert "verdict: not ready (mqtt)" in refused.stdout
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"✓ mqtt         127.0.0.1:{broker.port} as 'kitchen'" in good.stdout
    assert "broker-secret" not in good.stdout + good.stderr + refused.stdout + refused.stderr
