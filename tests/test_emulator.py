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
from websockets.exceptions import ConnectionClosed, InvalidStatus

from device.core.realtime import ClientEvents, SessionSettings
from device.emulator import Emulator, Faults, Scenario, load_scenario
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
        await send(ws, c.session_update(SessionSettings("Be brief.")))
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
        ("/openai/nothing?model=m", {"api-key": "right-key"}, 404),
        ("/openai/realtime?model=m", {"api-key": "right-key"}, 400),
        (
            "/openai/realtime?api-version=2025-04-01-preview&deployment=d",
            {"api-key": "right-key"},
            None,
        ),
        ("/v1/realtime?model=gpt-realtime-2", {"Authorization": "Bearer right-key"}, None),
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
            ev = json.loads(await asyncio.wait_for(ws.recv(), 5))
            validate_server_event(ev, beta="api-version" in path)
            assert ev["type"] == "session.created"
        return
    with pytest.raises(InvalidStatus) as e:
        async with connect(url(emulator, path), additional_headers=headers):
            pass
    assert e.value.response.status_code == status


# ---------------------------------------------------------------------------------------------
# Dialects, tools, server turn detection


async def exchange(
    ws: ClientConnection, c: ClientEvents, audio: bytes, beta: bool = False
) -> list[dict[str, Any]]:
    """Send one turn and collect everything up to response.done, validating each event."""
    await ws.send(json.dumps(c.append_audio(audio)))
    await ws.send(json.dumps(c.commit()))
    await ws.send(json.dumps(c.create_response()))
    events = []
    while True:
        ev = json.loads(await asyncio.wait_for(ws.recv(), 10))
        validate_server_event(ev, beta=beta)
        events.append(ev)
        if ev["type"] == "response.done":
            return events


async def test_the_preview_api_speaks_the_beta_dialect(emulator: Emulator) -> None:
    c = ClientEvents()
    path = "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime-2"
    async with connect(url(emulator, path), additional_headers={"api-key": "right-key"}) as ws:
        validate_server_event(json.loads(await ws.recv()), beta=True)
        update = c.session_update(SessionSettings("Be brief.", dialect="beta"))
        validate_client_event(update, beta=True)
        await ws.send(json.dumps(update))
        validate_server_event(json.loads(await ws.recv()), beta=True)
        events = await exchange(ws, c, b"\x01\x00" * 4800, beta=True)
    types = {e["type"] for e in events}
    assert "response.audio.delta" in types and "response.output_audio.delta" not in types
    assert "conversation.item.created" in types and "conversation.item.added" not in types


async def test_a_tool_call_then_the_answer(emulator: Emulator) -> None:
    emulator.scenario = Scenario(
        preambles=["Let me see."],
        answer="It is noon.",
        tool_call="get_current_time",
        think_ms=0,
        speedup=50,
    )
    c = ClientEvents()
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        await recv(ws)
        first = await exchange(ws, c, b"\x01\x00" * 4800)
        done = first[-1]["response"]
        assert [i["type"] for i in done["output"]] == ["message", "function_call"]
        call = done["output"][1]
        assert call["name"] == "get_current_time"
        output = c.function_output(call["call_id"], '{"local_time": "12:00"}')
        validate_client_event(output)
        await ws.send(json.dumps(output))
        await ws.send(json.dumps(c.create_response()))
        second = await until(ws, "response.done")
    phases = [e["item"].get("phase") for e in second if e["type"] == "response.output_item.added"]
    assert phases == ["final_answer"]


async def test_server_vad_ends_the_turn_and_answers(emulator: Emulator) -> None:
    from device.core.audio import resample
    from tests.helpers import silence, speech

    c = ClientEvents()
    td = {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": False,
    }
    turn = resample(silence(0.3) + speech("what time is it") + silence(1.0), 16_000, 24_000)
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        await recv(ws)
        await send(ws, c.session_update(SessionSettings("x", turn_detection=td)))
        await until(ws, "session.updated")
        for i in range(0, len(turn), 4800):
            await send(ws, c.append_audio(turn[i : i + 4800]))
        events = await until(ws, "response.done")
    types = [e["type"] for e in events]
    assert types[:3] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    started, stopped = events[0], events[1]
    assert 200 <= started["audio_start_ms"] <= 400
    assert stopped["audio_end_ms"] > started["audio_start_ms"] + 500
    assert "response.created" in types


# ---------------------------------------------------------------------------------------------
# Faults


async def with_faults(emulator: Emulator, **faults: Any) -> None:
    emulator.scenario = Scenario(think_ms=0, speedup=50, faults=Faults(**faults))


async def test_fault_handshake_status_with_retry_after(emulator: Emulator) -> None:
    await with_faults(emulator, reject_status=429, retry_after_s=7, connections=1)
    with pytest.raises(InvalidStatus) as e:
        async with connect(url(emulator), additional_headers={"api-key": "right-key"}):
            pass
    assert e.value.response.status_code == 429
    assert e.value.response.headers["Retry-After"] == "7"
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        assert (await recv(ws))["type"] == "session.created"  # the second attempt is served


async def test_fault_drop_cuts_the_connection_without_a_close_frame(emulator: Emulator) -> None:
    await with_faults(emulator, drop_after=3)
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        await recv(ws)
        await ws.send(json.dumps(ClientEvents().clear_input()))
        await recv(ws)
        await ws.send(json.dumps(ClientEvents().clear_input()))
        await recv(ws)
        await ws.send(json.dumps(ClientEvents().clear_input()))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1006  # no close frame: the TCP connection just went away


