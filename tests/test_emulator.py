"""The emulator over a real socket, driven by a real websockets client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from device.core.realtime import ClientEvents, SessionSettings
from device.emulator import Emulator, Scenario
from tests.sdk import validate_client_event, validate_server_event

SHORT = Scenario(
    preambles=["One moment."],
    answer="It is sunny.",
    think_ms=20,
    chunk_ms=100,
    speedup=50.0,
)


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    emu = Emulator(
        SHORT, api_key="right-key", record=tmp_path / "record.jsonl", save_audio=tmp_path / "turns"
    )
    await emu.start("127.0.0.1", 0)
    yield emu
    await emu.close()


def url(emu: Emulator, path: str = "/openai/v1/realtime?model=gpt-realtime-2") -> str:
    return f"ws://127.0.0.1:{emu.port}{path}"


async def recv(ws: ClientConnection) -> dict[str, Any]:
    ev = json.loads(await asyncio.wait_for(ws.recv(), 5))
    validate_server_event(ev)
    return ev


async def until(ws: ClientConnection, type_: str) -> list[dict[str, Any]]:
    seen = []
    while True:
        ev = await recv(ws)
        seen.append(ev)
        if ev["type"] == type_:
            return seen


async def send(ws: ClientConnection, ev: dict[str, Any]) -> None:
    validate_client_event(ev)
    await ws.send(json.dumps(ev))


async def test_a_turn_gets_a_preamble_then_an_answer(emulator: Emulator, tmp_path: Path) -> None:
    c = ClientEvents()
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        assert (await recv(ws))["type"] == "session.created"
        await send(ws, c.session_update(SessionSettings("gpt-realtime-2", "Be brief.")))
        assert (await recv(ws))["type"] == "session.updated"
        audio = bytes(range(256)) * 30
        await send(ws, c.append_audio(audio))
        await send(ws, c.commit())
        assert [e["type"] for e in await until(ws, "conversation.item.done")] == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        await send(ws, c.create_response())
        events = await until(ws, "response.done")
    added = [e["item"]["phase"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["commentary", "final_answer"]
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert [i["phase"] for i in done["output"]] == ["commentary", "final_answer"]
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert {e["item_id"] for e in deltas} == {i["id"] for i in done["output"]}
    pcm = b"".join(base64.b64decode(e["delta"]) for e in deltas)
    assert len(pcm) > 24000  # more than half a second of reply
    # what the client sent is on record, audio as size and hash only
    lines = [json.loads(x) for x in (tmp_path / "record.jsonl").read_text().splitlines()]
    appends = [x for x in lines if x.get("event", {}).get("type") == "input_audio_buffer.append"]
    assert appends[0]["audio"] == {"bytes": len(audio), "sha256": hashlib.sha256(audio).hexdigest()}
    assert appends[0]["event"]["audio"] == ""
    assert (tmp_path / "turns" / "turn-001-001.wav").exists()


async def test_cancel_and_truncate(emulator: Emulator) -> None:
    emulator.scenario = Scenario(
        preambles=[], answer="A long answer " * 10, think_ms=0, speedup=2.0
    )
    c = ClientEvents()
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        await recv(ws)
        await send(ws, c.append_audio(b"\x00\x01" * 4800))
        await send(ws, c.commit())
        await send(ws, c.create_response())
        events = await until(ws, "response.output_audio.delta")
        item_id = events[-1]["item_id"]
        await send(ws, c.cancel_response())
        events = await until(ws, "response.done")
        assert events[-1]["response"]["status"] == "cancelled"
        await send(ws, c.truncate(item_id, 50))
        assert (await until(ws, "conversation.item.truncated"))[-1]["audio_end_ms"] == 50
        await send(ws, c.truncate(item_id, 60_000))
        err = (await until(ws, "error"))[-1]["error"]
        assert err["code"] == "invalid_value" and err["event_id"].startswith("dev_")
        await send(ws, c.cancel_response())
        assert (await until(ws, "error"))[-1]["error"]["code"] == "response_cancel_not_active"


async def test_empty_commit_is_refused(emulator: Emulator) -> None:
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        await recv(ws)
        await send(ws, ClientEvents().commit())
        assert (await until(ws, "error"))[-1]["error"]["code"] == "input_audio_buffer_commit_empty"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/openai/v1/realtime?model=m", {}, 401),
        ("/openai/v1/realtime?model=m", {"api-key": "wrong"}, 401),
        ("/openai/v1/realtime?model=m", {"Authorization": "Bearer right-key"}, None),
        ("/openai/realtime?model=m", {"api-key": "right-key"}, 404),
        (
            "/openai/v1/realtime?model=m&api-version=2025-04-01-preview",
            {"api-key": "right-key"},
            400,
        ),
    ],
)
async def test_handshake_checks(
    emulator: Emulator, path: str, headers: dict[str, str], status: int | None
) -> None:
    if status is None:
        async with connect(url(emulator, path), additional_headers=headers) as ws:
            assert (await recv(ws))["type"] == "session.created"
        return
    with pytest.raises(InvalidStatus) as e:
        async with connect(url(emulator, path), additional_headers=headers):
            pass
    assert e.value.response.status_code == status
