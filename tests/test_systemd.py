"""The service as systemd sees it: sd_notify on a real NOTIFY_SOCKET, reload and shutdown of
a real daemon process, the unit checked by systemd-analyze, the journal protocol, the
MemoryDenyWriteExecute rule, and the installer in a throwaway root."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from device.adapters.control import ControlError
from device.cli import DEMO_WAV
from device.emulator import Emulator, Faults, Scenario
from tests.helpers import Daemon, asoundrc, read_jsonl, silence, wait_until

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "voice-device.service"
INSTALL = REPO / "scripts" / "install"


class Notifications:
    """A NOTIFY_SOCKET like systemd's: a datagram socket; each message kept with its time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._on = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._on:
            try:
                data = self.sock.recv(4096).decode()
            except (TimeoutError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def since(self, t: float) -> list[dict[str, str]]:
        return [m for at, m in list(self.messages) if at >= t]

    def times(self, key: str, since: float = 0.0) -> list[float]:
        return [at for at, m in list(self.messages) if key in m and at >= since]

    def has(self, since: float, **fields: str) -> Callable[[], bool]:
        return lambda: any(all(m.get(k) == v for k, v in fields.items()) for m in self.since(since))

    def close(self) -> None:
        self._on = False
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    emu = Emulator(
        Scenario(preambles=["One moment."], answer="It is sunny.", think_ms=50, speedup=20),
        record=tmp_path / "record.jsonl",
    )
    await emu.start("127.0.0.1", 0)
    yield emu
    await emu.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Notifications]:
    n = Notifications(tmp_path / "notify.sock")
    yield n
    n.close()


async def test_sd_notify_through_a_daemons_life(
    tmp_path: Path, emulator: Emulator, notify: Notifications
) -> None:
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}  # ping every 0.2 s
    d = Daemon(tmp_path, emulator.port, env)
    await d.start()
    try:
        # READY comes first, with what the device is doing in words
        await wait_until(notify.has(0, READY="1"), 10, "READY=1")
        first = notify.messages[0][1]
        assert first["READY"] == "1"
        assert first["STATUS"] == "idle, listening for 'Okay Nabu'"

        # the watchdog is fed while microphone frames arrive
        t = time.monotonic()
        await asyncio.sleep(1.0)
        assert len(notify.times("WATCHDOG", t)) >= 3

        # SIGHUP: RELOADING=1 … READY=1, the new configuration in force, audio going on
        d.config.write_text(d.base_config + '[wake]\nmodels = ["okay_nabu", "hey_jarvis"]\n')
        t = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        await wait_until(notify.has(t, READY="1"), 20, "READY after the reload")
        sequence = [m for m in notify.since(t) if "WATCHDOG" not in m]
        assert sequence[0]["RELOADING"] == "1" and int(sequence[0]["MONOTONIC_USEC"]) > 0
        assert sequence[1]["READY"] == "1"
        assert (await d.ask("status"))["wake_words"] == ["Okay Nabu", "Hey Jarvis"]
        await asyncio.sleep(0.5)
        pings = notify.times("WATCHDOG", t - 1.0)
        assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0  # no gap

        # a reload with a mistake keeps the running configuration and says why
        d.config.write_text(d.base_config.replace("follow_up_ms = 1000", 'follow_up_ms = "x"'))
        t = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        await wait_until(notify.has(t, READY="1"), 20, "READY after the failed reload")
        ready = next(m for m in notify.since(t) if "READY" in m)
        assert "reload failed" in ready["STATUS"] and "turn.follow_up_ms" in ready["STATUS"]
        assert (await d.ask("status"))["wake_words"] == ["Okay Nabu", "Hey Jarvis"]

        # muted: the microphone is closed, the status says so, the loop still pings
        await d.ask("mute on")
        await wait_until(notify.has(0, STATUS="muted"), 5, "STATUS=muted")
        t = time.monotonic()
        await asyncio.sleep(1.0)
        assert len(notify.times("WATCHDOG", t)) >= 3
        await d.ask("mute off")

        # SIGTERM in the middle of an answer: STOPPING=1, the session closed politely, exit 0
        asking = asyncio.ensure_future(d.ask("ask what is the weather like?"))
        await wait_until(lambda: "preamble" in d.states(), 20, "the answer")
        t = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(d.proc.wait(), 10)
        took = time.monotonic() - t
    finally:
        await d.kill()
    assert code == 0
    assert took < 2.0, f"took {took:.2f} s to stop"
    assert notify.has(t, STOPPING="1")()
    try:  # the ask in progress is told, or cut off
        reply = await asyncio.wait_for(asking, 5)
    except ControlError:
        reply = {"ok": False}
    assert reply["ok"] is False
    closes = [r for r in read_jsonl(tmp_path / "record.jsonl") if r.get("connection") == "closed"]
    assert closes[-1]["code"] == 1000 and closes[-1]["reason"] == "shutting down"


