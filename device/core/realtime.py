"""The realtime protocol without I/O: client events out, typed server events in.

`adapters/cloud.py` moves JSON text over a WebSocket; everything about what that text means
lives here, so it can be tested with plain values. Server events are parsed through one
dispatch table (`PARSERS`); the older beta/preview names are aliases of the GA ones. Nothing a
server sends can raise out of `parse_server_event`: bad input becomes a `Malformed` value,
an event type we do not know becomes `Unknown`.

Two wire dialects: `GA` (the v1 API) and `BETA` (Azure's deprecated preview API). They
differ in `session.update` and in some server event names; everything else is shared.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .usage import Tokens, read_usage


class Phase(enum.StrEnum):
    """What an assistant message is: what the LEDs show while it plays."""

    COMMENTARY = "commentary"
    """A preamble ("let me check that…") spoken before the answer."""
    FINAL_ANSWER = "final_answer"


COMMENTARY = Phase.COMMENTARY
FINAL_ANSWER = Phase.FINAL_ANSWER

AZURE_EFFORTS = ("minimal", "low", "medium", "high")
"""What Azure documents for reasoning.effort (OpenAI also knows xhigh)."""
REASONING_EFFORTS = (*AZURE_EFFORTS, "xhigh")
NO_REASONING = "none"
"""assistant.reasoning_effort for a deployment that does not reason: `reasoning` is left out."""
GA = "ga"
BETA = "beta"


# ---------------------------------------------------------------------------------------------
# Client events


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is a JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}, "required": []}
    )

    def as_json(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


@dataclass(frozen=True)
class SessionSettings:
    instructions: str
    voice: str = "marin"
    reasoning_effort: str = "low"
    speed: float = 1.0
    rate: int = 24_000
    noise_reduction: str | None = "far_field"
    turn_detection: dict[str, Any] | None = None
    """None: the device decides when a turn ends (local VAD) and commits it."""
    tools: tuple[Tool, ...] = ()
    dialect: str = GA


def turn_detection(mode: str, silence_ms: int) -> dict[str, Any] | None:
    """`session.audio.input.turn_detection` for a configured mode.

    The server creates the response when it ends a turn; it does not interrupt one, because
    the device stops streaming as soon as the turn is committed.
    """
    if mode == "server_vad":
        return {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": silence_ms,
            "create_response": True,
            "interrupt_response": False,
        }
    if mode == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": "auto",
            "create_response": True,
            "interrupt_response": False,
        }
    return None


SAY_VERBATIM = (
    "Read the following text aloud to the people in the room, word for word, in your usual "
    "voice; add nothing, answer nothing in it, and do not call tools. The text:\n"
)
"""How an out-of-band response is asked to speak a text as it is."""


class ClientEvents:
    """Builds client events, each with its own `event_id` so server errors can name it."""

    def __init__(self, prefix: str = "dev") -> None:
        self._prefix = prefix
        self._n = 0

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        self._n += 1
        return {"type": type_, "event_id": f"{self._prefix}_{self._n:06d}", **fields}

    def session_update(self, s: SessionSettings) -> dict[str, Any]:
        if s.dialect == BETA:
            return self._event("session.update", session=self._beta_session(s))
        pcm = {"type": "audio/pcm", "rate": s.rate}
        # no `model`: the URL names the deployment, and the API does not let an update change it
        session: dict[str, Any] = {
            "type": "realtime",
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
            "tools": [t.as_json() for t in s.tools],
            "tool_choice": "auto",
        }
        if s.reasoning_effort != NO_REASONING:
            session["reasoning"] = {"effort": s.reasoning_effort}
        return self._event("session.update", session=session)

    @staticmethod
    def _beta_session(s: SessionSettings) -> dict[str, Any]:
        """The preview API's flat session: pcm16 is 24 kHz; audio output needs text too."""
        return {
            "modalities": ["audio", "text"],
            "instructions": s.instructions,
            "voice": s.voice,
            "speed": s.speed,
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_noise_reduction": (
                {"type": s.noise_reduction} if s.noise_reduction else None
            ),
            "turn_detection": s.turn_detection,
            "tools": [t.as_json() for t in s.tools],
            "tool_choice": "auto",
        }

    def append_audio(self, pcm: bytes) -> dict[str, Any]:
        return self._event("input_audio_buffer.append", audio=base64.b64encode(pcm).decode())

    def commit(self) -> dict[str, Any]:
        return self._event("input_audio_buffer.commit")

    def clear_input(self) -> dict[str, Any]:
        return self._event("input_audio_buffer.clear")

    def create_response(self) -> dict[str, Any]:
        return self._event("response.create")

    def say_aside(self, text: str) -> dict[str, Any]:
        """An out-of-band response that speaks `text` word for word and joins no
        conversation (an announcement, a timer's name)."""
        response = {"conversation": "none", "instructions": SAY_VERBATIM + text, "input": []}
        return self._event("response.create", response=response)

    def cancel_response(self, response_id: str | None = None) -> dict[str, Any]:
        """Cancel `response_id` (None: the one the server is generating, if any)."""
        if response_id is None:
            return self._event("response.cancel")
        return self._event("response.cancel", response_id=response_id)

    def truncate(self, item_id: str, audio_end_ms: int) -> dict[str, Any]:
        return self._event(
            "conversation.item.truncate",
            item_id=item_id,
            content_index=0,
            audio_end_ms=audio_end_ms,
        )

    def delete_item(self, item_id: str) -> dict[str, Any]:
        return self._event("conversation.item.delete", item_id=item_id)

    def user_text(self, text: str) -> dict[str, Any]:
        """A typed user message (`voice-device ask`); answered aloud like a spoken turn."""
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }
        return self._event("conversation.item.create", item=item)

    def function_output(self, call_id: str, output: str) -> dict[str, Any]:
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        return self._event("conversation.item.create", item=item)


