"""`voice-device status|mute|wake|ask|volume` against a running daemon process, over its real
control socket; mute and volume kept across a restart; state hooks."""

from __future__ import annotations

import asyncio
import json
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
from tests.helpers import Daemon, read_jsonl, wait_until
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


@pytest.fixture
async def daemon(tmp_path: Path, emulator: Emulator) -> AsyncIterator[Daemon]:
    d = Daemon(tmp_path, emulator.port)
    await d.start()
    yield d
    await d.kill()


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
    # (turn.follow_up = auto, the default: the answer asks nothing back, so it is over)
    assert reply == {"ok": True, "state": "idle", "answer": ANSWER}
    sent = [r["event"] for r in read_jsonl(d.tmp / "record.jsonl") if "event" in r]
    types = [e["type"] for e in sent]
    assert "input_audio_buffer.append" not in types
    question = next(e for e in sent if e["type"] == "conversation.item.create")
    validate_client_event(question)
    assert question["item"]["content"][0]["text"] == "what is the weather like?"
    assert types.index("response.create") > types.index("conversation.item.create")
    assert d.states()[:3] == ["connecting", "thinking", "preamble"]
    assert "answering" in d.states()

    # `wake` is a short press: from idle it wakes and listens (nobody speaks: back to idle)
    await wait_until(lambda: d.states()[-1] == "idle", 10, "the follow-up window to close")
    assert (await d.ask("wake"))["state"] == "connecting"
    await wait_until(lambda: d.states()[-2:] == ["listening", "idle"], 10, "no speech")

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


async def test_the_cost_meter_counts_each_answer_and_a_spent_budget_stops_the_next_wake(
    tmp_path: Path, emulator: Emulator
) -> None:
    """What each answer used reaches the journal, the events log and `status`, survives a
    restart, and a monthly budget once spent turns the next wake into a notice (no session)
    until it is raised."""
    import signal

    d = Daemon(tmp_path, emulator.port)
    d.config.write_text(d.base_config + "[usage]\nmonthly_budget = 0.0001\n")
    await d.start()
    try:
        assert (await d.ask("ask what is the weather like?"))["answer"] == ANSWER
        await wait_until(lambda: d.states()[-1] == "idle", 10, "the conversation to end")
        await wait_until(
            lambda: any(e["event"] == "usage" for e in read_jsonl(d.events)), 5, "usage"
        )
        used = next(e for e in read_jsonl(d.events) if e["event"] == "usage")
        assert used["responses"] == 1 and used["audio_out"] > 0 and used["text_in"] > 0
        assert used["currency"] == "USD" and used["cost"] > 0.0001
        total = used["text_in"] + used["audio_in"] + used["text_out"] + used["audio_out"]
        assert f"used {total} tokens" in d.log.read_text()
        status = await d.ask("status")
        assert status["usage"]["today"]["total"] == total == status["usage"]["month"]["total"]
        assert status["usage"]["budget"] == 0.0001
        assert "of a $0.000 budget" in d.cli("status").stdout  # (an absurdly small one)

        # the budget is spent: the wake word, the button and `ask` open no session
        handshakes = [r for r in read_jsonl(d.tmp / "record.jsonl") if "handshake" in r]
        await d.ask("wake")
        await wait_until(lambda: d.states()[-1] == "error", 5, "the notice")
        errors = [e for e in read_jsonl(d.events) if e["event"] == "error"]
        assert errors[-1]["code"] == "budget_spent"
        assert "usage.monthly_budget" in errors[-1]["message"]
        refused = await d.ask("ask and tomorrow?")
        assert refused["ok"] is False and "budget" in refused["error"]
        assert [r for r in read_jsonl(d.tmp / "record.jsonl") if "handshake" in r] == handshakes

        # a restart keeps the count; a raised budget (reloaded) lets the wake through
        assert await d.stop() == 0
        d.config.write_text(d.base_config + "[usage]\nmonthly_budget = 0.0001\n")
        await d.start()
        assert (await d.ask("status"))["usage"]["month"]["total"] == total
        d.config.write_text(d.base_config + "[usage]\nmonthly_budget = 50\n")
        d.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "configuration reloaded" in d.log.read_text(), 20, "reload")
        assert (await d.ask("wake"))["state"] == "connecting"
    finally:
        await d.kill()
