"""The realtime protocol without I/O: client events out, typed server events in.

`adapters/cloud.py` moves JSON text over a WebSocket; everything about what that text means
lives here, so it can be tested with plain values. Server events are parsed through one
dispatch table; the older beta/preview names are aliases of the GA ones. Nothing a server
sends can raise out of `parse_server_event`: bad input becomes a `Malformed` value.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COMMENTARY = "commentary"
FINAL_ANSWER = "final_answer"
PHASES = (COMMENTARY, FINAL_ANSWER)

REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")


# ---------------------------------------------------------------------------------------------
# Client events


@dataclass(frozen=True)
class SessionSettings:
    model: str
    instructions: str
    voice: str = "marin"
    reasoning_effort: str = "low"
    speed: float = 1.0
    rate: int = 24_000
    noise_reduction: str | None = "far_field"
    turn_detection: dict[str, Any] | None = None
    """None: the device decides when a turn ends (local VAD) and commits it."""


class ClientEvents:
    """Builds client events, each with its own `event_id` so server errors can name it."""

    def __init__(self, prefix: str = "dev") -> None:
        self._prefix = prefix
        self._n = 0

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        self._n += 1
        return {"type": type_, "event_id": f"{self._prefix}_{self._n:06d}", **fields}

    def session_update(self, s: SessionSettings) -> dict[str, Any]:
        pcm = {"type": "audio/pcm", "rate": s.rate}
        session: dict[str, Any] = {
            "type": "realtime",
            "model": s.model,
            "output_modalities": ["audio"],
            "instructions": s.instructions,
            "audio": {
                "input": {
                    "format": pcm,
                    "turn_detection": s.turn_detection,
                    "transcription": None,
                    "noise_reduction": ({"type": s.noise_reduction} if s.noise_reduction else None),
                },
                "output": {"format": pcm, "voice": s.voice, "speed": s.speed},
            },
            "reasoning": {"effort": s.reasoning_effort},
            "tools": [],
            "tool_choice": "auto",
        }
        return self._event("session.update", session=session)

    def append_audio(self, pcm: bytes) -> dict[str, Any]:
        return self._event("input_audio_buffer.append", audio=base64.b64encode(pcm).decode())

    def commit(self) -> dict[str, Any]:
        return self._event("input_audio_buffer.commit")

    def clear_input(self) -> dict[str, Any]:
        return self._event("input_audio_buffer.clear")

    def create_response(self) -> dict[str, Any]:
        return self._event("response.create")

    def cancel_response(self) -> dict[str, Any]:
        return self._event("response.cancel")

    def truncate(self, item_id: str, audio_end_ms: int) -> dict[str, Any]:
        return self._event(
            "conversation.item.truncate",
            item_id=item_id,
            content_index=0,
            audio_end_ms=audio_end_ms,
        )

    def delete_item(self, item_id: str) -> dict[str, Any]:
        return self._event("conversation.item.delete", item_id=item_id)


# ---------------------------------------------------------------------------------------------
# Server events, as typed values


@dataclass(frozen=True)
class SessionCreated:
    session_id: str


@dataclass(frozen=True)
class SessionUpdated:
    pass


@dataclass(frozen=True)
class ServerError:
    code: str | None
    kind: str | None
    message: str
    event_id: str | None


@dataclass(frozen=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True)
class OutputItemAdded:
    response_id: str
    item_id: str
    item_type: str
    phase: str | None


@dataclass(frozen=True)
class AudioDelta:
    response_id: str
    item_id: str
    pcm: bytes

    def __repr__(self) -> str:  # never put audio in a log line
        return (
            f"AudioDelta(response_id={self.response_id!r}, item_id={self.item_id!r}, "
            f"bytes={len(self.pcm)})"
        )


@dataclass(frozen=True)
class AudioDone:
    response_id: str
    item_id: str


@dataclass(frozen=True)
class TranscriptDone:
    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True)
class OutputItemDone:
    response_id: str
    item_id: str
    item_type: str
    phase: str | None
    status: str | None


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    status: str
    items: tuple[tuple[str, str, str | None], ...]
    """(item_id, item_type, phase) of each output item, as the server finally reports them."""


@dataclass(frozen=True)
class InputCommitted:
    item_id: str


@dataclass(frozen=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class Ignored:
    """A known event the device has no use for (transcript deltas, rate limits…)."""

    type: str


@dataclass(frozen=True)
class Unknown:
    type: str


@dataclass(frozen=True)
class Malformed:
    reason: str
    type: str | None = None


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | ServerError
    | ResponseCreated
    | OutputItemAdded
    | AudioDelta
    | AudioDone
    | TranscriptDone
    | OutputItemDone
    | ResponseDone
    | InputCommitted
    | ItemTruncated
    | Ignored
    | Unknown
    | Malformed
)


class _Bad(Exception):
    pass


def _get(d: Any, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    if not isinstance(d, dict):
        raise _Bad(f"expected an object around {key!r}")
    value = d.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _Bad(f"field {key!r} missing or of the wrong type")
    return value


def _item_fields(item: Any) -> tuple[str, str, str | None]:
    item_id = _get(item, "id", str)
    item_type = _get(item, "type", str)
    phase = _get(item, "phase", str, optional=True)
    return item_id, item_type, phase


def _session_created(d: dict[str, Any]) -> ServerEvent:
    session = _get(d, "session", dict)
    return SessionCreated(_get(session, "id", str, optional=True) or "")


def _error(d: dict[str, Any]) -> ServerEvent:
    err = _get(d, "error", dict)
    return ServerError(
        code=_get(err, "code", str, optional=True),
        kind=_get(err, "type", str, optional=True),
        message=_get(err, "message", str, optional=True) or "",
        event_id=_get(err, "event_id", str, optional=True),
    )


def _response_created(d: dict[str, Any]) -> ServerEvent:
    return ResponseCreated(_get(_get(d, "response", dict), "id", str))


def _output_item_added(d: dict[str, Any]) -> ServerEvent:
    item_id, item_type, phase = _item_fields(_get(d, "item", dict))
    return OutputItemAdded(_get(d, "response_id", str), item_id, item_type, phase)


def _output_item_done(d: dict[str, Any]) -> ServerEvent:
    item = _get(d, "item", dict)
    item_id, item_type, phase = _item_fields(item)
    status = _get(item, "status", str, optional=True)
    return OutputItemDone(_get(d, "response_id", str), item_id, item_type, phase, status)


def _audio_delta(d: dict[str, Any]) -> ServerEvent:
    try:
        pcm = base64.b64decode(_get(d, "delta", str), validate=True)
    except (binascii.Error, ValueError) as e:
        raise _Bad("audio delta is not valid base64") from e
    if len(pcm) % 2:
        raise _Bad("audio delta has an odd number of bytes")
    return AudioDelta(_get(d, "response_id", str), _get(d, "item_id", str), pcm)


def _audio_done(d: dict[str, Any]) -> ServerEvent:
    return AudioDone(_get(d, "response_id", str), _get(d, "item_id", str))


def _transcript_done(d: dict[str, Any]) -> ServerEvent:
    return TranscriptDone(
        _get(d, "response_id", str), _get(d, "item_id", str), _get(d, "transcript", str)
    )


def _response_done(d: dict[str, Any]) -> ServerEvent:
    response = _get(d, "response", dict)
    output = _get(response, "output", list, optional=True) or []
    items = tuple(_item_fields(i) for i in output)
    return ResponseDone(
        _get(response, "id", str), _get(response, "status", str, optional=True) or "", items
    )


def _committed(d: dict[str, Any]) -> ServerEvent:
    return InputCommitted(_get(d, "item_id", str))


def _truncated(d: dict[str, Any]) -> ServerEvent:
    return ItemTruncated(_get(d, "item_id", str), _get(d, "audio_end_ms", int))


def _ignored(d: dict[str, Any]) -> ServerEvent:
    return Ignored(str(d["type"]))


PARSERS: dict[str, Callable[[dict[str, Any]], ServerEvent]] = {
    "session.created": _session_created,
    "session.updated": lambda d: SessionUpdated(),
    "error": _error,
    "response.created": _response_created,
    "response.output_item.added": _output_item_added,
    "response.output_item.done": _output_item_done,
    "response.output_audio.delta": _audio_delta,
    "response.output_audio.done": _audio_done,
    "response.output_audio_transcript.done": _transcript_done,
    "response.done": _response_done,
    "input_audio_buffer.committed": _committed,
    "conversation.item.truncated": _truncated,
}
for _name in (
    "conversation.created",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.deleted",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
    "conversation.item.input_audio_transcription.segment",
    "input_audio_buffer.cleared",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.timeout_triggered",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_audio_transcript.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "rate_limits.updated",
):
    PARSERS[_name] = _ignored

ALIASES = {
    # beta / Azure preview names → GA names
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}


def parse_server_event(text: str | bytes) -> ServerEvent:
    try:
        d = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return Malformed("not JSON")
    if not isinstance(d, dict):
        return Malformed("not an object")
    name = d.get("type")
    if not isinstance(name, str):
        return Malformed("no event type")
    type_ = ALIASES.get(name, name)
    parser = PARSERS.get(type_)
    if parser is None:
        return Unknown(name[:80])
    try:
        return parser(d)
    except _Bad as e:
        return Malformed(str(e), type_)


# ---------------------------------------------------------------------------------------------
# Which item is which: phases per response


@dataclass
class Item:
    response_id: str
    item_type: str
    phase: str | None


def effective_phase(item_type: str, phase: str | None) -> str | None:
    """A message without a phase is the final answer; other item kinds have none."""
    if item_type != "message":
        return None
    return phase if phase in PHASES else FINAL_ANSWER


class Conversation:
    """Tracks responses and their items so audio can be labelled preamble or answer.

    Bounded: only the most recent items are remembered.
    """

    MAX_ITEMS = 64

    def __init__(self) -> None:
        self.active_response: str | None = None
        self._items: OrderedDict[str, Item] = OrderedDict()
        self._discarded: OrderedDict[str, None] = OrderedDict()

    def apply(self, ev: ServerEvent) -> None:
        if isinstance(ev, ResponseCreated):
            self.active_response = ev.response_id
        elif isinstance(ev, OutputItemAdded | OutputItemDone):
            self._remember(ev.item_id, Item(ev.response_id, ev.item_type, ev.phase))
        elif isinstance(ev, ResponseDone):
            for item_id, item_type, phase in ev.items:
                self._remember(item_id, Item(ev.response_id, item_type, phase))
            if self.active_response == ev.response_id:
                self.active_response = None

    def _remember(self, item_id: str, item: Item) -> None:
        known = self._items.get(item_id)
        if known is not None and item.phase is None:
            item.phase = known.phase  # a later event without phase does not erase it
        self._items[item_id] = item
        self._items.move_to_end(item_id)
        while len(self._items) > self.MAX_ITEMS:
            self._items.popitem(last=False)

    def phase_of(self, item_id: str) -> str:
        item = self._items.get(item_id)
        if item is None:
            return FINAL_ANSWER
        return effective_phase(item.item_type, item.phase) or FINAL_ANSWER

    def discard(self, response_id: str) -> None:
        """The user interrupted: any further audio of this response must not be played."""
        self._discarded[response_id] = None
        while len(self._discarded) > self.MAX_ITEMS:
            self._discarded.popitem(last=False)

    def audible(self, response_id: str) -> bool:
        return response_id not in self._discarded


# ---------------------------------------------------------------------------------------------
# What an error code means for the device

BENIGN_ERRORS = frozenset(
    {
        "response_cancel_not_active",
        "conversation_already_has_active_response",
        "input_audio_buffer_commit_empty",
    }
)
FATAL_ERRORS = frozenset(
    {"invalid_api_key", "insufficient_quota", "model_not_found", "session_expired"}
)


def error_is_fatal(code: str | None) -> bool:
    """A fatal error ends the session; anything else is logged and the session goes on."""
    return code is not None and code in FATAL_ERRORS
