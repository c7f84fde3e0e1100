"""The realtime session over a WebSocket (python-websockets, asyncio).

A thin shell: what the JSON means is `core.realtime`'s business. This module connects
(only when asked: there is no socket before a wake), sends `session.update`, waits for
`session.created`, then moves events both ways until closed. What happens to the session
is reported as state machine inputs: `SessionReady`, `SessionFailed`, `SessionLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .. import __version__
from ..config import Endpoint, Secret, is_loopback
from ..core.realtime import (
    ClientEvents,
    Reaction,
    ServerEvent,
    SessionCreated,
    SessionSettings,
    SessionUpdated,
    for_the_log,
    parse_server_event,
    reaction_to,
)
from ..core.realtime import ServerError as ServerErrorEvent
from ..core.states import Input, SessionFailed, SessionLost, SessionReady
from .systemd import escape

log = logging.getLogger(__name__)
trace = logging.getLogger("device.protocol")
"""Every event sent and received, at debug level (`run --debug`), audio replaced by its size."""

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest server event accepted; the biggest real ones (response.done) are far smaller."""
MAX_OUTGOING = 1000
"""Client events waiting to be written (≈ 40 s of audio): more means the link is stuck."""


class NoRedirects(connect):
    """websockets' connect, refusing every redirect. websockets drops only Authorization and
    Cookie on a redirect to another origin, so `api-key` would follow a 302 to any host;
    Azure never redirects the realtime path, so nothing is lost by following none."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class Rejected(Exception):
    """The server refused our session.update: the session would run on its defaults (server
    turn detection with automatic replies, its voice and prompt, no tools)."""

    def __init__(self, ev: ServerErrorEvent) -> None:
        super().__init__(ev.message)
        self.event = ev


class Refused(Exception):
    """The server sent an `error` instead of `session.created`."""

    def __init__(self, ev: ServerErrorEvent) -> None:
        super().__init__(ev.message)
        self.event = ev


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    retryable: bool
    retry_after_s: float | None = None


def _retry_after(exc: InvalidStatus) -> float | None:
    value = exc.response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _said(exc: InvalidStatus) -> str:
    """The service's own words in a refused handshake's body (`{"error": {"code",
    "message"}}`), cut short and escaped; empty if it said nothing readable."""
    try:
        error = json.loads(exc.response.body or b"{}").get("error") or {}
        code, message = str(error.get("code") or ""), str(error.get("message") or "")
    except (ValueError, AttributeError, RecursionError):
        return ""
    said = f"{code}: {message}" if code and message else code or message
    return escape(said[:300])


def classify(exc: BaseException, url: str, entra: bool = False) -> Failure:
    """What a failed connection attempt means to the user, in words they can act on."""
    host = urlsplit(url).netloc
    if isinstance(exc, Rejected):
        what = exc.event.param or "the session settings"
        message = escape(exc.event.message[:200])
        return Failure("session_rejected", f"the service refused {what}: {message}", False)
    if isinstance(exc, Refused):
        code = exc.event.code or "refused"
        back_off = reaction_to(code) is Reaction.BACK_OFF
        return Failure(code, f"{host} refused the session: {exc.event.message}", back_off)
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        said = _said(exc)
        quoted = f" ({said})" if said else ""
        if status in (401, 403) and entra:
            return Failure(
                "auth_failed",
                f"{host} refused the Entra ID token (HTTP {status}){quoted}: the identity "
                "needs the 'Cognitive Services OpenAI User' role on the resource",
                False,
            )
        if status in (401, 403):
            return Failure(
                "auth_failed",
                f"{host} refused the API key (HTTP {status}){quoted}: check "
                "AZURE_OPENAI_API_KEY or the azure-openai-api-key credential",
                False,
            )
        if status == 404:
            return Failure(
                "not_found",
                f"{host} has no realtime endpoint for this deployment (HTTP 404){quoted}: "
                "check cloud.endpoint and cloud.deployment",
                False,
            )
        if status == 400 and said:
            return Failure(
                "refused",
                f"{host} refused the session (HTTP 400, {said}): check that cloud.deployment "
                "is a realtime model such as gpt-realtime-2",
                False,
            )
        if 300 <= status < 400:
            where = exc.response.headers.get("Location", "")
            return Failure(
                "redirected",
                f"{host} redirected the session to {urlsplit(where).netloc or 'elsewhere'} "
                f"(HTTP {status}); not followed: the realtime path is never redirected, "
                "so check cloud.endpoint",
                False,
            )
        if status == 429:
            return Failure(
                "rate_limited", f"{host} is rate limiting (HTTP 429)", True, _retry_after(exc)
            )
        return Failure(
            "server_error",
            f"{host} answered HTTP {status}{quoted}",
            status >= 500,
            _retry_after(exc),
        )
    if isinstance(exc, TimeoutError):
        return Failure("timeout", f"{host} did not answer in time", True)
    if isinstance(exc, socket.gaierror):
        return Failure("dns_failed", f"cannot resolve {host} (DNS): is the network up?", True)
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return Failure("tls_failed", f"secure connection to {host} failed: {reason}", True)
    if isinstance(exc, OSError):
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc) or "network error"
        return Failure("unreachable", f"cannot reach {host}: {reason}", True)
    if isinstance(exc, InvalidHandshake):
        return Failure("handshake_failed", f"{host}: WebSocket handshake failed: {exc}", True)
    if isinstance(exc, ConnectionClosed):
        return Failure("connection_lost", f"{host} closed the connection", True)
    return Failure("unexpected", f"{type(exc).__name__} talking to {host}", True)


Headers = Callable[[], Awaitable[dict[str, str]]]


def auth_headers(kind: str, key: Secret, bearer: Callable[[], Awaitable[str]] | None) -> Headers:
    """How each kind of endpoint wants to be authenticated, fetched anew for each connection."""

    async def headers() -> dict[str, str]:
        if bearer is not None:
            return {"Authorization": f"Bearer {await bearer()}"}
        if kind == "openai":
            return {"Authorization": f"Bearer {key.reveal()}"}
        return {"api-key": key.reveal()}

    return headers


def keepalive(within_s: float) -> dict[str, float]:
    """websockets timings that notice a dead connection within `within_s` at worst.

    A stalled peer costs a wait for the next ping, a wait for its pong, then a close
    handshake it never completes: the three share the budget.
    """
    close = min(1.0, within_s / 4)
    ping = (within_s - close) / 2
    return {"ping_interval": ping, "ping_timeout": ping, "close_timeout": close}


def why_closed(ws: ClientConnection) -> tuple[str, str, bool]:
    """Why a session ended that we did not close: (code, message for the user, whether the
    server closed it normally).

    When websockets gives up on a connection (no pong, an oversized frame) it is the close
    frame *we* sent that tells why; the peer usually sends none.
    """
    sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
    if sent is not None and sent.code == 1011 and "keepalive" in sent.reason:
        message = "the service stopped answering (no reply to keepalive pings)"
        return "keepalive_timeout", message, False
    if sent is not None and sent.code == 1009:
        limit = MAX_MESSAGE_BYTES // (1024 * 1024)
        message = f"the service sent an event over the {limit} MiB limit (1009)"
        return "connection_lost", message, False
    if received is not None:
        why = escape(f"code {received.code} {received.reason[:80]}".strip())
        message = f"the service closed the session ({why})"
        return "connection_lost", message, received.code in (1000, 1001)
    return "connection_lost", "the connection dropped", False


def _is_loopback(url: str) -> bool:
    return is_loopback(urlsplit(url).hostname or "")


TIMESYNC = Path("/run/systemd/timesync")
"""systemd-timesyncd's runtime folder; `synchronized` appears in it once the clock is set."""
CLOCK_WAIT_S = 5.0


