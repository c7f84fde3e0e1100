"""What a kitchen assistant is used for every day, through the real daemon and the emulator:
a timer set by voice that rings on time with the cloud gone, the ways of stopping the ring,
timers across a restart, alarms at a local time, the model's tools with bad arguments,
the conversation's end, and announcements."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from device.app import App, RunOptions
from device.core import states as st
from device.emulator import Emulator, Scenario
from tests.helpers import config, read_jsonl, silence, speech, states, wait_until, write_wav
from tests.sdk import validate_client_event

FAST = {"preambles": [], "think_ms": 0, "speedup": 20.0}


async def start(scenario: Scenario, tmp_path: Path) -> Emulator:
    emu = Emulator(scenario, record=tmp_path / "record.jsonl")
    await emu.start("127.0.0.1", 0)
    return emu


def sent(tmp_path: Path) -> list[dict[str, Any]]:
    """What the device sent the emulator, each checked against the SDK's models."""
    events = [r["event"] for r in read_jsonl(tmp_path / "record.jsonl") if "event" in r]
    for e in events:
        if e["type"] != "input_audio_buffer.append":
            validate_client_event(e)
    return events


def tool_outputs(tmp_path: Path) -> list[dict[str, Any]]:
    return [
        json.loads(e["item"]["output"])
        for e in sent(tmp_path)
        if e["type"] == "conversation.item.create"
        and e["item"].get("type") == "function_call_output"
    ]


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


async def talk(
    tmp_path: Path, scenario: Scenario, said: str, follow_up: str = "never"
) -> tuple[App, list[dict[str, Any]]]:
    """The daemon hears "okay nabu, `said`" once (a WAV, as fast as it goes) and talks to
    the emulator playing `scenario` until the conversation is over; its events."""
    emu = await start(scenario, tmp_path)
    audio = silence(0.5) + speech(f"okay nabu, {said}") + silence(5)
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "in.wav", audio),
        fast=True,
        events_log=tmp_path / "e",
        output_wav=tmp_path / "out.wav",
    )
    app = App(config(f"http://127.0.0.1:{emu.port}", turn={"follow_up": follow_up}), opts)
    try:
        assert await asyncio.wait_for(app.run(), 60) == 0
    finally:
        await emu.close()
    return app, read_jsonl(tmp_path / "e")


async def test_a_timer_set_by_voice_rings_on_time_with_the_cloud_gone(tmp_path: Path) -> None:
    """The model calls set_timer; the emulator then goes away; three seconds of audio later
    the device rings (the sound, the light, the event), and `timers stop` stops it."""
    emu = await start(
        Scenario(
            **FAST,
            answer="Your tea timer is set for three seconds.",
            tool_call="set_timer",
            tool_arguments='{"seconds": 3, "name": "tea"}',
        ),
        tmp_path,
    )
    log = tmp_path / "ev.jsonl"
    audio = silence(0.5) + speech("okay nabu, set a tea timer for three seconds") + silence(30)
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "in.wav", audio),
        fast=False,
        events_log=log,
        output_wav=tmp_path / "out.wav",
    )
    app = App(config(f"http://127.0.0.1:{emu.port}", turn={"follow_up": "never"}), opts)
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: bool(of(read_jsonl(log), "timer_set")), 20, "the timer set")
        await emu.close()  # the cloud is gone
        await wait_until(lambda: bool(of(read_jsonl(log), "timer_ring")), 10, "the ring")
        await asyncio.sleep(0.3)
        assert app.machine.state is st.State.RINGING
        assert await app.verbs("timers", "stop") == {"ok": True, "state": "idle"}
        app.request_stop()
        assert await asyncio.wait_for(run, 20) == 0
    finally:
        run.cancel()
        await emu.close()
    events = read_jsonl(log)
    (set_,) = of(events, "timer_set")
    (ring,) = of(events, "timer_ring")
    assert (set_["name"], set_["seconds"], ring["name"]) == ("tea", 3, "tea")
    # on time, in audio time: within one 20 ms frame of three seconds after it was set
    assert 3000 <= ring["audio_ms"] - set_["audio_ms"] <= 3020
    assert [e["kind"] for e in of(events, "earcon")].count("ring") >= 1
    # (the emulator went away mid-answer: the light after the ring says so)
    assert [e["pattern"] for e in of(events, "led")][-2:] in (
        ["ringing", "idle"],
        ["ringing", "offline"],
    )
    assert of(events, "timer_stop") == [
        {**of(events, "timer_stop")[0], "name": "tea", "reason": "command"}
    ]
    # the line went while the answer played: that is the one error; the name that could not
    # be spoken is none
    assert [e["code"] for e in of(events, "error")] in ([], ["connection_lost"])
    assert tool_outputs(tmp_path) == [{"ok": True, "name": "tea", "rings_in": "3 seconds"}]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ('{"seconds": -5, "name": "tea"}', "at least one second"),
        ('{"seconds": "soon"}', "whole number"),
        ("not json at all", "not JSON"),
    ],
)
async def test_a_tool_called_with_bad_arguments_answers_the_model_and_sets_nothing(
    tmp_path: Path, args: str, words: str
) -> None:
    scenario = Scenario(**FAST, answer="Sorry.", tool_call="set_timer", tool_arguments=args)
    app, events = await talk(tmp_path, scenario, "set a timer")
    (output,) = tool_outputs(tmp_path)
    assert words in output["error"]
    assert of(events, "timer_set") == [] and len(app.timekeeper.timers) == 0
    assert states(events)[-1] == "idle"  # and the conversation went on


