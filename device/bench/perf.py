"""How fast and how frugal: `voice-device bench perf`.

Figures that depend on the machine are reported as ratios measured in the same run, and
latencies on the device's own clocks where they can be:

- always-on cost: CPU seconds per hour of listening, for the whole pipeline (file source,
  noise suppression, VAD, wake word, pre-roll ring, echo guard, state machine, events) and
  for the bare pymicro-wakeword model on the same audio (as the library streams it); their
  ratio, in a quiet room and with a fan (where noise suppression runs); and the device's
  own streaming of that model alone, so that what the rest of the pipeline adds shows.
- memory: resident set size of a daemon process at idle, and after N conversations.
- latencies, from a daemon process on real PortAudio devices (ALSA plugins: a microphone
  fed from a file at real time, a null speaker): wake → session ready (connecting, reported
  apart) → first audio sent; the turn sent (`turn_commit`, at a pause or its end) → commit
  at the service, and first reply audio at the device (held until the turn is over, when
  it came sooner) → first sample played (the two together: what the device adds); barge-in:
  reply samples rendered after the press, and the output device's own latency.
- start-up: process start → READY=1 on a NOTIFY_SOCKET.

A table is printed, and with --out the same figures as JSON, to compare commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters.control import request
from ..app import App, RunOptions
from ..config import Config, Secret, parse_config
from ..core import states as st
from ..core.audio import CLOUD_RATE, FRAME_SAMPLES, MIC_RATE
from ..emulator import Emulator, Scenario
from . import corpus as C
from .harness import QUESTION, asoundrc, config

RATE = MIC_RATE


ROOMS = {"quiet": 40.0, "fan": 15.0}
"""The rooms the always-on cost is measured in: how far (dB) the room's steady noise is
below the talk. A quiet kitchen; a cooker hood or a fan running (noise suppression on)."""


def idle_audio(minutes: float, below_db: float = ROOMS["fan"]) -> np.ndarray:
    """A room without the wake word: household talk over steady noise `below_db` under it
    (a fan), then the noise alone."""
    n = int(minutes * 60 * RATE)
    talk = C.negative_speech(minutes * 0.7, seed=7).astype(float)[:n]
    fan = np.resize(C.noise("pink", 30, 0).astype(float), n)
    fan *= C.active_rms(talk.astype("<i2")) / (np.sqrt(np.mean(fan**2)) * 10 ** (below_db / 20))
    fan[: len(talk)] += talk
    return np.clip(fan, -32768, 32767).astype("<i2")


def cpu_bare(pcm: bytes) -> float:
    """CPU seconds for the bare wake word model as pymicro-wakeword runs it (its streaming
    features and `process_streaming_prob`, per 20 ms frame; loaded inside the measurement,
    as the pipeline's is)."""
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

    t = time.process_time()
    model, features = MicroWakeWord.from_builtin(Model("okay_nabu")), MicroWakeWordFeatures()
    step = FRAME_SAMPLES * 2
    for i in range(0, len(pcm) - step + 1, step):
        for f in features.process_streaming(pcm[i : i + step]):
            model.process_streaming_prob(f)
    return time.process_time() - t


def cpu_engine(pcm: bytes) -> float:
    """CPU seconds for the device's own wake word engine alone (the same model and scores,
    its own streaming) on the same audio: what the rest of the pipeline adds is the
    difference to `cpu_pipeline`."""
    from ..adapters.wakeword import load_engine

    t = time.process_time()
    engine = load_engine("micro", ["okay_nabu"], role="bare model")
    step = FRAME_SAMPLES * 2
    for i in range(0, len(pcm) - step + 1, step):
        engine.process(pcm[i : i + step])
    return time.process_time() - t


async def cpu_pipeline(wav: Path, tmp: Path, noise_suppression: int = 3) -> float:
    """CPU seconds for the daemon's whole listening pipeline on the same audio."""
    cfg = dataclasses.replace(
        parse_config(
            {
                "cloud": {"endpoint": "http://127.0.0.1:9"},
                "button": {"enabled": False},
                "leds": {"backend": "none"},
                "audio": {"noise_suppression": noise_suppression},
            }
        ),
        api_key=Secret("bench-key"),
    )
    opts = RunOptions(
        input_wav=wav, fast=True, output_wav=tmp / "out.wav", leds="none", signals=False
    )
    t = time.process_time()
    await App(cfg, opts).run()
    return time.process_time() - t


# ---------------------------------------------------------------------------------------------
# A daemon process on ALSA devices


class RealTimeSilence:
    """Feeds a FIFO with 20 ms of silence every 20 ms: a quiet room, at the pace of a real
    microphone. PortAudio opens and closes devices when it starts: the writer reopens."""

    def __init__(self, fifo: Path) -> None:
        os.mkfifo(fifo)
        self.fifo = fifo
        self._on = threading.Event()
        self._on.set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        frame = bytes(640)
        while self._on.is_set():
            try:
                with open(self.fifo, "wb") as f:
                    t0, n = time.monotonic(), 0
                    while self._on.is_set():
                        f.write(frame)
                        f.flush()
                        n += 1
                        time.sleep(max(0.0, t0 + n * 0.02 - time.monotonic()))
            except (BrokenPipeError, OSError):
                time.sleep(0.02)

    def close(self) -> None:
        self._on.clear()
        with contextlib.suppress(OSError):  # unblock a writer waiting in open()
            os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK))
        self._thread.join(2)


