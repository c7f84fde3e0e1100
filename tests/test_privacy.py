"""What the device promises about your privacy, checked from the outside.

- Ten minutes of talk and noise without the wake word: not one connection attempt (every
  socket the daemon connects is traced with strace, and the emulator counts handshakes)
  and not one file written (every file the daemon opens, creates, renames or removes).
- The listening light is on exactly while audio is being sent: sample by sample of the
  events log, and against the times the emulator received the audio.
- Muted: the microphone stream is closed; neither the wake word nor the button opens a
  session.
- The key appears in no log (at any level), no events log, no `ps` output, no repr.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from device.adapters.mic import WavMic
from device.app import App, RunOptions
from device.bench.corpus import active_rms, negative_speech, noise
from device.config import Secret, load_config, parse_config
from device.emulator import Emulator, Scenario
from tests.helpers import QUESTION, read_jsonl, silence, speech, states, wait_until, write_wav


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    emu = Emulator(Scenario(), api_key="test-key", record=tmp_path / "record.jsonl")
    await emu.start("127.0.0.1", 0)
    yield emu
    await emu.close()


def null_speaker_asoundrc(tmp: Path) -> Path:
    """An ALSA speaker that discards what it is given: no file anywhere."""
    path = tmp / "asoundrc"
    path.write_text(
        "</usr/share/alsa/alsa.conf>\n"
        'pcm.nullspk { type null; hint { show on description "null speaker" } }\n'
    )
    return path


WRITES = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
CHANGES = ("mkdir", "unlink", "rename", "rmdir", "link", "symlink", "truncate", "creat")


def disk_writes(trace: str) -> list[str]:
    """Syscalls in an strace log that create or change a file outside /dev and /proc."""
    found = []
    for line in trace.splitlines():
        m = re.search(r"(\w+)\((.*)\) = \d", line)
        if not m:
            continue
        call, args = m.groups()
        path = re.search(r'"([^"]*)"', args)
        where = path.group(1) if path else ""
        if where.startswith(("/dev/", "/proc/")):
            continue
        if (call in ("open", "openat", "openat2") and WRITES.search(args)) or call.startswith(
            CHANGES
        ):
            found.append(line)
    return found


async def test_ten_minutes_without_the_wake_word_send_nothing_and_write_nothing(
    tmp_path: Path, emulator: Emulator
) -> None:
    ten = 10 * 60 * 16000
    talk = negative_speech(7.0, seed=5).astype(float)  # ordinary household talk…
    fan = np.resize(noise("pink", 30, 0).astype(float), ten)  # …over a fan, then the fan alone
    fan *= active_rms(talk.astype("<i2")) / (np.sqrt(np.mean(fan**2)) * 10 ** (15 / 20))
    room = fan.copy()
    room[: len(talk)] += talk[:ten]
    pcm = np.clip(room, -32768, 32767).astype("<i2").tobytes()
    wav = write_wav(tmp_path / "ten-minutes.wav", pcm)
    trace = tmp_path / "strace.txt"
    env = {
        **os.environ,
        "AZURE_OPENAI_API_KEY": "test-key",
        "ALSA_CONFIG_PATH": str(null_speaker_asoundrc(tmp_path)),
        "PYTHONDONTWRITEBYTECODE": "1",  # (Python's own caches are not the device's doing)
    }
    argv = [
        *("strace", "-f", "-qq", "--seccomp-bpf", "-o", str(trace)),
        *("-e", "trace=%file,connect,sendto,sendmsg", "-e", "status=successful"),
        *(sys.executable, "-m", "device", "run", "--input-wav", str(wav), "--fast"),
        *("--output-device", "nullspk", "--leds", "none", "--no-control-socket"),
        *("--endpoint", f"http://127.0.0.1:{emulator.port}"),
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 600)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "device.app: wake word" not in err.decode()  # (it was not said)
    log = trace.read_text()
    assert "input file ended and the device is idle" in err.decode()

    # no connection to anything but local Unix sockets, and no handshake at the emulator
    inet = [line for line in log.splitlines() if "connect(" in line and "AF_INET" in line]
    assert inet == []
    assert emulator.connections == 0
    assert read_jsonl(tmp_path / "record.jsonl") == []
    # and nothing written: no file opened for writing, created, renamed or removed
    assert disk_writes(log) == []
    assert wav.stat().st_size > 19_000_000  # (ten minutes really went by)


async def test_the_listening_light_is_on_exactly_while_audio_is_sent(
    tmp_path: Path, emulator: Emulator
) -> None:
    question = silence(0.5) + speech(QUESTION) + silence(1.5)
    log = tmp_path / "ev.jsonl"
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "q.wav", question + silence(7.0)),
        output_wav=tmp_path / "reply.wav",
        events_log=log,
    )
    cfg = dataclasses.replace(
        parse_config(
            {
                "cloud": {"endpoint": f"http://127.0.0.1:{emulator.port}"},
                "turn": {"follow_up": "always"},  # (the light in the follow-up window too)
            }
        ),
        api_key=Secret("test-key"),
    )
    await asyncio.wait_for(App(cfg, opts).run(), 60)
    events = read_jsonl(log)
    assert "follow_up" in states(events)

    # sample by sample: the pattern shown at each microphone position, and whether that
    # position's audio was part of what was streamed
    leds = [(e["audio_ms"] * 16, e["pattern"]) for e in events if e["event"] == "led"]
    turn = next(e for e in events if e["event"] == "turn_end")
    opened = next(e for e in events if e["event"] == "session_open")["audio_ms"] * 16
    end = max(e["audio_ms"] for e in events) * 16
    shown = np.empty(end, dtype=object)
    for (at, pattern), (until, _) in zip(leds, [*leds[1:], (end, "")], strict=True):
        shown[at:until] = pattern
    streaming = np.zeros(end, dtype=bool)
    streaming[opened : turn["end_sample"]] = True  # from the session's start to the turn's end
    # sent at a pause (`turn.commit_ms`): the light stays on while what follows is held in
    # RAM, to be sent if the user goes on, until the pause is long enough to end the turn
    early = [e for e in events if e["event"] == "turn_commit" and e["early"]]
    assert early and early[-1]["sample"] == turn["end_sample"]
    confirmed = next(e["audio_ms"] for e in events if e["event"] == "turn_end") * 16
    assert 0 < confirmed - turn["end_sample"] <= (700 - 300 + 40) * 16
    held = np.zeros(end, dtype=bool)
    held[turn["end_sample"] : confirmed] = True
    listening = shown == "listening"
    assert np.array_equal(listening, streaming | held), "the listening light and the stream differ"
    assert listening.sum() > 16000  # (over a second of it)

    # and on the wire: every chunk of audio reached the service while the light was on
    origin = next(e["clock_origin"] for e in events if e["event"] == "ready")
    on = [e["t"] + origin for e in events if e["event"] == "led" and e["pattern"] == "listening"]
    off = [e["t"] + origin for e in events if e["event"] == "led" and e["t"] + origin > on[0]]
    record = read_jsonl(tmp_path / "record.jsonl")
    appends = [r["mono"] for r in record if r.get("event", {}).get("type", "").endswith("append")]
    assert appends and all(on[0] <= t <= off[0] + 0.1 for t in appends)  # 0.1 s: the loopback
    gaps = np.diff(appends)
    assert gaps.max() < 0.2  # streamed as it was spoken, not held back


async def test_muted_the_microphone_is_closed_and_nothing_opens_a_session(
    tmp_path: Path, emulator: Emulator
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text('{"muted": true}')  # muted when it last stopped
    log = tmp_path / "ev.jsonl"
    wav = write_wav(tmp_path / "q.wav", silence(0.5) + speech(QUESTION) + silence(3.0))
    opts = RunOptions(input_wav=wav, output_wav=tmp_path / "r.wav", events_log=log, state_dir=state)
    cfg = dataclasses.replace(
        parse_config(
            {
                "cloud": {"endpoint": f"http://127.0.0.1:{emulator.port}"},
                "gpio": {"pin_factory": "mock"},
                "button": {"hold_ms": 400},
            }
        ),
        api_key=Secret("test-key"),
    )
    app = App(cfg, opts)
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: read_jsonl(log)[:1] != [], 10, "ready")
        assert isinstance(app.mic, WavMic) and not app.mic.is_open
        assert app.button is not None
        for _ in range(3):  # short presses: a "still muted" sound, nothing else
            app.button.pin.drive_low()
            await asyncio.sleep(0.05)
            app.button.pin.drive_high()
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # the question's time goes by: the stream is closed
        assert not app.mic.is_open and app.pos == 0  # not one sample captured
        app.request_stop()
        assert await asyncio.wait_for(run, 10) == 0
    finally:
        run.cancel()
    events = read_jsonl(log)
    assert states(events) == []  # muted from start to end
    assert [e["kind"] for e in events if e["event"] == "earcon"] == ["muted"] * 3
    assert not any(e["event"] in ("wake", "session_open") for e in events)
    assert emulator.connections == 0


async def test_the_key_is_in_no_log_no_events_log_no_ps_output(
    tmp_path: Path, emulator: Emulator
) -> None:
    key = "sk-privacy-key-0123456789abcdef"
    emulator.api_key = key
    wav = write_wav(tmp_path / "q.wav", silence(0.5) + speech(QUESTION) + silence(8.0))
    env = {**os.environ, "AZURE_OPENAI_API_KEY": key}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "device", "run", "--debug", "--input-wav", str(wav)),
        *("--output-wav", str(tmp_path / "r.wav"), "--events-log", str(tmp_path / "ev.jsonl")),
        *("--endpoint", f"http://127.0.0.1:{emulator.port}", "--leds", "terminal"),
        *("--control-socket", str(tmp_path / "c.sock")),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await wait_until(lambda: (tmp_path / "c.sock").exists(), 20, "the daemon")
    ps = subprocess.run(
        ["ps", "-ww", "-o", "args=", "-p", str(proc.pid)], capture_output=True, text=True
    ).stdout
    assert "device run" in ps
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    text = err.decode()
    assert "session_open" in (tmp_path / "ev.jsonl").read_text()  # the key was used…
    assert "DEBUG" in text and "device.protocol" in text  # …and everything was logged
    for where in (ps, out.decode(), text, (tmp_path / "ev.jsonl").read_text()):
        assert key not in where and key[8:20] not in where
    config = load_config(None, env={"AZURE_OPENAI_API_KEY": key})
    assert key not in repr(config) and key not in str(config.api_key)


def test_the_trace_reader_sees_writes() -> None:
    """(The check above is only as good as its reading of strace's log.)"""
    log = "\n".join(
        [
            '7 openat(AT_FDCWD, "/x/a.wav", O_RDONLY|O_CLOEXEC) = 8',
            '7 openat(AT_FDCWD, "/x/turn.wav", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 9',
            '7 openat(AT_FDCWD, "/dev/snd/pcmC0D0c", O_RDWR|O_NONBLOCK|O_CLOEXEC) = 10',
            '7 renameat2(AT_FDCWD, "/x/.s.tmp", AT_FDCWD, "/x/s.json", 0) = 0',
            '7 mkdir("/x/y", 0700) = 0',
            '7 unlink("/x/z") = 0',
        ]
    )
    found = disk_writes(log)
    assert [re.search(r"\d+ (\w+)", f).group(1) for f in found] == [  # type: ignore[union-attr]
        "openat",
        "renameat2",
        "mkdir",
        "unlink",
    ]