async def test_end_conversation_closes_at_once_instead_of_the_follow_up_window(
    tmp_path: Path,
) -> None:
    scenario = Scenario(**FAST, answer="You're welcome, bye.", tool_call="end_conversation")
    _, events = await talk(tmp_path, scenario, "thanks, that's all", follow_up="always")
    shown = states(events)
    assert "answering" in shown and "follow_up" not in shown and shown[-1] == "idle"
    assert of(events, "tool_call")[0]["name"] == "end_conversation"


@pytest.mark.parametrize(
    ("answer", "follow_up", "opens"),
    [
        ("It is four degrees outside.", "auto", False),
        ("It is four degrees. Do you want tomorrow's forecast too?", "auto", True),
        ("It is four degrees outside.", "always", True),
        ("Do you want tomorrow's forecast too?", "never", False),
    ],
)
async def test_the_follow_up_window_opens_when_the_answer_invites_a_reply(
    tmp_path: Path, answer: str, follow_up: str, opens: bool
) -> None:
    _, events = await talk(tmp_path, Scenario(**FAST, answer=answer), "how cold is it", follow_up)
    assert ("follow_up" in states(events)) is opens
    follow = [e["pattern"] for e in of(events, "led")]
    assert ("follow_up" in follow) is opens  # the light says which


async def test_timers_survive_a_restart_and_one_that_ended_while_down_rings(
    tmp_path: Path,
) -> None:
    now = 1_800_000_000.0
    state = tmp_path / "state"
    state.mkdir()
    (state / "timers.json").write_text(
        json.dumps(
            {
                "timers": [
                    {"name": "bread", "kind": "timer", "ends_at": now - 60, "seconds": 600},
                    {"name": "eggs", "kind": "timer", "ends_at": now - 3600, "seconds": 300},
                    {"name": "roast", "kind": "timer", "ends_at": now + 3000, "seconds": 3600},
                ]
            }
        )
    )
    log = tmp_path / "e"
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "in.wav", silence(2)),
        fast=True,
        events_log=log,
        state_dir=state,
        clock_start=now,
        output_wav=tmp_path / "out.wav",
    )
    app = App(config("http://127.0.0.1:9", turn={"follow_up": "never"}), opts)
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: bool(of(read_jsonl(log), "timer_ring")), 10, "the ring")
        listed = (await app.verbs("timers", ""))["timers"]
        assert [t["name"] for t in listed] == ["roast"]
        assert listed[0]["time_left"].startswith(("49 minutes", "50 minutes"))
        # the command line's set and cancel, as `voice-device timers set 5m tea`
        assert await app.verbs("timers", "set 5m tea") == {"ok": True, "set": "tea", "seconds": 300}
        assert (await app.verbs("timers", "set soon"))["ok"] is False
        assert await app.verbs("timers", "cancel tea") == {"ok": True, "cancelled": "tea"}
        assert "no timer" in (await app.verbs("timers", "cancel tea"))["error"]
        app.handle(st.StopRinging())
        app.request_stop()
        assert await asyncio.wait_for(run, 20) == 0
    finally:
        run.cancel()
    events = read_jsonl(log)
    assert [e["name"] for e in of(events, "timer_ring")] == ["bread"]
    assert [e["name"] for e in of(events, "timer_missed")] == ["eggs"]
    saved = json.loads((state / "timers.json").read_text())
    assert [t["name"] for t in saved["timers"]] == ["roast"]


