"""The sans-I/O protocol: client events (checked against the openai SDK) and server parsing."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from device.core import realtime as rt
from tests.sdk import validate_client_event, validate_server_event

SETTINGS = rt.SessionSettings(instructions="Be brief.", voice="marin")


def all_client_events() -> list[dict[str, object]]:
    c = rt.ClientEvents()
    return [
        c.session_update(SETTINGS),
        c.session_update(rt.SessionSettings("x", noise_reduction=None, reasoning_effort="high")),
        c.append_audio(b"\x01\x00" * 480),
        c.commit(),
        c.clear_input(),
        c.create_response(),
        c.cancel_response(),
        c.truncate("item_1", 1234),
        c.delete_item("item_2"),
    ]


@pytest.mark.parametrize("event", all_client_events(), ids=lambda e: str(e["type"]))
def test_client_events_match_the_sdk_models(event: dict[str, object]) -> None:
    validate_client_event(json.loads(json.dumps(event)))


def test_session_update_carries_the_device_choices() -> None:
    ev = rt.ClientEvents().session_update(SETTINGS)
    s = ev["session"]
    assert s["audio"]["input"]["turn_detection"] is None
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["voice"] == "marin"
    assert s["reasoning"] == {"effort": "low"}


def test_event_ids_are_unique() -> None:
    ids = [e["event_id"] for e in all_client_events()]
    assert len(set(ids)) == len(ids)


def server(type_: str, **fields: object) -> str:
    return json.dumps({"type": type_, "event_id": "event_1", **fields})


def item(id_: str, phase: str | None = None, type_: str = "message") -> dict[str, object]:
    d: dict[str, object] = {"id": id_, "type": type_, "role": "assistant", "content": []}
    if type_ != "message":
        d = {"id": id_, "type": type_, "call_id": "c1", "name": "f", "arguments": "{}"}
    if phase:
        d["phase"] = phase
    return d


PCM = b"\x10\x00\x20\x00"
B64 = base64.b64encode(PCM).decode()
WHERE = {"response_id": "resp_1", "item_id": "i1", "output_index": 0, "content_index": 0}
CALL = {
    "id": "f1",
    "type": "function_call",
    "call_id": "call_1",
    "name": "get_time",
    "arguments": "{}",
}

# (server event, what it parses to); GA events are themselves checked against the SDK
GA_EVENTS = [
    (
        server("session.created", session={"type": "realtime", "id": "sess_1"}),
        rt.SessionCreated("sess_1"),
    ),
    (server("session.updated", session={"type": "realtime"}), rt.SessionUpdated()),
    (
        server(
            "error",
            error={
                "type": "invalid_request_error",
                "code": "session_expired",
                "message": "60 min",
                "event_id": None,
            },
        ),
        rt.ServerError("session_expired", "invalid_request_error", "60 min", None),
    ),
    (
        server("input_audio_buffer.speech_started", audio_start_ms=120, item_id="u1"),
        rt.SpeechStarted(120, "u1"),
    ),
    (
        server("input_audio_buffer.speech_stopped", audio_end_ms=2300, item_id="u1"),
        rt.SpeechStopped(2300, "u1"),
    ),
    (
        server("input_audio_buffer.committed", item_id="u1", previous_item_id=None),
        rt.InputCommitted("u1"),
    ),
    (server("input_audio_buffer.cleared"), rt.Ignored("input_audio_buffer.cleared")),
    (
        server("conversation.item.added", item=item("i1", "commentary")),
        rt.Ignored("conversation.item.added"),
    ),
    (
        server("conversation.item.done", item=item("i1")),
        rt.Ignored("conversation.item.done"),
    ),
    (server("conversation.item.deleted", item_id="i3"), rt.Ignored("conversation.item.deleted")),
    (
        server("conversation.item.truncated", item_id="i1", content_index=0, audio_end_ms=900),
        rt.Ignored("conversation.item.truncated"),
    ),
    (
        server(
            "conversation.item.input_audio_transcription.delta", item_id="u1", delta="what's the"
        ),
        rt.InputTranscript("u1", "what's the", final=False),
    ),
    (
        server(
            "conversation.item.input_audio_transcription.completed",
            item_id="u1",
            content_index=0,
            transcript="what's the weather",
            usage={"type": "duration", "seconds": 2.0},
        ),
        rt.InputTranscript("u1", "what's the weather", final=True),
    ),
    (
        server(
            "conversation.item.input_audio_transcription.failed",
            item_id="u1",
            content_index=0,
            error={"message": "no speech"},
        ),
        rt.InputTranscript("u1", "no speech", final=True, failed=True),
    ),
    (
        server(
            "response.created", response={"id": "resp_1", "status": "in_progress", "output": []}
        ),
        rt.ResponseCreated("resp_1"),
    ),
    (
        server(
            "response.output_item.added",
            response_id="resp_1",
            output_index=0,
            item=item("i1", "commentary"),
        ),
        rt.OutputItemAdded("resp_1", "i1", "message", "commentary"),
    ),
    (
        server("response.content_part.added", **WHERE, part={"type": "audio", "transcript": ""}),
        rt.Ignored("response.content_part.added"),
    ),
    (server("response.output_audio.delta", **WHERE, delta=B64), rt.AudioDelta("resp_1", "i1", PCM)),
    (server("response.output_audio.done", **WHERE), rt.Ignored("response.output_audio.done")),
    (
        server("response.output_audio_transcript.delta", **WHERE, delta="Let "),
        rt.Ignored("response.output_audio_transcript.delta"),
    ),
    (
        server("response.output_audio_transcript.done", **WHERE, transcript="Let me check."),
        rt.TranscriptDone("resp_1", "i1", "Let me check."),
    ),
    (
        server("response.output_text.delta", **WHERE, delta="Hi"),
        rt.Ignored("response.output_text.delta"),
    ),
    (
        server("response.output_text.done", **WHERE, text="Hi there"),
        rt.TranscriptDone("resp_1", "i1", "Hi there"),
    ),
    (
        server("response.content_part.done", **WHERE, part={"type": "audio", "transcript": "Hi"}),
        rt.Ignored("response.content_part.done"),
    ),
    (
        server(
            "response.function_call_arguments.delta",
            response_id="resp_1",
            item_id="f1",
            output_index=1,
            call_id="call_1",
            delta='{"a',
        ),
        rt.Ignored("response.function_call_arguments.delta"),
    ),
    (
        server(
            "response.function_call_arguments.done",
            response_id="resp_1",
            item_id="f1",
            output_index=1,
            call_id="call_1",
            name="get_time",
            arguments="{}",
        ),
        rt.FunctionCallDone("resp_1", "f1", "call_1", "get_time", "{}"),
    ),
    (
        server(
            "response.output_item.done",
            response_id="resp_1",
            output_index=1,
            item={**item("i2", "final_answer"), "status": "completed"},
        ),
        rt.OutputItemDone("resp_1", "i2", "message", "final_answer", "completed"),
    ),
    (
        server(
            "response.done",
            response={
                "id": "resp_1",
                "status": "cancelled",
                "output": [item("i1", "commentary"), item("i2"), CALL],
            },
        ),
        rt.ResponseDone(
            "resp_1",
            "cancelled",
            (
                rt.OutputItem("i1", "message", "commentary"),
                rt.OutputItem("i2", "message", None),
                rt.OutputItem("f1", "function_call", None, "call_1", "get_time", "{}"),
            ),
        ),
    ),
    (
        server(
            "rate_limits.updated",
            rate_limits=[{"name": "tokens", "limit": 1000, "remaining": 250, "reset_seconds": 1.5}],
        ),
        rt.RateLimits((("tokens", 250.0, 1.5),)),
    ),
]

OTHER_EVENTS = [
    # beta / Azure preview names
    (server("response.audio.delta", **WHERE, delta=B64), rt.AudioDelta("resp_1", "i1", PCM)),
    (server("response.audio.done", **WHERE), rt.Ignored("response.audio.done")),
    (
        server("response.audio_transcript.delta", **WHERE, delta="Let"),
        rt.Ignored("response.audio_transcript.delta"),
    ),
    (
        server("response.audio_transcript.done", **WHERE, transcript="Let me check."),
        rt.TranscriptDone("resp_1", "i1", "Let me check."),
    ),
    (server("response.text.delta", **WHERE, delta="Hi"), rt.Ignored("response.text.delta")),
    (server("response.text.done", **WHERE, text="Hi"), rt.TranscriptDone("resp_1", "i1", "Hi")),
    (
        server("conversation.item.created", item=item("x")),
        rt.Ignored("conversation.item.created"),
    ),
    (server("conversation.created", conversation={"id": "c"}), rt.Ignored("conversation.created")),
    # what must never hurt
    (server("response.brand_new_thing", x=1), rt.Unknown("response.brand_new_thing")),
    ("{not json", rt.Malformed("not JSON")),
    ("[1, 2]", rt.Malformed("not an object")),
    (json.dumps({"no": "type"}), rt.Malformed("no event type")),
    (
        server("response.output_audio.delta", response_id="r", item_id="i", delta="%%%"),
        rt.Malformed("audio delta is not valid base64", "response.output_audio.delta"),
    ),
    (
        server("response.created", response={"id": 7}),
        rt.Malformed("field 'id' missing or of the wrong type", "response.created"),
    ),
    (
        server("input_audio_buffer.speech_started", audio_start_ms=True, item_id="u"),
        rt.Malformed(
            "field 'audio_start_ms' missing or of the wrong type",
            "input_audio_buffer.speech_started",
        ),
    ),
]
PARSED = GA_EVENTS + OTHER_EVENTS


@pytest.mark.parametrize("text", [t for t, _ in GA_EVENTS], ids=lambda t: json.loads(t)["type"])
def test_sample_events_are_what_the_service_sends(text: str) -> None:
    validate_server_event(json.loads(text))


def test_every_event_the_device_parses_is_covered_here() -> None:
    ignored = {name for name, parse in rt.PARSERS.items() if parse is rt._ignored}
    sampled = {json.loads(t)["type"] for t, _ in GA_EVENTS}
    assert set(rt.PARSERS) - ignored <= sampled <= set(rt.PARSERS)


@pytest.mark.parametrize(
    ("text", "expected"), PARSED, ids=[p[1].__class__.__name__ for p in PARSED]
)
def test_server_events_parse_to_typed_values(text: str, expected: rt.ServerEvent) -> None:
    assert rt.parse_server_event(text) == expected


def test_audio_is_never_shown_in_a_repr() -> None:
    ev = rt.AudioDelta("r", "i", b"secret audio bytes!!")
    assert "secret" not in repr(ev) and "bytes=20" in repr(ev)


json_values = hst.recursive(
    hst.none()
    | hst.booleans()
    | hst.integers()
    | hst.integers(min_value=10**300, max_value=10**500)  # beyond any float
    | hst.floats(allow_nan=True, allow_infinity=True)  # json writes NaN and Infinity
    | hst.text(max_size=20),
    lambda children: (
        hst.lists(children, max_size=4)
        | hst.dictionaries(hst.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
event_types = hst.sampled_from([*rt.PARSERS, *rt.ALIASES, "x.y"])


@settings(max_examples=500, deadline=None)
@given(
    event_types,
    hst.dictionaries(
        hst.sampled_from(
            [
                "response",
                "item",
                "response_id",
                "item_id",
                "delta",
                "error",
                "session",
                "transcript",
                "audio_end_ms",
                "output",
            ]
        ),
        json_values,
        max_size=6,
    ),
)
def test_no_server_input_can_crash_the_parser(type_: str, fields: dict[str, object]) -> None:
    ev = rt.parse_server_event(json.dumps({**fields, "type": type_}))
    assert isinstance(ev, rt.ServerEvent.__args__)  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(hst.binary(max_size=200))
def test_arbitrary_bytes_are_malformed_not_fatal(data: bytes) -> None:
    rt.parse_server_event(data)


def test_phases_follow_items_and_default_to_the_final_answer() -> None:
    c = rt.Conversation()
    for text in [
        server("response.created", response={"id": "r1"}),
        server(
            "response.output_item.added",
            response_id="r1",
            output_index=0,
            item=item("i1", "commentary"),
        ),
        server("response.output_item.added", response_id="r1", output_index=1, item=item("i2")),
        server(
            "response.output_item.added",
            response_id="r1",
            output_index=2,
            item=item("f1", type_="function_call"),
        ),
    ]:
        c.apply(rt.parse_server_event(text))
    assert c.active_response == "r1"
    assert c.phase_of("i1") == rt.COMMENTARY
    assert c.phase_of("i2") == rt.FINAL_ANSWER
    assert rt.effective_phase("function_call", None) is None
    # a later event without phase does not erase a known phase
    c.apply(
        rt.parse_server_event(
            server("response.output_item.done", response_id="r1", output_index=0, item=item("i1"))
        )
    )
    assert c.phase_of("i1") == rt.COMMENTARY
    # response.done can confirm or correct the phase
    c.apply(
        rt.parse_server_event(
            server(
                "response.done",
                response={"id": "r1", "status": "completed", "output": [item("i2", "commentary")]},
            )
        )
    )
    assert c.phase_of("i2") == rt.COMMENTARY
    assert c.active_response is None


def test_conversation_memory_is_bounded() -> None:
    c = rt.Conversation()
    for n in range(1000):
        c.apply(rt.OutputItemAdded("r", f"i{n}", "message", "commentary"))
        c.discard(f"r{n}")
    assert len(c._items) == rt.Conversation.MAX_ITEMS
    assert len(c._discarded) == rt.Conversation.MAX_ITEMS


def test_each_error_code_gets_its_reaction() -> None:
    assert rt.reaction_to("invalid_api_key") is rt.Reaction.FATAL
    assert rt.reaction_to("insufficient_quota") is rt.Reaction.FATAL
    assert rt.reaction_to("model_not_found") is rt.Reaction.FATAL
    assert rt.reaction_to("session_expired") is rt.Reaction.END  # a normal end: quiet
    assert rt.reaction_to("rate_limit_exceeded") is rt.Reaction.BACK_OFF
    assert rt.reaction_to("response_cancel_not_active") is rt.Reaction.IGNORE
    assert rt.reaction_to("conversation_already_has_active_response") is rt.Reaction.IGNORE
    assert rt.reaction_to("input_audio_buffer_commit_empty") is rt.Reaction.IGNORE
    assert rt.reaction_to("invalid_value") is rt.Reaction.CONTINUE
    assert rt.reaction_to(None) is rt.Reaction.CONTINUE


def test_sdk_validation_catches_misspelled_fields() -> None:
    bad = rt.ClientEvents().truncate("i", 10)
    bad["audio_end"] = bad.pop("audio_end_ms")
    with pytest.raises(Exception):  # noqa: B017 - pydantic or our own extra-field check
        validate_client_event(bad)
    ok = validate_server_event(json.loads(PARSED[0][0]))
    assert ok is not None


@settings(max_examples=200, deadline=None)
@given(
    hst.lists(
        hst.tuples(hst.sampled_from([t for t, _ in PARSED]), hst.integers(0, 500)),
        max_size=300,
    )
)
def test_any_sequence_of_events_keeps_tracking_bounded(seq: list[tuple[str, int]]) -> None:
    c = rt.Conversation()
    for text, n in seq:
        # vary the ids so the tracker sees many different items and responses
        ev = rt.parse_server_event(
            text.replace('"i1"', f'"i{n}"').replace('"resp_1"', f'"resp_{n}"')
        )
        c.apply(ev)
        if n % 7 == 0:
            c.discard(f"resp_{n}")
        c.phase_of(f"i{n}")
    assert len(c._items) <= rt.Conversation.MAX_ITEMS
    assert len(c._discarded) <= rt.Conversation.MAX_ITEMS


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("type_", ["response.done", "rate_limits.updated", "error", "x.y"])
def test_json_nested_without_end_is_malformed_not_fatal(type_: str, depth: int) -> None:
    text = f'{{"type":"{type_}","response":' + "[" * depth + "]" * depth + "}"
    ev = rt.parse_server_event(text)
    assert isinstance(ev, rt.ServerEvent.__args__)  # type: ignore[attr-defined]
    assert rt.for_the_log({"type": type_, "x": json_deep(depth)})


def json_deep(depth: int) -> list[object]:
    deep: list[object] = []
    for _ in range(depth):
        deep = [deep]
    return deep


@pytest.mark.parametrize("remaining", [10**400, float("inf"), float("nan")])
def test_a_number_out_of_range_is_malformed(remaining: float) -> None:
    limit = {"name": "tokens", "limit": 1, "remaining": remaining, "reset_seconds": 1}
    ev = rt.parse_server_event(json.dumps({"type": "rate_limits.updated", "rate_limits": [limit]}))
    assert ev == rt.Malformed("field 'remaining' is out of range", "rate_limits.updated")


def test_the_update_leaves_the_model_to_the_url_and_reasoning_out_when_asked() -> None:
    update = rt.ClientEvents().session_update(SETTINGS)
    assert "model" not in update["session"]  # not updatable; the URL names the deployment
    assert update["session"]["reasoning"] == {"effort": "low"}
    plain = rt.ClientEvents().session_update(
        rt.SessionSettings("x", reasoning_effort=rt.NO_REASONING)
    )
    assert "reasoning" not in plain["session"]
    validate_client_event(plain)


def test_a_cancel_names_its_response() -> None:
    c = rt.ClientEvents()
    named = c.cancel_response("resp_7")
    assert named["response_id"] == "resp_7"
    validate_client_event(named)
    assert "response_id" not in c.cancel_response()


def test_an_output_item_without_an_id_leaves_the_rest_of_response_done_readable() -> None:
    ev = rt.parse_server_event(
        server(
            "response.done",
            response={
                "id": "r1",
                "status": "completed",
                "output": [
                    {"type": "message", "role": "assistant"},
                    {"id": "f1", "type": "function_call", "call_id": "c1", "name": "t"},
                ],
            },
        )
    )
    assert isinstance(ev, rt.ResponseDone) and [i.item_id for i in ev.items] == ["f1"]
    assert ev.function_calls[0].call_id == "c1"


def test_a_failed_response_carries_the_services_code() -> None:
    details = {
        "type": "failed",
        "error": {
            "type": "rate_limit_error",
            "code": "inference_rate_limit_exceeded",
            "message": "m",
        },
    }
    ev = rt.parse_server_event(
        server(
            "response.done", response={"id": "r1", "status": "failed", "status_details": details}
        )
    )
    assert ev == rt.ResponseDone("r1", "failed", (), None, "inference_rate_limit_exceeded", "m")
    assert rt.reaction_to(ev.error_code) is rt.Reaction.BACK_OFF
    cut = rt.parse_server_event(
        server(
            "response.done",
            response={
                "id": "r2",
                "status": "incomplete",
                "status_details": {"type": "incomplete", "reason": "content_filter"},
            },
        )
    )
    assert isinstance(cut, rt.ResponseDone) and cut.reason == "content_filter"
