"""`voice-device bench arbitration`: several real daemons hear the same words; one answers.

Each device is `voice-device run` as a process of its own on a real-time ALSA microphone (a
FIFO fed at the pace of a real one); all share a real `mosquitto` broker started here, and
one emulator as the cloud. Each trial says the wake word and a question into every
microphone at once, each at its own level (the nearest device hears it loudest), and counts
the sessions opened: agreement is exactly one, by the device that heard it loudest. The
added latency is the time each device waited for the others' claims (the `arbitration`
event's `waited_ms`), in wall time: the claims travel over a real network socket.

Broker conditions: `ok` (local), `slow` (every byte to and from the broker delayed by a
proxy), `gone` (the broker stopped once the devices were connected: each decides alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import (
    FifoMic,
    alsa_daemon,
    asoundrc,
    emulator_process,
    louder,
    poll,
    read_jsonl,
    silence,
    speech,
    states,
    stop_daemon,
)

WORDS = "okay nabu, what time is it?"
KEY = "arbitration-bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        raise RuntimeError("mosquitto is not installed (apt install mosquitto; scripts/setup)")
    return found


class Broker:
    """A real mosquitto on 127.0.0.1, with its own configuration (anonymous, or the users of
    `passwords`), that can be stopped and started again on the same port."""

    def __init__(self, tmp: Path, passwords: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        conf = [
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            "log_dest stderr",
            # as root, mosquitto would become the `mosquitto` user, who cannot read our files
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if passwords:
            pwfile = tmp / "mosquitto.passwd"
            pwfile.write_text("")
            for user, password in passwords.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), user, password],
                    check=True,
                    capture_output=True,
                )
            conf += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            conf.append("allow_anonymous true")
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.log = tmp / "mosquitto.log"

    def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.conf)], stderr=err, stdout=err
            )
        poll(self._listening, "mosquitto to listen", 10)

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log.read_text()[-1000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DelayProxy:
    """A TCP proxy in front of the broker that delays every chunk, each way, by `delay_s`
    (order kept): a broker across a slow network. Runs its own event loop in a thread."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port, self.delay_s = target_port, delay_s
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port)
        )
        self._server = server
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(deliver())
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic() + self.delay_s, data))
        queue.put_nowait((time.monotonic() + self.delay_s, b""))
        with contextlib.suppress(OSError):
            await sender

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def mqtt_config(port: int, device_id: str, window_ms: int = 150, extra: str = "") -> str:
    return (
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
        f'device_id = "{device_id}"\narbitration_window_ms = {window_ms}\n{extra}'
    )


@dataclass
class Device:
    """One daemon of a trial: its folder, microphone, process and gain."""

    folder: Path
    mic: FifoMic
    proc: subprocess.Popen[str]
    gain_db: float
    name: str
    seen: int = 0
    """Events of its log already counted."""

    @property
    def log(self) -> Path:
        return self.folder / "events.jsonl"

    def new_events(self) -> list[dict[str, Any]]:
        events = read_jsonl(self.log)
        fresh, self.seen = events[self.seen :], len(events)
        return fresh


@dataclass
class Trial:
    sessions: list[str]
    """The devices that opened a session."""
    loudest: str
    waited_ms: dict[str, int]
    """Per device, how long its wake waited for the others' claims."""
    woke: list[str] = field(default_factory=list)
    lights: dict[str, list[str]] = field(default_factory=dict)
    """Per device, the LED patterns it showed."""


@contextlib.contextmanager
def devices(
    tmp: Path, gains: list[float], broker_port: int, cloud_port: int, window_ms: int = 150
) -> Iterator[list[Device]]:
    """`len(gains)` daemons on one broker, each on its own real-time ALSA microphone, up and
    connected to the broker when this yields; stopped (SIGTERM, exit 0) after."""
    found: list[Device] = []
    try:
        for i, gain in enumerate(gains):
            name = f"dev{i}"
            folder = tmp / name
            folder.mkdir()
            mic = FifoMic(folder / "mic.fifo")
            alsa = asoundrc(folder, folder / "mic.fifo", folder / "speaker.raw", mic="livemic")
            config = (
                '[gpio]\npin_factory = "mock"\n[turn]\nno_speech_timeout_ms = 2000\n'
                'follow_up = "never"\n' + mqtt_config(broker_port, name, window_ms)
            )
            proc = alsa_daemon(folder, cloud_port, alsa, config, KEY, input_device="livemic")
            found.append(Device(folder, mic, proc, gain, name))
        for d in found:
            poll(functools.partial(_connected, d), f"{d.name} to connect to the broker", 60)
        yield found
    finally:
        errors = []
        for d in found:
            try:
                stderr = stop_daemon(d.proc, 15)
            except AssertionError as e:
                errors.append(f"{d.name}: {e}")
                continue
            finally:
                d.mic.close()
            (d.folder / "stderr.txt").write_text(stderr)
            if "Traceback" in stderr:
                errors.append(f"{d.name}: {stderr[-1500:]}")
        if errors:
            raise AssertionError("; ".join(errors))


