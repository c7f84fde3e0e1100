"""Test helpers: the shared harness (`device.bench.harness`: speech, WAV files, ALSA file
devices, processes, events logs, waiting), and what only the tests need: what a conversation
must look like, paced FIFO devices, a daemon driven through its control socket."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from device.bench.harness import (  # noqa: F401 - the tests' one harness
    QUESTION,
    FifoMic,
    FifoSpeaker,
    alsa_daemon,
    asoundrc,
    config,
    emulator_process,
    poll,
    read_jsonl,
    read_wav,
    silence,
    speech,
    states,
    stop_daemon,
    wait_for_events,
    wait_until,
    write_wav,
)


def nonzero(pcm: bytes) -> np.ndarray:
    x = np.frombuffer(pcm, "<i2")
    return x[x != 0]


CONVERSATION = ["connecting", "listening", "thinking", "preamble", "answering", "follow_up", "idle"]


def check_conversation(
    events: list[dict[str, Any]],
    record: list[dict[str, Any]],
    mic_pcm: bytes,
    received_turn: bytes,
    played: bytes,
    heard: bytes,
    preroll_ms: int = 300,
) -> None:
    """What one woken conversation must look like from the outside, whatever the audio path.

    `events`: the daemon's events log; `record`: the emulator's record of client events;
    `mic_pcm`: what the microphone heard; `received_turn`: the turn audio the emulator
    saved; `played`: what reached the speaker; `heard`: what should have (see `reply_heard`).
    """
    from device.core.audio import CLOUD_RATE, MIC_RATE, resample
    from tests.sdk import validate_client_event

    assert [e["word"] for e in events if e["event"] == "wake"] == ["Okay Nabu"]
    assert states(events) == CONVERSATION
    leds = [e["pattern"] for e in events if e["event"] == "led"]
    # while the reply plays the microphone is live for the user to talk over it (the
    # default `turn.barge_in = "voice"`), and the light says so
    live = {"preamble": "preamble_live", "answering": "answering_live"}
    assert leds == ["idle", *(live.get(s, s) for s in CONVERSATION)], leds
    phases = [e["phase"] for e in events if e["event"] == "playback_start"]
    assert phases == ["commentary", "final_answer"]

    # nothing left the device before the wake word: the only connection came after it
    origin = next(e["clock_origin"] for e in events if e["event"] == "ready")
    wake = next(e for e in events if e["event"] == "wake")
    opened = [r for r in record if r.get("connection") == "open"]
    assert len(opened) == 1 and opened[0]["mono"] > origin + wake["t"]

    # every client event is one the SDK knows, with no field it does not declare
    sent = [r["event"] for r in record if "event" in r]
    for ev in sent:
        validate_client_event(ev)
    assert sent[0]["type"] == "session.update"
    assert [e["type"] for e in sent[-2:]] == ["input_audio_buffer.commit", "response.create"]

    # the server received the microphone audio from the pre-roll point to the turn's end,
    # every sample exactly once, resampled to 24 kHz (a turn sent at the pause that ended it,
    # `turn.commit_ms`, ends there)
    turn = next(e for e in events if e["event"] == "turn_end")
    assert turn["start_sample"] == wake["audio_ms"] * 16 - preroll_ms * 16
    commits = [e for e in events if e["event"] == "turn_commit"]
    assert commits and not any(e["event"] == "turn_withdrawn" for e in events)
    assert commits[-1]["sample"] == turn["end_sample"]
    mic = mic_pcm + bytes(2 * turn["end_sample"])  # silence after the recording ends
    expected = resample(
        mic[2 * turn["start_sample"] : 2 * turn["end_sample"]], MIC_RATE, CLOUD_RATE
    )
    assert received_turn == expected
    assert next(e["ms"] for e in events if e["event"] == "audio_sent") == len(expected) // 48

    # the speaker got exactly the wake sound and what the server sent (an unpaced output pads
    # gaps with zeros)
    assert np.array_equal(nonzero(played), nonzero(heard))


def reply_heard(scenario: Any, earcons: tuple[str, ...] = ("wake",)) -> bytes:
    """What the speaker plays in one default conversation: the wake sound, the preambles and
    the answer the emulator speaks."""
    from device.core.earcons import earcon
    from device.emulator.voice import speak

    sounds = b"".join(earcon(kind) for kind in earcons)
    preambles = b"".join(speak(t, "commentary") for t in scenario.preambles)
    return sounds + preambles + speak(scenario.answer, "final_answer")


class Daemon:
    """`voice-device run` as its own process, hearing silence (a paced WAV), with a control
    socket, its state in the test's folder, and a configuration file the test may rewrite."""

    def __init__(self, tmp: Path, port: int, env: dict[str, str] | None = None) -> None:

        self.tmp = tmp
        self.socket = tmp / "run" / "control.sock"
        self.hooks = tmp / "hooks.txt"
        self.config = tmp / "config.toml"
        self.log = tmp / "daemon.log"
        self.events = tmp / "events.jsonl"
        hook = "echo $VOICE_DEVICE_STATE $VOICE_DEVICE_PREVIOUS_STATE $VOICE_DEVICE_REASON"
        self.base_config = f"""
[cloud]
endpoint = "http://127.0.0.1:{port}"
[turn]
follow_up_ms = 1000
no_speech_timeout_ms = 1000
[button]
enabled = false
[leds]
backend = "none"
[hooks]
command = '{hook} >> {self.hooks}'
"""
        self.config.write_text(self.base_config)
        self.wav = write_wav(tmp / "quiet.wav", silence(300))
        self.proc: Any = None
        self.argv = [
            *(sys.executable, "-m", "device", "run", "--input-wav", str(self.wav)),
            *("--output-wav", str(tmp / "reply.wav")),
            *("--control-socket", str(self.socket), "--state-dir", str(tmp / "state")),
            *("--events-log", str(self.events)),
        ]
        self.env = {
            **os.environ,
            "AZURE_OPENAI_API_KEY": "test-key",
            "VOICE_DEVICE_CONFIG": str(self.config),
            **(env or {}),
        }

    async def start(self, wrapper: list[str] | None = None) -> None:

        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *(wrapper or []), *self.argv, env=self.env, stderr=err
            )
        await wait_until(self.answers, 30, "the control socket")

    def answers(self) -> bool:
        from device.adapters.control import ControlError, request

        if self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"the daemon exited: {self.log.read_text()[-2000:]}")
        try:
            return bool(request("status", self.socket, 1)["ok"])
        except ControlError:
            return False

    async def ask(self, line: str, timeout: float = 30) -> dict[str, Any]:

        from device.adapters.control import request

        return await asyncio.to_thread(request, line, self.socket, timeout)

    def states(self) -> list[str]:
        return [e["state"] for e in read_jsonl(self.events) if e["event"] == "state"]

    async def stop(self) -> int:

        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return int(await asyncio.wait_for(self.proc.wait(), 10))

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def cli(self, *args: str) -> Any:

        return subprocess.run(
            [sys.executable, "-m", "device", *args, "--control-socket", str(self.socket)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )


def sounds(events: list[dict[str, Any]]) -> list[str]:
    """The device's own sounds in the events log, but for the wake chime: that one is left
    out when the user goes straight on after the wake word, which for speech such as
    "okay nabu, what time is it?" depends on where in the comma's pause the word fired."""
    return [e["kind"] for e in events if e["event"] == "earcon" and e["kind"] != "wake"]
