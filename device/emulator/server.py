"""A local stand-in for the Azure realtime service, speaking the same protocol.

Serves the GA path `/openai/v1/realtime?model=…`, OpenAI's `/v1/realtime?model=…`, and the
deprecated Azure preview path `/openai/realtime?api-version=…&deployment=…` (which speaks
the beta event names), over a real WebSocket (python-websockets). It checks the `api-key`
or `Authorization: Bearer` header and answers each committed turn with spoken
**commentary** items (the preamble) and a **final_answer** item, streamed as audio deltas
faster than real time; optionally a function call in between. It honours
`response.cancel`, `conversation.item.truncate` and `.delete`, and runs server turn
detection (webrtcvad on the received audio) when the session asks for it.

Faults are injected from the scenario (see `scenario.py`). With a record file it writes
every client event it receives as a JSON line, audio payloads replaced by their byte count
and sha256, so tests can see exactly what left the device.
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
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import webrtcvad
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..core.audio import CLOUD_RATE, MIC_RATE, SAMPLE_BYTES, Resampler
from ..core.realtime import SAY_VERBATIM
from .scenario import Faults, Scenario
from .voice import speak

log = logging.getLogger(__name__)

GA_PATHS = ("/openai/v1/realtime", "/v1/realtime")
PREVIEW_PATH = "/openai/realtime"
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "conversation.item.added": "conversation.item.created",
}
BYTES_PER_MS = CLOUD_RATE * SAMPLE_BYTES // 1000
REFUSAL_BODIES = {
    HTTPStatus.BAD_REQUEST: (
        "OperationNotSupported",
        "The realtime operation does not work with the specified model, gpt-4o. "
        "Please choose different model and try again.",
    ),
    HTTPStatus.NOT_FOUND: (
        "DeploymentNotFound",
        "The API deployment for this resource does not exist.",
    ),
}
"""What Azure says, in the body, when it refuses a handshake (the device shows it)."""


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
        self._attempts = itertools.count(1)
        self._attempt_of: dict[ServerConnection, int] = {}
        self.connections = 0
        self.conversations: dict[int, dict[str, dict[str, Any]]] = {}
        """Each connection's conversation as it stands (item id: role, ms of audio), for
        tests to see what the model would see: deleted items are gone."""
        self.server: Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 8765) -> Server:
        self.server = await serve(
            self._handle,
            host,
            port,
            process_request=self._check_request,
            max_size=16 * 1024 * 1024,
            compression=None,
            ping_interval=None,  # the client's keepalive is under test, not ours
            close_timeout=1,
        )
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Connections whose handler has not finished yet."""
        return len(self.server.connections) if self.server is not None else 0

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.recorder.close()

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        attempt = next(self._attempts)
        self._attempt_of[connection] = attempt
        faults = self.scenario.faults_for(attempt)
        url = urlsplit(request.path)
        path, query = url.path.rstrip("/"), parse_qs(url.query)
        scheme = "api-key" if "api-key" in request.headers else "bearer"
        self.recorder.write(attempt, {"handshake": path, "auth": scheme})
        if faults.reject_status is not None:
            status = HTTPStatus(faults.reject_status)
            response = connection.respond(status, f"{status.phrase}\n")
            if status in REFUSAL_BODIES:  # as Azure words them, in JSON
                code, message = REFUSAL_BODIES[status]
                body = json.dumps({"error": {"code": code, "message": message}}) + "\n"
                response = connection.respond(status, body)
                response.headers["Content-Type"] = "application/json"
            if faults.retry_after_s is not None:
                response.headers["Retry-After"] = str(faults.retry_after_s)
            return response
        if path == PREVIEW_PATH:
            if not query.get("api-version") or not query.get("deployment"):
                return connection.respond(
                    HTTPStatus.BAD_REQUEST, "api-version and deployment required\n"
                )
        elif path in GA_PATHS:
            if "api-version" in query:
                return connection.respond(
                    HTTPStatus.BAD_REQUEST, "api-version is not allowed on v1\n"
                )
            if not query.get("model"):
                return connection.respond(HTTPStatus.BAD_REQUEST, "missing model\n")
        else:
            return connection.respond(HTTPStatus.NOT_FOUND, "no such endpoint\n")
        if not self._authorised(request.headers):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid api key\n")
        return None

    def _authorised(self, headers: Headers) -> bool:
        key = headers.get("api-key")
        bearer = headers.get("Authorization", "")
        if key is None and bearer.startswith("Bearer "):
            key = bearer[len("Bearer ") :]
        return bool(key) and (self.api_key is None or key == self.api_key)

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        conn = self._attempt_of.pop(ws)
        assert ws.request is not None
        url = urlsplit(ws.request.path)
        query = parse_qs(url.query)
        beta = url.path.rstrip("/") == PREVIEW_PATH
        model = (query.get("deployment") if beta else query.get("model")) or ["?"]
        self.recorder.write(conn, {"connection": "open", "path": url.path})
        session = _Session(self, ws, conn, model[0], beta, self.scenario.faults_for(conn))
        try:
            await session.run()
        except ConnectionClosed:
            pass
        finally:
            await session.stop()
            closed: dict[str, Any] = {"connection": "closed", "code": ws.close_code}
            if ws.close_reason:
                closed["reason"] = ws.close_reason
            self.recorder.write(conn, closed)


