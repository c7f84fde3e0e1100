"""Each fault the emulator can inject, against the daemon over real sockets.

What is asserted is what the user would see (states, LEDs, error codes, earcons in the
events log), that the daemon keeps running, and what happens at the next wake: a new
session for configuration-type errors, an immediate "offline" error inside the backoff
window for network-type ones. The audio is read as fast as possible; one test at real
time shows the recovery once the backoff window has passed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device.app import App, RunOptions
from device.config import Config, Secret, parse_config
from device.emulator import Emulator, Faults, Scenario
from tests.helpers import (
    CONVERSATION,
    QUESTION,
    config,
    nonzero,
    read_jsonl,
    read_wav,
    reply_heard,
    silence,
    sounds,
    speech,
    states,
    write_wav,
)
from tests.sdk import validate_client_event

SHORT = {"preambles": ["One moment."], "answer": "It is sunny.", "think_ms": 50, "speedup": 20.0}


@pytest.fixture(scope="module")
def question() -> bytes:
    return silence(0.5) + speech(QUESTION) + silence(1.5)


@pytest.fixture(scope="module")
def twice(question: bytes) -> bytes:
    return question + silence(1.0) + question


@dataclass
class Run:
    code: int
    events: list[dict[str, Any]]
    record: list[dict[str, Any]]
    reply: bytes

    def errors(self) -> list[str]:
        return [e["code"] for e in self.events if e["event"] == "error"]

    def sent(self, conn: int | None = None) -> list[dict[str, Any]]:
        return [r["event"] for r in self.record if "event" in r and conn in (None, r["conn"])]

    def handshakes(self) -> list[dict[str, Any]]:
        return [r for r in self.record if "handshake" in r]


async def run(
    tmp_path: Path,
    audio: bytes,
    scenario: Scenario,
    fast: bool = True,
    credential: Any = None,
    **sections: dict[str, Any],
) -> Run:
    emu = Emulator(scenario, record=tmp_path / "record.jsonl")
    await emu.start("127.0.0.1", 0)
    data: dict[str, dict[str, Any]] = {
        "gpio": {"pin_factory": "mock"},
        "turn": {"follow_up_ms": 1000, "follow_up": "always"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    data.setdefault("cloud", {})["endpoint"] = f"http://127.0.0.1:{emu.port}"
    cfg: Config = dataclasses.replace(parse_config(data), api_key=Secret("test-key"))
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "in.wav", audio),
        fast=fast,
        output_wav=tmp_path / "reply.wav",
        events_log=tmp_path / "events.jsonl",
    )
    try:
        code = await asyncio.wait_for(App(cfg, opts, credential).run(), 90)
    finally:
        await emu.close()
    return Run(
        code,
        read_jsonl(tmp_path / "events.jsonl"),
        read_jsonl(tmp_path / "record.jsonl"),
        read_wav(tmp_path / "reply.wav"),
    )


def scenario(faults: Faults | None = None, **fields: Any) -> Scenario:
    return Scenario(**{**SHORT, **fields}, faults=faults or Faults())


def wakes(r: Run) -> int:
    return len([e for e in r.events if e["event"] == "wake"])


@dataclass
class _Token:
    token: str
    expires_on: int


class ShortLivedTokens:
    """Stands in for azure-identity's credential chain, which cannot run here: hands out
    tokens that expire within the refresh margin, so each connection needs a new one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str) -> _Token:
        self.calls.append(scopes)
        return _Token(f"entra-token-{len(self.calls)}", int(time.time()) + 60)


# ---------------------------------------------------------------------------------------------
# Handshake refusals


