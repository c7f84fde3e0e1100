"""What the emulated assistant says, how it delivers it, and what goes wrong on purpose.

A scenario is built from CLI flags or read from a TOML or JSON file, for example:

    preambles = ["One moment.", "Let me look that up."]
    answer = "It is sunny."
    tool_call = "get_current_time"
    tool_arguments = '{}'
    speedup = 0.8        # slower than real time
    burst = 5            # five chunks at once, then a pause

    [faults]
    drop_after = 40      # cut the TCP connection after 40 server events
    connections = 1      # only the first connection misbehaves
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Faults:
    reject_status: int | None = None
    """Refuse the WebSocket handshake with this HTTP status (401, 403, 404, 429, 503…)."""
    retry_after_s: int | None = None
    """Sent as Retry-After with a 429 or 503 rejection."""
    drop_after: int | None = None
    """Cut the TCP connection (no close frame) after this many server events."""
    stall_after: int | None = None
    """After this many server events, go silent and stop reading; the TCP connection stays open."""
    stall_s: float = 60.0
    """How long a stall lasts before the emulator cuts the connection (as a load balancer in
    front of a hung server would). A stalled emulator cannot hear the client hang up, so
    without this limit it would hold every stalled connection for as long as it runs."""
    error_code: str | None = None
    """Answer response.create with an `error` event of this code instead of a response."""
    garbage: bool = False
    """Mix malformed JSON, an unknown event type and a broken audio delta into each response."""
    expire_after_s: float | None = None
    """Send the 60-minute `session_expired` error this soon, then close."""
    huge_event: bool = False
    """Send one 5 MiB event in each response (a client must refuse it, not buffer it)."""
    fail_response: str | None = None
    """End each response with status failed and this status_details.error.code (as rate
    limits and quota problems arrive inside a session), after the preamble."""
    reject_update: str | None = None
    """Refuse session.update with an `error` naming this field (e.g.
    `session.audio.output.voice`) and the update's event_id, as Azure does; the session then
    runs on the service's defaults."""
    connections: int | None = None
    """Misbehave on the first N connections only (None: on all), so a test can recover."""


@dataclass
class Scenario:
    preambles: list[str] = field(default_factory=lambda: ["Let me check the forecast."])
    """Commentary items spoken before the answer (zero or more)."""
    answer: str = (
        "Today looks sunny, with a high of twenty one degrees and a light breeze in the afternoon."
    )
    tool_call: str | None = None
    """Call this function after the preambles and give the answer in a second response."""
    tool_arguments: str = "{}"
    """The call's arguments, a JSON string (`{"seconds": 240, "name": "tea"}`)."""
    think_ms: int = 250
    """Silence before the first item, as the model reasons."""
    chunk_ms: int = 100
    """Audio per `response.output_audio.delta`."""
    speedup: float = 4.0
    """How much faster than real time audio is sent (below 1: slower than real time)."""
    burst: int = 1
    """Chunks sent back to back before each pause (bursty delivery)."""
    session_delay_ms: int = 0
    """Delay before `session.created` (a slow connect)."""
    phase_on_done: bool = False
    """Say each item's `phase` only on `response.output_item.done` (and `response.done`),
    never on `.added`: no SDK documents where the service puts it."""
    faults: Faults = field(default_factory=Faults)

    def faults_for(self, connection: int) -> Faults:
        limit = self.faults.connections
        return self.faults if limit is None or connection <= limit else Faults()


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        if key == "faults":
            value = _build(Faults, value, f"{where} [faults]")
        elif hints[key] is float and isinstance(value, int):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_scenario(path: Path) -> Scenario:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    scenario: Scenario = _build(Scenario, data, str(path))
    return scenario