class Daemon:
    def __init__(self, tmp: Path, port: int, name: str) -> None:
        self.tmp = tmp / name
        self.tmp.mkdir()
        self.mic = RealTimeSilence(self.tmp / "mic.fifo")
        self.sock = self.tmp / "c.sock"
        self.events = self.tmp / "events.jsonl"
        self.notify = self.tmp / "notify.sock"
        self.env = {
            **os.environ,
            "AZURE_OPENAI_API_KEY": "bench-key",
            "ALSA_CONFIG_PATH": str(
                asoundrc(self.tmp, self.tmp / "mic.fifo", None, "benchmic", "benchspk")
            ),
            "NOTIFY_SOCKET": str(self.notify),
            "VOICE_DEVICE_CONFIG": str(self.tmp / "none.toml"),
        }
        (self.tmp / "none.toml").write_text(
            '[button]\nenabled = false\n[leds]\nbackend = "none"\n[turn]\nfollow_up_ms = 1000\n'
        )
        self.argv = [
            *(sys.executable, "-m", "device", "run", "--input-device", "benchmic"),
            *("--output-device", "benchspk", "--endpoint", f"http://127.0.0.1:{port}"),
            *("--control-socket", str(self.sock), "--events-log", str(self.events)),
            *("--state-dir", str(self.tmp / "state")),
        ]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> float:
        """Seconds from the process's start to READY=1."""
        n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            self.notify.unlink()
        n.bind(str(self.notify))
        n.setblocking(False)
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            while True:
                data = await asyncio.wait_for(loop.sock_recv(n, 4096), 30)
                if b"READY=1" in data:
                    return time.monotonic() - t0
        finally:
            n.close()

    async def ask(self, line: str) -> dict[str, Any]:
        return await asyncio.to_thread(request, line, self.sock, 60)

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def read_events(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.events.read_text().splitlines()]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10)

    def close(self) -> None:
        self.mic.close()


async def memory_and_startup(tmp: Path, conversations: int) -> dict[str, float]:
    emu = Emulator(Scenario(preambles=[], answer="Yes.", think_ms=0, speedup=20))
    await emu.start("127.0.0.1", 0)
    d = Daemon(tmp, emu.port, "memory")
    try:
        startups = [await d.start()]
        await asyncio.sleep(3)
        idle = d.rss_mb()
        warm = min(10, conversations)
        for i in range(conversations):
            reply = await d.ask("ask are you there?")
            if not reply.get("ok"):
                raise RuntimeError(f"conversation {i}: {reply}")
            if i + 1 == warm:
                after_warm = d.rss_mb()
        after = d.rss_mb()
        await d.stop()
        for _ in range(2):  # two more starts, for a median
            startups.append(await d.start())
            await d.stop()
    finally:
        await d.stop()
        d.close()
        await emu.close()
    return {
        "rss_idle_mb": idle,
        f"rss_after_{warm}_mb": after_warm,
        f"rss_after_{conversations}_mb": after,
        "rss_growth_mb": after - after_warm,
        "startup_to_ready_s": statistics.median(startups),
    }


def bench_config(port: int, **turn: int) -> Config:
    """The harness's configuration against the emulator on `port`, with no button or LEDs
    and the follow-up window as a user gets it (`auto`)."""
    return config(
        f"http://127.0.0.1:{port}",
        button={"enabled": False},
        leds={"backend": "none"},
        turn={"follow_up": "auto", **turn},
    )


