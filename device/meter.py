"""The cost meter: the tokens each response used, summed per session, day and month.

`response.done` reports `usage`; the link hands it here. Each session's total goes to the
journal and the events log (`usage`) when the session ends; the days and months are kept in
the state directory (`usage.json`) and shown by `voice-device status` with an estimated cost.
With `usage.monthly_budget` set, `budget_note()` says when this month's estimate has reached
it: the state machine then answers a wake with a notice instead of a session.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .adapters.store import read_json, write_json
from .config import Config
from .core.usage import Ledger, Prices, Tokens, over_budget
from .events import EventLog

log = logging.getLogger(__name__)

FILE_NAME = "usage.json"
MAX_BYTES = 64 * 1024
"""62 days and 24 months of a few counters each: about 10 kB."""


def prices(cfg: Config) -> Prices:
    u = cfg.usage
    return Prices(
        u.text_input_per_million,
        u.audio_input_per_million,
        u.cached_input_per_million,
        u.text_output_per_million,
        u.audio_output_per_million,
        u.currency.upper(),
    )


class CostMeter:
    def __init__(
        self,
        cfg: Config,
        directory: Path | None,
        events: EventLog,
        audio_ms: Callable[[], int],
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        """`directory`: where `usage.json` is kept (None: counted in memory only);
        `today`: the local date (the day and month a response is counted in)."""
        self.path = directory / FILE_NAME if directory is not None else None
        self.events = events
        self._audio_ms = audio_ms
        self._today = today
        self.session = Tokens()
        saved = read_json(self.path, MAX_BYTES) if self.path is not None else None
        self.ledger = Ledger.from_dict(saved) if saved is not None else Ledger()
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        self.prices = prices(cfg)
        self.budget = cfg.usage.monthly_budget

    def add(self, tokens: Tokens) -> None:
        """One response's usage: counted for the session, the day and the month (the budget
        sees it at once; the file is written when the session ends)."""
        self.session += tokens
        self.ledger.add(tokens, self._today())

    def session_over(self, session_id: str) -> None:
        """The session ended: its total to the journal and the events log, and the ledger
        saved (once a session, not once a response: an fsync on an SD card can take a tenth
        of a second, and the audio loop waits for it)."""
        used, self.session = self.session, Tokens()
        if not used.responses:
            return
        if self.path is not None:
            write_json(self.path, self.ledger.as_dict())
        cost = self.prices.cost(used)
        self.events.emit(
            "usage",
            self._audio_ms(),
            session_id=session_id,
            **used.as_dict(),
            cost=round(cost, 6),
            currency=self.prices.currency,
        )
        log.info(
            "session %s used %d tokens (audio %d in, %d out; text %d in, %d out; %d cached) "
            "in %d responses, about %s",
            session_id or "(not open)",
            used.total,
            used.audio_in,
            used.audio_out,
            used.text_in,
            used.text_out,
            used.cached_in,
            used.responses,
            self.prices.show(cost),
        )

    def budget_note(self) -> str | None:
        """Why a wake may not open a session (this month's budget is spent), or None."""
        spent = self.prices.cost(self.ledger.month(self._today()))
        if not over_budget(spent, self.budget):
            return None
        return (
            f"this month's budget of {self.prices.show(self.budget)} is spent (about "
            f"{self.prices.show(spent)}): raise usage.monthly_budget, or wait for next month"
        )

    def status(self) -> dict[str, Any]:
        today = self._today()
        return {
            "today": self._summary(self.ledger.day(today)),
            "month": self._summary(self.ledger.month(today)),
            "currency": self.prices.currency,
            "budget": self.budget or None,
        }

    def _summary(self, t: Tokens) -> dict[str, Any]:
        return {**t.as_dict(), "total": t.total, "cost": round(self.prices.cost(t), 4)}