class _ServerVad:
    """Server turn detection on the received 24 kHz audio: webrtcvad at 16 kHz, 20 ms frames."""

    FRAME = 320 * SAMPLE_BYTES

    def __init__(self, silence_ms: int) -> None:
        self._vad = webrtcvad.Vad(2)
        self._resampler = Resampler(CLOUD_RATE, MIC_RATE)
        self._pending = bytearray()
        self._ms = 0
        self._voiced_run = 0
        self._silent_ms = 0
        self.speaking = False
        self.silence_ms = silence_ms

    def feed(self, pcm24: bytes) -> list[tuple[str, int]]:
        """("start"|"stop", ms into the buffer) for each change in this audio."""
        self._pending += self._resampler.push(pcm24)
        out = []
        while len(self._pending) >= self.FRAME:
            frame = bytes(self._pending[: self.FRAME])
            del self._pending[: self.FRAME]
            self._ms += 20
            voiced = self._vad.is_speech(frame, MIC_RATE)
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if not self.speaking and self._voiced_run >= 3:
                self.speaking, self._silent_ms = True, 0
                out.append(("start", self._ms - 60))
            elif self.speaking:
                self._silent_ms = 0 if voiced else self._silent_ms + 20
                if self._silent_ms >= self.silence_ms:
                    self.speaking = False
                    out.append(("stop", self._ms - self.silence_ms))
        return out


class _Stalled(Exception):
    pass