async def latencies(tmp: Path) -> dict[str, float]:
    """One conversation, then a second whose answer is interrupted (`voice-device wake`), in
    process on WAV devices clocked like real ones (20 ms periods); the emulator answers at
    once (think_ms 0), so what is left is the device's own doing and the loopback."""
    question = C.say(C.Utterance(QUESTION, "en-us", 165, 50))
    quiet = np.zeros(RATE, "<i2")
    mic = np.concatenate([quiet, question, *[quiet] * 16, question, *[quiet] * 20])
    wav = tmp / "two-questions.wav"
    C.write_wav(wav, mic)
    emu = Emulator(
        Scenario(
            preambles=["One moment."],
            answer="It is sunny all day, with a light breeze in the afternoon.",
            think_ms=0,
            speedup=1.0,
        ),
        record=tmp / "record.jsonl",
    )
    await emu.start("127.0.0.1", 0)
    cfg = bench_config(emu.port, follow_up_ms=1000)
    events = tmp / "events.jsonl"
    opts = RunOptions(
        input_wav=wav, output_wav=tmp / "reply.wav", events_log=events, leds="none", signals=False
    )
    app = App(cfg, opts)
    task = asyncio.ensure_future(app.run())

    def read() -> list[dict[str, Any]]:
        return [json.loads(x) for x in events.read_text().splitlines()] if events.exists() else []

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the second answer is playing: interrupt it
            ev = read()
            wakes = [e for e in ev if e["event"] == "wake"]
            playing = [e for e in ev if e["event"] == "playback_start"]
            if len(wakes) == 2 and playing and playing[-1]["t"] > wakes[1]["t"]:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        app.handle(st.Summon(app.pos))  # as `voice-device wake` does
        await asyncio.sleep(0.5)
        after_stop = app.speaker.audible_after_stop
        app.request_stop()
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
        await emu.close()
    ev = read()
    origin = next(e["clock_origin"] for e in ev if e["event"] == "ready")

    def at(e: dict[str, Any]) -> float:  # monotonic seconds, as the emulator records
        return float(origin + e["t"])

    def first(name: str, after: float = 0.0) -> dict[str, Any]:
        return next(e for e in ev if e["event"] == name and at(e) >= after)

    record = [json.loads(x) for x in (tmp / "record.jsonl").read_text().splitlines()]
    sent = [r for r in record if r.get("event", {}).get("type") == "input_audio_buffer.append"]
    commits = [r for r in record if r.get("event", {}).get("type") == "input_audio_buffer.commit"]
    wake, ready, turn_end = first("wake"), first("session_open"), first("turn_end")
    reply = first("reply_audio", at(turn_end))
    played = first("playback_start", at(turn_end))
    to_commit = commits[0]["mono"] - at(first("turn_commit"))
    to_play = at(played) - at(reply)
    return {
        "connect_ms": (at(ready) - at(wake)) * 1000,
        "ready_to_first_audio_sent_ms": (sent[0]["mono"] - at(ready)) * 1000,
        "turn_end_to_commit_ms": to_commit * 1000,
        "first_reply_audio_to_played_ms": to_play * 1000,
        "device_added_ms": (to_commit + to_play) * 1000,
        "jitter_buffer_ms": float(cfg.audio.jitter_ms),
        "barge_in_audible_after_press_ms": after_stop * 1000 / CLOUD_RATE,
        "output_period_ms": 20.0,
    }


ANSWER_THINK_MS = 600
"""The service's time to a first audio chunk assumed for `answer_heard`."""


async def answer_heard(tmp: Path, commit_ms: int, think_ms: int = ANSWER_THINK_MS) -> float:
    """From the user's last word to the first sample of the answer played, in audio time
    (ms), for one question to an emulator that takes `think_ms` from a response.create to
    its first audio (as a reasoning model over a network does), at `turn.commit_ms`."""
    question = C.say(C.Utterance(QUESTION, "en-us", 165, 50))
    spoken = C.speech_end(question)
    quiet = np.zeros(RATE, "<i2")
    mic = np.concatenate([quiet, question[:spoken], *[quiet] * 4])
    wav = tmp / f"question-{commit_ms}.wav"
    C.write_wav(wav, mic)
    emu = Emulator(Scenario(preambles=[], answer="Sunny.", think_ms=think_ms, speedup=1.0))
    await emu.start("127.0.0.1", 0)
    cfg = bench_config(emu.port, follow_up_ms=0, commit_ms=commit_ms)
    events = tmp / f"answer-{commit_ms}-{think_ms}.jsonl"
    events.unlink(missing_ok=True)  # (the events log appends)
    opts = RunOptions(
        input_wav=wav, output_wav=tmp / "reply.wav", events_log=events, leds="none", signals=False
    )
    try:
        await asyncio.wait_for(App(cfg, opts).run(), 60)
    finally:
        await emu.close()
    ev = [json.loads(x) for x in events.read_text().splitlines()]
    played = next(e for e in ev if e["event"] == "playback_start")
    return float(played["audio_ms"] - (RATE + spoken) * 1000 / RATE)


# ---------------------------------------------------------------------------------------------


