"""The device in Home Assistant over MQTT, and its claims when several devices hear a wake.

One connection to the broker (`aiomqtt`), kept by `run`: the broker down at start or gone
later never stops the device, which works on alone, tries again with the project's backoff
(`core.backoff`, `cloud.backoff_*`), logs once per outage, and publishes its discovery and
state again when the broker is back.

Home Assistant finds the device by MQTT discovery: one device, with entities for the state,
mute, volume, wake, announce, ask, the last wake word, today's usage and the timers
(`entities`). Availability is a retained `online`, and `offline` as the last will. Commands
from Home Assistant go through the control socket's verbs (`verbs.ControlVerbs`), the same
path as `voice-device mute|volume|wake|announce|ask`. What the user said and the answer's
words are published only with `mqtt.publish_transcripts`; audio never.

Several devices on one broker agree which one answers a wake (`core.arbitration`): `contest`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from . import __version__
from .adapters.control import Reply
from .config import Config, MqttConfig, Secret
from .core import states as st
from .core.arbitration import Board, Claim, Taken, Verdict, decode, encode
from .core.backoff import BackoffPolicy
from .events import EventLog

log = logging.getLogger(__name__)

Verbs = Callable[[str, str], Awaitable[Reply]]

MAX_COMMAND_BYTES = 1000
"""A command's payload (an announcement, a question): a sentence, not a book."""
MAX_BUSY = 4
"""Commands still being carried out (an ask waits for its spoken answer); more are refused."""
MAX_QUEUED_IN = 200
MAX_QUEUED_OUT = 500
"""Messages waiting in either direction: a flood or a stalled broker cannot grow memory."""
NOISY_LIMIT = 10
"""Bad messages logged at WARNING before the rest go to DEBUG."""
STATE_MAX = 255
"""Home Assistant's limit on a state's length."""
STATES = [s.value for s in st.State]


def default_device_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-")
    return name or "voice-device"


def device_id(m: MqttConfig) -> str:
    return m.device_id or default_device_id()


def topic_prefix(m: MqttConfig) -> str:
    return m.topic_prefix or f"voice-device/{device_id(m)}"


def connection(m: MqttConfig, password: Secret, identifier: str, **options: Any) -> aiomqtt.Client:
    """A client for the configured broker, as this device (`run` and `check` alike)."""
    return aiomqtt.Client(
        m.host,
        m.port,
        username=m.username or None,
        password=password.reveal() or None,
        identifier=identifier,
        tls_context=ssl.create_default_context() if m.tls else None,
        **options,
    )


