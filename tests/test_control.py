"""`voice-device status|mute|wake|ask|volume` against a running daemon process, over its real
control socket; mute and volume kept across a restart; state hooks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from device.adapters.control import ControlError, ControlServer, request
from device.adapters.store import Remembered, StateStore
from device.emulator import Emulator, Scenario
from tests.helpers import read_jsonl, silence, wait_until, write_wav
from tests.sdk import validate_client_event

ANSWER = "It is sunny."


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    emu = Emulator(
        Scenario(preambles=["One moment."], answer=ANSWER, think_ms=50, speedup=20),
        api_key="test-key",
        record=tmp_path / "record.jsonl",
    )
    await emu.start("127.0.0.1", 0)
    yield emu
    await emu.close()


class Daemon:
    """`voice-device run` as its own process, hearing silence, with a control socket."""

    def __init__(self, tmp: Path, emu: Emulator) -> None:
        self.tmp = tmp
        self.socket = tmp / "run" / "control.sock"
        self.hooks = tmp / "hooks.txt"
        self.config = tmp / "config.toml"
        hook = "echo $VOICE_DEVICE_STATE $VOICE_DEVICE_PREVIOUS_STATE $VOICE_DEVICE_REASON"
        hook += f" >> {self.hooks}"
        self.config.write_text(
            f"""