def run(quick: bool = False, out: Path | None = None) -> int:
    minutes = 2.0 if quick else 10.0
    conversations = 30 if quick else 100
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        print(f"  [{time.monotonic() - t0:5.0f} s] {msg}", flush=True)

    results: dict[str, Any] = {"audio_minutes": minutes, "conversations": conversations}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        hours = minutes / 60
        for room, below_db in ROOMS.items():
            progress(f"{minutes:g} minutes of a {room} room without the wake word")
            audio = idle_audio(minutes, below_db)
            wav = tmp / f"{room}.wav"
            C.write_wav(wav, audio)
            pcm = audio.tobytes()
            bare, engine, whole, no_ns = [], [], [], []
            for _ in range(3):  # alternated, best of three: this machine is noisy
                bare.append(cpu_bare(pcm))
                engine.append(cpu_engine(pcm))
                whole.append(asyncio.run(cpu_pipeline(wav, tmp)))
                if room == "fan":
                    no_ns.append(asyncio.run(cpu_pipeline(wav, tmp, noise_suppression=0)))
            results |= {
                f"cpu_bare_s_per_hour_{room}": min(bare) / hours,
                f"cpu_pipeline_s_per_hour_{room}": min(whole) / hours,
                f"cpu_ratio_{room}": min(whole) / min(bare),
                f"cpu_ratio_{room}_own_engine": min(whole) / min(engine),
                f"cpu_engine_ratio_{room}": min(engine) / min(bare),
            }
            if no_ns:
                results[f"cpu_ratio_{room}_no_ns"] = min(no_ns) / min(bare)
        results["cpu_ratio"] = results["cpu_ratio_quiet"]
        progress(
            f"CPU: pipeline {results['cpu_ratio_quiet']:.2f}x the bare model in a quiet room, "
            f"{results['cpu_ratio_fan']:.2f}x with a fan"
        )
        progress(f"memory over {conversations} conversations, and start-up")
        results |= asyncio.run(memory_and_startup(tmp, conversations))
        progress("latencies")
        results |= asyncio.run(latencies(tmp))
        results["answer_heard_ms_commit_off"] = asyncio.run(answer_heard(tmp, 0))
        results["answer_heard_ms"] = asyncio.run(answer_heard(tmp, 300))
    print_table(results)
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten to {out}")
    return 0


def print_table(r: dict[str, Any]) -> None:
    n = r["conversations"]
    rows = [
        ("always-on CPU, bare pymicro-wakeword", f"{r['cpu_bare_s_per_hour_quiet']:.0f} s/h", ""),
        ("always-on CPU, whole pipeline, quiet room",
         f"{r['cpu_pipeline_s_per_hour_quiet']:.0f} s/h", ""),
        ("  ratio pipeline / bare model, quiet room", f"{r['cpu_ratio_quiet']:.2f}x", "<= 1.3x"),
        ("  the device's engine alone / bare model", f"{r['cpu_engine_ratio_quiet']:.2f}x", ""),
        ("  pipeline / the device's engine alone", f"{r['cpu_ratio_quiet_own_engine']:.2f}x", ""),
        ("  the same, with a fan (noise suppression)", f"{r['cpu_ratio_fan']:.2f}x", ""),
        ("  with a fan, noise suppression off", f"{r['cpu_ratio_fan_no_ns']:.2f}x", ""),
        ("resident memory at idle", f"{r['rss_idle_mb']:.0f} MB", "< 80 MB"),
        (f"  after {n} conversations", f"{r[f'rss_after_{n}_mb']:.0f} MB", ""),
        ("  growth from conversation 10 on", f"{r['rss_growth_mb']:+.1f} MB", "0"),
        ("start-up: process start -> READY=1", f"{r['startup_to_ready_s']:.2f} s", "< 2 s"),
        ("wake -> session ready (connecting)", f"{r['connect_ms']:.0f} ms", "(network)"),
        ("session ready -> first audio sent", f"{r['ready_to_first_audio_sent_ms']:.1f} ms", ""),
        ("turn sent -> commit at the service", f"{r['turn_end_to_commit_ms']:.1f} ms", ""),
        ("reply audio in (turn over) -> played",
         f"{r['first_reply_audio_to_played_ms']:.0f} ms", ""),
        ("  device's added latency (sum)", f"{r['device_added_ms']:.0f} ms", "<= 60 ms"),
        (f"last word -> answer heard ({ANSWER_THINK_MS} ms service)",
         f"{r['answer_heard_ms']:.0f} ms", ""),
        ("  the same, turn.commit_ms = 0", f"{r['answer_heard_ms_commit_off']:.0f} ms", ""),
        ("barge-in: reply audio after the press",
         f"{r['barge_in_audible_after_press_ms']:.0f} ms", "<= 20 ms"),
        ("  worst case: + the period in flight", f"{r['output_period_ms']:.0f} ms", ""),
    ]  # fmt: skip
    print(f"\n{'measure':<42} {'here':>10}  target")
    for name, value, target in rows:
        print(f"{name:<42} {value:>10}  {target}")
    print("\n(ratios and latencies from one run on this machine)")
