"""A realtime server that misbehaves on purpose, for the hostile-server suite.

Not the emulator (whose job is to be right): a small websockets server of the tests' own
whose `mode` says how it breaks the next session. Between faults it answers like a plain,
correct service (`good`), so a test can check that the device still works afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

PCM = bytes(range(256)) * 96  # 0.5 s of not-silence at 24 kHz
"""What the good server says, as audio."""


def event(type_: str, **fields: Any) -> str:
    return json.dumps({"type": type_, "event_id": "evt", **fields})


def created(session_id: str = "sess_hostile") -> str:
    return event("session.created", session={"id": session_id, "object": "realtime.session"})


async def opened(ws: ServerConnection) -> None:
    """The session exists and has taken the device's settings."""
    await ws.send(created())
    await ws.send(event("session.updated", session={"type": "realtime"}))


def audio(response_id: str, item_id: str, pcm: bytes) -> str:
    return event(
        "response.output_audio.delta",
        response_id=response_id,
        item_id=item_id,
        output_index=0,
        content_index=0,
        delta=base64.b64encode(pcm).decode(),
    )


def item(item_id: str, phase: str = "final_answer") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "phase": phase}


def done(response_id: str, item_id: str, status: str = "completed") -> str:
    response = {"id": response_id, "status": status, "output": [item(item_id)]}
    return event("response.done", response=response)


async def answer(ws: ServerConnection, n: int, pcm: bytes = PCM) -> None:
    """One whole, correct response."""
    rid, iid = f"resp_{n}", f"item_{n}"
    await ws.send(event("response.created", response={"id": rid, "status": "in_progress"}))
    added = event("response.output_item.added", response_id=rid, output_index=0, item=item(iid))
    await ws.send(added)
    await ws.send(audio(rid, iid, pcm))
    await ws.send(
        event(
            "response.output_audio_transcript.done",
            response_id=rid,
            item_id=iid,
            output_index=0,
            content_index=0,
            transcript="All is well.",
        )
    )
    await ws.send(done(rid, iid))


Behaviour = Callable[["Hostile", ServerConnection], Awaitable[None]]