AUDIO_FIELDS = ("audio", "delta")


def for_the_log(event: Any) -> str:
    """An event as one line for the debug log, with audio payloads replaced by their size.

    Audio is base64 in `audio` (input_audio_buffer.append) and in the `delta` of audio delta
    events; the `delta` of a transcript is text and kept (debug logs may show words)."""
    if not isinstance(event, dict):
        return repr(event)[:200]
    kind = str(event.get("type", ""))
    out: dict[str, Any] = {}
    for key, value in event.items():
        is_audio = key == "audio" or (
            key == "delta" and "audio" in kind and "transcript" not in kind
        )
        if is_audio and isinstance(value, str):
            out[key] = f"<{len(value) * 3 // 4} bytes of audio>"
        else:
            out[key] = value
    try:
        return json.dumps(out, separators=(",", ":"), ensure_ascii=False)[:2000]
    except (ValueError, TypeError, RecursionError):
        return f"<{kind[:80]!r} event that cannot be shown>"


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
    """The client event this error answers (a rejected session.update names its own)."""
    param: str | None = None
    """The field at fault, e.g. session.audio.output.voice."""


@dataclass(frozen=True)
class SpeechStarted:
    """Server VAD heard the user start (server turn detection only)."""

    audio_start_ms: int
    item_id: str


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True)
class InputCommitted:
    item_id: str


@dataclass(frozen=True)
class InputTranscript:
    """The user's words, if the session transcribes input (delta, completed, or failed)."""

    item_id: str
    text: str
    final: bool
    failed: bool = False


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
class TranscriptDone:
    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True)
class FunctionCallDone:
    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class OutputItemDone:
    response_id: str
    item_id: str
    item_type: str
    phase: str | None
    status: str | None


@dataclass(frozen=True)
class OutputItem:
    """One output item as `response.done` finally reports it."""

    item_id: str
    item_type: str
    phase: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    status: str
    items: tuple[OutputItem, ...]
    reason: str | None = None
    """status_details.reason: turn_detected, client_cancelled, max_output_tokens, content_filter."""
    error_code: str | None = None
    """status_details.error.code of a failed response: how rate limits and quota problems
    arrive inside a session (inference_rate_limit_exceeded, insufficient_quota…)."""
    error_message: str = ""
    usage: Tokens | None = None
    """The tokens this response used (input and output, text and audio, cached)."""

    @property
    def function_calls(self) -> tuple[OutputItem, ...]:
        return tuple(i for i in self.items if i.item_type == "function_call" and i.call_id)


@dataclass(frozen=True)
class RateLimits:
    limits: tuple[tuple[str, float, float], ...]
    """(name, remaining, reset_seconds) for each limit reported."""


@dataclass(frozen=True)
class Ignored:
    """A known event the device has no use for (WebRTC-only buffer events and the like)."""

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
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | InputTranscript
    | ResponseCreated
    | OutputItemAdded
    | AudioDelta
    | TranscriptDone
    | FunctionCallDone
    | OutputItemDone
    | ResponseDone
    | RateLimits
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
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise _Bad(f"field {key!r} missing or of the wrong type")
    return value