class _Session:
    """One client connection: its input buffer, conversation and response in progress."""

    def __init__(
        self, emu: Emulator, ws: ServerConnection, conn: int, model: str, beta: bool, faults: Faults
    ) -> None:
        self.emu = emu
        self.ws = ws
        self.conn = conn
        self.model = model
        self.beta = beta
        self.faults = faults
        self.sent = 0
        self.ids = itertools.count(1)
        self.input = bytearray()
        self.turns = 0
        self.last_item: str | None = None
        self.items: dict[str, dict[str, Any]] = {}
        emu.conversations[conn] = self.items
        self.prompt_tokens = 0
        """The last response's input: what the next one finds in the prompt cache."""
        self.response: asyncio.Task[None] | None = None
        self.cancel = asyncio.Event()
        self.session_config: dict[str, Any] = {}
        self.vad: _ServerVad | None = None
        self.speech_item: str | None = None
        self.timers: list[asyncio.Task[None]] = []
        self.stalled = False

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{self.conn:03d}{next(self.ids):05d}"

    async def send(self, type_: str, **fields: Any) -> None:
        if self.faults.drop_after is not None and self.sent >= self.faults.drop_after:
            self.ws.transport.abort()  # no close frame: what a lost network looks like
            raise ConnectionClosed(None, None)
        if self.faults.stall_after is not None and self.sent >= self.faults.stall_after:
            if not self.stalled:  # whichever task gets here first (a response, or run())
                self.stalled = True
                self.ws.transport.pause_reading()  # pings go unanswered; TCP stays open
                self.timers.append(asyncio.create_task(self._cut_after(self.faults.stall_s)))
            raise _Stalled()
        if self.beta:
            type_ = BETA_NAMES.get(type_, type_)
            if type_ == "conversation.item.done":
                return  # the preview API has no such event
        self.sent += 1
        await self.ws.send(json.dumps({"type": type_, "event_id": self.new_id("event"), **fields}))

    async def error(
        self,
        code: str,
        message: str,
        event_id: str | None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        await self.send(
            "error",
            error={
                "type": kind,
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id,
            },
        )

    def _session_object(self) -> dict[str, Any]:
        c = self.session_config
        if self.beta:
            return {
                "id": f"sess_{self.conn:06d}",
                "object": "realtime.session",
                "model": "gpt-realtime",  # the preview API names models, not deployments
                "modalities": c.get("modalities", ["audio", "text"]),
                "instructions": c.get("instructions", ""),
                "voice": c.get("voice", "alloy"),
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "turn_detection": c.get("turn_detection"),
                "tools": c.get("tools", []),
                "tool_choice": c.get("tool_choice", "auto"),
            }
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
            if key in c:
                s[key] = c[key]
        for side in ("input", "output"):
            s["audio"][side].update((c.get("audio") or {}).get(side) or {})
        return s

    def _turn_detection(self) -> dict[str, Any] | None:
        c = self.session_config
        td = (
            c.get("turn_detection")
            if self.beta
            else ((c.get("audio") or {}).get("input") or {}).get("turn_detection")
        )
        return td if isinstance(td, dict) else None

    async def run(self) -> None:
        if self.faults.expire_after_s is not None:
            self.timers.append(asyncio.create_task(self._expire(self.faults.expire_after_s)))
        delay = self.emu.scenario.session_delay_ms
        if delay:
            await asyncio.sleep(delay / 1000)
        try:
            await self.send("session.created", session=self._session_object())
            async for text in self.ws:
                await self.on_message(text)
        except _Stalled:  # keep the TCP connection open and say nothing (until the cut)
            await self.ws.wait_closed()

    async def _cut_after(self, seconds: float) -> None:
        """A stalled connection cannot hear the client hang up (reading is paused): cut it."""
        await asyncio.sleep(seconds)
        self.ws.transport.abort()

    async def _expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        with contextlib.suppress(ConnectionClosed, _Stalled):
            await self.error(
                "session_expired", "Your session hit the maximum duration of 60 minutes.", None
            )
            await self.ws.close(1001, "session expired")

    async def stop(self) -> None:
        for t in [*self.timers, self.response]:
            if t is not None and not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, _Stalled):
                    await t

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
        if self.faults.reject_update:
            param = self.faults.reject_update
            message = f"Invalid value for '{param.rsplit('.', 1)[-1]}'."
            await self.error("invalid_value", message, ev.get("event_id"), param)
            return
        session = ev.get("session")
        if not isinstance(session, dict) or (not self.beta and session.get("type") != "realtime"):
            await self.error(
                "invalid_value",
                "session.type must be 'realtime'",
                ev.get("event_id"),
                "session.type",
            )
            return
        self.session_config = session
        td = self._turn_detection()
        self.vad = _ServerVad(int(td.get("silence_duration_ms", 700))) if td else None
        await self.send("session.updated", session=self._session_object())

    async def on_input_audio_buffer_append(self, ev: dict[str, Any], audio: bytes) -> None:
        if len(audio) % SAMPLE_BYTES:
            await self.error("invalid_value", "audio must be pcm16", ev.get("event_id"), "audio")
            return
        self.input += audio
        if self.vad is None:
            return
        for change, ms in self.vad.feed(audio):
            if change == "start":
                self.speech_item = self.new_id("item")
                await self.send(
                    "input_audio_buffer.speech_started", audio_start_ms=ms, item_id=self.speech_item
                )
            else:
                item_id = self.speech_item or self.new_id("item")
                await self.send(
                    "input_audio_buffer.speech_stopped", audio_end_ms=ms, item_id=item_id
                )
                await self._commit(item_id)
                td = self._turn_detection() or {}
                if td.get("create_response", True):
                    await self._start_response(None)

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
        await self._commit(self.new_id("item"))

    async def _commit(self, item_id: str) -> None:
        self.turns += 1
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
        self.items[item_id] = {"role": "user", "audio_ms": len(self.input) // BYTES_PER_MS}
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

    async def on_conversation_item_create(self, ev: dict[str, Any], _: bytes) -> None:
        item = ev.get("item")
        if not isinstance(item, dict):
            item = {}
        if item.get("type") == "message" and _is_typed_user_message(item):
            role: dict[str, Any] = {"role": "user", "audio_ms": 0, "text": _text_of(item)}
        elif item.get("type") == "function_call_output":
            role = {"role": "tool", "audio_ms": 0, "output": item.get("output", "")}
        else:
            await self.error(
                "invalid_value",
                "only function_call_output items and user input_text messages are emulated",
                ev.get("event_id"),
                "item",
            )
            return
        item_id = self.new_id("item")
        self.items[item_id] = role
        previous, self.last_item = self.last_item, item_id
        added = {"id": item_id, "object": "realtime.item", "status": "completed", **item}
        await self.send("conversation.item.added", item=added, previous_item_id=previous)
        await self.send("conversation.item.done", item=added, previous_item_id=previous)

    async def on_response_create(self, ev: dict[str, Any], _: bytes) -> None:
        await self._start_response(ev.get("event_id"), ev.get("response"))

    async def _start_response(
        self, event_id: str | None, asked: dict[str, Any] | None = None
    ) -> None:
        """`asked`: the response.create's `response` (an out-of-band one says
        `conversation: none` and what to say in its instructions)."""
        if self.faults.error_code is not None:
            kind = (
                "rate_limit_error"
                if self.faults.error_code == "rate_limit_exceeded"
                else "invalid_request_error"
            )
            await self.error(
                self.faults.error_code, f"emulated {self.faults.error_code}", event_id, kind=kind
            )
            return
        if self.response is not None and not self.response.done():
            await self.error(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress.",
                event_id,
            )
            return
        self.cancel.clear()
        aside = isinstance(asked, dict) and asked.get("conversation") == "none"
        said = str(asked.get("instructions", "")) if aside and asked else ""
        self.response = asyncio.create_task(self._respond(said if aside else None))

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

    async def _respond(self, aside: str | None = None) -> None:
        # a connection cut (by a fault, or by the client) ends the response quietly
        with contextlib.suppress(_Stalled, ConnectionClosed):
            await self._respond_inner(aside)

    async def _respond_inner(self, aside: str | None = None) -> None:
        """`aside`: an out-of-band response's instructions: it says the text they quote
        (as an obedient model would), adds nothing to the conversation, calls no tool."""
        sc = self.emu.scenario
        response_id = self.new_id("resp")
        base: dict[str, Any] = {"id": response_id, "object": "realtime.response"}
        if not self.beta:
            base["output_modalities"] = ["audio"]
        await self.send(
            "response.created", response={**base, "status": "in_progress", "output": []}
        )
        if self.faults.garbage:
            await self._garbage(response_id)
        if self.faults.huge_event:
            pad = "x" * (5 * 1024 * 1024)
            await self.send("response.future_feature.added", response_id=response_id, pad=pad)
        # after a tool's output the model answers; otherwise it may speak a preamble and call one
        if aside is not None:
            text = aside.partition(SAY_VERBATIM)[2] if SAY_VERBATIM in aside else sc.answer
            plan = [("final_answer", text)]
        elif sc.tool_call and self.last_item_is_tool_output():
            plan = [("final_answer", sc.answer)]
        elif sc.tool_call:
            plan = [("commentary", t) for t in sc.preambles] + [("call", sc.tool_call)]
        else:
            plan = [("commentary", t) for t in sc.preambles] + [("final_answer", sc.answer)]
        outputs: list[dict[str, Any]] = []
        cancelled = await self._wait_cancel(sc.think_ms / 1000)
        failure = self.faults.fail_response
        if failure:  # the preamble is spoken, then the response fails
            plan = [p for p in plan if p[0] == "commentary"]
        for index, (phase, text) in enumerate(plan):
            if cancelled:
                break
            if phase == "call":
                outputs.append(await self._call_tool(response_id, index, text))
                continue
            item, cancelled = await self._speak_item(response_id, index, phase, text, aside is None)
            outputs.append(item)
        status = "cancelled" if cancelled else "failed" if failure else "completed"
        response: dict[str, Any] = {**base, "status": status, "output": outputs}
        response["usage"] = self._usage(outputs)
        if cancelled:
            response["status_details"] = {"type": "cancelled", "reason": "client_cancelled"}
        elif failure:
            error = {
                "type": "invalid_request_error",
                "code": failure,
                "message": f"emulated {failure}",
            }
            response["status_details"] = {"type": "failed", "error": error}
        await self.send("response.done", response=response)

    def _usage(self, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        """What the service would bill, roughly: the whole conversation so far as input
        (audio at 10 tokens a second heard, 20 a second spoken; text at 4 characters a
        token), of which the previous response's input is cached; this response's audio and
        transcripts as output. The shape is the GA API's."""
        said = {o["id"] for o in outputs if o.get("type") == "message"}
        audio_in = text_in = 0
        for item_id, item in self.items.items():
            if item_id in said or item.get("aside"):
                continue
            audio_in += item.get("audio_ms", 0) * (10 if item.get("role") == "user" else 20) // 1000
        text_in = len(str(self.session_config.get("instructions", ""))) // 4 + 4 * len(self.items)
        text_in += len(json.dumps(self.session_config.get("tools", []))) // 4
        audio_out = sum(self.items.get(i, {}).get("audio_ms", 0) for i in said) * 20 // 1000
        text_out = 0
        for o in outputs:
            for part in o.get("content") or []:
                text_out += len(str(part.get("transcript") or "")) // 4
            text_out += len(str(o.get("arguments") or "")) // 4
        cached, self.prompt_tokens = min(self.prompt_tokens, text_in + audio_in), text_in + audio_in
        cached_text = min(cached, text_in)
        details: dict[str, Any] = {
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "cached_tokens": cached,
        }
        if not self.beta:  # (the beta API's usage has no image or cached details)
            details["image_tokens"] = 0
            details["cached_tokens_details"] = {
                "text_tokens": cached_text,
                "audio_tokens": cached - cached_text,
                "image_tokens": 0,
            }
        return {
            "total_tokens": text_in + audio_in + text_out + audio_out,
            "input_tokens": text_in + audio_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": details,
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    def last_item_is_tool_output(self) -> bool:
        """True when the last item of the conversation is a tool's output."""
        return (
            self.last_item is not None and self.items.get(self.last_item, {}).get("role") == "tool"
        )

    async def _wait_cancel(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.cancel.wait(), seconds)
            return True
        return False

    async def _garbage(self, response_id: str) -> None:
        """What a broken or future server might send, twice over; the device must shrug it
        off and say so once per kind, not once per event."""
        for _ in range(2):
            self.sent += 1
            await self.ws.send("{this is not json")
            await self.send(
                "response.future_feature.added", response_id=response_id, detail={"x": 1}
            )
            await self.send(
                "response.output_audio.delta",
                response_id=response_id,
                item_id="item_bad",
                output_index=99,
                content_index=0,
                delta="%%% not base64 %%%",
            )

    async def _call_tool(self, response_id: str, index: int, name: str) -> dict[str, Any]:
        arguments = self.emu.scenario.tool_arguments
        item_id, call_id = self.new_id("item"), self.new_id("call")
        previous, self.last_item = self.last_item, item_id
        self.items[item_id] = {"role": "assistant-call", "audio_ms": 0}
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }
        await self.send(
            "response.output_item.added", response_id=response_id, output_index=index, item=item
        )
        await self.send("conversation.item.added", item=item, previous_item_id=previous)
        where = {
            "response_id": response_id,
            "item_id": item_id,
            "output_index": index,
            "call_id": call_id,
        }
        await self.send("response.function_call_arguments.delta", **where, delta=arguments)
        await self.send(
            "response.function_call_arguments.done", **where, name=name, arguments=arguments
        )
        done = {**item, "status": "completed", "arguments": arguments}
        await self.send(
            "response.output_item.done", response_id=response_id, output_index=index, item=done
        )
        await self.send("conversation.item.done", item=done, previous_item_id=previous)
        return done

    async def _speak_item(
        self, response_id: str, index: int, phase: str, text: str, conversation: bool = True
    ) -> tuple[dict[str, Any], bool]:
        """`conversation` False: an out-of-band item, in no conversation."""
        sc = self.emu.scenario
        item_id = self.new_id("item")
        previous = self.last_item
        if conversation:
            self.last_item = item_id
        self.items[item_id] = {"role": "assistant", "audio_ms": 0, "aside": not conversation}
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "phase": phase,
            "content": [],
        }
        announced = {k: v for k, v in item.items() if k != "phase"} if sc.phase_on_done else item
        where = {"response_id": response_id, "item_id": item_id, "output_index": index}
        await self.send(
            "response.output_item.added",
            response_id=response_id,
            output_index=index,
            item=announced,
        )
        if conversation:
            await self.send("conversation.item.added", item=announced, previous_item_id=previous)
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
            self.items[item_id]["audio_ms"] = sent // BYTES_PER_MS
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
            if (n + 1) % max(1, sc.burst) == 0:
                pause = sc.chunk_ms * max(1, sc.burst) / 1000 / sc.speedup
                cancelled = await self._wait_cancel(pause)
        spoken = text if not cancelled else " ".join(words[: len(words) * sent // max(1, len(pcm))])
        if not cancelled:
            await self.send("response.output_audio.done", **where, content_index=0)
        await self.send(
            "response.output_audio_transcript.done", **where, content_index=0, transcript=spoken
        )
        part = {"type": "audio", "transcript": spoken}
        await self.send("response.content_part.done", **where, content_index=0, part=part)
        content_type = "audio" if self.beta else "output_audio"
        done = {
            **item,
            "status": "incomplete" if cancelled else "completed",
            "content": [{"type": content_type, "transcript": spoken}],
        }
        await self.send(
            "response.output_item.done", response_id=response_id, output_index=index, item=done
        )
        if conversation:
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


def _is_typed_user_message(item: dict[str, Any]) -> bool:
    content = item.get("content")
    return (
        item.get("role") == "user"
        and isinstance(content, list)
        and bool(content)
        and all(isinstance(c, dict) and c.get("type") == "input_text" for c in content)
        and all(isinstance(c.get("text"), str) for c in content)
    )


def _text_of(item: dict[str, Any]) -> str:
    return " ".join(c["text"] for c in item["content"])
