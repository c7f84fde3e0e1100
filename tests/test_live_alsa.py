"""The daemon on a real-time ALSA microphone (a FIFO fed at the pace of a real one): voice
barge-in through the real speaker path, and a microphone that stalls and comes back."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    FifoMic,
    FifoSpeaker,
    alsa_daemon,
    asoundrc,
    emulator_process,
    silence,
    speech,
    states,
    stop_daemon,
    wait_for_events,
)

KEY = "live-alsa-test-key"
ANSWER = "Here is a long answer about the history of bread, which goes on for quite a while."


@pytest.fixture
def emulator() -> Iterator[int]:
    with emulator_process("--speedup", "1.0", "--no-preamble", "--answer", ANSWER) as port:
        yield port


@pytest.fixture
def live(tmp_path: Path) -> Iterator[FifoMic]:
    mic = FifoMic(tmp_path / "mic.fifo")
    yield mic
    mic.close()


def start(
    tmp_path: Path,
    port: int,
    extra_env: dict[str, str] | None = None,
    speaker: Path | None = None,
) -> subprocess.Popen[str]:
    speaker = speaker or tmp_path / "speaker.raw"
    alsa = asoundrc(tmp_path, tmp_path / "mic.fifo", speaker, mic="livemic")
    config = (
        '[gpio]\npin_factory = "mock"\n[turn]\nno_speech_timeout_ms = 2000\nfollow_up_ms = 1000\n'
    )
    return alsa_daemon(tmp_path, port, alsa, config, KEY, input_device="livemic", env=extra_env)


def test_saying_the_wake_word_over_the_answer_interrupts_it(
    tmp_path: Path, emulator: int, live: FifoMic
) -> None:
    daemon = start(tmp_path, emulator)
    log = tmp_path / "events.jsonl"
    try:
        wait_for_events(log, lambda ev: any(e["event"] == "ready" for e in ev), 30)
        live.say(speech("okay nabu, tell me about bread") + silence(1.0))
        wait_for_events(log, lambda ev: "answering" in states(ev), 30)
        time.sleep(1.0)
        live.say(speech("okay nabu, stop"))
        events = wait_for_events(log, lambda ev: any(e["event"] == "barge_in" for e in ev), 20)
    finally:
        stderr = stop_daemon(daemon, 15)
    reasons = [(e["state"], e["reason"]) for e in events if e["event"] == "state"]
    assert ("listening", "barge-in") in reasons
    wakes = [e for e in events if e["event"] == "wake"]
    assert len(wakes) == 2  # the question, then the interruption
    barge = next(e for e in events if e["event"] == "barge_in")
    assert barge["played_ms"] > 500  # it had been talking for a while
    assert "Traceback" not in stderr


def test_a_microphone_that_stalls_and_comes_back(
    tmp_path: Path, emulator: int, live: FifoMic
) -> None:
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.1)
    daemon = start(tmp_path, emulator, {"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "1000000"})
    log = tmp_path / "events.jsonl"
    messages: list[tuple[float, str]] = []
    listening = threading.Event()
    listening.set()

    def receive() -> None:  # timestamp each datagram as it arrives
        while listening.is_set():
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except (TimeoutError, BlockingIOError, OSError):
                continue

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()

    try:
        wait_for_events(log, lambda ev: any(e["event"] == "ready" for e in ev), 30)
        live.stalled.set()  # the device stops delivering audio; its stream stays open
        stalled_at = time.monotonic()
        events = wait_for_events(log, lambda ev: "error" in states(ev), 15)
        error = next(e for e in events if e["event"] == "error")
        assert error["code"] == "mic_lost" and "livemic" in error["message"]
        time.sleep(3.0)
        watchdog_during_stall = [
            t for t, m in messages if "WATCHDOG=1" in m and t > stalled_at + 2.5
        ]
        live.stalled.clear()  # it comes back
        resumed_at = time.monotonic()
        wait_for_events(log, lambda ev: states(ev)[-1:] == ["idle"], 30)
        live.say(speech("okay nabu, what time is it?") + silence(1.0))
        events = wait_for_events(log, lambda ev: "thinking" in states(ev), 30)
        time.sleep(0.5)
    finally:
        stderr = stop_daemon(daemon, 15)
        listening.clear()
        receiver.join(2)
        sock.close()
    assert states(events)[:3] == ["error", "idle", "connecting"]
    idle = next(e for e in events if e["event"] == "state" and e["state"] == "idle")
    assert idle["reason"] == "microphone back"
    # the watchdog went unfed while the capture was wedged, and is fed again now
    assert watchdog_during_stall == []
    assert [t for t, m in messages if "WATCHDOG=1" in m and t > resumed_at]
    assert "microphone 'livemic' back" in stderr
    assert stderr.count("trying to get it back") == 1  # logged once, not per attempt


def test_a_speaker_that_hangs_mid_answer_ends_it_and_the_next_answer_plays(
    tmp_path: Path, emulator: int, live: FifoMic
) -> None:
    """The output stops taking audio in the middle of an answer (a wedged driver): the device
    must not stay 'answering' for ever. It shows the error, goes back to idle, opens the
    speaker afresh, and the next answer is heard to its end."""
    speaker = FifoSpeaker(tmp_path / "speaker.fifo")
    daemon = start(tmp_path, emulator, speaker=speaker.path)
    log = tmp_path / "events.jsonl"
    question = speech("okay nabu, tell me about bread") + silence(1.0)

    def answered(ev: list[dict]) -> bool:  # type: ignore[type-arg]
        failed = [i for i, e in enumerate(ev) if e["event"] == "error"]
        return bool(failed) and any(
            e["event"] == "playback_end" and "response_id" in e for e in ev[failed[0] :]
        )

    try:
        wait_for_events(log, lambda ev: any(e["event"] == "ready" for e in ev), 30)
        live.say(question)
        wait_for_events(log, lambda ev: "answering" in states(ev), 30)
        time.sleep(0.5)
        speaker.stalled.set()  # the pipe still holds 1.4 s of audio, then STALL_S (2 s)
        events = wait_for_events(log, lambda ev: "error" in states(ev), 15)
        wait_for_events(log, lambda ev: states(ev)[-1:] == ["idle"], 15)
        speaker.stalled.clear()
        heard_before = speaker.received
        live.say(question)
        events = wait_for_events(log, answered, 60)
    finally:
        stderr = stop_daemon(daemon, 15)
        speaker.close()
    error = next(e for e in events if e["event"] == "error")
    assert error["code"] == "speaker_failed" and "testspk" in error["message"]
    after = states(events)[states(events).index("error") :]
    assert after[:3] == ["error", "idle", "connecting"] and "answering" in after
    assert speaker.received - heard_before > 24_000 * 2 * 2  # seconds of the second answer
    assert "plays again" in stderr and "Traceback" not in stderr
