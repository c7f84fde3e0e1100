"""Faults from the field, and the way back from each: a key rotated on the service, the
server closing while the user speaks, a full disk under the state file, a speaker that is
not there. The user sees the right state, the daemon keeps running (or exits 78 when the
configuration names a device that does not exist, unless it turns up soon after a start
with --wait-for-devices), and the next wake works."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device.app import App, RunOptions
from device.config import Secret, parse_config
from device.emulator import Emulator, Faults, Scenario
from tests.helpers import (
    QUESTION,
    Daemon,
    asoundrc,
    poll,
    read_jsonl,
    silence,
    speech,
    states,
    wait_until,
    write_wav,
)


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    emu = Emulator(
        Scenario(preambles=[], answer="It is sunny.", think_ms=0, speedup=20),
        record=tmp_path / "record.jsonl",
    )
    await emu.start("127.0.0.1", 0)
    yield emu
    await emu.close()


async def test_a_key_rotated_on_the_service_fails_clearly_until_the_new_one_is_loaded(
    tmp_path: Path, emulator: Emulator
) -> None:
    old, new = "sk-old-key-0123456789abcdef", "sk-new-key-fedcba9876543210"
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "azure-openai-api-key").write_text(old + "\n")
    d = Daemon(tmp_path, emulator.port, {"CREDENTIALS_DIRECTORY": str(creds)})
    del d.env["AZURE_OPENAI_API_KEY"]  # as under systemd: the key comes as a credential
    emulator.api_key = old
    await d.start()
    try:
        assert (await d.ask("ask hello?"))["ok"]
        emulator.api_key = new  # rotated in the Azure portal
        failed = await d.ask("ask hello again?")
        assert not failed["ok"] and failed["error"].startswith("auth_failed")
        status = await d.ask("status")
        assert status["last_error"]["code"] == "auth_failed"
        assert "key" in status["last_error"]["message"]  # it says what to check
        (creds / "azure-openai-api-key").write_text(new + "\n")  # the installer's job
        d.proc.send_signal(signal.SIGHUP)  # systemctl reload
        await wait_until(lambda: "configuration reloaded" in d.log.read_text(), 20, "reload")
        assert (await d.ask("ask and now?"))["ok"]
    finally:
        assert await d.stop() == 0
    text = d.log.read_text()
    for key in (old, new):
        assert key not in text and key[:14] not in text


async def test_the_server_closing_while_the_user_speaks(tmp_path: Path) -> None:
    # with the service's turn detection, the first connection is cut as the service hears
    # the user start speaking (the event after session.created and session.updated)
    emu = Emulator(
        Scenario(
            preambles=[],
            answer="It is sunny.",
            speedup=20,
            faults=Faults(drop_after=2, connections=1),
        ),
        record=tmp_path / "record.jsonl",
    )
    await emu.start("127.0.0.1", 0)
    question = speech(QUESTION)
    log = tmp_path / "ev.jsonl"
    wav = write_wav(
        tmp_path / "q.wav", silence(0.5) + question + silence(5.0) + question + silence(8.0)
    )
    cfg = dataclasses.replace(
        parse_config(
            {
                "cloud": {"endpoint": f"http://127.0.0.1:{emu.port}", "backoff_initial_s": 0.5},
                "button": {"enabled": False},
                "turn": {"follow_up_ms": 1000, "detection": "server_vad", "follow_up": "always"},
            }
        ),
        api_key=Secret("test-key"),
    )
    opts = RunOptions(input_wav=wav, output_wav=tmp_path / "r.wav", events_log=log)
    try:
        assert await asyncio.wait_for(App(cfg, opts).run(), 60) == 0
    finally:
        await emu.close()
    events = read_jsonl(log)
    seen = states(events)
    cut = seen.index("error")
    assert seen[:cut] == ["connecting", "listening"]  # cut while the user was speaking
    assert next(e for e in events if e["event"] == "error")["code"] == "connection_lost"
    # the second question, four seconds later, is answered on a fresh connection
    assert seen[cut + 1 :] == [
        "idle",
        "connecting",
        "listening",
        "thinking",
        "answering",
        "follow_up",
        "idle",
    ]
    assert len([r for r in read_jsonl(tmp_path / "record.jsonl") if "connection" in r]) == 4


async def test_a_full_disk_under_the_state_file_is_reported_and_survived(
    tmp_path: Path, emulator: Emulator
) -> None:
    """A tiny tmpfs, filled up, mounted at the state directory in a private mount namespace
    for the daemon alone: writing state.json fails with ENOSPC."""
    state = tmp_path / "state"
    state.mkdir()
    d = Daemon(tmp_path, emulator.port)
    fill = f"mount -t tmpfs -o size=16k tmpfs {state} && cat /dev/zero > {state}/fill 2>/dev/null"
    argv = " ".join(d.argv)
    d.argv = ["sh", "-c", f"{fill}; exec {argv}"]
    await d.start(wrapper=["unshare", "-m"])
    try:
        assert (await d.ask("mute on"))["state"] == "muted"
        assert (await d.ask("status"))["muted"]
        assert (await d.ask("mute off"))["state"] == "idle"
        assert (await d.ask("ask still there?"))["ok"]  # and the next conversation works
    finally:
        assert await d.stop() == 0
    log = d.log.read_text()
    assert "could not save the device's state" in log and "No space left on device" in log
    assert "Traceback" not in log
    assert not (state / "state.json").exists()  # (the real folder never saw any of it)


def test_a_speaker_that_is_not_there_is_named_with_a_way_to_list_them(tmp_path: Path) -> None:
    alsa = asoundrc(tmp_path, tmp_path / "mic.raw", tmp_path / "speaker.raw")
    (tmp_path / "mic.raw").write_bytes(silence(1.0))
    r = subprocess.run(
        [
            *(sys.executable, "-m", "device", "run", "--input-device", "testmic"),
            *("--output-device", "usb-speaker", "--endpoint", "http://127.0.0.1:9"),
            "--no-control-socket",
        ],
        env={**os.environ, "ALSA_CONFIG_PATH": str(alsa), "AZURE_OPENAI_API_KEY": "k"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78  # a configuration error: systemd does not restart it in a loop
    assert "speaker 'usb-speaker' not found; run 'voice-device devices'" in r.stderr


def test_with_wait_for_devices_a_speaker_that_appears_after_start_is_found(
    tmp_path: Path,
) -> None:
    """At boot a USB speaker may not be set up yet when the service starts: the daemon looks
    again (PortAudio restarted) instead of exiting, and starts once the speaker is there."""
    alsa = asoundrc(tmp_path, tmp_path / "mic.raw", tmp_path / "speaker.raw")
    (tmp_path / "mic.raw").write_bytes(silence(1.0))
    events, log = tmp_path / "events.jsonl", tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "device", "run", "--input-device", "testmic"),
                *("--output-device", "late-speaker", "--endpoint", "http://127.0.0.1:9"),
                *("--wait-for-devices", "--no-control-socket", "--events-log", str(events)),
            ],
            env={**os.environ, "ALSA_CONFIG_PATH": str(alsa), "AZURE_OPENAI_API_KEY": "k"},
            stderr=err,
            text=True,
        )
        try:
            poll(lambda: "looking for it" in log.read_text(), "the wait for the speaker")
            assert not events.exists() or "ready" not in events.read_text()
            with alsa.open("a") as f:  # it is plugged in
                f.write('pcm.late-speaker { type null; hint { show on description "late" } }\n')
            poll(lambda: any(e["event"] == "ready" for e in read_jsonl(events)), "READY")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(15)
    ready = next(e for e in read_jsonl(events) if e["event"] == "ready")
    assert ready["speaker"] == "late-speaker" and code == 0
    text = log.read_text()
    assert "speaker 'late-speaker' not found" in text and "speaker 'late-speaker' found" in text