async def test_an_alarm_rings_at_the_local_time_it_was_set_for(tmp_path: Path) -> None:
    """Set by the model for 07:30 when the clock says 07:29:00: it rings exactly 60 s of
    audio after the start, wherever the conversation happened to end."""
    start_at = dt.datetime.now().astimezone().replace(hour=7, minute=29, second=0, microsecond=0)
    emu = await start(
        Scenario(
            **FAST, answer="Alarm set.", tool_call="set_alarm", tool_arguments='{"time": "07:30"}'
        ),
        tmp_path,
    )
    log = tmp_path / "e"
    audio = silence(0.5) + speech("okay nabu, wake me at seven thirty") + silence(70)
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "in.wav", audio),
        fast=True,
        events_log=log,
        clock_start=start_at.timestamp(),
        output_wav=tmp_path / "out.wav",
    )
    app = App(config(f"http://127.0.0.1:{emu.port}", turn={"follow_up": "never"}), opts)
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: bool(of(read_jsonl(log), "timer_ring")), 60, "the alarm")
        await wait_until(
            lambda: any("conversation" in str(e.get("response")) for e in sent(tmp_path)),
            10,
            "its name spoken",
        )
        app.handle(st.ButtonDown(app.pos))
        app.request_stop()
        assert await asyncio.wait_for(run, 20) == 0
    finally:
        run.cancel()
        await emu.close()
    events = read_jsonl(log)
    (ring,) = of(events, "timer_ring")
    assert ring["name"] == "07:30 alarm" and 60_000 <= ring["audio_ms"] <= 60_020
    # idle with an alarm set, the light said so (dimly) until it rang
    before = [e["pattern"] for e in of(events, "led") if e["audio_ms"] < ring["audio_ms"]]
    assert before[-1] == "timer"
    # the cloud answered, so its name was spoken, out of any conversation
    spoken = [
        e["response"] for e in sent(tmp_path) if e["type"] == "response.create" and "response" in e
    ]
    assert spoken and spoken[-1]["conversation"] == "none"
    assert spoken[-1]["instructions"].endswith("Your 07:30 alarm is done.")
    assert of(events, "timer_stop")[0]["reason"] == "button"
    (output,) = tool_outputs(tmp_path)
    assert output == {"ok": True, "name": "07:30 alarm", "rings_at": "07:30", "day": "today"}