async def test_no_watchdog_while_waiting_is_not_the_same_as_a_hang(
    tmp_path: Path, emulator: Emulator, notify: Notifications
) -> None:
    """A microphone that is not there (yet) is waited for with the watchdog fed; the service
    is ready (the wake word will work as soon as it is plugged in)."""
    alsa = asoundrc(tmp_path, tmp_path / "mic.raw", tmp_path / "speaker.raw")
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    d = Daemon(tmp_path, emulator.port, {**env, "ALSA_CONFIG_PATH": str(alsa)})
    d.argv = [a for a in d.argv if a not in ("--input-wav", str(d.wav))]
    d.argv += ["--input-device", "usb-mic-not-plugged-in", "--wait-for-devices"]
    await d.start()
    try:
        await wait_until(notify.has(0, READY="1"), 10, "READY=1")
        t = time.monotonic()
        await asyncio.sleep(1.5)
        assert len(notify.times("WATCHDOG", t)) >= 1
        status = await d.ask("status")
        assert status["state"] == "error" and "usb-mic-not-plugged-in" in status["status"] + str(
            status["last_error"]
        )
    finally:
        assert await d.stop() == 0


# ---------------------------------------------------------------------------------------------
# The unit file


def test_the_unit_verifies_cleanly(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's installed command
    here = Path(sys.prefix) / "bin" / "voice-device"
    assert here.exists()
    text = UNIT.read_text()
    assert "ExecStart=/opt/voice-device/venv/bin/voice-device run" in text
    unit = tmp_path / "voice-device.service"
    unit.write_text(text.replace("/opt/voice-device/venv/bin/voice-device", str(here)))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_the_unit_is_hardened() -> None:
    """With MQTT on too: the broker is reached over AF_INET like the cloud, and its
    password is a credential like the key, so the same unit serves both."""
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for voice-device.service: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK", r.stdout
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=voice-device",
        "SupplementaryGroups=audio gpio spi",
        "RuntimeDirectory=voice-device",
        "StateDirectory=voice-device",
        "LoadCredential=azure-openai-api-key:",
        "LoadCredential=mqtt-password:",
        "DevicePolicy=closed",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "MemoryDenyWriteExecute=yes",
        "CapabilityBoundingSet=\n",
    ):
        assert line in text, line
    # nothing secret in the unit, and no waiting for the network at boot
    assert "AZURE_OPENAI_API_KEY" not in text and "network-online" not in text