class Hostile:
    def __init__(self) -> None:
        self.mode = "good"
        self.connections = 0
        self.received: list[dict[str, Any]] = []
        self.server: Server | None = None
        self.port = 0
        self.redirect_to = ""
        """For mode `redirect`: where the handshake is sent (another server of the test's)."""

    async def start(self) -> None:
        self.server = await serve(
            self._session,
            "127.0.0.1",
            0,
            process_request=self._handshake,
            max_size=None,
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        if self.mode == "redirect":
            headers = Headers({"Location": self.redirect_to})
            return Response(302, "Found", headers, b"")
        return None

    async def _session(self, ws: ServerConnection) -> None:
        self.connections += 1
        behaviour = BEHAVIOURS[self.mode]
        with contextlib.suppress(ConnectionClosed):
            await behaviour(self, ws)

    async def receive(self, ws: ServerConnection) -> dict[str, Any]:
        message = json.loads(await ws.recv())
        self.received.append(message)
        return message

    async def until(self, ws: ServerConnection, type_: str) -> dict[str, Any]:
        while True:
            message = await self.receive(ws)
            if message.get("type") == type_:
                return message


# ---------------------------------------------------------------------------------------------
# How each session goes


async def good(h: Hostile, ws: ServerConnection) -> None:
    await h.until(ws, "session.update")
    await good_from_here(h, ws)


async def good_from_here(h: Hostile, ws: ServerConnection) -> None:
    """Open the session, then answer every response.create correctly."""
    await opened(ws)
    n = 0
    while True:
        await h.until(ws, "response.create")
        n += 1
        await answer(ws, n)


async def reset_while_writing(h: Hostile, ws: ServerConnection) -> None:
    """The TCP connection dies (no close frame: 1006) while the device streams audio."""
    await h.until(ws, "session.update")
    await opened(ws)
    await h.until(ws, "input_audio_buffer.append")
    ws.transport.abort()


async def huge_number(h: Hostile, ws: ServerConnection) -> None:
    await h.until(ws, "session.update")
    await opened(ws)
    limit = {"name": "tokens", "limit": 1, "remaining": 10**400, "reset_seconds": 1}
    await ws.send(event("rate_limits.updated", rate_limits=[limit]))
    limit = {"name": "tokens", "limit": 1, "remaining": 1, "reset_seconds": math.inf}
    await ws.send(event("rate_limits.updated", rate_limits=[limit]))  # (json writes Infinity)
    await h.until(ws, "response.create")
    await answer(ws, 1)
    await ws.wait_closed()


DEEP = 100_000


async def deep_json(h: Hostile, ws: ServerConnection) -> None:
    """Nesting 100k deep, before session.created and after."""
    await h.until(ws, "session.update")
    deep = '{"type":"session.updated","x":' + "[" * DEEP + "]" * DEEP + "}"
    await ws.send(deep)
    await opened(ws)
    await ws.send(deep.replace("session.updated", "response.done"))
    await h.until(ws, "response.create")
    await answer(ws, 1)
    await ws.wait_closed()


async def flood(h: Hostile, ws: ServerConnection) -> None:
    """Unknown event types without end, and non-fatal errors with long messages."""
    await h.until(ws, "session.update")
    await opened(ws)
    await h.until(ws, "response.create")
    for n in range(20_000):
        await ws.send(event(f"response.brand_new_{n}", x=n))
    error = {"type": "invalid_request_error", "code": "x" * 5000, "message": "m" * 10_000}
    for _ in range(2_000):
        await ws.send(event("error", error=error))
    await answer(ws, 1)
    await ws.wait_closed()


async def no_response_done(h: Hostile, ws: ServerConnection) -> None:
    """Forty final answers of a minute each (what a repeat may keep), never a response.done."""
    await h.until(ws, "session.update")
    await opened(ws)
    await h.until(ws, "response.create")
    second = PCM * 2
    for n in range(40):
        rid, iid = f"resp_{n}", f"item_{n}"
        await ws.send(event("response.created", response={"id": rid, "status": "in_progress"}))
        for _ in range(60):
            await ws.send(audio(rid, iid, second))
    await ws.close(1011, "enough")


async def close_after_done(h: Hostile, ws: ServerConnection) -> None:
    """A whole answer, then a normal close at once."""
    await h.until(ws, "session.update")
    await opened(ws)
    await h.until(ws, "response.create")
    await answer(ws, 1, PCM * 4)  # 2 s of audio
    await ws.close(1000, "done")


async def keeps_talking_of_other_things(h: Hostile, ws: ServerConnection) -> None:
    """Rate limits and a cancelled response's trickle, but never the awaited reply."""
    await h.until(ws, "session.update")
    await opened(ws)
    await h.until(ws, "response.create")
    limit = {"name": "tokens", "limit": 100, "remaining": 50, "reset_seconds": 1}
    while True:
        await ws.send(event("rate_limits.updated", rate_limits=[limit]))
        await ws.send(audio("resp_old", "item_old", PCM[:480]))
        await asyncio.sleep(0.3)


async def unrequested_reply(h: Hostile, ws: ServerConnection) -> None:
    """A reply the device never asked for, as soon as the session is up."""
    await h.until(ws, "session.update")
    await opened(ws)
    await asyncio.sleep(0.2)
    await answer(ws, 1, PCM * 4)
    while True:  # (what the device says back, until it closes)
        await h.receive(ws)


async def tiny_deltas(h: Hostile, ws: ServerConnection) -> None:
    """Twenty thousand 2-byte deltas, each in an item of its own."""
    await h.until(ws, "session.update")
    await opened(ws)
    await h.until(ws, "response.create")
    rid = "resp_tiny"
    await ws.send(event("response.created", response={"id": rid, "status": "in_progress"}))
    for n in range(20_000):
        await ws.send(audio(rid, f"item_{n}", b"\x01\x00"))
    await ws.send(done(rid, "item_0"))
    await ws.wait_closed()


async def benign_error_first(h: Hostile, ws: ServerConnection) -> None:
    """A harmless error before session.created: the session goes on."""
    await h.until(ws, "session.update")
    error = {"type": "invalid_request_error", "code": "response_cancel_not_active", "message": "x"}
    await ws.send(event("error", error=error))
    await ws.send(event("error", error={"type": "server_notice", "message": "just so you know"}))
    await good_from_here(h, ws)


async def rate_limited_first(h: Hostile, ws: ServerConnection) -> None:
    await h.until(ws, "session.update")
    error = {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "slow down"}
    await ws.send(event("error", error=error))
    await ws.wait_closed()


async def floods_the_answer_asked_at_a_pause(h: Hostile, ws: ServerConnection) -> None:
    """The answer the device asks for at a pause in the user's turn, while it holds the
    answer back: 128 MB of one response's audio, never done; then the session ends. The
    next session is a good one."""
    await h.until(ws, "session.update")
    await opened(ws)
    await h.until(ws, "response.create")
    rid = "resp_flood"
    await ws.send(event("response.created", response={"id": rid, "status": "in_progress"}))
    megabyte = PCM * (1024 * 1024 // len(PCM))
    for _ in range(128):
        await ws.send(audio(rid, "item_flood", megabyte))
    h.mode = "good"
    await ws.close(1011, "enough")


BEHAVIOURS: dict[str, Behaviour] = {
    "good": good,
    "reset_while_writing": reset_while_writing,
    "huge_number": huge_number,
    "deep_json": deep_json,
    "flood": flood,
    "no_response_done": no_response_done,
    "close_after_done": close_after_done,
    "keeps_talking_of_other_things": keeps_talking_of_other_things,
    "unrequested_reply": unrequested_reply,
    "tiny_deltas": tiny_deltas,
    "benign_error_first": benign_error_first,
    "rate_limited_first": rate_limited_first,
    "floods_the_answer_asked_at_a_pause": floods_the_answer_asked_at_a_pause,
}
