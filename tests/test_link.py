"""The cloud link's own rules, on a real speaker (a WAV sink) and a session that records
what would go over the socket."""

from __future__ import annotations

from typing import Any

import numpy as np

from device.adapters.speaker import WavSpeaker
from device.core import realtime as rt
from device.core import states as st
from device.core.audio import ItemStarted
from device.events import EventLog
from device.link import CloudLink
from device.meter import CostMeter
from tests.helpers import config


class Recording:
    """Stands in for the socket only: what the link sends is kept."""

    ready = True
    session_id = "sess_test"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, event: dict[str, Any]) -> None:
        self.sent.append(event)


def link_with_session() -> tuple[CloudLink, Recording, list[st.Input]]:
    inputs: list[st.Input] = []
    cfg = config("http://127.0.0.1:9")
    link = CloudLink(
        cfg,
        WavSpeaker(None, 60, paced=False),
        EventLog(None),
        inputs.append,
        lambda: 0,
        lambda kind: None,
        lambda text: None,
        CostMeter(cfg, None, EventLog(None), lambda: 0),
    )
    session = Recording()
    link.session = session  # type: ignore[assignment]
    return link, session, inputs


def test_a_truncate_never_names_more_audio_than_the_item_had() -> None:
    link, session, _ = link_with_session()
    link._on_server_event(session, rt.ResponseCreated("r1"))  # type: ignore[arg-type]
    pcm = bytes(2 * 2400)  # 100 ms at 24 kHz
    link._on_server_event(session, rt.AudioDelta("r1", "i1", pcm))  # type: ignore[arg-type]
    link.truncate(st.Truncate("i1", 5000))
    assert session.sent[-1]["audio_end_ms"] == 100
    link.truncate(st.Truncate("i1", 40))
    assert session.sent[-1]["audio_end_ms"] == 40


def test_a_cancel_names_the_reply_it_cancels_and_its_audio_is_not_played() -> None:
    link, session, _ = link_with_session()
    link._on_server_event(session, rt.ResponseCreated("r1"))  # type: ignore[arg-type]
    link.cancel_response(st.CancelResponse())
    assert session.sent[-1]["type"] == "response.cancel"
    assert session.sent[-1]["response_id"] == "r1"
    link._on_server_event(session, rt.AudioDelta("r1", "i1", bytes(480)))  # type: ignore[arg-type]
    assert link.speaker._buffer.buffered_samples == 0


def test_audio_of_a_reply_never_created_is_not_played() -> None:
    link, session, inputs = link_with_session()
    link._on_server_event(session, rt.AudioDelta("r9", "i9", bytes(480)))  # type: ignore[arg-type]
    assert link.speaker._buffer.buffered_samples == 0 and told(inputs) == []


def test_a_failed_response_is_an_error_and_a_cut_one_is_said_after_what_came() -> None:
    link, session, inputs = link_with_session()
    played: list[object] = []
    link._play_earcon = played.append  # type: ignore[method-assign]
    link._on_server_event(session, rt.ResponseCreated("r1"))  # type: ignore[arg-type]
    failed = rt.ResponseDone("r1", "failed", (), None, "insufficient_quota", "no quota")
    link._on_server_event(session, failed)  # type: ignore[arg-type]
    assert inputs[-1] == st.CloudError("insufficient_quota", "no quota", False)
    link._on_server_event(session, rt.ResponseCreated("r2"))  # type: ignore[arg-type]
    cut = rt.ResponseDone("r2", "incomplete", (), "max_output_tokens")
    link._on_server_event(session, cut)  # type: ignore[arg-type]
    assert inputs[-1] == st.ResponseEnded("r2", "incomplete", False)  # the talk goes on
    assert played == ["error"]


def test_a_phase_said_only_on_done_relabels_the_audio_and_leaves_the_repeat_memory() -> None:
    link, session, _ = link_with_session()
    send = lambda ev: link._on_server_event(session, ev)  # type: ignore[arg-type]  # noqa: E731
    send(rt.ResponseCreated("r1"))
    send(rt.OutputItemAdded("r1", "i1", "message", None))  # no phase yet: taken as the answer
    send(rt.AudioDelta("r1", "i1", bytes(4800)))
    send(rt.OutputItemDone("r1", "i1", "message", "commentary", "completed"))
    send(rt.OutputItemAdded("r1", "i2", "message", None))
    send(rt.AudioDelta("r1", "i2", b"\x01\x00" * 2400))
    send(rt.ResponseDone("r1", "completed", (rt.OutputItem("i2", "message", "final_answer"),)))
    assert link.last_answer == b"\x01\x00" * 2400  # the preamble is not repeated as the answer
    _, started = link.speaker._buffer.pull(4800)
    heard = [(e.item_id, e.phase) for e in started if isinstance(e, ItemStarted)]
    assert heard == [("i1", "commentary"), ("i2", "final_answer")]