def test_the_daemon_needs_no_writable_executable_memory(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes is only in the unit because this passes: the whole loop
    (wake word model and its TFLite runtime, soxr, WebRTC, websockets) and PortAudio opening
    ALSA devices, under the same seccomp rule systemd installs."""
    mdwe = [sys.executable, str(REPO / "tests" / "mdwe.py")]
    probe = subprocess.run(
        [*mdwe, sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Operation not permitted" in probe.stderr  # the rule is really on
    demo = subprocess.run(
        [*mdwe, sys.executable, "-m", "device", "demo", "--fast"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "answering → follow_up → idle" in demo.stdout
    (tmp_path / "mic.raw").write_bytes(silence(1.0))
    alsa = asoundrc(tmp_path, tmp_path / "mic.raw", tmp_path / "speaker.raw")
    devices = subprocess.run(
        [*mdwe, sys.executable, "-m", "device", "devices"],
        env={**os.environ, "ALSA_CONFIG_PATH": str(alsa)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert devices.returncode == 0, devices.stderr[-2000:]
    assert "testmic" in devices.stdout and "16k" in devices.stdout


# ---------------------------------------------------------------------------------------------
# The journal


def journal_fields(datagram: bytes) -> dict[str, str]:
    """journald's native protocol: FIELD=value lines, or FIELD\\n<64-bit length><value>\\n."""
    fields, i = {}, 0
    while i < len(datagram):
        end = datagram.index(b"\n", i)
        line = datagram[i:end]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            fields[k.decode()] = v.decode()
            i = end + 1
        else:
            size = int.from_bytes(datagram[end + 1 : end + 9], "little")
            fields[line.decode()] = datagram[end + 9 : end + 9 + size].decode()
            i = end + 9 + size + 1
    return fields


async def test_under_systemd_it_logs_to_the_journal_with_fields(tmp_path: Path) -> None:
    """The daemon's real JournalHandler, sending to a journal socket of our own: a private
    mount namespace puts our folder at /run/systemd for the daemon only."""
    run_systemd = tmp_path / "run-systemd"
    (run_systemd / "journal").mkdir(parents=True)
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(run_systemd / "journal" / "socket"))
    journal.settimeout(0.2)
    entries: list[dict[str, str]] = []
    reading = threading.Event()
    reading.set()

    def read() -> None:  # as journald does, at once (a datagram socket's queue is short)
        while reading.is_set():
            try:
                entries.append(journal_fields(journal.recv(1 << 20)))
            except TimeoutError:
                continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # a conversation whose connection drops mid-answer: a session id, then an error code
    emu = Emulator(Scenario(think_ms=0, speedup=20, faults=Faults(drop_after=12)))
    await emu.start("127.0.0.1", 0)
    key = "sk-journal-test-0123456789abcdef"
    try:
        with (tmp_path / "stderr").open("wb") as err:
            st = os.fstat(err.fileno())
            env = {
                **os.environ,
                "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",  # stderr is "the journal"
                "AZURE_OPENAI_API_KEY": key,
            }
            inner = [
                *(sys.executable, "-m", "device", "run", "--input-wav", str(DEMO_WAV), "--fast"),
                *("--output-wav", str(tmp_path / "r.wav"), "--leds", "none"),
                *("--endpoint", f"http://127.0.0.1:{emu.port}", "--no-control-socket"),
            ]
            script = f"mount --bind {run_systemd} /run/systemd && exec {' '.join(inner)}"
            proc = await asyncio.create_subprocess_exec(
                "unshare", "-m", "sh", "-c", script, env=env, stderr=err
            )
            assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        await emu.close()
        await asyncio.sleep(0.3)
        reading.clear()
        reader.join(2)
        journal.close()
    assert (tmp_path / "stderr").read_text() == ""  # the journal got it all
    assert entries and {e["SYSLOG_IDENTIFIER"] for e in entries} == {"voice-device"}
    ready = next(e for e in entries if e["MESSAGE"].startswith("ready: listening"))
    assert ready["PRIORITY"] == "6"
    opened = next(e for e in entries if re.match(r"session \S+ open", e["MESSAGE"]))
    session_id = opened["MESSAGE"].split()[1]
    assert opened["SESSION_ID"] == session_id and opened["STATE"] == "connecting"
    during = [e for e in entries if e.get("SESSION_ID") == session_id]
    assert {"listening", "thinking"} <= {e.get("STATE") for e in during}
    error = next(e for e in entries if "ERROR_CODE" in e)
    assert error["ERROR_CODE"] == "connection_lost" and error["PRIORITY"] == "4"
    assert "SESSION_ID" not in entries[-1]  # no session once it is over
    for e in entries:
        assert key not in str(e) and key[:12] not in str(e)


# ---------------------------------------------------------------------------------------------
# The installer


