"""Which of the devices that heard the same wake answers (several devices on one broker).

On a wake word each device publishes a claim (how loud it heard the speech over the wake
word, the wake score) and listens to the others' for a short window counted from its own
wake. The claims are ranked the same way on every device (`Claim.rank`), so devices that
hear each other's claims agree on one winner without talking further. The winner then says
"taken", which settles the case where the claims crossed late: a device whose window ends
after someone took the wake yields to it, whatever its rank.

A device that hears nothing in its window goes ahead (a single device loses at most the
window; the pre-roll keeps every sample). With the broker gone, each device decides alone.
Times here are the device's own monotonic seconds, passed in: claims carry the claimant's
clock only for the log, since two devices' clocks cannot be compared.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any

LATE_WAKE_S = 1.0
"""A "taken" heard up to this long before our own wake still wins over it: the same words
may wake a far device a little later than a near one (the score crosses its threshold
later when the speech is quieter)."""
MAX_REMEMBERED = 64
"""Messages kept from other devices (a flood from a broken peer cannot grow memory)."""
MAX_MESSAGE_BYTES = 512


@dataclass(frozen=True)
class Claim:
    device: str
    level_db: float
    """Speech level over the wake word, dBFS (rounded to 0.1 dB: compared as sent)."""
    score: float
    """The wake word's score (rounded to 0.001)."""
    seq: int
    """The claimant's count of wakes, so a "taken" names the claim it settles."""
    at_ms: int = 0
    """The claimant's monotonic clock at its wake (for the log only)."""

    @staticmethod
    def make(device: str, level_db: float, score: float, seq: int, at_ms: int = 0) -> Claim:
        return Claim(device, round(level_db, 1), round(score, 3), seq, at_ms)

    def rank(self) -> tuple[float, float, str]:
        """Louder wins (the device nearest the speaker), then the surer wake word, then the
        device id, so that no two claims tie."""
        return (self.level_db, self.score, self.device)


@dataclass(frozen=True)
class Taken:
    device: str
    seq: int


Message = Claim | Taken


def encode(m: Message) -> bytes:
    if isinstance(m, Claim):
        body: dict[str, Any] = {
            "claim": m.device,
            "level_db": m.level_db,
            "score": m.score,
            "seq": m.seq,
            "at_ms": m.at_ms,
        }
    else:
        body = {"taken": m.device, "seq": m.seq}
    return json.dumps(body, separators=(",", ":")).encode()


def decode(payload: bytes) -> Message | None:
    """A message from another device, or None for anything malformed (ignored)."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    if isinstance(body.get("taken"), str) and body["taken"]:
        return Taken(body["taken"], seq)
    device, level, score = body.get("claim"), body.get("level_db"), body.get("score")
    at_ms = body.get("at_ms", 0)
    numbers = (level, score, at_ms)
    if not isinstance(device, str) or not device:
        return None
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in numbers):
        return None
    if not (-200.0 <= float(level) <= 20.0 and 0.0 <= float(score) <= 1.0):  # type: ignore[arg-type]
        return None
    return Claim.make(device, float(level), float(score), seq, int(at_ms))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Verdict:
    won: bool
    winner: str
    """Ourselves if we won; else a device that outranks us or took the wake (the loss is
    known as soon as one such is heard, so not always the one that answers in the end)."""
    why: str
    """alone (no other claim), best (ours ranked first), outranked, or taken."""
    rivals: int
    """Other devices' claims counted."""


class Board:
    """What this device heard from the others, and its own contest when one is open."""

    def __init__(self, device: str, window_s: float) -> None:
        self.device = device
        self.window_s = window_s
        self._heard: deque[tuple[float, Message]] = deque(maxlen=MAX_REMEMBERED)
        self.own: Claim | None = None
        self.woke_at = 0.0

    def hear(self, m: Message, at: float) -> None:
        """A message from the shared topic (our own echoes are dropped)."""
        if m.device != self.device:
            self._heard.append((at, m))

    def open(self, own: Claim, at: float) -> None:
        self.own, self.woke_at = own, at

    def close(self) -> None:
        self.own = None

    @property
    def deadline(self) -> float:
        return self.woke_at + self.window_s

    def verdict(self, now: float, final: bool) -> Verdict | None:
        """The contest's outcome as of `now`: a loss as soon as it is certain, a win only
        at the end of the window (`final`), None while it is still open."""
        own = self.own
        assert own is not None
        start = self.woke_at
        rivals: dict[str, Claim] = {}
        for at, m in self._heard:
            if isinstance(m, Taken) and start - LATE_WAKE_S <= at <= now:
                return Verdict(False, m.device, "taken", len(rivals))
            if isinstance(m, Claim) and start - self.window_s <= at <= start + self.window_s:
                rivals[m.device] = m  # (a device's newest claim counts)
        best = max([own, *rivals.values()], key=Claim.rank)
        if best is not own:
            return Verdict(False, best.device, "outranked", len(rivals))
        if not final and now < self.deadline:
            return None
        return Verdict(True, own.device, "best" if rivals else "alone", len(rivals))