# -- a turn sent at a pause (turn.commit_ms) --------------------------------------------------


def sent_at_a_pause(heard: bytes) -> tuple[CloudLink, Recording, list[st.Input]]:
    """A turn of `heard` sent at a pause: its answer asked for, the session ready."""
    from device.core.audio import Uplink

    link, session, inputs = link_with_session()
    link.uplink = Uplink(0)
    link.stream(heard)
    link.commit_early(st.CommitEarly(len(heard) // 2))
    assert [e["type"] for e in session.sent[-2:]] == [
        "input_audio_buffer.commit",
        "response.create",
    ]
    return link, session, inputs


def appended(sent: list[dict[str, Any]]) -> bytes:
    import base64

    return b"".join(
        base64.b64decode(e["audio"]) for e in sent if e["type"] == "input_audio_buffer.append"
    )


def deleted(session: Recording) -> list[str]:
    """The items the link asked the service to delete, in order."""
    return [e["item_id"] for e in session.sent if e["type"] == "conversation.item.delete"]


def told(inputs: list[st.Input]) -> list[st.Input]:
    """What the machine was told, but the server's commits (which local turns ignore)."""
    return [i for i in inputs if not isinstance(i, st.ServerCommitted)]


def answer(link: CloudLink, session: Recording, rid: str, calls: bool = False) -> None:
    """A whole response arriving: audio, and a tool call if `calls`."""
    ev = link._on_server_event
    ev(session, rt.ResponseCreated(rid))  # type: ignore[arg-type]
    ev(session, rt.OutputItemAdded(rid, f"{rid}-a", "message", "final_answer"))  # type: ignore[arg-type]
    ev(session, rt.AudioDelta(rid, f"{rid}-a", bytes(4800)))  # type: ignore[arg-type]
    items = [rt.OutputItem(f"{rid}-a", "message", "final_answer")]
    if calls:
        items.append(rt.OutputItem(f"{rid}-c", "function_call", None, "call1", "time", "{}"))
    ev(session, rt.ResponseDone(rid, "completed", tuple(items)))  # type: ignore[arg-type]


def test_an_answer_asked_for_at_a_pause_is_unheard_and_runs_no_tool_until_the_turn_ends() -> None:
    link, session, inputs = sent_at_a_pause(bytes(3200))
    link._on_server_event(session, rt.InputCommitted("u1"))  # type: ignore[arg-type]
    answer(link, session, "r1", calls=True)
    # held: nothing played, the machine told nothing, no tool run
    assert link.speaker._buffer.buffered_samples == 0 and told(inputs) == []
    assert not any(e["type"] == "conversation.item.create" for e in session.sent)
    link.stream(bytes(640))  # the pause goes on: kept, not sent
    before = len(session.sent)
    link.end_turn(st.EndTurn(0, "silence"))
    link.submit_turn(st.SubmitTurn())
    # the turn is over: the answer as it came, then the tool's output and the next round
    assert not any(e["type"].startswith("input_audio_buffer") for e in session.sent[before:])
    assert link.speaker._buffer.buffered_samples == 2400
    assert [type(i) for i in told(inputs)] == [st.ResponseStarted, st.ResponseEnded]
    assert [e["type"] for e in session.sent[before:]] == [
        "conversation.item.create",
        "response.create",
    ]


def test_talking_on_after_the_pause_withdraws_the_answer_and_sends_the_turn_again_whole() -> None:
    from device.core.audio import CLOUD_RATE, MIC_RATE, resample

    first = (np.arange(8000) % 200 * 50).astype("<i2").tobytes()  # half a second of a tone
    link, session, inputs = sent_at_a_pause(first)
    link._on_server_event(session, rt.InputCommitted("u1"))  # type: ignore[arg-type]
    link._on_server_event(session, rt.ResponseCreated("r1"))  # type: ignore[arg-type]
    pause = bytes(640 * 5)
    link.stream(pause)
    sent_before = len(session.sent)
    link.withdraw(st.Withdraw(0))
    out = session.sent[sent_before:]
    assert out[0] == {**out[0], "type": "response.cancel", "response_id": "r1"}
    assert out[1] == {**out[1], "type": "conversation.item.delete", "item_id": "u1"}
    more = (np.arange(4800) % 160 * 60).astype("<i2").tobytes()
    link.stream(more)
    # the rest of the cancelled answer is dropped; its items leave the conversation
    answer(link, session, "r1")
    assert link.speaker._buffer.buffered_samples == 0 and told(inputs) == []
    assert deleted(session) == ["u1", "r1-a"]
    link.end_turn(st.EndTurn(0, "silence"))
    link.submit_turn(st.SubmitTurn())
    # the service's buffer holds the whole turn, converted in one piece, then it is committed
    after = session.sent[sent_before:]
    assert appended(after) == resample(first + pause + more, MIC_RATE, CLOUD_RATE)
    assert [e["type"] for e in after[-2:]] == ["input_audio_buffer.commit", "response.create"]
    answer(link, session, "r2")  # the answer to the whole turn is heard
    assert link.speaker._buffer.buffered_samples == 2400


def test_an_answer_withdrawn_before_the_server_created_it_is_never_heard() -> None:
    link, session, inputs = sent_at_a_pause(bytes(3200))
    n = len(session.sent)
    link.withdraw(st.Withdraw(0))  # before input_audio_buffer.committed and response.created
    cancel = next(e for e in session.sent[n:] if e["type"] == "response.cancel")
    assert "response_id" not in cancel  # (the one being generated, whatever its id)
    link._on_server_event(session, rt.InputCommitted("u1"))  # type: ignore[arg-type]
    answer(link, session, "r1")
    assert link.speaker._buffer.buffered_samples == 0 and told(inputs) == []
    assert deleted(session) == ["u1", "r1-a"]
    link.end_turn(st.EndTurn(0, "silence"))
    link.submit_turn(st.SubmitTurn())
    link._on_server_event(session, rt.InputCommitted("u2"))  # type: ignore[arg-type]
    answer(link, session, "r2")
    assert link.speaker._buffer.buffered_samples == 2400
    assert "u2" not in [e.get("item_id") for e in session.sent]


def test_an_answer_that_came_whole_during_the_pause_is_deleted_unheard_when_withdrawn() -> None:
    link, session, inputs = sent_at_a_pause(bytes(3200))
    link._on_server_event(session, rt.InputCommitted("u1"))  # type: ignore[arg-type]
    answer(link, session, "r1", calls=True)
    link.withdraw(st.Withdraw(0))
    kinds = [(e["type"], e.get("item_id")) for e in session.sent]
    assert ("response.cancel", None) not in kinds  # it was over: nothing to cancel
    assert deleted(session) == ["r1-a", "r1-c", "u1"]
    assert link.speaker._buffer.buffered_samples == 0 and told(inputs) == []
    assert not any(e["type"] == "conversation.item.create" for e in session.sent)  # no tool ran


def test_a_server_flooding_a_held_answer_cannot_grow_memory_without_bound() -> None:
    from device.link import MAX_HELD_BYTES

    link, session, _ = sent_at_a_pause(bytes(3200))
    link._on_server_event(session, rt.ResponseCreated("r1"))  # type: ignore[arg-type]
    big = bytes(1024 * 1024)  # a megabyte of "audio" per event
    for _ in range(40):
        link._on_server_event(session, rt.AudioDelta("r1", "i1", big))  # type: ignore[arg-type]
    assert link.early is not None
    assert link.early.size <= MAX_HELD_BYTES and link.early.dropped >= 32


def test_the_reply_timeout_counts_from_when_the_turn_was_sent() -> None:
    """A long turn (say 25 s, after an answer) is not taken for a service gone quiet: the
    wait for the reply starts when the turn is sent, early or not."""
    import time

    from device.core.audio import Uplink

    for early in (False, True):
        link, _, _ = link_with_session()
        link.progress_at -= 25  # the last progress: before the user started talking
        link.uplink = Uplink(0)
        link.stream(bytes(3200))
        if early:
            link.commit_early(st.CommitEarly(1600))
        link.end_turn(st.EndTurn(1600, "silence"))
        link.submit_turn(st.SubmitTurn())
        quiet = link.quiet_s(time.monotonic())
        assert quiet is not None and quiet < 5, (early, quiet)