def entities(m: MqttConfig, currency: str) -> dict[str, dict[str, Any]]:
    """Home Assistant's discovery: the config topic of each entity → its config
    (`currency`: the usage's, `usage.currency`)."""
    ident, p = device_id(m), topic_prefix(m)
    device = {
        "identifiers": [f"voice-device_{ident}"],
        "name": f"Voice device {ident}",
        "manufacturer": "voice-device",
        "model": "Raspberry Pi voice assistant (gpt-realtime-2)",
        "sw_version": __version__,
    }
    common = {
        "device": device,
        "availability_topic": f"{p}/availability",
        "origin": {"name": "voice-device", "sw_version": __version__},
    }
    found: dict[str, tuple[str, dict[str, Any]]] = {
        "state": (
            "sensor",
            {
                "name": "State",
                "state_topic": f"{p}/state",
                "device_class": "enum",
                "options": STATES,
                "icon": "mdi:account-voice",
            },
        ),
        "mute": (
            "switch",
            {
                "name": "Mute",
                "state_topic": f"{p}/mute",
                "command_topic": f"{p}/mute/set",
                "payload_on": "ON",
                "payload_off": "OFF",
                "icon": "mdi:microphone-off",
            },
        ),
        "volume": (
            "number",
            {
                "name": "Volume",
                "state_topic": f"{p}/volume",
                "command_topic": f"{p}/volume/set",
                "min": 0,
                "max": 200,
                "step": 5,
                "unit_of_measurement": "%",
                "mode": "slider",
                "icon": "mdi:volume-high",
            },
        ),
        "wake": (
            "button",
            {"name": "Wake", "command_topic": f"{p}/wake/set", "icon": "mdi:microphone"},
        ),
        "announce": (
            "notify",
            {"name": "Announce", "command_topic": f"{p}/announce/set", "icon": "mdi:bullhorn"},
        ),
        "ask": (
            "text",
            {
                "name": "Ask",
                "command_topic": f"{p}/ask/set",
                "min": 1,
                "max": 255,
                "icon": "mdi:chat-question",
            },
        ),
        "last_wake": (
            "sensor",
            {
                "name": "Last wake word",
                "state_topic": f"{p}/wake",
                "json_attributes_topic": f"{p}/wake/attributes",
                "icon": "mdi:account-voice",
            },
        ),
        "usage_today": (
            "sensor",
            {
                "name": "Usage today",
                "state_topic": f"{p}/usage",
                "json_attributes_topic": f"{p}/usage/attributes",
                "device_class": "monetary",
                "state_class": "total",
                "unit_of_measurement": currency,
                "icon": "mdi:cash",
            },
        ),
        "timers": (
            "sensor",
            {
                "name": "Timers",
                "state_topic": f"{p}/timers",
                "json_attributes_topic": f"{p}/timers/attributes",
                "icon": "mdi:timer-outline",
            },
        ),
    }
    if m.publish_transcripts:
        found["transcript"] = (
            "sensor",
            {
                "name": "Last exchange",
                "state_topic": f"{p}/transcript",
                "json_attributes_topic": f"{p}/transcript/attributes",
                "icon": "mdi:text",
            },
        )
    return {
        f"{m.discovery_prefix}/{component}/{ident}/{key}/config": {
            **config,
            **common,
            "unique_id": f"voice-device_{ident}_{key}",
            "object_id": f"voice_device_{ident}_{key}",
        }
        for key, (component, config) in found.items()
    }


