"""The cloud link: owns the realtime session, the turn being streamed and the reply's audio.

It carries out the state machine's session commands (open, stream, commit, cancel,
truncate…), turns what the server says into the machine's inputs through one dispatch table
(`_server_table`), and turns what the speaker reports having played into inputs too. The
protocol itself is `core.realtime`'s; which responses are played and how many tool rounds a
turn may take is `core.replies`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from .adapters.cloud import CloudSession, auth_headers
from .adapters.entra import EntraTokens
from .adapters.speaker import Speaker
from .adapters.systemd import CONTEXT, escape
from .config import Config, realtime_endpoint
from .core import realtime as rt
from .core import states as st
from .core.arbitration import Verdict
from .core.audio import (
    CLOUD_RATE,
    SAMPLE_BYTES,
    ItemStarted,
    PlayoutEvent,
    PlayoutStopped,
    PreRoll,
    ResponsePlayed,
    Source,
    Uplink,
    samples_to_ms,
)
from .core.earcons import Earcon
from .core.replies import Replies, invites_reply
from .events import EventLog
from .meter import CostMeter
from .tools import Device, Toolbox

log = logging.getLogger(__name__)

MAX_REPLAY_S = 60
"""The last answer is kept in RAM for a repeat, up to this long (never written anywhere)."""
MAX_WARNED = 32
"""Kinds of bad server event warned about once each; past that, one line says so."""
ERRORS_PER_MINUTE = 5
"""Non-fatal server errors logged and written to the events log; past that, counted."""
MAX_SERVER_TEXT = 200


class Answer:
    """The final-answer audio of one response, by item, at most MAX_REPLAY_S long: what a
    double press repeats. Its size is counted, so each delta costs the same."""

    def __init__(self, response_id: str) -> None:
        self.response_id = response_id
        self.items: dict[str, bytearray] = {}
        self.size = 0

    def add(self, item_id: str, pcm: bytes) -> None:
        full = self.size >= MAX_REPLAY_S * CLOUD_RATE * SAMPLE_BYTES
        if not full and (item_id in self.items or len(self.items) < rt.Conversation.MAX_ITEMS):
            self.items.setdefault(item_id, bytearray()).extend(pcm)
            self.size += len(pcm)

    def drop(self, item_id: str) -> None:
        """A preamble that had been taken for the answer."""
        self.size -= len(self.items.pop(item_id, b""))

    def audio(self) -> bytes:
        return b"".join(self.items.values())


MAX_HELD = 4096
MAX_HELD_BYTES = 8 * 1024 * 1024
"""Server events (and their audio and text) held back while a turn sent at a pause waits to
be confirmed: a few hundred ms of a reply, at most a few seconds of audio; past these, a
flooding server's events are dropped, so the hold never grows memory without bound."""
HELD = (
    rt.ResponseCreated,
    rt.OutputItemAdded,
    rt.OutputItemDone,
    rt.AudioDelta,
    rt.TranscriptDone,
    rt.FunctionCallDone,
    rt.ResponseDone,
)
"""What a response says: held back, in order, while its turn may not be over."""


class Early:
    """A turn sent at a pause (`turn.commit_ms`) with its answer asked for. Until the pause
    reaches `turn.silence_ms` the answer is held here, unheard and its tools not run; then
    it is let through as it came (`release`), or, if the user spoke again, withdrawn."""

    def __init__(self, commit_event: str) -> None:
        self.commit_event = commit_event
        self.user_item: str | None = None
        """The turn's first part in the conversation (from input_audio_buffer.committed)."""
        self.held: list[rt.ServerEvent] = []
        self.size = 0
        self.dropped = 0

    def hold(self, ev: rt.ServerEvent) -> None:
        size = 64 + sum(
            len(getattr(ev, name, "") or "") for name in ("pcm", "transcript", "arguments")
        )
        if len(self.held) < MAX_HELD and self.size + size <= MAX_HELD_BYTES:
            self.held.append(ev)
            self.size += size
        else:
            self.dropped += 1

    def response(self) -> tuple[str | None, rt.ResponseDone | None]:
        """The held response's id (None: not created yet) and its end, if it came."""
        created = next((e for e in self.held if isinstance(e, rt.ResponseCreated)), None)
        rid = created.response_id if created is not None else None
        done = next(
            (e for e in self.held if isinstance(e, rt.ResponseDone) and e.response_id == rid),
            None,
        )
        return rid, done


