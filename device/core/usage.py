"""What the answers cost: the tokens each `response.done` reports, summed per session, day and
month, and priced.

Plain values only: reading the service's `usage` object (tolerantly: a missing or odd field
counts as 0), adding, pricing, and the ledger of days and months the device keeps in its state
directory (bounded: the last `KEEP_DAYS` days and `KEEP_MONTHS` months).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_TOKENS = 10**9
"""More than any one response can report: a larger (or negative, or fractional) count is
not believed."""
KEEP_DAYS = 62
KEEP_MONTHS = 24


@dataclass(frozen=True)
class Tokens:
    text_in: int = 0
    audio_in: int = 0
    cached_in: int = 0
    """Of text_in + audio_in, the part served from the prompt cache (billed far lower)."""
    text_out: int = 0
    audio_out: int = 0
    responses: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
        return Tokens(*(a + b for a, b in pairs))

    @property
    def total(self) -> int:
        return self.text_in + self.audio_in + self.text_out + self.audio_out

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tokens:
        return cls(**{f.name: _count(d.get(f.name)) for f in dataclasses.fields(cls)})


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        return 0
    return value


def _table(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = d.get(key)
    return value if isinstance(value, Mapping) else {}


def read_usage(usage: object) -> Tokens | None:
    """A `response.done`'s `usage`: input/output tokens split into text and audio, with the
    cached part of the input. None when there is none (an older server, or a cancelled
    response that reports none). Totals without details count as text."""
    if not isinstance(usage, Mapping):
        return None
    inp, out = _table(usage, "input_token_details"), _table(usage, "output_token_details")
    text_in, audio_in = _count(inp.get("text_tokens")), _count(inp.get("audio_tokens"))
    text_out, audio_out = _count(out.get("text_tokens")), _count(out.get("audio_tokens"))
    if not inp:
        text_in = _count(usage.get("input_tokens"))
    if not out:
        text_out = _count(usage.get("output_tokens"))
    cached = min(_count(inp.get("cached_tokens")), text_in + audio_in)
    return Tokens(text_in, audio_in, cached, text_out, audio_out, 1)


@dataclass(frozen=True)
class Prices:
    """Per million tokens, in `currency`. The defaults are gpt-realtime's list prices (USD);
    Azure's depend on the region and the agreement: set yours from the pricing page."""

    text_in: float = 4.0
    audio_in: float = 32.0
    cached_in: float = 0.4
    text_out: float = 16.0
    audio_out: float = 64.0
    currency: str = "USD"

    def cost(self, t: Tokens) -> float:
        """Cached input at the cached price, taken from audio first (it is most of a spoken
        conversation's prompt), the rest at full price."""
        cached_audio = min(t.cached_in, t.audio_in)
        cached_text = min(t.cached_in - cached_audio, t.text_in)
        per_token = (
            (t.text_in - cached_text) * self.text_in
            + (t.audio_in - cached_audio) * self.audio_in
            + (cached_audio + cached_text) * self.cached_in
            + t.text_out * self.text_out
            + t.audio_out * self.audio_out
        )
        return per_token / 1e6

    def show(self, amount: float) -> str:
        return money(amount, self.currency)


def money(amount: float, currency: str) -> str:
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}.get(currency)
    if symbol is None:
        return f"{amount:.2f} {currency}"
    return f"{symbol}{amount:.3f}" if amount < 1 else f"{symbol}{amount:.2f}"


def day_key(when: dt.date) -> str:
    return when.isoformat()


def month_key(when: dt.date) -> str:
    return f"{when.year:04d}-{when.month:02d}"


@dataclass
class Ledger:
    """Tokens per local day and month: what `voice-device status` shows and the budget is
    counted against."""

    days: dict[str, Tokens] = dataclasses.field(default_factory=dict)
    months: dict[str, Tokens] = dataclasses.field(default_factory=dict)

    def add(self, t: Tokens, today: dt.date) -> None:
        day, month = day_key(today), month_key(today)
        self.days[day] = self.days.get(day, Tokens()) + t
        self.months[month] = self.months.get(month, Tokens()) + t
        self._prune()

    def _prune(self) -> None:
        """Only the newest KEEP_DAYS days and KEEP_MONTHS months."""
        for table, keep in ((self.days, KEEP_DAYS), (self.months, KEEP_MONTHS)):
            for old in sorted(table)[:-keep]:
                del table[old]

    def day(self, today: dt.date) -> Tokens:
        return self.days.get(day_key(today), Tokens())

    def month(self, today: dt.date) -> Tokens:
        return self.months.get(month_key(today), Tokens())

    def as_dict(self) -> dict[str, Any]:
        return {
            "days": {k: v.as_dict() for k, v in sorted(self.days.items())},
            "months": {k: v.as_dict() for k, v in sorted(self.months.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Ledger:
        """What the file holds that reads as a day or month of tokens; the rest is dropped."""
        ledger = cls()
        for name, table, valid in (
            ("days", ledger.days, _is_day),
            ("months", ledger.months, _is_month),
        ):
            given = d.get(name)
            if not isinstance(given, Mapping):
                continue
            for key, value in given.items():
                if isinstance(key, str) and valid(key) and isinstance(value, Mapping):
                    table[key] = Tokens.from_dict(value)
        ledger._prune()
        return ledger


def _is_day(key: str) -> bool:
    try:
        return dt.date.fromisoformat(key).isoformat() == key
    except ValueError:
        return False


def _is_month(key: str) -> bool:
    return _is_day(f"{key}-01") and len(key) == 7


def over_budget(spent: float, budget: float) -> bool:
    """A budget of 0 is none."""
    return budget > 0 and math.isfinite(spent) and spent >= budget