@pytest.mark.parametrize(
    ("status", "code", "words"),
    [
        (401, "auth_failed", "AZURE_OPENAI_API_KEY"),
        (403, "auth_failed", "refused the API key"),
        (404, "not_found", "cloud.deployment"),
        # a deployment of a model that cannot do realtime: Azure's own words, from the body
        (400, "refused", "OperationNotSupported: The realtime operation does not work"),
    ],
)
async def test_configuration_refusals_name_the_cause_and_are_not_asked_again(
    tmp_path: Path,
    twice: bytes,
    status: int,
    code: str,
    words: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong key or deployment does not fix itself: the next wake shows the same error at
    once instead of asking the service again, and the journal hears of it once."""
    caplog.set_level(logging.DEBUG, logger="device")
    r = await run(tmp_path, twice, scenario(Faults(reject_status=status, connections=1)))
    assert r.code == 0 and wakes(r) == 2
    assert r.errors() == [code, code]
    error = next(e for e in r.events if e["event"] == "error")
    assert words in error["message"]
    assert states(r.events) == ["connecting", "error", "error", "idle"]
    assert len(r.handshakes()) == 1  # the second wake did not touch the network
    assert sounds(r.events) == ["error", "error"]
    warned = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert [w.getMessage().split(":")[0] for w in warned] == [code]


async def test_after_a_refusal_the_button_asks_again(tmp_path: Path, question: bytes) -> None:
    """The user fixed it on the service's side (a role assigned, quota raised): one press
    tries now, and a session that opens clears the refusal for the wake word too."""
    audio = question + silence(0.5)
    emu = Emulator(scenario(Faults(reject_status=401, connections=1)))
    await emu.start("127.0.0.1", 0)
    cfg = config(f"http://127.0.0.1:{emu.port}", turn={"follow_up_ms": 500})
    opts = RunOptions(
        input_wav=write_wav(tmp_path / "in.wav", audio + silence(8.0)),
        fast=False,
        output_wav=tmp_path / "reply.wav",
        events_log=tmp_path / "events.jsonl",
    )
    app = App(cfg, opts)
    task = asyncio.create_task(app.run())
    try:
        events = tmp_path / "events.jsonl"
        for _ in range(200):
            await asyncio.sleep(0.05)
            if events.exists() and '"error"' in events.read_text():
                break
        assert (await app.verbs("wake", ""))["ok"]  # what a press does, by the socket
        for _ in range(200):
            await asyncio.sleep(0.05)
            if '"listening"' in events.read_text():
                break
        app.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    finally:
        await emu.close()
    evs = read_jsonl(events)
    assert [e["code"] for e in evs if e["event"] == "error"] == ["auth_failed"]
    assert states(evs)[:4] == ["connecting", "error", "connecting", "listening"]


@pytest.mark.parametrize(("status", "code"), [(429, "rate_limited"), (503, "server_error")])
async def test_service_refusals_back_off_and_the_next_wake_fails_at_once(
    tmp_path: Path, twice: bytes, status: int, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="device.app")
    r = await run(tmp_path, twice, scenario(Faults(reject_status=status, retry_after_s=30)))
    # the journal hears of the outage once, not at every failed wake
    warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert [w.getMessage().split(":")[0] for w in warnings] == [code]
    assert r.code == 0 and wakes(r) == 2
    assert r.errors() == [code, "offline"]
    first = next(e for e in r.events if e["event"] == "error")
    assert "next try after 30 s" in first["message"]  # Retry-After is honoured
    assert states(r.events) == ["connecting", "error", "error", "idle"]
    assert len(r.handshakes()) == 1  # the second wake did not touch the network
    assert sounds(r.events) == ["error", "error"]
    assert [e["pattern"] for e in r.events if e["event"] == "led"][-2:] == ["error", "offline"]


# ---------------------------------------------------------------------------------------------
# Failures during a session. In a file read as fast as possible, a second question would go
# by while the device waits on the network, so these run at real time: two questions four
# seconds apart, the first conversation hit by the fault, the second on a fresh connection.
# They run three at a time (one emulator each): quicker than one by one, and light enough
# for the one event loop they share to keep up with real time on a busy two-core machine.

MID_SESSION: dict[str, tuple[Scenario, dict[str, dict[str, Any]], Any]] = {
    "drop": (scenario(Faults(drop_after=14, connections=1)), {}, None),
    "stall": (
        scenario(Faults(stall_after=14, connections=1)),
        {"cloud": {"keepalive_s": 1.0}},
        None,
    ),
    "rate_limit": (scenario(Faults(error_code="rate_limit_exceeded", connections=1)), {}, None),
    "quota": (scenario(Faults(error_code="insufficient_quota", connections=1)), {}, None),
    "expiry": (
        scenario(
            # 3.5 s after connecting: the question ends 1.6 s in and the answer (no preamble,
            # sent at real time) lasts 4.6 s, so this is about 2 s into it, with 2 s to spare
            # either side for a busy machine
            Faults(expire_after_s=3.5, connections=1),
            preambles=[],
            speedup=1.0,
            think_ms=0,
            answer="A rather long answer that keeps on going for quite a while longer.",
        ),
        {},
        None,
    ),
    "oversized": (scenario(Faults(huge_event=True, connections=1)), {}, None),
    "failed": (
        scenario(Faults(fail_response="inference_rate_limit_exceeded", connections=1)),
        {},
        None,
    ),
    "entra": (scenario(), {"cloud": {"auth": "entra"}}, "credential"),
}


@pytest.fixture(scope="module")
def mid_session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Run, Any]]:
    apart = silence(0.3) + speech("okay nabu, what time is it?") + silence(1.0)
    audio = apart + silence(4.0) + apart

    async def all_of_them() -> list[Run]:
        room = asyncio.Semaphore(3)

        async def one(folder: Path, sc: Scenario, cred: Any, sections: Any) -> Run:
            async with room:
                return await run(folder, audio, sc, False, cred, **sections)

        jobs = []
        for name, (sc, sections, extra) in MID_SESSION.items():
            cred = ShortLivedTokens() if extra == "credential" else None
            creds[name] = cred
            jobs.append(one(tmp_path_factory.mktemp(name), sc, cred, sections))
        return await asyncio.gather(*jobs)

    creds: dict[str, Any] = {}
    runs = asyncio.run(all_of_them())
    return {name: (r, creds[name]) for name, r in zip(MID_SESSION, runs, strict=True)}


def recovered_after(
    r: Run, code: str, outage: bool, conversation: list[str] = CONVERSATION
) -> None:
    """The fault showed as `code`, the daemon went on, and the next wake had a whole talk."""
    assert r.code == 0 and wakes(r) == 2
    assert r.errors() == [code]
    assert "error" in states(r.events)
    assert states(r.events)[-len(conversation) :] == conversation
    assert len([e for e in r.events if e["event"] == "recovered"]) == (1 if outage else 0)
    assert sounds(r.events) == ["error"]


def test_connection_dropped_mid_answer(mid_session: dict[str, tuple[Run, Any]]) -> None:
    r, _ = mid_session["drop"]
    recovered_after(r, "connection_lost", outage=True)
    first = r.events[: next(i for i, e in enumerate(r.events) if e["event"] == "error")]
    # the reply was under way when the line went (asked for at the pause, `turn.commit_ms`)
    assert any(e["event"] == "turn_commit" for e in first)


def test_stalled_server_is_noticed_by_the_keepalive(
    mid_session: dict[str, tuple[Run, Any]],
) -> None:
    r, _ = mid_session["stall"]
    recovered_after(r, "keepalive_timeout", outage=True)
    stalled_at = next(
        e["t"] for e in r.events if e["event"] == "state" and e["state"] == "thinking"
    )
    noticed_at = next(e["t"] for e in r.events if e["event"] == "error")
    assert noticed_at - stalled_at < 2.5  # within about keepalive_s, not after minutes


def test_rate_limit_error_event_backs_off(mid_session: dict[str, tuple[Run, Any]]) -> None:
    recovered_after(mid_session["rate_limit"][0], "rate_limit_exceeded", outage=True)


def test_quota_error_ends_the_session_until_the_configuration_changes(
    mid_session: dict[str, tuple[Run, Any]],
) -> None:
    """A spent quota is not waited out: the next wake says so again without a session."""
    r, _ = mid_session["quota"]
    assert r.code == 0 and wakes(r) == 2
    assert r.errors() == ["insufficient_quota", "insufficient_quota"]
    assert states(r.events).count("connecting") == 1 and states(r.events)[-2:] == ["error", "idle"]
    assert len(r.handshakes()) == 1
    assert sounds(r.events) == ["error", "error"]


def test_session_expiry_mid_answer_ends_it_quietly(
    mid_session: dict[str, tuple[Run, Any]],
) -> None:
    """60 minutes are up: a normal end, not a failure. No error state, no error sound; the
    next wake opens a new session and has a whole talk."""
    r, _ = mid_session["expiry"]
    without_preamble = [s for s in CONVERSATION if s != "preamble"]
    assert r.code == 0 and wakes(r) == 2
    assert r.errors() == [] and "error" not in states(r.events)
    first = without_preamble[:-2]  # connecting … answering, then cut: idle
    assert states(r.events) == [*first, "idle", *without_preamble]
    assert sounds(r.events) == []
    closed = [e["reason"] for e in r.events if e["event"] == "session_closed"]
    assert closed[0] == "session_expired"


def test_an_oversized_event_is_refused_not_buffered(
    mid_session: dict[str, tuple[Run, Any]],
) -> None:
    r, _ = mid_session["oversized"]
    recovered_after(r, "connection_lost", outage=True)
    lost = next(e for e in r.events if e["event"] == "error")
    assert "1009" in lost["message"]  # "message too big", refused at the 4 MiB limit


def test_entra_tokens_are_fetched_per_connection_and_sent_as_bearer(
    mid_session: dict[str, tuple[Run, Any]],
) -> None:
    r, cred = mid_session["entra"]
    assert states(r.events) == CONVERSATION + CONVERSATION
    assert [h["auth"] for h in r.handshakes()] == ["bearer", "bearer"]
    # each token expires within the refresh margin, so each connection fetched a new one
    assert cred.calls == [("https://cognitiveservices.azure.com/.default",)] * 2


async def test_malformed_and_unknown_events_are_logged_once_and_ignored(
    tmp_path: Path, question: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="device.app")
    r = await run(tmp_path, question, scenario(Faults(garbage=True)))
    assert r.errors() == []
    assert states(r.events) == CONVERSATION
    ignored = [m for m in caplog.messages if m.startswith("ignoring server event")]
    assert len(ignored) == 3  # each kind was sent twice: not JSON, unknown type, broken delta
    assert r.code == 0


# ---------------------------------------------------------------------------------------------
# Delivery and content the device must take in its stride


@pytest.mark.parametrize(
    "delivery", [{"speedup": 0.7}, {"speedup": 2.0, "burst": 8}], ids=["slow", "bursty"]
)
async def test_slow_or_bursty_audio_plays_whole_and_in_order(
    tmp_path: Path, question: bytes, delivery: dict[str, Any]
) -> None:
    sc = scenario(**delivery)
    r = await run(tmp_path, question, sc)
    assert states(r.events) == CONVERSATION
    assert np.array_equal(nonzero(r.reply), nonzero(reply_heard(sc)))


async def test_several_preamble_items(tmp_path: Path, question: bytes) -> None:
    r = await run(tmp_path, question, scenario(preambles=["One moment.", "Still looking."]))
    phases = [e["phase"] for e in r.events if e["event"] == "playback_start"]
    assert phases == ["commentary", "commentary", "final_answer"]
    assert states(r.events) == CONVERSATION  # one preamble state for both items


async def test_a_function_call_between_preamble_and_answer(tmp_path: Path, question: bytes) -> None:
    r = await run(tmp_path, question, scenario(tool_call="get_current_time"))
    assert states(r.events) == [
        "connecting",
        "listening",
        "thinking",
        "preamble",
        "thinking",  # the tool ran; the answer is on its way
        "answering",
        "follow_up",
        "idle",
    ]
    assert [e["name"] for e in r.events if e["event"] == "tool_call"] == ["get_current_time"]
    sent = r.sent()
    output = next(e for e in sent if e["type"] == "conversation.item.create")
    assert json.loads(output["item"]["output"])["local_time"]
    assert [e["type"] for e in sent].count("response.create") == 2
    for ev in sent:
        validate_client_event(ev)


@pytest.mark.parametrize("mode", ["server_vad", "semantic_vad"])
async def test_server_turn_detection(tmp_path: Path, question: bytes, mode: str) -> None:
    r = await run(tmp_path, question, scenario(), turn={"detection": mode})
    assert states(r.events) == CONVERSATION
    turn = next(e for e in r.events if e["event"] == "turn_end")
    assert turn["reason"] == "server"
    types = [e["type"] for e in r.sent()]
    assert "input_audio_buffer.commit" not in types and "response.create" not in types
    update = r.sent()[0]
    assert update["session"]["audio"]["input"]["turn_detection"]["type"] == mode


# ---------------------------------------------------------------------------------------------
# Other endpoints and authentication


async def test_azure_preview_endpoint_speaks_beta(tmp_path: Path, question: bytes) -> None:
    r = await run(tmp_path, question, scenario(), cloud={"kind": "azure-preview"})
    assert states(r.events) == CONVERSATION
    assert r.handshakes()[0]["handshake"] == "/openai/realtime"
    for ev in r.sent():
        validate_client_event(ev, beta=True)
    assert r.sent()[0]["session"]["modalities"] == ["audio", "text"]


async def test_openai_endpoint_uses_a_bearer_key(tmp_path: Path, question: bytes) -> None:
    r = await run(tmp_path, question, scenario(), cloud={"kind": "openai"})
    assert states(r.events) == CONVERSATION
    assert r.handshakes() == [{**r.handshakes()[0], "handshake": "/v1/realtime", "auth": "bearer"}]


async def test_a_refused_session_update_is_an_error_naming_the_field(
    tmp_path: Path, question: bytes
) -> None:
    """The service would run the session on its defaults (its own turn detection, voice and
    prompt, no tools): the device does not stream as if its settings were in force."""
    r = await run(tmp_path, question, scenario(Faults(reject_update="session.audio.output.voice")))
    assert r.code == 0 and wakes(r) == 1
    assert r.errors() == ["session_rejected"]
    error = next(e for e in r.events if e["event"] == "error")
    assert error["message"].startswith("the service refused session.audio.output.voice: ")
    assert states(r.events) == ["connecting", "error", "idle"]
    sent = [e["type"] for e in r.sent()]
    assert sent == ["session.update"]  # not one byte of audio, no commit, no response asked
    # a configuration problem: no outage, the next wake simply tries again
    assert not [e for e in r.events if e["event"] == "recovered"]


def test_a_failed_response_is_an_error_with_the_services_code_and_backs_off(
    mid_session: dict[str, tuple[Run, Any]],
) -> None:
    """Rate limits inside a session arrive as response.done with status failed: the user
    sees and hears the error with the service's code (not thinking until the reply timeout,
    then silence), the device backs off, and the next wake has a whole talk."""
    r, _ = mid_session["failed"]
    recovered_after(r, "inference_rate_limit_exceeded", outage=True)
    thinking = next(e["t"] for e in r.events if e["event"] == "state" and e["state"] == "thinking")
    failed = next(e["t"] for e in r.events if e["event"] == "error")
    assert failed - thinking < 5  # at once, not after the 20 s reply timeout


async def test_a_refused_entra_token_names_the_token_and_the_role(
    tmp_path: Path, question: bytes
) -> None:
    r = await run(
        tmp_path,
        question,
        scenario(Faults(reject_status=401)),
        credential=ShortLivedTokens(),
        cloud={"auth": "entra"},
    )
    error = next(e for e in r.events if e["event"] == "error")
    assert "refused the Entra ID token (HTTP 401)" in error["message"]
    assert "Cognitive Services OpenAI User" in error["message"]
    assert "API key" not in error["message"]


async def test_a_phase_said_only_on_done_still_drives_the_lights(
    tmp_path: Path, question: bytes
) -> None:
    """No SDK documents where `phase` appears; when the service says it only once an item
    is done, the preamble is still shown as the preamble and the answer as the answer."""
    r = await run(tmp_path, question, scenario(phase_on_done=True))
    added = [e for e in r.record if e.get("sent", {}).get("type") == "response.output_item.added"]
    assert all("phase" not in e["sent"]["item"] for e in added)
    shown = states(r.events)
    assert "preamble" in shown and shown[-3:] == ["answering", "follow_up", "idle"]
    assert shown.index("preamble") < len(shown) - 3
    started = [e["phase"] for e in r.events if e["event"] == "playback_start"]
    assert "commentary" in started and started[-1] == "final_answer"