class Home:
    def __init__(
        self,
        cfg: Config,
        verbs: Verbs,
        events: EventLog,
        audio_ms: Callable[[], int],
    ) -> None:
        self.m = m = cfg.mqtt
        self.events, self._audio_ms = events, audio_ms
        self._password: Secret = cfg.mqtt_password
        self._verbs = verbs
        self._policy = BackoffPolicy(cfg.cloud.backoff_initial_s, cfg.cloud.backoff_max_s)
        self.device_id = device_id(m)
        self.prefix = topic_prefix(m)
        self._discovery = entities(m, cfg.usage.currency)
        self.board = Board(self.device_id, m.arbitration_window_ms / 1000)
        self._client: aiomqtt.Client | None = None
        """The connection while the broker has us (None: it is away)."""
        self.down_since: float | None = None
        self._values: dict[str, str] = {}
        """Each state topic's newest payload: published retained, and all again on reconnect."""
        self._dirty: dict[str, None] = {}
        self._changed = asyncio.Event()
        self._heard = asyncio.Event()
        self._seq = 0
        self._busy: set[asyncio.Task[None]] = set()
        self._bad = 0
        self._was_up = False

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def arbitrating(self) -> bool:
        """A wake word is shared with the other devices (else this one decides alone)."""
        return self.m.arbitration and self.connected

    # -- what the device tells it -----------------------------------------------------------

    def set(self, key: str, value: Any) -> None:
        """Publish `value` under the device's topic `key` (retained; only when it changed)."""
        payload = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        topic = f"{self.prefix}/{key}"
        if self._values.get(topic) == payload:
            return
        self._values[topic] = payload
        self._dirty[topic] = None
        self._changed.set()

    def state(self, state: st.State) -> None:
        self.set("state", state.value)
        self.set("mute", "ON" if state is st.State.MUTED else "OFF")

    def woke(self, word: str, score: float, level_db: float) -> None:
        self.set("wake", word)
        self.set("wake/attributes", {"score": round(score, 3), "level_db": round(level_db, 1)})

    def transcript(self, role: str, text: str) -> None:
        """What the user said or the answer's words: only with `mqtt.publish_transcripts`."""
        if not self.m.publish_transcripts:
            return
        self.set("transcript", text[:STATE_MAX] or "-")
        self.set("transcript/attributes", {"role": role, "text": text[:2000]})

    def usage(self, status: dict[str, Any]) -> None:
        self.set("usage", f"{status['today']['cost']:.4f}")
        self.set("usage/attributes", status)

    def timers(self, listing: list[dict[str, Any]]) -> None:
        self.set("timers", str(len(listing)))
        self.set("timers/attributes", {"timers": listing})

    def volume(self, percent: int) -> None:
        self.set("volume", str(percent))

    def status(self) -> dict[str, Any]:
        return {
            "broker": f"{self.m.host}:{self.m.port}",
            "connected": self.connected,
            "device_id": self.device_id,
            "topic_prefix": self.prefix,
        }

    # -- the connection ---------------------------------------------------------------------

    async def run(self) -> None:
        """Connected while the broker lets us, tried again (with backoff) when it does not."""
        failures = 0
        while True:
            why = ""
            try:
                await self._connected()
            except (aiomqtt.MqttError, OSError) as e:  # (ssl.SSLError is an OSError)
                why = str(e) or type(e).__name__
            finally:
                self._client = None
            if self._was_up:
                failures = 0
            failures += 1
            delay = self._policy.delay(failures, random.random())
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.events.emit("mqtt", self._audio_ms(), connected=False, why=why[:200])
                log.warning(
                    "MQTT broker %s:%d unreachable (%s): the device works on without it; "
                    "trying again",
                    self.m.host,
                    self.m.port,
                    why,
                )
            else:
                log.debug("MQTT broker still unreachable (%s); next try in %.1f s", why, delay)
            await asyncio.sleep(delay)

    async def _connected(self) -> None:
        m = self.m
        self._was_up = False
        client = connection(
            self.m,
            self._password,
            f"voice-device-{self.device_id}",
            will=aiomqtt.Will(f"{self.prefix}/availability", "offline", qos=1, retain=True),
            keepalive=30,
            timeout=10,
            max_queued_incoming_messages=MAX_QUEUED_IN,
            max_queued_outgoing_messages=MAX_QUEUED_OUT,
        )
        async with client:
            self._client, self._was_up = client, True
            if self.down_since is not None:
                log.info("MQTT broker back after %.0f s", time.monotonic() - self.down_since)
                self.down_since = None
            else:
                log.info("MQTT broker %s:%d connected as '%s'", m.host, m.port, self.device_id)
            await client.subscribe(f"{self.prefix}/+/set", qos=1)
            if m.arbitration:
                await client.subscribe(m.arbitration_topic, qos=0)
            for topic, config in self._discovery.items():
                await client.publish(topic, json.dumps(config), qos=1, retain=True)
            await client.publish(f"{self.prefix}/availability", "online", qos=1, retain=True)
            self._dirty = dict.fromkeys(self._values)
            self._changed.set()
            self.events.emit("mqtt", self._audio_ms(), connected=True)
            publisher = asyncio.create_task(self._publish(client), name="mqtt-publish")
            try:
                async for message in client.messages:
                    self._receive(message)
            finally:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await publisher

    async def _publish(self, client: aiomqtt.Client) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            while self._dirty:
                topic = next(iter(self._dirty))
                del self._dirty[topic]
                try:
                    await client.publish(topic, self._values[topic], qos=1, retain=True)
                except aiomqtt.MqttError:
                    self._dirty[topic] = None  # sent again once the broker is back
                    return

    async def goodbye(self) -> None:
        """The daemon stops: `offline` now, rather than when the broker notices."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(1.0):
                await client.publish(f"{self.prefix}/availability", "offline", qos=1, retain=True)

    # -- what comes in ----------------------------------------------------------------------

    def _noisy(self, what: str, *args: Any) -> None:
        self._bad += 1
        level = logging.WARNING if self._bad <= NOISY_LIMIT else logging.DEBUG
        log.log(level, "MQTT: " + what, *args)

    def _receive(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload
        if isinstance(payload, str):
            payload = payload.encode()
        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        if topic == self.m.arbitration_topic:
            found = decode(bytes(payload))
            if found is None:
                self._noisy("ignored a malformed arbitration message (%d bytes)", len(payload))
                return
            self.board.hear(found, time.monotonic())
            self._heard.set()
            return
        start, end = f"{self.prefix}/", "/set"
        if not (topic.startswith(start) and topic.endswith(end)):
            return
        name = topic[len(start) : -len(end)]
        if message.retain:  # a command kept by the broker is stale: it must not act again
            self._noisy("ignored a retained command on %s (commands are not retained)", name)
            return
        if len(payload) > MAX_COMMAND_BYTES:
            self._noisy(
                "ignored a %d-byte command on %s (at most %d)",
                len(payload),
                name,
                MAX_COMMAND_BYTES,
            )
            return
        try:
            text = bytes(payload).decode("utf-8").strip()
        except UnicodeDecodeError:
            self._noisy("ignored a command on %s that is not UTF-8", name)
            return
        verb = self._verb(name, text)
        if verb is None:
            self._noisy("ignored %r on %s (not a command of this device)", text[:40], name)
            return
        if len(self._busy) >= MAX_BUSY:
            self._noisy("refused %s: %d commands still being carried out", name, MAX_BUSY)
            return
        task = asyncio.get_running_loop().create_task(self._carry_out(name, *verb))
        self._busy.add(task)
        task.add_done_callback(self._busy.discard)

    @staticmethod
    def _verb(name: str, text: str) -> tuple[str, str] | None:
        """A command from Home Assistant as a control verb and its argument."""
        if name == "mute":
            on = {"ON": "on", "OFF": "off"}.get(text.upper())
            return None if on is None else ("mute", on)
        if name == "volume":
            try:
                return ("volume", str(round(float(text))))
            except (ValueError, OverflowError):
                return None
        if name == "wake":
            return ("wake", "")
        if name in ("announce", "ask") and text:
            return (name, text)
        return None

    async def _carry_out(self, name: str, verb: str, arg: str) -> None:
        reply = await self._verbs(verb, arg)
        if not reply.get("ok"):
            log.info("MQTT command %s not carried out: %s", name, reply.get("error"))
        if verb == "ask":
            result: dict[str, Any] = {"ok": bool(reply.get("ok"))}
            if not reply.get("ok"):
                result["error"] = reply.get("error")
            elif self.m.publish_transcripts:
                result["answer"] = reply.get("answer", "")
            self._send_now(f"{self.prefix}/ask/reply", json.dumps(result))
        if "volume" in reply:
            self.volume(int(reply["volume"]))

    def _send_now(self, topic: str, payload: str | bytes, qos: int = 0) -> None:
        """Publish once, not retained, without waiting (dropped if the broker is away)."""
        client = self._client
        if client is None:
            return

        async def send() -> None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(topic, payload, qos=qos)

        task = asyncio.get_running_loop().create_task(send())
        self._busy.add(task)
        task.add_done_callback(self._busy.discard)

    # -- several devices, one answer --------------------------------------------------------

    async def contest(self, score: float, level_db: float) -> Verdict:
        """Whether this device answers the wake it just heard. Without a broker (or with
        arbitration off) it decides alone, at once."""
        now = time.monotonic()
        if not self.arbitrating:
            return Verdict(True, self.device_id, "alone" if self.m.arbitration else "off", 0)
        self._seq += 1
        own = Claim.make(self.device_id, level_db, score, self._seq, int(now * 1000))
        board = self.board
        board.open(own, now)
        try:
            self._send_now(self.m.arbitration_topic, encode(own))
            while True:
                verdict = board.verdict(time.monotonic(), final=False)
                if verdict is not None:
                    break
                left = board.deadline - time.monotonic()
                if left <= 0:
                    verdict = board.verdict(time.monotonic(), final=True)
                    assert verdict is not None
                    break
                self._heard.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._heard.wait()
            if verdict.won:
                self._send_now(self.m.arbitration_topic, encode(Taken(self.device_id, own.seq)))
            return verdict
        finally:
            board.close()
