"""The cloud link's own rules, on a real speaker (a WAV sink) and a session that records
what would go over the socket."""

from __future__ import annotations

from typing import Any

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
    assert link.speaker._buffer.buffered_samples == 0 and inputs == []


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
