"""Local input that must not crash the daemon, leak a secret or end in a traceback: model
files, pins, the state file, TOML, WAV files, endpoints, hooks, the control socket, values
out of range, and the slips a new user makes on the command line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from device.adapters.control import ControlError, ControlServer, request
from device.adapters.hooks import Hooks
from device.adapters.mic import read_wav_16k_mono
from device.adapters.store import StateStore
from device.adapters.systemd import REDACT
from device.adapters.wakeword import WakeModelError, load_engine
from device.config import ConfigError, load_config, parse_config
from device.events import EventLog
from tests.helpers import read_jsonl, write_wav

MODELS = Path(__import__("pymicro_wakeword").__file__).parent / "models"


def voice_device(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,  # type: ignore[call-overload]
    )


# ---------------------------------------------------------------------------------------------
# Wake word model files (a corrupt one crashed the TFLite runtime: SIGSEGV)


def model(tmp_path: Path, name: str, tflite: bytes | None) -> Path:
    config = json.loads((MODELS / "okay_nabu.json").read_text())
    config["model"] = f"{name}.tflite"
    if tflite is not None:
        (tmp_path / f"{name}.tflite").write_bytes(tflite)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


GOOD = (MODELS / "okay_nabu.tflite").read_bytes()


@pytest.mark.parametrize(
    "tflite, why",
    [
        (None, "No such file"),
        (b"", "is 0 bytes, not a model"),
        (b"\0" * 4096, "is not a TFLite model"),
        (GOOD[:20_000], "does not load (signal"),  # header intact, cut inside
    ],
    ids=["missing", "empty", "not tflite", "truncated"],
)
def test_a_broken_model_file_is_named_and_the_process_survives(
    tmp_path: Path, tflite: bytes | None, why: str
) -> None:
    path = model(tmp_path, "mine", tflite)
    with pytest.raises(WakeModelError, match=re.escape(why)):
        load_engine("micro", [str(path)])
    assert load_engine("micro", [str(model(tmp_path, "copy", GOOD))]).words[0].phrase == "Okay Nabu"


def test_run_with_a_truncated_model_exits_78(tmp_path: Path) -> None:
    path = model(tmp_path, "mine", GOOD[:20_000])
    conf = tmp_path / "c.toml"
    conf.write_text(f'[wake]\nmodels = ["{path}"]\n[leds]\nbackend = "none"\n')
    r = voice_device(
        *("run", "--config", str(conf), "--endpoint", "http://127.0.0.1:9"),
        *("--input-wav", str(write_wav(tmp_path / "q.wav", bytes(3200)))),
        *("--output-wav", str(tmp_path / "out.wav"), "--no-control-socket"),
        env={**os.environ, "AZURE_OPENAI_API_KEY": "k"},
    )
    assert r.returncode == 78, r.stderr
    assert "does not load" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# Pins


@pytest.mark.parametrize(
    "section, message",
    [
        ({"button": {"pin": 99999}}, "button.pin must be between 0 and 27 (got 99999)"),
        ({"button": {"pin": -3}}, "button.pin must be between 0 and 27"),
        ({"leds": {"red_pin": 17}}, "button.pin and leds.red_pin are both GPIO17"),
        ({"leds": {"green_pin": 5}}, "leds.green_pin and leds.red_pin are both GPIO5"),
    ],
)
def test_pins_are_configuration(section: dict[str, dict[str, int]], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(section)


# ---------------------------------------------------------------------------------------------
# The state file and the configuration file


def test_a_state_file_nested_without_end_is_forgotten(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("[" * 50_000 + "]" * 50_000)
    assert StateStore(tmp_path).load().muted is False


def test_a_fifo_in_place_of_the_state_file_does_not_hang_the_start(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "state.json")
    assert StateStore(tmp_path).load().muted is False  # (open() would block for ever)


def test_a_link_to_an_endless_device_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "state.json").symlink_to("/dev/zero")
    assert StateStore(tmp_path).load().muted is False


@pytest.mark.parametrize(
    "content, message",
    [
        ("a = " + "[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ("[turn]\nsilence_ms = 700\n".encode("utf-16"), "is not UTF-8 text"),
    ],
)
def test_a_configuration_file_that_cannot_be_read_is_a_sentence(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    path = tmp_path / "c.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, env={})
    r = voice_device("check", "--no-cloud", "--config", str(path))
    assert r.returncode == 78 and message in r.stdout and "Traceback" not in r.stderr


def test_a_folder_as_the_configuration_is_a_sentence(tmp_path: Path) -> None:
    r = voice_device("run", "--config", str(tmp_path), "--endpoint", "http://127.0.0.1:9")
    assert r.returncode == 78, r.stderr
    assert "is not a regular file" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# WAV files


def riff(fmt: bytes, data: bytes) -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    body += struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm_fmt(rate: int, channels: int = 1, bits: int = 16) -> bytes:
    block = channels * bits // 8
    return struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)


@pytest.mark.parametrize(
    "data, why",
    [
        (riff(pcm_fmt(0), bytes(64_000)), "a sample rate of 0 Hz"),
        (riff(pcm_fmt(1), bytes(64_000)), "a sample rate of 1 Hz"),  # was 1.9 GiB of memory
        (b"", "empty"),
        (riff(pcm_fmt(16_000), bytes(64_000))[:30], "truncated or not a WAV file"),
        (riff(pcm_fmt(16_000), b""), "no audio"),
        (b"hello world, not a wav", "not a WAV file"),
    ],
)
def test_a_wav_that_is_not_usable_says_why(tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "in.wav"
    path.write_bytes(data)
    with pytest.raises(OSError, match=re.escape(why)):
        read_wav_16k_mono(path)


def test_soxs_24_bit_8_channel_extensible_wav_is_read(tmp_path: Path) -> None:
    path = tmp_path / "sox.wav"
    subprocess.run(
        ["sox", "-n", "-r", "48000", "-b", "24", "-c", "8", str(path), "synth", "1", "sine", "440"],
        check=True,
    )
    assert path.read_bytes()[20:22] == b"\xfe\xff"  # WAVE_FORMAT_EXTENSIBLE
    x = np.frombuffer(read_wav_16k_mono(path), "<i2")
    assert len(x) == 16_000 and 30_000 < np.abs(x).max() <= 32_767


# ---------------------------------------------------------------------------------------------
# Endpoints, hooks and the events log: the key goes nowhere it should not


def test_the_key_never_crosses_the_network_in_clear_text() -> None:
    with pytest.raises(ConfigError, match="not encrypted"):
        parse_config({"cloud": {"endpoint": "http://my-resource.openai.azure.com"}})
    parse_config({"cloud": {"endpoint": "http://127.0.0.1:8765"}})  # the emulator
    parse_config({"cloud": {"endpoint": "http://localhost:8765"}})


def test_an_endpoint_with_a_password_is_refused_without_repeating_it() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"cloud": {"endpoint": "https://me:hunter2@res.openai.azure.com"}})
    assert "hunter2" not in str(e.value) and "user name or password" in str(e.value)


async def test_hooks_get_a_clean_environment_and_any_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-the-secret-key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/voice-device.service")
    out = tmp_path / "hook.txt"
    hooks = Hooks(f'env > {out}; printf "%s" "$VOICE_DEVICE_REASON" > {out}.reason', [])
    task = asyncio.create_task(hooks.run())
    try:
        hooks.state_changed("error", "thinking", "bad\x00code\ud800\n\x1b[31m")
        for _ in range(100):
            if Path(f"{out}.reason").exists():
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    env = out.read_text()
    assert "sk-the-secret-key" not in env and "CREDENTIALS_DIRECTORY" not in env
    assert "VOICE_DEVICE_STATE=error" in env
    assert Path(f"{out}.reason").read_text() == "bad\\x00code\\ud800\\x0a\\x1b[31m"


def test_the_events_log_never_holds_the_key_and_cuts_server_text(tmp_path: Path) -> None:
    REDACT.add("sk-events-secret-key")
    log = EventLog(tmp_path / "events.jsonl")
    log.emit("error", 0, code="x", message="echo: sk-events-secret-key " + "m" * 100_000)
    log.close()
    (record,) = read_jsonl(tmp_path / "events.jsonl")
    assert "sk-events-secret-key" not in record["message"] and len(record["message"]) == 300


def test_an_event_outside_the_contract_is_a_bug() -> None:
    with pytest.raises(ValueError, match="not an event of the events log"):
        EventLog(None).emit("made_up", 0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The control socket: nobody else's socket is trusted


async def test_a_socket_in_a_directory_that_is_not_private_is_not_trusted(tmp_path: Path) -> None:
    folder = tmp_path / "voice-device-0"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # what another user who made it first could leave
    sock = folder / "control.sock"

    async def impostor(verb: str, arg: str) -> dict[str, object]:
        return {"ok": True, "state": "idle", "heard": arg}

    server = ControlServer(sock, impostor)
    with pytest.raises(ControlError, match="writable by others"):
        await server.start()  # the daemon refuses it too
    folder.chmod(0o700)
    await server.start()
    try:
        folder.chmod(0o777)
        from device.adapters import control

        old = control.client_socket_paths
        control.client_socket_paths = lambda: [sock]  # type: ignore[assignment]
        try:
            with pytest.raises(ControlError, match="not a private directory of this user"):
                await asyncio.to_thread(request, "ask my bank pin is 1234")
        finally:
            control.client_socket_paths = old
    finally:
        folder.chmod(0o700)
        await server.close()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


# ---------------------------------------------------------------------------------------------
# Values out of range


@pytest.mark.parametrize(
    "section, message",
    [
        ({"cloud": {"reply_timeout_s": float("inf")}}, "must be a finite number"),
        ({"cloud": {"reply_timeout_s": 1e9}}, "cloud.reply_timeout_s must be between 1 and 300"),
        ({"wake": {"refractory_ms": 2**63}}, "wake.refractory_ms must be between 0 and 60000"),
        ({"turn": {"no_speech_timeout_ms": 10**9}}, "no_speech_timeout_ms must be between"),
        ({"turn": {"max_turn_ms": 10**9}}, "turn.max_turn_ms must be between 2000 and 300000"),
        ({"cloud": {"backoff_max_s": float("nan")}}, "must be a finite number"),
    ],
)
def test_every_duration_has_a_sane_bound(
    section: dict[str, dict[str, float]], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(section)


# ---------------------------------------------------------------------------------------------
# Slips on the command line


def test_a_second_emulator_on_a_busy_port_is_a_sentence() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        r = voice_device("emulator", "--port", port)
    assert r.returncode == 1 and "cannot listen on 127.0.0.1:" in r.stderr
    assert "another emulator?" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["emulator", "--record", "/nonexistent/dir/r.jsonl"], "does not exist"),
        (["emulator", "--speedup", "0"], "must be a positive number"),
        (["emulator", "--reject", "200"], "HTTP status from 400 to 599"),
        (["leds", "--seconds", "-1"], "must be a number of 0 or more"),
        (["run", "--output-wav", "/nonexistent/dir/out.wav"], "does not exist"),
        (["run", "--events-log", "/nonexistent/dir/e.jsonl"], "does not exist"),
    ],
)
def test_arguments_are_checked_before_anything_runs(args: list[str], message: str) -> None:
    r = voice_device(*args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr


def test_check_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    r = subprocess.run(
        f"{shlex.quote(sys.executable)} -m device check --no-cloud | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VOICE_DEVICE_CONFIG": str(tmp_path / "none.toml")},
    )
    assert r.stdout == "voice-device check\n"
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


def test_version() -> None:
    r = voice_device("--version")
    assert r.returncode == 0 and r.stdout.startswith("voice-device 0.")


def test_check_names_the_file_it_read_or_that_there_is_none(tmp_path: Path) -> None:
    env = {**os.environ, "VOICE_DEVICE_CONFIG": str(tmp_path / "none.toml")}
    r = voice_device("check", "--no-cloud", env=env)
    assert "✓ config       no file: the defaults and the environment" in r.stdout
    conf = tmp_path / "c.toml"
    conf.write_text("[turn]\nsilence_ms = 700\n")
    r = voice_device("check", "--no-cloud", "--config", str(conf), env=env)
    assert f"✓ config       {conf} is valid" in r.stdout


def test_an_unknown_wake_word_is_a_configuration_error_with_a_suggestion(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[wake]\nmodels = ["okay_nabo"]\n')
    r = voice_device("check", "--no-cloud", "--config", str(conf))
    assert r.returncode == 78
    assert "'okay_nabo' is not a built-in micro wake word" in r.stdout
    assert "did you mean 'okay_nabu'?" in r.stdout


def test_entra_without_azure_identity_is_not_a_tick(tmp_path: Path) -> None:
    blocker = tmp_path / "site" / "azure"
    blocker.mkdir(parents=True)
    (blocker / "identity.py").write_text("raise ImportError('not installed')\n")
    conf = tmp_path / "c.toml"
    conf.write_text('[cloud]\nendpoint = "https://res.openai.azure.com"\nauth = "entra"\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    r = voice_device("check", "--no-cloud", "--config", str(conf), env=env)
    assert "✗ credentials  cloud.auth = 'entra' needs azure-identity" in r.stdout, r.stdout


@pytest.mark.parametrize("what", ["soak", "echo"])
def test_ctrl_c_stops_a_benchmark_with_no_traceback(what: str) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "device", "bench", what, "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(6)  # well into the first conversations
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "RuntimeError" not in err, err


def test_a_latency_with_no_turn_to_measure_is_a_dash() -> None:
    from device.bench.accuracy import _ms

    assert _ms(float("nan")) == "\u2013" and _ms(412.4) == "412ms"


def test_a_quick_soak_is_quick() -> None:
    r = voice_device("bench", "soak", "--quick")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\n50 conversations in " in r.stdout


async def test_a_reload_with_bad_pins_keeps_the_running_daemon_and_status_says_so(
    tmp_path: Path,
) -> None:
    import signal

    from tests.helpers import Daemon, wait_until

    d = Daemon(tmp_path, 9)
    await d.start()
    try:
        d.config.write_text(
            d.base_config.replace("[button]\nenabled = false", "[button]\npin = 99999")
        )
        d.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "not reloaded" in d.log.read_text(), 20, "the refusal")
        status = await d.ask("status")
        assert status["ok"] is True and d.proc.returncode is None
        assert "button.pin must be between 0 and 27" in status["reload_failed"]["error"]
        shown = d.cli("status").stdout
        assert "reload:   failed" in shown and "running configuration kept" in shown
    finally:
        await d.kill()


def test_the_demo_says_what_the_reply_said_and_keeps_the_mic_column_honest(
    tmp_path: Path,
) -> None:
    r = voice_device("demo", "--fast", "--output-wav", str(tmp_path / "reply.wav"))
    assert r.returncode == 0, r.stderr
    assert 'the reply said (the emulator\'s words): "Let me check the forecast."' in r.stdout
    mics = [line.split("mic", 1)[1].split()[0] for line in r.stdout.splitlines() if " mic " in line]
    assert "end" in mics  # with --fast the silence after the recording runs far ahead
    assert all(m == "end" or float(m.rstrip("s")) <= 5.6 for m in mics), mics


def test_the_demo_says_when_no_wake_word_was_heard(tmp_path: Path) -> None:
    quiet = write_wav(tmp_path / "quiet.wav", bytes(2 * 16_000 * 3))
    r = voice_device(
        "demo", "--fast", "--input-wav", str(quiet), "--output-wav", str(tmp_path / "r.wav")
    )
    assert r.returncode == 0, r.stderr
    assert "no wake word was heard in quiet.wav: nothing was sent, no reply" in r.stdout
    assert "listen with" not in r.stdout


def test_roots_control_socket_is_in_a_directory_only_root_can_make(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from device.adapters import control

    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert control.daemon_socket_path() == control.SERVICE_DIR / "control.sock"
    assert control.client_socket_paths() == [control.SERVICE_DIR / "control.sock"] * 2
    monkeypatch.setattr(os, "getuid", lambda: 1000)  # a user without a runtime directory
    assert control.daemon_socket_path() == Path("/tmp/voice-device-1000/control.sock")


@pytest.mark.parametrize("verb", ["run", "check"])
def test_help_says_where_the_key_comes_from(verb: str) -> None:
    text = " ".join(voice_device(verb, "--help").stdout.split())
    assert "AZURE_OPENAI_API_KEY" in text and "credential azure-openai-api-key" in text