async def test_fault_stall_keeps_tcp_open_and_stops_answering_pings(emulator: Emulator) -> None:
    await with_faults(emulator, stall_after=1)
    async with connect(
        url(emulator),
        additional_headers={"api-key": "right-key"},
        ping_interval=None,
        close_timeout=0.2,
    ) as ws:
        await recv(ws)
        await ws.send(json.dumps(ClientEvents().clear_input()))
        await asyncio.sleep(0.3)  # the server has read the event and stalled
        pong = await ws.ping()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pong, 1.0)
        assert ws.state.name == "OPEN"


async def test_a_stall_ends_with_the_connection_cut_so_the_emulator_holds_nothing(
    emulator: Emulator,
) -> None:
    """A stalled emulator cannot hear the client hang up: after `stall_s` it lets go."""
    await with_faults(emulator, stall_after=1, stall_s=0.5)
    async with connect(
        url(emulator), additional_headers={"api-key": "right-key"}, ping_interval=None
    ) as ws:
        await recv(ws)
        await ws.send(json.dumps(ClientEvents().clear_input()))
        await asyncio.sleep(0.2)
        assert emulator.open_connections == 1
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    for _ in range(50):
        if emulator.open_connections == 0:
            break
        await asyncio.sleep(0.02)
    assert emulator.open_connections == 0


@pytest.mark.parametrize("code", ["rate_limit_exceeded", "insufficient_quota"])
async def test_fault_error_code_instead_of_a_response(emulator: Emulator, code: str) -> None:
    await with_faults(emulator, error_code=code)
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        await recv(ws)
        await send(ws, ClientEvents().create_response())
        assert (await until(ws, "error"))[-1]["error"]["code"] == code


async def test_fault_garbage_among_good_events(emulator: Emulator) -> None:
    from device.core import realtime as rt

    await with_faults(emulator, garbage=True)
    c = ClientEvents()
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        await ws.recv()
        for ev in (c.append_audio(b"\x01\x00" * 4800), c.commit(), c.create_response()):
            await ws.send(json.dumps(ev))
        parsed = []
        while not parsed or not isinstance(parsed[-1], rt.ResponseDone):
            parsed.append(rt.parse_server_event(await asyncio.wait_for(ws.recv(), 5)))
    kinds = {type(p) for p in parsed}
    assert {rt.Malformed, rt.Unknown, rt.AudioDelta, rt.ResponseDone} <= kinds


async def test_fault_session_expiry(emulator: Emulator) -> None:
    await with_faults(emulator, expire_after_s=0.2)
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        await recv(ws)
        err = (await until(ws, "error"))[-1]
        assert err["error"]["code"] == "session_expired"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)


def test_scenario_files_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text("preambles = []\nspeedup = 1\n[faults]\ndrop_after = 5\nconnections = 1\n")
    sc = load_scenario(toml)
    assert sc.preambles == [] and sc.speedup == 1.0 and sc.faults.drop_after == 5
    assert sc.faults_for(1).drop_after == 5 and sc.faults_for(2).drop_after is None
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"tool_call": "get_current_time", "faults": {"garbage": True}}))
    assert load_scenario(js).faults.garbage
    bad = tmp_path / "bad.toml"
    bad.write_text("speedupp = 2\n")
    with pytest.raises(ValueError, match="unknown key 'speedupp'"):
        load_scenario(bad)


@pytest.mark.parametrize("beta", [False, True])
async def test_a_typed_question_is_answered_aloud(emulator: Emulator, beta: bool) -> None:
    """`voice-device ask`: a user message of input_text, then response.create."""
    c = ClientEvents()
    path = (
        "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime-2"
        if beta
        else "/openai/v1/realtime?model=gpt-realtime-2"
    )
    async with connect(url(emulator, path), additional_headers={"api-key": "right-key"}) as ws:
        validate_server_event(json.loads(await ws.recv()), beta=beta)
        question = c.user_text("what is the weather like?")
        validate_client_event(question, beta=beta)
        await ws.send(json.dumps(question))
        await ws.send(json.dumps(c.create_response()))
        seen = []
        while not seen or seen[-1]["type"] != "response.done":
            ev = json.loads(await asyncio.wait_for(ws.recv(), 5))
            validate_server_event(ev, beta=beta)
            seen.append(ev)
    added = next(e for e in seen if e["type"].startswith("conversation.item."))
    assert added["item"]["role"] == "user"
    assert added["item"]["content"][0]["text"] == "what is the weather like?"
    assert seen[-1]["response"]["status"] == "completed"
    audio = "response.audio.delta" if beta else "response.output_audio.delta"
    assert any(e["type"] == audio for e in seen)


async def test_other_items_are_refused_with_an_error(emulator: Emulator) -> None:
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        await recv(ws)
        item = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "x"}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        ev = await recv(ws)
    assert ev["type"] == "error" and ev["error"]["param"] == "item"


async def test_the_phase_on_done_dialect_says_the_phase_only_once_an_item_is_done(
    emulator: Emulator,
) -> None:
    emulator.scenario = Scenario(phase_on_done=True, think_ms=0, speedup=20.0)
    c = ClientEvents()
    async with connect(url(emulator), additional_headers={"api-key": "right-key"}) as ws:
        await recv(ws)
        await send(ws, c.session_update(SessionSettings("Be brief.")))
        await recv(ws)
        await send(ws, c.user_text("hello"))
        await send(ws, c.create_response())
        events = await until(ws, "response.done")
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert len(added) == 2 and all("phase" not in item for item in added)
    assert [item["phase"] for item in done] == ["commentary", "final_answer"]