async def test_the_ring_does_not_wake_the_device_and_the_wake_word_stops_it(
    tmp_path: Path,
) -> None:
    """In the simulated room at echo 0.3 and 0.7 the ring plays for six seconds without
    waking the device (four rings); then the user's "okay nabu", said between two rings,
    stops it and the device listens."""
    from device.adapters.room import Room

    for gain in (0.3, 0.7):
        folder = tmp_path / str(gain)
        folder.mkdir()
        emu = await start(Scenario(**FAST, answer="Okay."), folder)
        room = Room(silence(20.0), paced=False, echo_gain=gain, delay_ms=25, reverb_ms=120)
        log = folder / "e"
        app = App(
            config(f"http://127.0.0.1:{emu.port}", turn={"follow_up": "never"}),
            RunOptions(room=room, events_log=log, leds="none", signals=False),
        )
        rang_at: list[int] = []
        said: list[int] = []

        def cue(
            frame: int, app: App = app, rang_at: list[int] = rang_at, said: list[int] = said
        ) -> bytes | None:
            if frame == 10:
                app.timekeeper.set_timer(1, "tea")
            if app.machine.state is st.State.RINGING and not rang_at:
                rang_at.append(frame)
            # six and a half seconds of ringing, then the wake word between two rings
            if rang_at and frame == rang_at[0] + 325 and not said:
                said.append(frame)
                return speech("okay nabu") + silence(3.0)
            return None

        room.cue = cue
        run = asyncio.create_task(app.run())
        try:
            await wait_until(lambda log=log: bool(of(read_jsonl(log), "timer_stop")), 60, "stop")
            await wait_until(lambda app=app: app.machine.state is st.State.IDLE, 30, "idle")
            app.request_stop()
            await asyncio.wait_for(run, 20)
        finally:
            run.cancel()
            await emu.close()
        events = read_jsonl(log)
        rings = [e for e in of(events, "earcon") if e["kind"] == "ring"]
        assert len(rings) >= 3, gain  # it rang on, every two seconds
        wakes = of(events, "wake")
        assert len(wakes) == 1, (gain, wakes)  # only the user's
        assert wakes[0]["audio_ms"] >= said[0] * 20
        assert of(events, "timer_stop")[0]["reason"] == "wake"
        assert "connecting" in states(events)[states(events).index("ringing") :]


async def test_announce_speaks_the_text_out_of_any_conversation_and_says_when_it_cannot(
    tmp_path: Path,
) -> None:
    emu = await start(Scenario(**FAST), tmp_path)
    log = tmp_path / "e"
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "in.wav", silence(60)),
        fast=False,
        events_log=log,
        output_wav=tmp_path / "out.wav",
    )
    app = App(config(f"http://127.0.0.1:{emu.port}", announce={"max_per_hour": 2}), opts)
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: bool(of(read_jsonl(log), "ready")), 10, "ready")
        await asyncio.sleep(0.2)
        reply = await asyncio.wait_for(app.verbs("announce", "Dinner is ready."), 30)
        assert reply == {"ok": True, "spoken": True}
        await emu.close()  # the cloud is gone
        reply = await asyncio.wait_for(app.verbs("announce", "Dinner is cold."), 30)
        assert reply["ok"] is False and reply["error"].startswith("not spoken")
        reply = await app.verbs("announce", "Dinner is gone.")
        assert reply["ok"] is False and "announce.max_per_hour" in reply["error"]
        app.request_stop()
        await asyncio.wait_for(run, 20)
    finally:
        run.cancel()
        await emu.close()
    events = read_jsonl(log)
    kinds = [e["kind"] for e in of(events, "earcon")]
    assert kinds.count("announce") == 2  # the chime, online and offline
    asked = [e for e in sent(tmp_path) if e["type"] == "response.create"]
    assert len(asked) == 1 and asked[0]["response"]["conversation"] == "none"
    assert asked[0]["response"]["instructions"].endswith("Dinner is ready.")
    assert not [e for e in sent(tmp_path) if e["type"] == "input_audio_buffer.append"]
    shown = states(events)
    assert shown[:4] == ["connecting", "thinking", "answering", "idle"]
    assert "error" in shown[4:]
    assert of(events, "announce")[0]["chars"] == len("Dinner is ready.")
    assert any(e["event"] == "playback_end" for e in events)  # and it was heard


@pytest.mark.parametrize(
    ("tool", "args", "output"),
    [
        ("set_volume", '{"percent": 30}', {"ok": True, "volume_percent": 30}),
        ("list_timers", "{}", {"timers": [], "note": "no timers or alarms"}),
        ("cancel_alarm", "{}", {"error": "there is no alarm running"}),
    ],
)
async def test_the_other_tools_through_the_emulator(
    tmp_path: Path, tool: str, args: str, output: dict[str, Any]
) -> None:
    scenario = Scenario(**FAST, answer="Done.", tool_call=tool, tool_arguments=args)
    app, events = await talk(tmp_path, scenario, "do it")
    assert tool_outputs(tmp_path) == [output]
    assert of(events, "tool_call")[0]["name"] == tool
    if tool == "set_volume":
        assert round(app.speaker.volume * 100) == 30