async def clock_set(timesync: Path = TIMESYNC, wait_s: float = CLOCK_WAIT_S) -> bool:
    """Wait (a little) for network time when the system says it has not got it yet.

    The service does not wait for time sync at boot; a session opened just after boot on a
    Pi without a real-time clock may run on last shutdown's time, and TLS then refuses the
    service's certificate as not yet valid. Only where systemd-timesyncd runs and has not
    synchronised yet; elsewhere nothing to wait for. True when the clock is (now) set."""
    if not timesync.is_dir():
        return True
    deadline = time.monotonic() + wait_s
    while not (timesync / "synchronized").exists():
        if time.monotonic() >= deadline:
            log.info("the clock is not synchronised yet; connecting anyway")
            return False
        await asyncio.sleep(0.2)
    return True


class CloudSession:
    """One realtime session: opened on wake, closed when the conversation is over."""

    def __init__(
        self,
        endpoint: Endpoint,
        headers: Headers,
        settings: SessionSettings,
        events: ClientEvents,
        on_event: Callable[[ServerEvent], None],
        on_status: Callable[[Input], None],
        connect_timeout_s: float,
        keepalive_s: float = 10.0,
        entra: bool = False,
    ) -> None:
        """`entra`: the headers carry an Entra ID token, not a key (a refusal says so)."""
        self.url = endpoint.url
        self.entra = entra
        self._headers = headers
        self._keepalive_s = keepalive_s
        self._settings = settings
        self._events = events
        self._on_event = on_event
        self._on_status = on_status
        self._connect_timeout = connect_timeout_s
        self._outgoing: asyncio.Queue[str | None] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closer: asyncio.Future[None] | None = None
        self._closing = False
        self.ready = False
        self.session_id = ""
        self.close_reason = ""

    def __repr__(self) -> str:
        return f"CloudSession({urlsplit(self.url).netloc}, ready={self.ready})"

    # -- called on the loop by the app ------------------------------------------------------

    def start(self, tg: asyncio.TaskGroup) -> None:
        self._task = tg.create_task(self.run(), name="cloud-session")

    def send(self, event: dict[str, Any]) -> None:
        if self._closing:
            return
        if self._outgoing.qsize() >= MAX_OUTGOING:
            self._lost("stalled", "the connection stopped taking data")
            return
        if trace.isEnabledFor(logging.DEBUG):
            trace.debug("→ %s", for_the_log(event))
        self._outgoing.put_nowait(json.dumps(event, separators=(",", ":")))

    def close(self, reason: str) -> None:
        """Close politely (code 1000) once what is queued is written; abandon a connect."""
        if self._closing:
            return
        self._closing = True
        self.close_reason = reason
        if self.ready:
            self._outgoing.put_nowait(None)
        elif self._task is not None:
            self._task.cancel()

    # -- the session task -------------------------------------------------------------------

    async def run(self) -> None:
        try:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    ws = await self._connect()
            except asyncio.CancelledError:
                if self._closing:
                    return  # abandoned on purpose
                raise
            except Exception as e:  # every failure becomes a user-facing message
                if not self._closing:
                    f = classify(e, self.url, self.entra)
                    log.debug("session failed: %s (%r)", f.message, e)
                    self._closing = True
                    self._on_status(SessionFailed(f.code, f.message, f.retryable, f.retry_after_s))
                return
            if self._closing:
                return  # let go of while connecting; the finally below closes the socket
            self.ready = True
            self._on_status(SessionReady())
            writer = asyncio.create_task(self._write(ws))
            try:
                await self._read(ws)
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, OSError):
                    await writer
        finally:
            if self._ws is not None:
                await self._ws.close()

    async def _connect(self) -> ClientConnection:
        if not _is_loopback(self.url):
            await clock_set()
        k = keepalive(self._keepalive_s)
        self._ws = await NoRedirects(
            self.url,
            additional_headers=await self._headers(),
            user_agent_header=f"voice-device/{__version__}",
            compression=None,
            proxy=None if _is_loopback(self.url) else True,
            open_timeout=None,
            ping_interval=k["ping_interval"],
            ping_timeout=k["ping_timeout"],
            close_timeout=k["close_timeout"],
            max_size=MAX_MESSAGE_BYTES,
            max_queue=64,
        )
        ws = self._ws
        update = self._events.session_update(self._settings)
        trace.debug("→ %s", for_the_log(update))
        await ws.send(json.dumps(update))
        # Ready once the session exists (session.created) and has taken our settings
        # (session.updated): until then it runs on the service's defaults. An error that
        # names our update is a refusal of it; another that says so refuses the session.
        created = updated = False
        while not (created and updated):
            text = await ws.recv()
            if trace.isEnabledFor(logging.DEBUG):
                trace.debug("← %s", _for_the_log(text))
            ev = parse_server_event(text)
            if isinstance(ev, SessionCreated):
                self.session_id, created = ev.session_id, True
            elif isinstance(ev, SessionUpdated):
                updated = True
            elif isinstance(ev, ServerErrorEvent) and ev.event_id == update["event_id"]:
                raise Rejected(ev)
            elif isinstance(ev, ServerErrorEvent) and refuses(ev):
                raise Refused(ev)
            else:
                self._on_event(ev)
        return ws

    async def _write(self, ws: ClientConnection) -> None:
        """Send what is queued. A connection that drops under it is the reader's to report
        (it sees the same close): the writer just stops."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                text = await self._outgoing.get()
                if text is None:
                    await ws.close(1000, self.close_reason[:100])
                    return
                await ws.send(text)

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for text in ws:
                if trace.isEnabledFor(logging.DEBUG):
                    trace.debug("← %s", _for_the_log(text))
                self._on_event(parse_server_event(text))
        except ConnectionClosed:
            pass
        if not self._closing:
            self._lost(*why_closed(ws))

    def _lost(self, code: str, message: str, clean: bool = False) -> None:
        if self._closing:
            return
        self._closing = True
        log.debug("session lost: %s", message)
        self._on_status(SessionLost(code, message, clean))
        if self._ws is not None:
            self._closer = asyncio.ensure_future(self._ws.close())


def _for_the_log(text: str | bytes) -> str:
    try:
        return for_the_log(json.loads(text))
    except (ValueError, RecursionError):
        return f"<{len(text)} bytes of unreadable JSON>"


def refuses(ev: ServerErrorEvent) -> bool:
    """Whether an `error` before `session.created` means there will be no session: not the
    benign ones (a race, a notice), which the session outlives."""
    reaction = reaction_to(ev.code or ev.kind)
    return reaction in (Reaction.FATAL, Reaction.BACK_OFF)
