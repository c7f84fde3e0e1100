"""Timers and alarms as plain values, the tools the model calls, and their bad arguments."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from device.core.timers import (
    MAX_TIMERS,
    Timer,
    TimerError,
    Timers,
    next_occurrence,
    parse_duration,
    spoken_duration,
)
from device.events import EventLog
from device.timekeeper import Timekeeper
from device.tools import Device, Toolbox

T0 = 1_800_000_000.0


def test_a_timer_ends_when_it_was_set_to_and_is_then_gone() -> None:
    timers = Timers()
    tea = timers.set_timer(240, "tea", T0)
    assert (tea.name, tea.ends_at) == ("tea", T0 + 240)
    assert timers.due(T0 + 239.9) == []
    assert timers.due(T0 + 240) == [tea]
    assert len(timers) == 0


def test_unnamed_timers_are_named_by_their_length_and_never_collide() -> None:
    timers = Timers()
    a = timers.set_timer(300, None, T0)
    b = timers.set_timer(300, "", T0)
    c = timers.set_timer(90, None, T0)
    assert [a.name, b.name, c.name] == ["5 minute", "5 minute 2", "1 minute 30 second"]
    # the same name given again replaces the timer (the user changed their mind)
    timers.set_timer(60, "tea", T0)
    timers.set_timer(120, "Tea", T0)
    assert [t.seconds for t in timers.running() if t.name.lower() == "tea"] == [120]


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (-5, "at least one second"),
        (0, "at least one second"),
        (86_401, "at most 24 hours"),
        (1.5, "whole number"),
        ("300", "whole number"),
        (True, "whole number"),
        (None, "whole number"),
        (float("nan"), "whole number"),
    ],
)
def test_absurd_durations_are_refused_in_words_the_model_can_say(
    seconds: object, words: str
) -> None:
    with pytest.raises(TimerError, match=words):
        Timers().set_timer(seconds, "x", T0)


def test_names_are_checked() -> None:
    with pytest.raises(TimerError, match="too long"):
        Timers().set_timer(60, "x" * 41, T0)
    with pytest.raises(TimerError, match="text"):
        Timers().set_timer(60, 5, T0)
    assert Timers().set_timer(60, "pas\nta\x07", T0).name == "pas ta"


def test_cancel_without_a_name_takes_the_only_one_or_asks_which() -> None:
    timers = Timers()
    with pytest.raises(TimerError, match="no timer running"):
        timers.cancel(None, "timer")
    timers.set_timer(60, "tea", T0)
    assert timers.cancel(None, "timer").name == "tea"
    timers.set_timer(60, "tea", T0)
    timers.set_timer(600, "pasta", T0)
    with pytest.raises(TimerError, match=r"which one.*tea, pasta"):
        timers.cancel(None, "timer")
    with pytest.raises(TimerError, match=r"no timer called eggs.*tea, pasta"):
        timers.cancel("eggs", "timer")
    assert timers.cancel("PASTA", "timer").name == "pasta"


def test_there_is_a_limit_on_how_many() -> None:
    timers = Timers()
    for i in range(MAX_TIMERS):
        timers.set_timer(60 + i, None, T0)
    with pytest.raises(TimerError, match="already 20"):
        timers.set_timer(60, "one more", T0)


def test_an_alarm_rings_at_the_next_occurrence_of_the_local_time() -> None:
    tz = dt.timezone(dt.timedelta(hours=1))
    evening = dt.datetime(2026, 12, 2, 21, 0, tzinfo=tz)
    assert next_occurrence("21:30", evening) == dt.datetime(2026, 12, 2, 21, 30, tzinfo=tz)
    assert next_occurrence("7:05", evening) == dt.datetime(2026, 12, 3, 7, 5, tzinfo=tz)
    assert next_occurrence("21:00", evening) == dt.datetime(2026, 12, 3, 21, 0, tzinfo=tz)
    for bad in ("25:00", "7pm", "12:60", ""):
        with pytest.raises(TimerError, match="HH:MM"):
            next_occurrence(bad, evening)
    alarm = Timers().set_alarm("07:30", None, evening)
    assert (alarm.name, alarm.at, alarm.kind) == ("07:30 alarm", "07:30", "alarm")


def test_spoken_durations() -> None:
    assert spoken_duration(250) == "4 minutes 10 seconds"
    assert spoken_duration(3900) == "1 hour 5 minutes"
    assert spoken_duration(1) == "1 second"
    assert [parse_duration(s) for s in ("5m", "90s", "90", "1h30m", "1m30s")] == [
        300,
        90,
        90,
        5400,
        90,
    ]
    for bad in ("", "m", "five", "-5m", "1d"):
        with pytest.raises(TimerError):
            parse_duration(bad)


def test_saved_timers_survive_a_restart_and_a_hostile_file_is_ignored() -> None:
    timers = Timers()
    timers.set_timer(60, "tea", T0)
    timers.set_alarm("07:00", "wake up", dt.datetime.fromtimestamp(T0).astimezone())
    again = Timers.from_json(json.loads(json.dumps(timers.to_json())))
    assert again.running() == timers.running()
    hostile = {
        "timers": [
            {"name": "ok", "kind": "timer", "ends_at": T0},
            {"name": "", "kind": "timer", "ends_at": T0},
            {"name": "x", "kind": "bomb", "ends_at": T0},
            {"name": "y", "kind": "timer", "ends_at": "soon"},
            {"name": "z", "kind": "timer", "ends_at": float("inf")},
            "not an object",
        ]
    }
    assert [t.name for t in Timers.from_json(hostile).running()] == ["ok"]
    assert len(Timers.from_json({"timers": "no"})) == 0
    assert len(Timers.from_json(None)) == 0


def test_at_start_a_timer_that_just_ended_rings_and_an_old_one_is_missed() -> None:
    timers = Timers(
        [
            Timer("recent", "timer", T0 - 60, 60),
            Timer("old", "timer", T0 - 3600, 60),
            Timer("later", "timer", T0 + 60, 60),
        ]
    )
    ring, missed = timers.restored(T0)
    assert [t.name for t in ring] == ["recent"]
    assert [t.name for t in missed] == ["old"]
    assert [t.name for t in timers.running()] == ["later"]


# -- the tools, as the model calls them ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def toolbox(tmp_path: Path, rang: list[str] | None = None) -> tuple[Toolbox, Timekeeper, Clock]:
    clock = Clock()
    keeper = Timekeeper(
        tmp_path, EventLog(tmp_path / "ev.jsonl"), lambda: 0, clock,
        lambda ended: (rang if rang is not None else []).extend(t.name for t in ended),
    )  # fmt: skip
    volume: list[int] = []

    def set_volume(p: int) -> int:
        volume.append(p)
        return p

    device = Device(timekeeper=keeper, set_volume=set_volume)
    return Toolbox(["time", "timers", "volume", "end_conversation"], device), keeper, clock


def call(box: Toolbox, tool: str, **args: object) -> dict[str, object]:
    out: dict[str, object] = json.loads(box.call(tool, json.dumps(args)))
    return out


def test_the_tools_set_list_and_cancel_timers(tmp_path: Path) -> None:
    rang: list[str] = []
    box, keeper, clock = toolbox(tmp_path, rang)
    assert call(box, "set_timer", seconds=300, name="tea") == {
        "ok": True,
        "name": "tea",
        "rings_in": "5 minutes",
    }
    clock.t += 50
    assert call(box, "list_timers") == {
        "timers": [{"name": "tea", "kind": "timer", "time_left": "4 minutes 10 seconds"}]
    }
    assert call(box, "cancel_timer") == {"ok": True, "cancelled": "tea"}
    assert call(box, "list_timers")["timers"] == []
    call(box, "set_timer", seconds=10)
    clock.t += 10
    keeper.check()
    assert rang == ["10 second"]
    keeper.close()
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [(e["event"], e["name"]) for e in events] == [
        ("timer_set", "tea"),
        ("timer_stop", "tea"),
        ("timer_set", "10 second"),
    ]
    assert events[1]["reason"] == "cancelled" and events[0]["seconds"] == 300


@pytest.mark.parametrize(
    ("tool", "args", "words"),
    [
        ("set_timer", {"seconds": -60}, "at least one second"),
        ("set_timer", {}, "whole number"),
        ("set_timer", {"seconds": 10**9}, "24 hours"),
        ("cancel_timer", {"name": "eggs"}, "no timer called eggs"),
        ("cancel_alarm", {}, "no alarm running"),
        ("set_alarm", {"time": "half past seven"}, "HH:MM"),
        ("set_volume", {"percent": 150}, "0 to 100"),
        ("set_volume", {"percent": "loud"}, "number"),
        ("no_such_tool", {}, "no tool named"),
    ],
)
def test_a_tool_with_bad_arguments_answers_with_a_sentence(
    tmp_path: Path, tool: str, args: dict[str, object], words: str
) -> None:
    box, keeper, _ = toolbox(tmp_path)
    out: dict[str, object] = json.loads(box.call(tool, json.dumps(args)))
    assert words in str(out["error"])
    assert len(keeper.timers) == 0


def test_arguments_that_are_not_an_object_are_an_error_not_a_crash(tmp_path: Path) -> None:
    box, _, _ = toolbox(tmp_path)
    for raw in ("[1, 2]", "not json", '"x"'):
        assert "error" in json.loads(box.call("set_timer", raw))


def test_timers_are_saved_and_read_back_by_a_new_keeper(tmp_path: Path) -> None:
    box, keeper, clock = toolbox(tmp_path)
    call(box, "set_timer", seconds=120, name="eggs")
    keeper.close()
    again = Timekeeper(tmp_path, EventLog(None), lambda: 0, clock, lambda ended: None)
    assert [t.name for t in again.timers.running()] == ["eggs"]


def test_the_tools_are_declared_and_mentioned_in_the_instructions() -> None:
    box = Toolbox(["time", "timers", "volume", "end_conversation"])
    names = [t.name for t in box.declarations]
    assert names == [
        "get_current_time",
        "set_timer",
        "cancel_timer",
        "list_timers",
        "set_alarm",
        "cancel_alarm",
        "set_volume",
        "end_conversation",
    ]
    assert "timer" in box.hints and "end_conversation" in box.hints
