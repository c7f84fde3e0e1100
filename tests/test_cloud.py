"""The cloud adapter against real network failures: DNS, TLS, a silent server; auth headers;
and the API key kept out of every log, even with --debug."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from device.adapters.cloud import auth_headers, keepalive
from device.app import App, RunOptions
from device.config import Secret, parse_config
from tests.helpers import emulator_process, read_jsonl, silence, speech, states, write_wav


@pytest.fixture(scope="module")
def question() -> bytes:
    return silence(0.3) + speech("okay nabu, what time is it?") + silence(1.0)


async def run_against(tmp_path: Path, endpoint: str, question: bytes) -> list[dict]:  # type: ignore[type-arg]
    cfg = dataclasses.replace(
        parse_config(
            {
                "cloud": {"endpoint": endpoint, "connect_timeout_s": 1.0},
                "gpio": {"pin_factory": "mock"},
            }
        ),
        api_key=Secret("test-key"),
    )
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "q.wav", question),
        fast=True,
        output_wav=tmp_path / "r.wav",
        events_log=tmp_path / "ev.jsonl",
    )
    assert await asyncio.wait_for(App(cfg, opts).run(), 60) == 0
    return read_jsonl(tmp_path / "ev.jsonl")


def the_error(events: list[dict]) -> dict:  # type: ignore[type-arg]
    assert states(events) == ["connecting", "error", "idle"]
    [error] = [e for e in events if e["event"] == "error"]
    return error


async def test_dns_failure(tmp_path: Path, question: bytes) -> None:
    error = the_error(await run_against(tmp_path, "https://voice-device-test.invalid", question))
    assert error["code"] == "dns_failed"
    assert "cannot resolve voice-device-test.invalid" in error["message"]


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[int]:
    """A WebSocket server on 127.0.0.1 with a self-signed certificate nobody trusts."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def handler(ws: object) -> None:
        await asyncio.sleep(10)

    async with serve(handler, "127.0.0.1", 0, ssl=ctx) as server:
        yield int(next(iter(server.sockets)).getsockname()[1])


async def test_tls_failure(tmp_path: Path, question: bytes, tls_server: int) -> None:
    error = the_error(await run_against(tmp_path, f"https://127.0.0.1:{tls_server}", question))
    assert error["code"] == "tls_failed"
    assert "self-signed certificate" in error["message"]


async def test_a_server_that_never_answers_times_out(tmp_path: Path, question: bytes) -> None:
    async def accept_and_ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        error = the_error(await run_against(tmp_path, f"http://127.0.0.1:{port}", question))
    assert error["code"] == "timeout"
    assert (
        error["t"] - next(e["t"] for e in read_jsonl(tmp_path / "ev.jsonl") if e["event"] == "wake")
        < 2
    )


@pytest.mark.parametrize("within", [1.0, 10.0, 30.0])
def test_keepalive_timings_fit_the_budget(within: float) -> None:
    k = keepalive(within)
    assert k["ping_interval"] + k["ping_timeout"] + k["close_timeout"] == pytest.approx(within)
    assert k["close_timeout"] <= 1.0


async def test_auth_headers_for_each_kind_of_endpoint() -> None:
    key = Secret("k1")
    assert await auth_headers("azure", key, None)() == {"api-key": "k1"}
    assert await auth_headers("azure-preview", key, None)() == {"api-key": "k1"}
    assert await auth_headers("openai", key, None)() == {"Authorization": "Bearer k1"}

    async def token() -> str:
        return "t1"

    assert await auth_headers("azure", key, token)() == {"Authorization": "Bearer t1"}


def test_the_key_never_reaches_the_logs_even_with_debug(tmp_path: Path, question: bytes) -> None:
    key = "sk-this-must-never-be-logged-0123456789"
    with emulator_process("--think-ms", "0", "--speedup", "20") as port:
        cfg = tmp_path / "c.toml"
        cfg.write_text('[gpio]\npin_factory = "mock"\n[turn]\nfollow_up_ms = 500\n')
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "device",
                "run",
                "--debug",
                "--config",
                str(cfg),
                "--endpoint",
                f"http://127.0.0.1:{port}",
                "--input-wav",
                str(write_wav(tmp_path / "q.wav", question)),
                "--fast",
                "--output-wav",
                str(tmp_path / "r.wav"),
                "--events-log",
                str(tmp_path / "ev.jsonl"),
            ],
            env={**os.environ, "AZURE_OPENAI_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "session ready" in r.stderr or "session_open" in (tmp_path / "ev.jsonl").read_text()
    assert "> api-key: ***" in r.stderr  # websockets printed the handshake, redacted
    # the protocol trace: every event both ways, audio replaced by its size
    trace = [line for line in r.stderr.splitlines() if "device.protocol" in line]
    assert any('→ {"type":"session.update"' in line for line in trace)
    appends = [line for line in trace if '"input_audio_buffer.append"' in line]
    assert appends and all(re.search(r'"audio":"<\d+ bytes of audio>"', x) for x in appends)
    deltas = [line for line in trace if '"response.output_audio.delta"' in line]
    assert deltas and all("bytes of audio>" in line for line in deltas)
    assert any('← {"type":"response.done"' in line for line in trace)
    assert not any(re.search(r"[A-Za-z0-9+/=]{200,}", line) for line in trace), "audio in the log"
    for text in (r.stderr, r.stdout, (tmp_path / "ev.jsonl").read_text()):
        assert key not in text
        assert key[:12] not in text


async def test_a_session_waits_briefly_for_network_time_where_timesyncd_runs(
    tmp_path: Path,
) -> None:
    from device.adapters.cloud import clock_set

    assert await clock_set(tmp_path / "no-timesyncd-here", wait_s=5)  # nothing to wait for
    timesync = tmp_path / "timesync"
    timesync.mkdir()
    assert not await clock_set(timesync, wait_s=0.3)  # not synchronised: gives up, goes on

    async def synchronise() -> None:
        await asyncio.sleep(0.2)
        (timesync / "synchronized").touch()

    task = asyncio.ensure_future(synchronise())
    assert await clock_set(timesync, wait_s=5)
    await task
