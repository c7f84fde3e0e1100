"""The events log: one JSON object per line, flushed per line, so tools can follow the device.

`{"t": seconds since start (monotonic), "audio_ms": position in the mic stream, "event": NAME, ...}`
Never audio, never secrets: only the fields passed in, which are names, numbers and codes.
Text (a server's error message) is cut to MAX_TEXT characters with any known secret
replaced, so a server cannot make the device write a secret, or without bound.
NAME is one of `EventName`: the log is a contract (README), and a name outside it is a bug.
"""

from __future__ import annotations

import json
import time
import typing
from pathlib import Path
from typing import IO, Any, Literal

from .adapters.systemd import REDACT

EventName = Literal[
    "ready",
    "state",
    "led",
    "wake",
    "earcon",
    "session_open",
    "session_closed",
    "turn_end",
    "audio_sent",
    "turn_commit",
    "turn_withdrawn",
    "reply_audio",
    "playback_start",
    "playback_end",
    "barge_in",
    "replay",
    "tool_call",
    "error",
    "recovered",
    "usage",
    "timer_set",
    "timer_ring",
    "timer_stop",
    "timer_missed",
    "announce",
    "arbitration",
    "mqtt",
    "stopped",
]
EVENT_NAMES: frozenset[str] = frozenset(typing.get_args(EventName))
MAX_TEXT = 300


class EventLog:
    def __init__(self, path: Path | None) -> None:
        self.origin = time.monotonic()
        self._file: IO[str] | None = None
        if path is not None:
            self._file = path.open("a", encoding="utf-8", buffering=1)

    def emit(self, event: EventName, audio_ms: int, **fields: Any) -> None:
        if event not in EVENT_NAMES:
            raise ValueError(f"{event!r} is not an event of the events log")
        if self._file is None:
            return
        record = {
            "t": round(time.monotonic() - self.origin, 4),
            "audio_ms": audio_ms,
            "event": event,
            **{
                k: REDACT.clean(v)[:MAX_TEXT] if isinstance(v, str) else v
                for k, v in fields.items()
            },
        }
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