[cloud]
endpoint = "http://127.0.0.1:{emu.port}"
[turn]
follow_up_ms = 1000
no_speech_timeout_ms = 1000
[button]
enabled = false
[leds]
backend = "none"
[hooks]
command = '{hook}'
"""
        )
        self.wav = write_wav(tmp / "quiet.wav", silence(300))
        self.proc: asyncio.subprocess.Process | None = None
        self.env = {
            **os.environ,
            "AZURE_OPENAI_API_KEY": "test-key",
            "VOICE_DEVICE_CONFIG": str(self.config),
        }

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "device", "run", "--input-wav", str(self.wav)),
            *("--output-wav", str(self.tmp / "reply.wav")),
            *("--control-socket", str(self.socket), "--state-dir", str(self.tmp / "state")),
            *("--events-log", str(self.tmp / "events.jsonl")),
            env=self.env,
            stderr=open(self.tmp / "daemon.log", "ab"),  # noqa: SIM115 (the child owns it)
        )
        await wait_until(self.answers, 20, "the control socket")

    def answers(self) -> bool:
        try:
            return request("status", self.socket, 1)["ok"] is True
        except ControlError:
            return False

    async def ask(self, line: str, timeout: float = 30) -> dict[str, Any]:
        return await asyncio.to_thread(request, line, self.socket, timeout)

    async def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 10)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "device", *args, "--control-socket", str(self.socket)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )


@pytest.fixture
async def daemon(tmp_path: Path, emulator: Emulator) -> AsyncIterator[Daemon]:
    d = Daemon(tmp_path, emulator)
    await d.start()
    yield d
    if d.proc is not None and d.proc.returncode is None:
        d.proc.kill()
        await d.proc.wait()


def states(d: Daemon) -> list[str]:
    return [e["state"] for e in read_jsonl(d.tmp / "events.jsonl") if e["event"] == "state"]


async def test_status_mute_wake_ask_and_volume(daemon: Daemon, emulator: Emulator) -> None:
    d = daemon
    # owner-only: nobody else on the machine can drive the microphone
    assert stat.S_IMODE(d.socket.stat().st_mode) == 0o600

    status = await d.ask("status")
    assert status["ok"] and status["state"] == "idle" and not status["muted"]
    assert status["session"] is None and status["last_error"] is None
    assert status["wake_words"] == ["Okay Nabu"] and status["microphone_open"]
    assert status["uptime_s"] >= 0 and status["volume"] == 100

    # a typed question, answered aloud in a session of its own; nothing is streamed
    reply = await d.ask("ask what is the weather like?")
    assert reply == {"ok": True, "state": "follow_up", "answer": ANSWER}
    sent = [r["event"] for r in read_jsonl(d.tmp / "record.jsonl") if "event" in r]
    types = [e["type"] for e in sent]
    assert "input_audio_buffer.append" not in types
    question = next(e for e in sent if e["type"] == "conversation.item.create")
    validate_client_event(question)
    assert question["item"]["content"][0]["text"] == "what is the weather like?"
    assert types.index("response.create") > types.index("conversation.item.create")
    assert states(d)[:3] == ["connecting", "thinking", "preamble"]
    assert "answering" in states(d)

    # `wake` is a short press: from idle it wakes and listens (nobody speaks: back to idle)
    await wait_until(lambda: states(d)[-1] == "idle", 10, "the follow-up window to close")
    assert (await d.ask("wake"))["state"] == "connecting"
    await wait_until(lambda: states(d)[-2:] == ["listening", "idle"], 10, "no speech")

    assert await d.ask("volume 50") == {"ok": True, "volume": 50}
    assert (await d.ask("volume 300"))["ok"] is False

    # muted: the microphone is closed; nothing wakes it but `mute off` or the button
    assert (await d.ask("mute on"))["state"] == "muted"
    status = await d.ask("status")
    assert status["muted"] and not status["microphone_open"]
    assert "muted" in (await d.ask("wake"))["error"]
    assert "muted" in (await d.ask("ask hello"))["error"]

    # the hook ran for each state change, with the state in its environment
    await wait_until(lambda: d.hooks.exists() and "muted" in d.hooks.read_text(), 5, "hooks")
    lines = d.hooks.read_text().splitlines()
    assert lines[:2] == ["connecting idle typed question", "thinking connecting typed question"]
    assert lines[-1] == "muted idle muted"

    # the command line tool speaks the same protocol
    out = d.cli("status")
    assert out.returncode == 0 and "state:    muted" in out.stdout and "(closed)" in out.stdout
    assert json.loads(d.cli("status", "--json").stdout)["volume"] == 50
    assert d.cli("volume").stdout.strip() == "volume 50%"
    bad = await d.ask("reboot")
    assert bad["ok"] is False and "unknown command 'reboot'" in bad["error"]

    # a second daemon does not take over the socket (nor the microphone)
    second = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "device", "run", "--input-wav", str(d.wav)),
        *("--control-socket", str(d.socket), "--output-wav", str(d.tmp / "second.wav")),
        env=d.env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(second.communicate(), 30)
    assert second.returncode == 1, err
    assert b"another voice-device daemon is running" in err
    assert (await d.ask("status"))["ok"]

    assert await d.stop() == 0
    assert not d.socket.exists()  # cleaned up


async def test_mute_and_volume_survive_a_restart(daemon: Daemon) -> None:
    d = daemon
    await d.ask("volume 40")
    await d.ask("mute on")
    assert await d.stop() == 0
    saved = json.loads((d.tmp / "state" / "state.json").read_text())
    assert saved == {"muted": True, "volume": 0.4, "volume_config": 1.0}

    await d.start()  # the same state directory
    status = await d.ask("status")
    assert status["state"] == "muted" and not status["microphone_open"]
    assert status["volume"] == 40
    events = read_jsonl(d.tmp / "events.jsonl")
    second_run = events[max(i for i, e in enumerate(events) if e["event"] == "ready") :]
    assert not any(e["event"] == "wake" for e in second_run)
    assert (await d.ask("mute off"))["state"] == "idle"
    status = await d.ask("status")
    assert status["microphone_open"] and not status["muted"]
    assert json.loads((d.tmp / "state" / "state.json").read_text())["muted"] is False
    assert await d.stop() == 0


def test_the_client_says_when_no_daemon_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "device", "status", "--control-socket", str(tmp_path / "x.sock")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "no voice-device daemon is running" in out.stderr


async def test_a_stale_socket_is_replaced_and_a_private_directory_is_required(
    tmp_path: Path,
) -> None:
    async def handler(verb: str, arg: str) -> dict[str, Any]:
        return {"ok": True, "verb": verb, "arg": arg}

    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    path = run / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listening: what a killed daemon leaves
    stale.close()
    server = ControlServer(path, handler)
    await server.start()
    try:
        reply = await asyncio.to_thread(request, "ask what time is it?", path)
        assert reply == {"ok": True, "verb": "ask", "arg": "what time is it?"}
    finally:
        await server.close()

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ControlError, match="writable by others"):
        await ControlServer(shared / "control.sock", handler).start()


def test_the_state_file_is_written_atomically_and_failures_are_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore(tmp_path / "state")
    assert store.load() == Remembered()
    assert store.save(Remembered(muted=True))
    assert store.load() == Remembered(muted=True)
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["state.json"]  # no leftovers

    (tmp_path / "state" / "state.json").write_text("{not json")
    assert store.load() == Remembered()  # reported, not fatal
    assert "ignoring the saved state" in caplog.text

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    assert StateStore(blocked).save(Remembered(muted=True)) is False
    assert "could not save the device's state" in caplog.text