def install(root: Path, *args: str, key: str | None = "sk-install-test-0123456789") -> str:
    env = {**os.environ, "AZURE_OPENAI_API_KEY": key} if key else dict(os.environ)
    env.pop("AZURE_OPENAI_API_KEY", None) if key is None else None
    r = subprocess.run(
        [sys.executable, str(INSTALL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_installer_in_a_throwaway_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install(root)
    mode = lambda p: stat.S_IMODE((root / p).stat().st_mode)  # noqa: E731
    # the unit as shipped, but for the groups this system lacks (gpio and spi are Pi OS's)
    import grp

    here = [g for g in ("audio", "gpio", "spi") if g in {x.gr_name for x in grp.getgrall()}]
    installed = (root / "etc/systemd/system/voice-device.service").read_text()
    expected = UNIT.read_text().replace(
        "SupplementaryGroups=audio gpio spi", "SupplementaryGroups=" + " ".join(here)
    )
    assert installed == expected
    example = (REPO / "systemd" / "config.example.toml").read_text()
    assert (root / "etc/voice-device/config.toml").read_text() == example
    key = root / "etc/voice-device/credentials/azure-openai-api-key"
    assert key.read_text() == "sk-install-test-0123456789\n"
    assert mode("etc/voice-device/credentials/azure-openai-api-key") == 0o600
    assert mode("etc/voice-device/credentials") == 0o700
    # the unit loads the MQTT password as a credential too: it exists, empty (none) for now
    password = root / "etc/voice-device/credentials/mqtt-password"
    assert password.read_text() == ""
    assert mode("etc/voice-device/credentials/mqtt-password") == 0o600
    for step in (
        "would run: python3 -m venv --system-site-packages /opt/voice-device/venv",
        f"would run: /opt/voice-device/venv/bin/pip install --quiet --upgrade {REPO}",
        "would run: systemctl daemon-reload",
        "would run: systemctl enable voice-device.service",
        "would run: systemctl restart voice-device.service",
    ):
        assert step in first, step
    assert re.search(r"(useradd --system .* voice-device|user: voice-device exists)", first)
    assert "sk-install-test" not in first  # the key is never printed

    # twice is the same as once; a config the user edited and the key are kept
    (root / "etc/voice-device/config.toml").write_text("[cloud]\nendpoint = 'https://x'\n")
    second = install(root, key=None)
    assert "config.toml kept" in second and "azure-openai-api-key kept" in second
    assert "(unchanged)" in second
    assert (
        root / "etc/voice-device/config.toml"
    ).read_text() == "[cloud]\nendpoint = 'https://x'\n"

    # the daemon's state (made by systemd), the edited config and the key are the user's:
    # kept by --uninstall, which says so
    (root / "var/lib/voice-device").mkdir(parents=True)
    (root / "var/lib/voice-device/state.json").write_text("{}")
    gone = install(root, "--uninstall")
    assert "would run: systemctl disable --now voice-device.service" in gone
    for kept in (
        "config.toml (you edited it)",
        "azure-openai-api-key (the API key",
        "voice-device (mute",
    ):
        assert kept in gone, kept
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert left == [
        "etc",
        "etc/systemd",
        "etc/systemd/system",
        "etc/voice-device",
        "etc/voice-device/config.toml",
        "etc/voice-device/credentials",
        "etc/voice-device/credentials/azure-openai-api-key",
        "opt",
        "var",
        "var/lib",
        "var/lib/voice-device",
        "var/lib/voice-device/state.json",
    ], left
    # installed again, the kept config and key are used; --purge takes everything
    again = install(root, key=None)
    assert "config.toml kept" in again and "azure-openai-api-key kept" in again
    purged = install(root, "--uninstall", "--purge")
    assert "kept" not in purged
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert left == ["etc", "etc/systemd", "etc/systemd/system", "opt", "var", "var/lib"], left


def test_an_unedited_config_goes_with_the_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root)
    gone = install(root, "--uninstall")
    assert not (root / "etc/voice-device/config.toml").exists()
    assert "kept /etc/voice-device/credentials/azure-openai-api-key" in gone


def rotate(root: Path, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AZURE_OPENAI_API_KEY"}  # as sudo does
    return subprocess.run(
        [sys.executable, str(INSTALL), "--root", str(root), "--set-key", *args],
        input=key,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_the_key_is_rotated_under_sudo_as_the_readme_says(tmp_path: Path) -> None:
    """sudo drops AZURE_OPENAI_API_KEY: a plain re-install keeps the old key and says so;
    --set-key (the key on stdin, or --key-file) replaces it and restarts the service."""
    root = tmp_path / "root"
    install(root, key="sk-old-0123456789")
    stored = root / "etc/voice-device/credentials/azure-openai-api-key"
    assert "kept (a new one: sudo scripts/install --set-key)" in install(root, key=None)
    r = rotate(root, "sk-new-9876543210\n")
    assert r.returncode == 0, r.stderr
    assert stored.read_text() == "sk-new-9876543210\n"
    assert "azure-openai-api-key replaced" in r.stdout
    assert "would run: systemctl try-restart voice-device.service" in r.stdout
    assert "pip install" not in r.stdout  # only the key changes
    assert "sk-new" not in r.stdout + r.stderr
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    # from a file, as README's rotation steps do
    new = tmp_path / "key"
    new.write_text("sk-file-1111111111\n")
    r = rotate(root, "", "--key-file", str(new))
    assert r.returncode == 0 and stored.read_text() == "sk-file-1111111111\n"
    # nothing given, or a key with a space in it: the stored key stays
    assert "kept" in rotate(root, "").stdout
    bad = rotate(root, "sk-one two\n")
    assert bad.returncode != 0 and "spaces" in bad.stderr
    assert stored.read_text() == "sk-file-1111111111\n"


def test_without_a_key_the_installer_does_not_start_the_service(tmp_path: Path) -> None:
    out = install(tmp_path / "root", key=None)
    assert "key: none given" in out and "not started yet (no key)" in out
    assert "systemctl restart" not in out