def _connected(d: Device) -> bool:
    if d.proc.poll() is not None:
        raise AssertionError(f"{d.name} exited: {d.proc.stderr.read() if d.proc.stderr else ''}")
    return any(e["event"] == "mqtt" and e.get("connected") for e in read_jsonl(d.log))


def trial(found: list[Device], words: bytes, timeout: float = 40) -> Trial:
    """Say `words` into every microphone at once, each at its device's level; wait until
    every device is idle again; what happened."""
    for d in found:
        d.new_events()  # (what came before this trial)
    for d in found:
        d.mic.say(louder(words, d.gain_db) + silence(0.5))
    per: dict[str, list[dict[str, Any]]] = {d.name: [] for d in found}
    deadline = time.monotonic() + timeout
    settled_at: float | None = None
    while time.monotonic() < deadline:
        for d in found:
            per[d.name] += d.new_events()
        woke = [n for n, ev in per.items() if any(e["event"] == "wake" for e in ev)]
        idle = all(
            (states(ev)[-1:] == ["idle"]) or (n not in woke) for n, ev in per.items()
        ) and all(any(e["event"] == "arbitration" for e in per[n]) for n in woke)
        if woke and idle:
            settled_at = settled_at or time.monotonic()
            if time.monotonic() - settled_at > 0.6:  # (a late wake of a far device)
                break
        else:
            settled_at = None
        time.sleep(0.05)
    else:
        raise AssertionError(f"trial did not settle: { {n: states(e) for n, e in per.items()} }")
    sessions = [n for n, ev in per.items() if any(e["event"] == "session_open" for e in ev)]
    waited = {n: e["waited_ms"] for n, ev in per.items() for e in ev if e["event"] == "arbitration"}
    loudest = max(found, key=lambda d: d.gain_db).name
    lights = {n: [e["pattern"] for e in ev if e["event"] == "led"] for n, ev in per.items()}
    return Trial(sessions, loudest, waited, woke, lights)


@dataclass
class Condition:
    name: str
    devices: int
    trials: list[Trial]

    def summary(self) -> dict[str, Any]:
        n = len(self.trials)
        one = sum(len(t.sessions) == 1 for t in self.trials)
        right = sum(t.sessions == [t.loudest] for t in self.trials)
        waits = [t.waited_ms[s] for t in self.trials for s in t.sessions if s in t.waited_ms]
        return {
            "condition": self.name,
            "devices": self.devices,
            "trials": n,
            "exactly_one_session": one,
            "agreement": round(one / n, 3) if n else None,
            "loudest_answered": right,
            # what answering cost the device(s) that answered: the added latency
            "answer_waited_ms_median": statistics.median(waits) if waits else None,
            "answer_waited_ms_max": max(waits) if waits else None,
            "sessions": [len(t.sessions) for t in self.trials],
        }


GAINS = {1: [0.0], 2: [0.0, -6.0], 3: [0.0, -6.0, -12.0]}


def run_condition(
    tmp: Path, n: int, trials: int, condition: str, delay_s: float = 0.05
) -> Condition:
    words = speech(WORDS) + silence(0.3)
    folder = tmp / f"{condition}-{n}"
    folder.mkdir(parents=True)
    done: list[Trial] = []
    with (
        emulator_process("--speedup", "4", "--no-preamble", "--answer", "It is noon.") as cloud,
        Broker(folder) as broker,
    ):
        proxy = DelayProxy(broker.port, delay_s) if condition == "slow" else None
        port = proxy.port if proxy is not None else broker.port
        try:
            with devices(folder, GAINS[n], port, cloud) as found:
                if condition == "gone":
                    broker.stop()
                    time.sleep(0.5)
                for i in range(trials):
                    # who is nearest changes from trial to trial
                    gains = GAINS[n][i % n :] + GAINS[n][: i % n]
                    for d, g in zip(found, gains, strict=True):
                        d.gain_db = g
                    done.append(trial(found, words))
        finally:
            if proxy is not None:
                proxy.close()
    return Condition(condition, n, done)


def main(quick: bool, out: Path | None) -> int:
    import tempfile

    trials = 4 if quick else 12
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-arbitration-") as tmp:
        for condition in ("ok", "slow", "gone"):
            for n in (1, 2, 3):
                if (quick and condition != "ok" and n == 3) or (condition != "ok" and n == 1):
                    continue
                c = run_condition(Path(tmp), n, trials, condition)
                s = c.summary()
                results.append(s)
                print(
                    f"{condition:5} {n} devices: exactly one session in "
                    f"{s['exactly_one_session']}/{s['trials']} trials "
                    f"(the loudest in {s['loudest_answered']}); the answering device waited "
                    f"median {s['answer_waited_ms_median']} ms, "
                    f"max {s['answer_waited_ms_max']} ms; "
                    f"sessions per trial {s['sessions']}",
                    flush=True,
                )
    if out is not None:
        out.write_text(json.dumps(results, indent=2))
    return 0
