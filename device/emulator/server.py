"""A local stand-in for the Azure realtime service, speaking the same GA protocol.

Serves `/openai/v1/realtime?model=…` over a real WebSocket (python-websockets), checks the
`api-key` (or `Authorization: Bearer`) header, and answers each committed turn with a
response made of a spoken **commentary** item (the preamble) and a **final_answer** item,
streamed as `response.output_audio.delta` chunks faster than real time. Honours
`response.cancel`, `conversation.item.truncate` and `conversation.item.delete`.

With a record file it writes every client event it receives as a JSON line, audio payloads
replaced by their byte count and sha256, so tests can see exactly what left the device.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import time
import wave
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..core.audio import CLOUD_RATE, SAMPLE_BYTES
from .voice import speak

log = logging.getLogger(__name__)

PATHS = ("/openai/v1/realtime", "/v1/realtime")


@dataclass
class Scenario:
    """What the emulated assistant says and how it delivers it."""

    preambles: list[str] = field(default_factory=lambda: ["Let me check the forecast."])
    answer: str = (
        "Today looks sunny, with a high of twenty one degrees and a light breeze in the afternoon."
    )
    think_ms: int = 250
    """Silence before the first item, as the model reasons."""
    chunk_ms: int = 100
    """Audio per `response.output_audio.delta`."""
    speedup: float = 4.0
    """How much faster than real time audio is sent (bursty, like the real service)."""
    session_delay_ms: int = 0
    """Delay before `session.created` (a slow connect)."""


class Recorder:
    """Client events as JSON lines, audio redacted to size and hash."""

    def __init__(self, path: Path | None) -> None:
        self._file = path.open("a", encoding="utf-8", buffering=1) if path else None

    def write(self, conn: int, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = {"mono": time.monotonic(), "conn": conn, **record}
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _digest(pcm: bytes) -> dict[str, Any]:
    return {"bytes": len(pcm), "sha256": hashlib.sha256(pcm).hexdigest()}


class Emulator:
    def __init__(
        self,
        scenario: Scenario | None = None,
        api_key: str | None = None,
        record: Path | None = None,
        save_audio: Path | None = None,
    ) -> None:
        self.scenario = scenario or Scenario()
        self.api_key = api_key
        self.recorder = Recorder(record)
        self.save_audio = save_audio
        self._conn_ids = itertools.count(1)
        self.connections = 0
        self.server: Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 8765) -> Server:
        self.server = await serve(
            self._handle,
            host,
            port,
            process_request=self._check_request,
            max_size=16 * 1024 * 1024,
            compression=None,
        )
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.recorder.close()

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path.rstrip("/") not in PATHS:
            return connection.respond(HTTPStatus.NOT_FOUND, "no such endpoint\n")
        query = parse_qs(url.query)
        if "api-version" in query and url.path.startswith("/openai/v1"):
            return connection.respond(HTTPStatus.BAD_REQUEST, "api-version is not allowed on v1\n")
        if not query.get("model"):
            return connection.respond(HTTPStatus.BAD_REQUEST, "missing model\n")
        key = request.headers.get("api-key")
        bearer = request.headers.get("Authorization", "")
        if key is None and bearer.startswith("Bearer "):
            key = bearer[len("Bearer ") :]
        if not key or (self.api_key is not None and key != self.api_key):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid api key\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        conn = next(self._conn_ids)
        self.connections += 1
        assert ws.request is not None
        model = parse_qs(urlsplit(ws.request.path).query)["model"][0]
        self.recorder.write(conn, {"connection": "open", "path": urlsplit(ws.request.path).path})
        session = _Session(self, ws, conn, model)
        try:
            await session.run()
        except ConnectionClosed:
            pass
        finally:
            await session.stop_response()
            self.recorder.write(conn, {"connection": "closed"})


class _Session:
    """One client connection: its input buffer, conversation and response in progress."""

    def __init__(self, emu: Emulator, ws: ServerConnection, conn: int, model: str) -> None:
        self.emu = emu
        self.ws = ws
        self.conn = conn
        self.model = model
        self.ids = itertools.count(1)
        self.input = bytearray()
        self.turns = 0
        self.last_item: str | None = None
        self.items: dict[str, dict[str, Any]] = {}
        self.response: asyncio.Task[None] | None = None
        self.cancel = asyncio.Event()
        self.session_config: dict[str, Any] = {}

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{self.conn:03d}{next(self.ids):05d}"

    async def send(self, type_: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": type_, "event_id": self.new_id("event"), **fields}))

    async def error(
        self, code: str, message: str, event_id: str | None, param: str | None = None
    ) -> None:
        await self.send(
            "error",
            error={
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id,
            },
        )

    def _session_object(self) -> dict[str, Any]:
        audio_format = {"type": "audio/pcm", "rate": CLOUD_RATE}
        s: dict[str, Any] = {
            "type": "realtime",
            "object": "realtime.session",
            "id": f"sess_{self.conn:06d}",
            "model": self.model,
            "output_modalities": ["audio"],
            "instructions": "",
            "audio": {
                "input": {"format": audio_format, "turn_detection": None, "transcription": None},
                "output": {"format": audio_format, "voice": "marin", "speed": 1.0},
            },
            "reasoning": {"effort": "low"},
            "tools": [],
            "tool_choice": "auto",
        }
        for key in ("instructions", "reasoning", "output_modalities", "tools", "tool_choice"):
            if key in self.session_config:
                s[key] = self.session_config[key]
        if "audio" in self.session_config:
            for side in ("input", "output"):
                s["audio"][side].update(self.session_config["audio"].get(side) or {})
        return s

    async def run(self) -> None:
        delay = self.emu.scenario.session_delay_ms
        if delay:
            await asyncio.sleep(delay / 1000)
        await self.send("session.created", session=self._session_object())
        async for text in self.ws:
            await self.on_message(text)

    async def on_message(self, text: str | bytes) -> None:
        try:
            ev = json.loads(text)
            type_ = ev["type"]
        except (ValueError, KeyError, TypeError):
            await self.error("invalid_json", "could not parse the event", None)
            return
        record = dict(ev)
        audio = b""
        if type_ == "input_audio_buffer.append":
            try:
                audio = base64.b64decode(ev.get("audio", ""), validate=True)
            except ValueError:
                audio = b""
            record["audio"] = ""
            self.emu.recorder.write(self.conn, {"event": record, "audio": _digest(audio)})
        elif type_ == "input_audio_buffer.commit":
            self.emu.recorder.write(
                self.conn, {"event": record, "buffer": _digest(bytes(self.input))}
            )
        else:
            self.emu.recorder.write(self.conn, {"event": record})
        handler = getattr(self, "on_" + type_.replace(".", "_"), None)
        if handler is None:
            await self.error(
                "unknown_event", f"unknown event type {type_!r}", ev.get("event_id"), "type"
            )
            return
        await handler(ev, audio)

    # -- client events ----------------------------------------------------------------------

    async def on_session_update(self, ev: dict[str, Any], _: bytes) -> None:
        session = ev.get("session")
        if not isinstance(session, dict) or session.get("type") != "realtime":
            await self.error(
                "invalid_value",
                "session.type must be 'realtime'",
                ev.get("event_id"),
                "session.type",
            )
            return
        self.session_config = session
        await self.send("session.updated", session=self._session_object())

    async def on_input_audio_buffer_append(self, ev: dict[str, Any], audio: bytes) -> None:
        if len(audio) % SAMPLE_BYTES:
            await self.error("invalid_value", "audio must be pcm16", ev.get("event_id"), "audio")
            return
        self.input += audio

    async def on_input_audio_buffer_clear(self, ev: dict[str, Any], _: bytes) -> None:
        self.input.clear()
        await self.send("input_audio_buffer.cleared")

    async def on_input_audio_buffer_commit(self, ev: dict[str, Any], _: bytes) -> None:
        if not self.input:
            await self.error(
                "input_audio_buffer_commit_empty",
                "buffer too small: expected at least 100ms of audio, but buffer only has 0.00ms",
                ev.get("event_id"),
            )
            return
        self.turns += 1
        item_id = self.new_id("item")
        if self.emu.save_audio is not None:
            self._save_turn(bytes(self.input))
        previous, self.last_item = self.last_item, item_id
        await self.send("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.items[item_id] = {"role": "user", "audio_ms": len(self.input) // 48}
        await self.send("conversation.item.added", item=item, previous_item_id=previous)
        await self.send("conversation.item.done", item=item, previous_item_id=previous)
        self.input.clear()

    def _save_turn(self, pcm: bytes) -> None:
        assert self.emu.save_audio is not None
        self.emu.save_audio.mkdir(parents=True, exist_ok=True)
        path = self.emu.save_audio / f"turn-{self.conn:03d}-{self.turns:03d}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(SAMPLE_BYTES)
            w.setframerate(CLOUD_RATE)
            w.writeframes(pcm)

    async def on_response_create(self, ev: dict[str, Any], _: bytes) -> None:
        if self.response is not None and not self.response.done():
            await self.error(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress.",
                ev.get("event_id"),
            )
            return
        self.cancel.clear()
        self.response = asyncio.create_task(self._respond())

    async def on_response_cancel(self, ev: dict[str, Any], _: bytes) -> None:
        if self.response is None or self.response.done():
            await self.error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                ev.get("event_id"),
            )
            return
        self.cancel.set()
        await self.response

    async def on_conversation_item_truncate(self, ev: dict[str, Any], _: bytes) -> None:
        item_id, end_ms = ev.get("item_id"), ev.get("audio_end_ms")
        item = self.items.get(item_id) if isinstance(item_id, str) else None
        if item is None or item["role"] != "assistant":
            await self.error(
                "item_not_found", f"no assistant item {item_id!r}", ev.get("event_id"), "item_id"
            )
            return
        if not isinstance(end_ms, int) or end_ms < 0 or end_ms > item["audio_ms"]:
            await self.error(
                "invalid_value",
                f"audio_end_ms {end_ms} is outside the item's {item['audio_ms']} ms of audio",
                ev.get("event_id"),
                "audio_end_ms",
            )
            return
        item["audio_ms"] = end_ms
        await self.send(
            "conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms
        )

    async def on_conversation_item_delete(self, ev: dict[str, Any], _: bytes) -> None:
        item_id = ev.get("item_id")
        if not isinstance(item_id, str) or item_id not in self.items:
            await self.error(
                "item_not_found", f"no item {item_id!r}", ev.get("event_id"), "item_id"
            )
            return
        del self.items[item_id]
        await self.send("conversation.item.deleted", item_id=item_id)

    # -- the response -----------------------------------------------------------------------

    async def stop_response(self) -> None:
        if self.response is not None and not self.response.done():
            self.response.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await self.response

    async def _respond(self) -> None:
        sc = self.emu.scenario
        response_id = self.new_id("resp")
        base = {"id": response_id, "object": "realtime.response", "output_modalities": ["audio"]}
        await self.send(
            "response.created", response={**base, "status": "in_progress", "output": []}
        )
        plan = [("commentary", text) for text in sc.preambles] + [("final_answer", sc.answer)]
        outputs: list[dict[str, Any]] = []
        cancelled = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.cancel.wait(), sc.think_ms / 1000)
            cancelled = True
        for index, (phase, text) in enumerate(plan):
            if cancelled:
                break
            item, cancelled = await self._speak_item(response_id, index, phase, text)
            outputs.append(item)
        status = "cancelled" if cancelled else "completed"
        response: dict[str, Any] = {**base, "status": status, "output": outputs}
        response["usage"] = {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0}
        if cancelled:
            response["status_details"] = {"type": "cancelled", "reason": "client_cancelled"}
        await self.send("response.done", response=response)

    async def _speak_item(
        self, response_id: str, index: int, phase: str, text: str
    ) -> tuple[dict[str, Any], bool]:
        sc = self.emu.scenario
        item_id = self.new_id("item")
        previous, self.last_item = self.last_item, item_id
        self.items[item_id] = {"role": "assistant", "audio_ms": 0}
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "phase": phase,
            "content": [],
        }
        where = {"response_id": response_id, "item_id": item_id, "output_index": index}
        await self.send(
            "response.output_item.added", response_id=response_id, output_index=index, item=item
        )
        await self.send("conversation.item.added", item=item, previous_item_id=previous)
        await self.send(
            "response.content_part.added",
            **where,
            content_index=0,
            part={"type": "audio", "transcript": ""},
        )
        pcm = speak(text, phase)
        step = CLOUD_RATE * sc.chunk_ms // 1000 * SAMPLE_BYTES
        words = text.split()
        cancelled = False
        sent = 0
        for n, offset in enumerate(range(0, len(pcm), step)):
            if self.cancel.is_set():
                cancelled = True
                break
            chunk = pcm[offset : offset + step]
            await self.send(
                "response.output_audio.delta",
                **where,
                content_index=0,
                delta=base64.b64encode(chunk).decode(),
            )
            sent += len(chunk)
            self.items[item_id]["audio_ms"] = sent // (CLOUD_RATE * SAMPLE_BYTES // 1000)
            share = words[
                n * len(words) * step // len(pcm) : (n + 1) * len(words) * step // len(pcm)
            ]
            if share:
                await self.send(
                    "response.output_audio_transcript.delta",
                    **where,
                    content_index=0,
                    delta=" ".join(share) + " ",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cancel.wait(), sc.chunk_ms / 1000 / sc.speedup)
        spoken = (
            text
            if not cancelled
            else " ".join(words[: max(0, len(words) * sent // max(1, len(pcm)))])
        )
        if not cancelled:
            await self.send("response.output_audio.done", **where, content_index=0)
        await self.send(
            "response.output_audio_transcript.done", **where, content_index=0, transcript=spoken
        )
        part = {"type": "audio", "transcript": spoken}
        await self.send("response.content_part.done", **where, content_index=0, part=part)
        done = {
            **item,
            "status": "incomplete" if cancelled else "completed",
            "content": [{"type": "output_audio", "transcript": spoken}],
        }
        await self.send(
            "response.output_item.done", response_id=response_id, output_index=index, item=done
        )
        await self.send("conversation.item.done", item=done, previous_item_id=previous)
        return done, cancelled


async def serve_forever(
    emu: Emulator, host: str, port: int, ready: asyncio.Event | None = None
) -> None:
    server = await emu.start(host, port)
    print(f"emulator listening on ws://{host}:{emu.port}", flush=True)
    if ready is not None:
        ready.set()
    try:
        await server.serve_forever()
    finally:
        await emu.close()