def session_settings(
    cfg: Config, tools: tuple[rt.Tool, ...], hints: str = ""
) -> rt.SessionSettings:
    """`hints`: a sentence or two telling the model which of the device's tools to use."""
    a = cfg.assistant
    return rt.SessionSettings(
        instructions=f"{a.instructions} {hints}".strip(),
        voice=a.voice,
        reasoning_effort=a.reasoning_effort,
        speed=a.speed,
        turn_detection=rt.turn_detection(cfg.turn.detection, cfg.turn.silence_ms),
        tools=tools,
        dialect=realtime_endpoint(cfg.cloud).dialect,
    )


class CloudLink:
    def __init__(
        self,
        cfg: Config,
        speaker: Speaker,
        events: EventLog,
        handle: Callable[[st.Input], None],
        audio_ms: Callable[[], int],
        play_earcon: Callable[[Earcon], None],
        answer_text: Callable[[str], None],
        meter: CostMeter,
        credential: Any = None,
        device: Device | None = None,
    ) -> None:
        """`answer_text`: each final answer's transcript, as it completes (for `ask`);
        `meter`: counts the tokens each response used;
        `credential`: an azure-identity TokenCredential for Entra auth;
        `device`: what the model's tools may touch."""
        self.speaker = speaker
        self.meter = meter
        self.events = events
        self._handle = handle
        self._audio_ms = audio_ms
        self._play_earcon = play_earcon
        self._answer_text = answer_text
        self._credential = credential
        self.device = device or Device()
        self.contest: Callable[[], Awaitable[Verdict]] | None = None
        """Whether this device answers a wake word other devices may have heard (None: it
        is alone, no broker configured)."""
        self.contest_over: Callable[[bool], None] = lambda won: None
        self.transcript: Callable[[str, str], None] = lambda role, text: None
        """What the user said and the answer's words, as each is final (MQTT, if the user
        turned `mqtt.publish_transcripts` on)."""
        self.aside: Aside | None = None
        """A short session speaking a timer's name while it rings."""
        self._bearer: Any = None
        self.session: CloudSession | None = None
        self.uplink: Uplink | None = None
        self.conversation = rt.Conversation()
        self.client = rt.ClientEvents()
        self.replies = Replies()
        self._received: OrderedDict[str, int] = OrderedDict()
        """Samples of audio received per item (the last few items): what a truncate may name."""
        self._heard_from: str | None = None
        """The response whose first audio has arrived (the `reply_audio` event, once each)."""
        self._answer: Answer | None = None
        """The final answer of the response in progress: one response, never more."""
        self.last_answer = b""
        self._replays = 0
        self._warned: set[str] = set()
        self._errors: deque[float] = deque(maxlen=ERRORS_PER_MINUTE)
        self._errors_unlogged = 0
        self.progress_at = time.monotonic()
        """When the awaited reply last made progress (the reply timeout counts from it)."""
        self.tg: asyncio.TaskGroup | None = None
        self.early: Early | None = None
        """The turn sent at a pause, its answer held until the turn is confirmed over."""
        self._withdrawn: deque[str] = deque(maxlen=8)
        """Responses withdrawn (the user spoke on): their items are deleted when they end."""
        self._withdraw_next = False
        """A response withdrawn before it was created: the next one created is it."""
        self._withdraw_commit: str | None = None
        """A turn's first part withdrawn before the server confirmed its commit (the
        commit's event id): the next committed item is it, and is deleted (unless the server
        refuses that commit)."""
        self.configure(cfg)
        self._server_table: dict[type, Callable[[Any], None]] = {
            rt.AudioDelta: self._on_audio,
            rt.ResponseCreated: self._on_response_created,
            rt.ResponseDone: self._on_response_done,
            rt.OutputItemAdded: self._on_output_item,
            rt.OutputItemDone: self._on_output_item,
            rt.InputCommitted: lambda ev: self._handle(st.ServerCommitted()),
            rt.ServerError: self._on_server_error,
            rt.TranscriptDone: self._on_transcript,
            rt.InputTranscript: self._on_transcript,
            rt.SpeechStarted: lambda ev: log.debug("server heard speech start"),
            rt.SpeechStopped: lambda ev: log.debug("server heard speech stop"),
            rt.FunctionCallDone: lambda ev: log.debug("model calls %s", ev.name),
            rt.RateLimits: self._on_rate_limits,
            rt.Malformed: self._on_bad_event,
            rt.Unknown: self._on_bad_event,
        }

    def configure(self, cfg: Config) -> None:
        """Apply a (re)loaded configuration: the next session uses it."""
        self.cfg = cfg
        self.toolbox = Toolbox(cfg.assistant.tools, self.device)
        self.endpoint = realtime_endpoint(cfg.cloud)
        if cfg.cloud.auth == "entra" and self._bearer is None:
            self._bearer = EntraTokens(self._credential).bearer

    # -- the session ------------------------------------------------------------------------

    def open_session(self, c: st.OpenSession) -> None:
        assert self.tg is not None
        self._heard_from = None
        self._answer = None
        self.conversation = rt.Conversation()
        self.client = rt.ClientEvents()
        self.replies = Replies()
        self.stop_aside()  # (a conversation takes the speaker)
        session = CloudSession(
            self.endpoint,
            auth_headers(self.endpoint.kind, self.cfg.api_key, self._bearer),
            session_settings(self.cfg, self.toolbox.declarations, self.toolbox.hints),
            self.client,
            on_event=lambda ev: self._on_server_event(session, ev),
            on_status=lambda ev: self._on_session_status(session, ev),
            connect_timeout_s=self.cfg.cloud.connect_timeout_s,
            keepalive_s=self.cfg.cloud.keepalive_s,
            entra=self._bearer is not None,
        )
        self.session = session
        if c.arbitrate and self.contest is not None:
            self.tg.create_task(self._after_contest(session, self.contest), name="contest")
        else:
            session.start(self.tg)

    async def _after_contest(
        self, session: CloudSession, contest: Callable[[], Awaitable[Verdict]]
    ) -> None:
        """The session opens only if no other device that heard the wake answers it."""
        started = time.monotonic()
        verdict = await contest()
        waited_ms = round((time.monotonic() - started) * 1000)
        self.events.emit(
            "arbitration",
            self._audio_ms(),
            won=verdict.won,
            winner=verdict.winner,
            why=verdict.why,
            rivals=verdict.rivals,
            waited_ms=waited_ms,
        )
        self.contest_over(verdict.won)
        if session is not self.session:
            return  # the conversation ended meanwhile (a press, no speech)
        if verdict.won:
            assert self.tg is not None
            session.start(self.tg)
            return
        log.info("'%s' answers this wake word (%s): back to idle", verdict.winner, verdict.why)
        self._handle(st.HandledElsewhere(verdict.winner))

    def close_session(self, c: st.CloseSession) -> None:
        session = self.session
        if session is not None:
            log.info("session %s closed (%s)", session.session_id or "(not open)", c.reason)
            session.close(c.reason)
        self._session_over(session, c.reason)

    def _session_over(self, session: CloudSession | None, reason: str) -> None:
        """The session ended, closed by us or lost: forgotten, its end and its usage told."""
        self.session = None
        CONTEXT["SESSION_ID"] = ""
        self.uplink = None
        self._answer = None
        self.early = None
        self._withdrawn.clear()
        self._withdraw_next = False
        self._withdraw_commit = None
        if session is not None:
            self.events.emit("session_closed", self._audio_ms(), reason=reason)
            self.meter.session_over(session.session_id)

    def _on_session_status(self, session: CloudSession, ev: st.Input) -> None:
        if session is not self.session:
            return  # a session we already let go of
        if isinstance(ev, st.SessionReady):
            self.progress_at = time.monotonic()
            CONTEXT["SESSION_ID"] = session.session_id
            log.info("session %s open", session.session_id)
            self.events.emit("session_open", self._audio_ms(), session_id=session.session_id)
            self._pump_uplink()
        elif isinstance(ev, st.SessionFailed | st.SessionLost):
            self._session_over(session, ev.code)
        self._handle(ev)

    def _send(self, event: dict[str, Any]) -> None:
        if self.session is not None:
            self.session.send(event)

    # -- the user's turn --------------------------------------------------------------------

    def start_turn(self, c: st.StartTurn, preroll: PreRoll) -> None:
        start = max(c.start_sample, preroll.start)
        self.uplink = Uplink(start)
        self.uplink.push(preroll.since(start))
        self._pump_uplink()

    def stream(self, frame: bytes) -> None:
        """A microphone frame, for the turn being captured if there is one."""
        if self.uplink is not None and not self.uplink.finished:
            self.uplink.push(frame)
            self._pump_uplink()

    def end_turn(self, c: st.EndTurn) -> None:
        up = self.uplink
        if up is None:
            return
        up.finish()
        self.events.emit(
            "turn_end",
            self._audio_ms(),
            reason=c.reason,
            start_sample=up.start_sample,
            end_sample=up.end_sample if up.sealed_at is None else up.sealed_at,
        )
        self._pump_uplink()

    def _pump_uplink(self, up: Uplink | None = None) -> None:
        up, session = up or self.uplink, self.session
        if up is None or session is None or not session.ready or self.early is not None:
            return  # (while a turn sent at a pause waits, what follows it waits here)
        for chunk in up.take():
            session.send(self.client.append_audio(chunk))

    def commit_early(self, c: st.CommitEarly) -> None:
        up, session = self.uplink, self.session
        if up is None or session is None or not session.ready or self.early is not None:
            return
        up.seal()
        self._pump_uplink(up)
        commit = self.client.commit()
        self.early = Early(commit["event_id"])
        self.replies.new_turn()
        self.progress_at = time.monotonic()
        self.events.emit("turn_commit", self._audio_ms(), sample=up.sealed_at, early=True)
        self._send(commit)
        self._send(self.client.create_response())

    def withdraw(self, c: st.Withdraw) -> None:
        """The user went on after the pause: the held answer is cancelled unheard (and its
        items deleted), the turn's first part deleted, and the turn sent again from its
        start, so the service ends up with it whole in one item, as without the pause."""
        early, self.early = self.early, None
        if early is None:
            return
        self._drop_early(early)
        self.events.emit("turn_withdrawn", self._audio_ms(), sample=c.at_sample)
        if self.uplink is not None:
            self.uplink.rewind()
            self._pump_uplink()

    def _drop_early(self, early: Early) -> None:
        """The held answer and the turn's first part leave the conversation, unheard."""
        rid, done = early.response()
        for ev in early.held:
            if isinstance(ev, rt.ResponseDone) and ev.usage is not None:
                self.meter.add(ev.usage)  # billed although unheard
        if done is not None:
            for item in done.items:
                self._send(self.client.delete_item(item.item_id))
        else:
            cancel = self.client.cancel_response(rid)
            self._send(cancel)
            if rid is None:
                self._withdraw_next = True
                self.replies.cancelled(None, cancel["event_id"])
            else:
                self._withdrawn.append(rid)
        if early.user_item is not None:
            self._send(self.client.delete_item(early.user_item))
        else:
            self._withdraw_commit = early.commit_event

    def _release(self, early: Early) -> None:
        """The turn is over: the held answer goes on as it came."""
        if early.dropped:
            log.warning("the server flooded a held answer: %d events dropped", early.dropped)
        for ev in early.held:
            handler = self._server_table.get(type(ev))
            if handler is not None:
                handler(ev)

    def _withheld(self, ev: rt.ServerEvent) -> bool:
        """Whether `ev` is held back (a turn sent at a pause) or belongs to a withdrawn
        answer (dropped; its items are deleted once it ends)."""
        if isinstance(ev, rt.InputCommitted):
            if self._withdraw_commit is not None:
                self._withdraw_commit = None
                self._send(self.client.delete_item(ev.item_id))
                return True
            if self.early is not None and self.early.user_item is None:
                self.early.user_item = ev.item_id
            return False
        if not isinstance(ev, HELD):
            return False
        if isinstance(ev, rt.ResponseCreated) and self._withdraw_next:
            if self.replies.created():  # (the cancel was refused: nothing was withdrawn)
                self._withdraw_next = False
                return False
            self._withdraw_next = False
            self._withdrawn.append(ev.response_id)
            return True
        if ev.response_id in self._withdrawn:
            if isinstance(ev, rt.ResponseDone):
                self._withdrawn.remove(ev.response_id)
                if ev.usage is not None:
                    self.meter.add(ev.usage)
                for item in ev.items:
                    self._send(self.client.delete_item(item.item_id))
            return True
        if self.early is not None:
            self.early.hold(ev)
            return True
        return False

    def submit_turn(self, c: st.SubmitTurn) -> None:
        up = self.uplink
        self.uplink = None
        early, self.early = self.early, None
        if early is not None:  # sent at the pause: its answer may be heard now
            self.progress_at = time.monotonic()
            self.events.emit("audio_sent", self._audio_ms(), ms=up.sent_ms if up else 0)
            self._release(early)
            return
        self.replies.new_turn()
        if up is None or self.session is None:
            return
        if c.commit:
            self._pump_uplink(up)
            self.progress_at = time.monotonic()
            self.events.emit("turn_commit", self._audio_ms(), sample=up.end_sample, early=False)
            self._send(self.client.commit())
            self._send(self.client.create_response())
        # else the server committed the turn itself: audio not yet sent belongs to no turn
        self.events.emit("audio_sent", self._audio_ms(), ms=up.sent_ms)

    def discard_turn(self, c: st.DiscardTurn) -> None:
        early, self.early = self.early, None
        if early is not None:
            self._drop_early(early)
        up, self.uplink = self.uplink, None
        if up is not None and up.sent_bytes and self.session is not None:
            self.events.emit("audio_sent", self._audio_ms(), ms=up.sent_ms, discarded=True)
            self._send(self.client.clear_input())

    def send_text(self, c: st.SendText) -> None:
        self.replies.new_turn()
        self._send(self.client.user_text(c.text))
        self._send(self.client.create_response())

    def send_announcement(self, c: st.SendAnnouncement) -> None:
        self.replies.new_turn()
        self.events.emit("announce", self._audio_ms(), chars=len(c.text))
        self._send(self.client.say_aside(c.text))

    # -- a few words while a timer rings ----------------------------------------------------

    def speak_aside(self, text: str) -> None:
        """Say `text` in a short session of its own, out of any conversation, if the cloud
        answers; nothing waits for it and nothing is wrong if it does not."""
        if self.tg is None or self.session is not None:
            return
        self.stop_aside()
        self.aside = Aside(self, text)
        self.aside.start(self.tg)

    def stop_aside(self) -> None:
        if self.aside is not None:
            self.aside.close("stopped")
            self.aside = None

    # -- the reply --------------------------------------------------------------------------

    def _on_server_event(self, session: CloudSession, ev: rt.ServerEvent) -> None:
        if session is not self.session or self._withheld(ev):
            return
        handler = self._server_table.get(type(ev))
        if handler is not None:
            handler(ev)

    def _awaited(self, response_id: str) -> bool:
        """Whether `response_id` is the reply in progress: created, not yet done, not
        cancelled. Audio of any other (a cancelled one's trickle, one never created) is
        neither played nor taken as progress."""
        active = self.conversation.active_response
        return response_id == active and self.conversation.audible(response_id)

    def _progress(self, response_id: str) -> None:
        """The awaited reply moved on; anything else the server says (rate limits, a
        cancelled response's trickle) does not hold the reply timeout off."""
        if self._awaited(response_id):
            self.progress_at = time.monotonic()

    def quiet_s(self, now: float) -> float | None:
        """Seconds since the awaited reply last made progress (None: no session yet)."""
        session = self.session
        return now - self.progress_at if session is not None and session.ready else None

    def _on_output_item(self, ev: rt.OutputItemAdded | rt.OutputItemDone) -> None:
        before = self.conversation.phase_of(ev.item_id)
        self.conversation.apply(ev)
        self._progress(ev.response_id)
        after = self.conversation.phase_of(ev.item_id)
        if after is not before and ev.item_type == "message":
            self._phase_learned(ev.response_id, ev.item_id, after)

    def _phase_learned(self, response_id: str, item_id: str, phase: rt.Phase) -> None:
        """An item's phase became known only now (`phase` on `.done` alone): its audio still
        queued carries it, the LEDs follow at once if it is being heard, and a preamble
        taken for the answer leaves the repeat memory."""
        if phase is rt.Phase.COMMENTARY and self._answer is not None:
            self._answer.drop(item_id)
        if not self.conversation.audible(response_id):
            return
        if self.speaker.relabel(item_id, phase):
            self.events.emit("playback_start", self._audio_ms(), phase=phase, item_id=item_id)
            self._handle(st.PlaybackStarted(response_id, item_id, phase))

    def _on_response_created(self, ev: rt.ResponseCreated) -> None:
        self.conversation.apply(ev)
        if not self.replies.created():
            self.conversation.discard(ev.response_id)
            return
        self._progress(ev.response_id)
        self._handle(st.ResponseStarted(ev.response_id))

    def _on_audio(self, ev: rt.AudioDelta) -> None:
        if not self._awaited(ev.response_id):
            return
        self._progress(ev.response_id)
        phase = self.conversation.phase_of(ev.item_id)
        if ev.response_id != self._heard_from:
            self._heard_from = ev.response_id
            self.events.emit("reply_audio", self._audio_ms(), response_id=ev.response_id)
        self.speaker.play(ev.response_id, ev.item_id, phase, ev.pcm)
        self._received[ev.item_id] = self._received.get(ev.item_id, 0) + len(ev.pcm) // SAMPLE_BYTES
        self._received.move_to_end(ev.item_id)
        if len(self._received) > rt.Conversation.MAX_ITEMS:
            self._received.popitem(last=False)
        if phase is rt.Phase.FINAL_ANSWER:  # kept (in RAM) for a repeat
            if self._answer is None or self._answer.response_id != ev.response_id:
                self._answer = Answer(ev.response_id)
            self._answer.add(ev.item_id, ev.pcm)

    def _on_response_done(self, ev: rt.ResponseDone) -> None:
        if ev.usage is not None:  # billed whether it was heard, cut or failed
            self.meter.add(ev.usage)
        messages = [i.item_id for i in ev.items if i.item_type == "message"]
        before = {item_id: self.conversation.phase_of(item_id) for item_id in messages}
        self.conversation.apply(ev)
        for item_id, was in before.items():  # (a phase said only here)
            now = self.conversation.phase_of(item_id)
            if now is not was:
                self._phase_learned(ev.response_id, item_id, now)
        answer = None
        if self._answer is not None and self._answer.response_id == ev.response_id:
            answer, self._answer = self._answer, None
        if not self.conversation.audible(ev.response_id):
            return
        self.progress_at = time.monotonic()
        log.info("response %s: %s", ev.response_id, escape(ev.status[:40]))
        self.speaker.end(ev.response_id)
        if answer is not None and answer.size and ev.status == "completed":
            self.last_answer = answer.audio()
        if ev.status == "failed":
            self._response_failed(ev)
            return
        if ev.status == "incomplete":
            # cut short (content_filter, max_output_tokens): what came plays, then a sound
            # says it was cut, and the conversation goes on
            why = ev.reason or "incomplete"
            self.events.emit("error", self._audio_ms(), code=why, message="the answer was cut")
            log.warning("the answer was cut short (%s)", escape(why[:40]))
            self._play_earcon(Earcon.ERROR)
        calls = ev.function_calls if ev.status == "completed" else ()
        continues = self.replies.tool_round(len(calls))
        if continues:
            for call in calls:
                output = self.toolbox.call(call.name or "", call.arguments or "")
                self.events.emit("tool_call", self._audio_ms(), name=call.name)
                self._send(self.client.function_output(call.call_id or "", output))
            self._send(self.client.create_response())
        elif calls:
            rounds = self.replies.tool_rounds
            log.warning("the model kept calling tools (%d rounds); stopping here", rounds)
        self._handle(st.ResponseEnded(ev.response_id, ev.status, continues))

    def _response_failed(self, ev: rt.ResponseDone) -> None:
        """A failed response is how a rate limit or a spent quota arrives inside a session:
        the user hears and sees an error, with the service's code and the reaction it calls
        for (a rate limit backs off; quota and auth wait for the configuration to change)."""
        code = ev.error_code or ev.reason or "response_failed"
        message = ev.error_message or f"the service could not answer ({code})"
        back_off = rt.reaction_to(code) is rt.Reaction.BACK_OFF
        self._handle(st.CloudError(code[:80], message[:MAX_SERVER_TEXT], back_off))

    def _on_transcript(self, ev: rt.TranscriptDone | rt.InputTranscript) -> None:
        # the user's words and the reply's are personal: only in debug logs, never at INFO
        if isinstance(ev, rt.TranscriptDone):
            phase = self.conversation.phase_of(ev.item_id)
            log.debug("assistant (%s): %s", phase, ev.transcript)
            if phase is rt.Phase.FINAL_ANSWER:
                self._answer_text(ev.transcript)
                self.transcript("assistant", ev.transcript)
                self._handle(st.ReplyInvites(invites_reply(ev.transcript)))
        elif ev.final:
            log.debug("user: %s", ev.text)
            self.transcript("user", ev.text)

    def _on_rate_limits(self, ev: rt.RateLimits) -> None:
        for name, remaining, reset in ev.limits:
            log.debug("rate limit %s: %g left, resets in %gs", name, remaining, reset)

    def _on_server_error(self, ev: rt.ServerError) -> None:
        self.replies.cancel_refused(ev.event_id)
        if ev.event_id is not None and ev.event_id == self._withdraw_commit:
            self._withdraw_commit = None
        code = ev.code or ev.kind or "error"
        reaction = rt.reaction_to(code)
        if reaction is rt.Reaction.IGNORE:
            log.debug("server: %s (%s)", code, ev.message)
        elif reaction is rt.Reaction.CONTINUE:
            self._report_server_error(code, ev.message or "")
        elif reaction is rt.Reaction.END:
            log.info("the service ended the session (%s)", code)
            self._handle(st.CloudError(code, ev.message or code, quiet=True))
        else:
            back_off = reaction is rt.Reaction.BACK_OFF
            self._handle(st.CloudError(code, ev.message or code, back_off))

    def _report_server_error(self, code: str, message: str) -> None:
        """A server error the session goes on after: logged and written to the events log
        at most ERRORS_PER_MINUTE times a minute, cut short; a flood is counted instead."""
        now = time.monotonic()
        if len(self._errors) == self._errors.maxlen and now - self._errors[0] < 60:
            self._errors_unlogged += 1
            return
        self._errors.append(now)
        code, message = code[:MAX_SERVER_TEXT], message[:MAX_SERVER_TEXT]
        if self._errors_unlogged:
            message += f" ({self._errors_unlogged} more errors not logged)"
            self._errors_unlogged = 0
        self.events.emit("error", self._audio_ms(), code=code, message=message)
        log.warning("server error %s: %s", code, message)

    def _on_bad_event(self, ev: rt.Malformed | rt.Unknown) -> None:
        key = f"{type(ev).__name__}:{ev.type}"
        if key in self._warned or len(self._warned) > MAX_WARNED:
            return  # once per kind, not per event; and a bounded number of kinds
        self._warned.add(key)
        if len(self._warned) > MAX_WARNED:
            log.warning("more kinds of bad server event: no longer reported")
            return
        what = ev.reason if isinstance(ev, rt.Malformed) else "unknown event type"
        log.warning("ignoring server event %s: %s", (ev.type or "?")[:80], what)

    def cancel_response(self, c: st.CancelResponse) -> None:
        active = self.conversation.active_response
        self._answer = None
        if active is not None:
            self.conversation.discard(active)
        cancel = self.client.cancel_response(active)
        self.replies.cancelled(active, cancel["event_id"])
        self._send(cancel)

    def truncate(self, c: st.Truncate) -> None:
        """Tell the service how much of the item was heard: never more than it sent (the
        service refuses a truncate past the end of the item's audio)."""
        received = samples_to_ms(self._received.get(c.item_id, 0), CLOUD_RATE)
        self._send(self.client.truncate(c.item_id, min(c.audio_end_ms, received)))

    def delete_items(self, c: st.DeleteItems) -> None:
        for item_id in c.item_ids:
            self._send(self.client.delete_item(item_id))

    def replay_answer(self, c: st.ReplayAnswer) -> None:
        """Play the last answer again from memory; it reports played like a response."""
        if not self.last_answer:
            log.info("double press: no answer to repeat yet")
            self._play_earcon(Earcon.ERROR)
            self._handle(st.PlaybackFinished("no answer to repeat"))
            return
        self._replays += 1
        rid = f"replay {self._replays}"
        ms = samples_to_ms(len(self.last_answer) // SAMPLE_BYTES, CLOUD_RATE)
        self.events.emit("replay", self._audio_ms(), ms=ms)
        self.speaker.play(rid, rid, rt.Phase.FINAL_ANSWER, self.last_answer, Source.REPLAY)
        self.speaker.end(rid, Source.REPLAY)

    # -- what the speaker played ------------------------------------------------------------

    def playout(self, ev: PlayoutEvent) -> None:
        """What the user heard, as the machine's inputs (the device's own sounds are in no
        conversation; a repeat is reported like a response)."""
        ms = self._audio_ms()
        if isinstance(ev, ItemStarted | ResponsePlayed) and ev.source is Source.EARCON:
            return
        if isinstance(ev, ItemStarted):
            self.events.emit("playback_start", ms, phase=ev.phase, item_id=ev.item_id)
            phase = rt.Phase(ev.phase or rt.Phase.FINAL_ANSWER)
            self._handle(st.PlaybackStarted(ev.response_id, ev.item_id, phase))
        elif isinstance(ev, ResponsePlayed):
            self.events.emit("playback_end", ms, response_id=ev.response_id)
            self._handle(st.PlaybackFinished(ev.response_id))
        elif isinstance(ev, PlayoutStopped):
            if ev.item_id is not None:
                self.events.emit("barge_in", ms, item_id=ev.item_id, played_ms=ev.played_ms)
                self.events.emit("playback_end", ms, stopped=True)
            self._handle(st.PlaybackStopped(ev.item_id, ev.played_ms, ev.unplayed_item_ids))


class Aside:
    """A session that only speaks one text (a ringing timer's name) and closes: out of the
    state machine (the device is ringing, not talking), its audio played as one of the
    device's own sounds, a failure logged at info and forgotten."""

    def __init__(self, link: CloudLink, text: str) -> None:
        self.link = link
        self.text = text
        self.client = rt.ClientEvents("aside")
        self.response_id: str | None = None
        cfg = link.cfg
        self.session = CloudSession(
            link.endpoint,
            auth_headers(link.endpoint.kind, cfg.api_key, link._bearer),
            session_settings(cfg, ()),
            self.client,
            on_event=self._on_event,
            on_status=self._on_status,
            connect_timeout_s=cfg.cloud.connect_timeout_s,
            keepalive_s=cfg.cloud.keepalive_s,
            entra=link._bearer is not None,
        )
        self.over = False

    def start(self, tg: asyncio.TaskGroup) -> None:
        self.session.start(tg)

    def close(self, reason: str) -> None:
        if not self.over:
            self.over = True
            self.session.close(reason)
            self.link.meter.session_over(self.session.session_id)

    def _on_status(self, ev: st.Input) -> None:
        if self.over:
            return
        if isinstance(ev, st.SessionReady):
            self.session.send(self.client.say_aside(self.text))
        elif isinstance(ev, st.SessionFailed | st.SessionLost):
            log.info("the timer's name was not spoken: %s", ev.code)
            self.over = True

    def _on_event(self, ev: rt.ServerEvent) -> None:
        if self.over:
            return
        if isinstance(ev, rt.ResponseCreated) and self.response_id is None:
            self.response_id = ev.response_id
        elif isinstance(ev, rt.AudioDelta) and ev.response_id == self.response_id:
            rid = f"aside {ev.response_id}"
            self.link.speaker.play(rid, rid, None, ev.pcm, Source.EARCON)
        elif isinstance(ev, rt.ResponseDone) and ev.response_id == self.response_id:
            if ev.usage is not None:
                self.link.meter.add(ev.usage)
            rid = f"aside {ev.response_id}"
            self.link.speaker.end(rid, Source.EARCON)
            self.close("spoken")