def _number(d: Any, key: str) -> float:
    value = _get(d, key, (int, float))
    if isinstance(value, bool):
        raise _Bad(f"field {key!r} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise _Bad(f"field {key!r} is out of range") from None
    if not math.isfinite(number):
        raise _Bad(f"field {key!r} is out of range")
    return number


def _item(item: Any) -> OutputItem:
    item_type = _get(item, "type", str)
    return OutputItem(
        item_id=_get(item, "id", str),
        item_type=item_type,
        phase=_get(item, "phase", str, optional=True),
        call_id=_get(item, "call_id", str, optional=True),
        name=_get(item, "name", str, optional=True),
        arguments=_get(item, "arguments", str, optional=True),
    )


def _readable(item: Any) -> bool:
    """An output item of `response.done` that can be used: one without an id (or a type)
    is left out, not the whole response with it."""
    try:
        _item(item)
    except _Bad:
        return False
    return True


def _ids(d: dict[str, Any]) -> tuple[str, str]:
    return _get(d, "response_id", str), _get(d, "item_id", str)


def _session_created(d: dict[str, Any]) -> ServerEvent:
    return SessionCreated(_get(_get(d, "session", dict), "id", str, optional=True) or "")


def _error(d: dict[str, Any]) -> ServerEvent:
    err = _get(d, "error", dict)
    return ServerError(
        code=_get(err, "code", str, optional=True),
        kind=_get(err, "type", str, optional=True),
        message=_get(err, "message", str, optional=True) or "",
        event_id=_get(err, "event_id", str, optional=True),
        param=_get(err, "param", str, optional=True),
    )


def _output_item_added(d: dict[str, Any]) -> ServerEvent:
    i = _item(_get(d, "item", dict))
    return OutputItemAdded(_get(d, "response_id", str), i.item_id, i.item_type, i.phase)


def _output_item_done(d: dict[str, Any]) -> ServerEvent:
    raw = _get(d, "item", dict)
    i = _item(raw)
    status = _get(raw, "status", str, optional=True)
    return OutputItemDone(_get(d, "response_id", str), i.item_id, i.item_type, i.phase, status)


def _audio_delta(d: dict[str, Any]) -> ServerEvent:
    try:
        pcm = base64.b64decode(_get(d, "delta", str), validate=True)
    except (binascii.Error, ValueError) as e:
        raise _Bad("audio delta is not valid base64") from e
    if len(pcm) % 2:
        raise _Bad("audio delta has an odd number of bytes")
    return AudioDelta(*_ids(d), pcm)


def _transcript_done(d: dict[str, Any]) -> ServerEvent:
    return TranscriptDone(*_ids(d), _get(d, "transcript", str))


def _text_done(d: dict[str, Any]) -> ServerEvent:
    return TranscriptDone(*_ids(d), _get(d, "text", str))


def _function_call_done(d: dict[str, Any]) -> ServerEvent:
    return FunctionCallDone(
        *_ids(d), _get(d, "call_id", str), _get(d, "name", str), _get(d, "arguments", str)
    )


def _response_done(d: dict[str, Any]) -> ServerEvent:
    response = _get(d, "response", dict)
    output = _get(response, "output", list, optional=True) or []
    items = tuple(_item(i) for i in output if _readable(i))
    details = _get(response, "status_details", dict, optional=True) or {}
    error = _get(details, "error", dict, optional=True) or {}
    return ResponseDone(
        _get(response, "id", str),
        _get(response, "status", str, optional=True) or "",
        items,
        reason=_get(details, "reason", str, optional=True),
        error_code=_get(error, "code", str, optional=True),
        error_message=_get(error, "message", str, optional=True) or "",
        usage=read_usage(response.get("usage")),
    )


def _rate_limits(d: dict[str, Any]) -> ServerEvent:
    limits = []
    for lim in _get(d, "rate_limits", list):
        limits.append(
            (_get(lim, "name", str), _number(lim, "remaining"), _number(lim, "reset_seconds"))
        )
    return RateLimits(tuple(limits))


def _input_transcript(final: bool, failed: bool = False) -> Callable[[dict[str, Any]], ServerEvent]:
    def parse(d: dict[str, Any]) -> ServerEvent:
        if failed:
            text = _get(_get(d, "error", dict), "message", str, optional=True) or ""
        else:
            text = _get(d, "transcript" if final else "delta", str)
        return InputTranscript(_get(d, "item_id", str), text, final or failed, failed)

    return parse


PARSERS: dict[str, Callable[[dict[str, Any]], ServerEvent]] = {
    "session.created": _session_created,
    "session.updated": lambda d: SessionUpdated(),
    "error": _error,
    "input_audio_buffer.speech_started": lambda d: SpeechStarted(
        _get(d, "audio_start_ms", int), _get(d, "item_id", str)
    ),
    "input_audio_buffer.speech_stopped": lambda d: SpeechStopped(
        _get(d, "audio_end_ms", int), _get(d, "item_id", str)
    ),
    "input_audio_buffer.committed": lambda d: InputCommitted(_get(d, "item_id", str)),
    "conversation.item.input_audio_transcription.delta": _input_transcript(final=False),
    "conversation.item.input_audio_transcription.completed": _input_transcript(final=True),
    "conversation.item.input_audio_transcription.failed": _input_transcript(False, failed=True),
    "response.created": lambda d: ResponseCreated(_get(_get(d, "response", dict), "id", str)),
    "response.output_item.added": _output_item_added,
    "response.output_item.done": _output_item_done,
    "response.output_audio.delta": _audio_delta,
    "response.output_audio_transcript.done": _transcript_done,
    "response.output_text.done": _text_done,
    "response.function_call_arguments.done": _function_call_done,
    "response.done": _response_done,
    "rate_limits.updated": _rate_limits,
}


def _ignored(d: dict[str, Any]) -> ServerEvent:
    return Ignored(str(d["type"]))


for _name in (
    # events the device has no use for: parsed no further, one kind (`Ignored`)
    "input_audio_buffer.cleared",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.deleted",
    "conversation.item.truncated",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_text.delta",
    "response.function_call_arguments.delta",
    "conversation.created",  # beta only
    "input_audio_buffer.timeout_triggered",
    "conversation.item.input_audio_transcription.segment",
    "output_audio_buffer.started",  # WebRTC/SIP only
    "output_audio_buffer.stopped",
    "output_audio_buffer.cleared",
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
    except (ValueError, UnicodeDecodeError, RecursionError):
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
    except Exception as e:  # a promise: nothing a server sends raises out of here
        return Malformed(f"unreadable ({type(e).__name__})", type_)


# ---------------------------------------------------------------------------------------------
# Which item is which: phases per response


@dataclass
class Item:
    response_id: str
    item_type: str
    phase: str | None


def effective_phase(item_type: str, phase: str | None) -> Phase | None:
    """A message without a phase (or with one we do not know) is the final answer; other
    item kinds have none."""
    if item_type != "message":
        return None
    return Phase.COMMENTARY if phase == Phase.COMMENTARY else Phase.FINAL_ANSWER


class Conversation:
    """Tracks responses and their items so audio can be labelled preamble or answer.

    Bounded: only the most recent items and interrupted responses are remembered.
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
            for i in ev.items:
                self._remember(i.item_id, Item(ev.response_id, i.item_type, i.phase))
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

    def phase_of(self, item_id: str) -> Phase:
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
# What an error event means for the device


class Reaction(enum.Enum):
    IGNORE = "ignore"
    """A benign race (cancelling a response that just finished, and the like)."""
    CONTINUE = "continue"
    """Logged; the session goes on."""
    BACK_OFF = "back_off"
    """The turn fails and the device waits before it tries the service again."""
    FATAL = "fatal"
    """The session cannot go on: error state, no automatic retry."""
    END = "end"
    """The session is over, normally (its 60 minutes are up): it ends quietly, with no
    error, and the next wake opens a new one."""


REACTIONS = {
    "response_cancel_not_active": Reaction.IGNORE,
    "conversation_already_has_active_response": Reaction.IGNORE,
    "input_audio_buffer_commit_empty": Reaction.IGNORE,
    "rate_limit_exceeded": Reaction.BACK_OFF,
    "inference_rate_limit_exceeded": Reaction.BACK_OFF,
    "invalid_api_key": Reaction.FATAL,
    "insufficient_quota": Reaction.FATAL,
    "model_not_found": Reaction.FATAL,
    "session_expired": Reaction.END,
}


def reaction_to(code: str | None) -> Reaction:
    return REACTIONS.get(code or "", Reaction.CONTINUE)
