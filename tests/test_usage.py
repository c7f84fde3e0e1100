"""The cost meter's arithmetic with plain values: what `response.done.usage` says, summed
per day and month, priced, and the budget."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from device.config import parse_config
from device.core.states import (
    Enter,
    Machine,
    OpenSession,
    ReportError,
    State,
    Summon,
    Tick,
    Wake,
)
from device.core.usage import KEEP_DAYS, Ledger, Prices, Tokens, read_usage
from device.events import EventLog
from device.meter import CostMeter

# the shape the GA API documents (openai SDK: RealtimeResponseUsage)
USAGE = {
    "total_tokens": 1370,
    "input_tokens": 1130,
    "output_tokens": 240,
    "input_token_details": {
        "text_tokens": 730,
        "audio_tokens": 400,
        "image_tokens": 0,
        "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 640, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 40, "audio_tokens": 200},
}


def test_a_response_usage_is_read_whole_and_odd_fields_count_as_nothing() -> None:
    t = read_usage(USAGE)
    assert t == Tokens(730, 400, 640, 40, 200, 1)
    assert t is not None and t.total == 1370
    assert read_usage(None) is None and read_usage("x") is None
    # totals only (no details): counted as text; nonsense is 0, never an exception
    assert read_usage({"input_tokens": 10, "output_tokens": 5}) == Tokens(10, 0, 0, 5, 0, 1)
    odd = {"input_token_details": {"text_tokens": -5, "audio_tokens": 1e30, "cached_tokens": 9}}
    assert read_usage(odd) == Tokens(0, 0, 0, 0, 0, 1)  # cached never exceeds the input
    assert read_usage({"input_token_details": {"audio_tokens": True}}) == Tokens(responses=1)


def test_the_price_counts_cached_input_at_the_cached_price() -> None:
    p = Prices()  # per million: text 4 / 16, audio 32 / 64, cached 0.4
    t = Tokens(text_in=730, audio_in=400, cached_in=640, text_out=40, audio_out=200)
    # cached from audio first (400 audio at 0.4), then text (240 of 730 text at 0.4)
    expected = (490 * 4 + 0 * 32 + 640 * 0.4 + 40 * 16 + 200 * 64) / 1e6
    assert abs(p.cost(t) - expected) < 1e-12
    assert p.show(0.0123) == "$0.012" and p.show(12.5) == "$12.50"
    assert Prices(currency="SEK").show(3) == "3.00 SEK"


def test_the_ledger_sums_days_and_months_and_keeps_a_bounded_history() -> None:
    ledger = Ledger()
    one = Tokens(text_in=10, audio_out=20, responses=1)
    start = dt.date(2026, 1, 1)
    for i in range(400):
        ledger.add(one, start + dt.timedelta(days=i))
    assert len(ledger.days) == KEEP_DAYS and len(ledger.months) <= 24
    last = start + dt.timedelta(days=399)
    assert ledger.day(last) == one
    assert ledger.month(last).responses == last.day
    # what is saved reads back the same; garbage in the file is dropped, not fatal
    again = Ledger.from_dict(json.loads(json.dumps(ledger.as_dict())))
    assert again == ledger
    junk = Ledger.from_dict({"days": {"2026-02-30": {}, "x": 1, "2026-03-01": {"text_in": "9"}}})
    assert junk.days == {"2026-03-01": Tokens()} and junk.months == {}


def meter(tmp_path: Path, today: dt.date, budget: float = 0.0) -> CostMeter:
    cfg = parse_config({"usage": {"monthly_budget": budget}})
    return CostMeter(cfg, tmp_path, EventLog(tmp_path / "events.jsonl"), lambda: 0, lambda: today)


def test_the_meter_keeps_its_count_across_restarts_and_reports_each_session(
    tmp_path: Path,
) -> None:
    day = dt.date(2026, 12, 2)
    m = meter(tmp_path, day)
    m.add(Tokens(audio_in=1000, audio_out=2000, responses=1))
    m.add(Tokens(text_in=100, responses=1))
    m.session_over("sess_1")
    m.session_over("sess_2")  # nothing used: nothing reported
    usage = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["session_id"], e["responses"]) for e in usage] == [
        ("usage", "sess_1", 2)
    ]
    assert usage[0]["cost"] == round((1000 * 32 + 2000 * 64 + 100 * 4) / 1e6, 6)
    again = meter(tmp_path, day)  # a restart
    assert again.status()["today"]["total"] == 3100
    assert again.status()["month"]["responses"] == 2
    assert meter(tmp_path, dt.date(2026, 12, 3)).status()["today"]["total"] == 0
    assert meter(tmp_path, dt.date(2027, 1, 1)).status()["month"]["total"] == 0


def test_a_spent_budget_answers_a_wake_with_a_notice_until_the_month_turns(
    tmp_path: Path,
) -> None:
    day = dt.date(2026, 12, 2)
    m = meter(tmp_path, day, budget=0.10)
    m.add(Tokens(audio_out=1000, responses=1))  # $0.064
    assert m.budget_note() is None
    m.add(Tokens(audio_out=1000, responses=1))  # $0.128
    note = m.budget_note()
    assert note is not None and "$0.10" in note and "usage.monthly_budget" in note
    machine = Machine()
    machine.budget_note = note
    for wake in (Wake("okay nabu", 0.9, 0), Summon(0)):
        cmds = machine.handle(wake, 0)
        assert not [c for c in cmds if isinstance(c, OpenSession)]
        assert ReportError("budget_spent", note, wake != Wake("okay nabu", 0.9, 0)) in cmds
        assert cmds[-1] == Enter(State.ERROR, "budget_spent")
        machine.handle(Tick(), 100)
    assert meter(tmp_path, dt.date(2027, 1, 1), budget=0.10).budget_note() is None
    assert meter(tmp_path, day, budget=1.0).budget_note() is None  # raised
