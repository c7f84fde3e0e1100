"""Home Assistant over MQTT, against a real mosquitto started here: what Home Assistant
discovers, the states it sees, the commands it sends reaching the daemon, and a broker that
is down at start, restarts, or floods the device. The daemon is a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from device.bench.arbitration import Broker, mqtt_config
from device.emulator.server import Emulator, Scenario
from tests.helpers import Daemon, read_jsonl, wait_until

pytestmark = pytest.mark.slow

ANSWER = "The kitchen timer is set for ten minutes."
QUESTION_TEXT = "how long do soft boiled eggs take"

# What Home Assistant's MQTT platforms require of a discovered entity
# (https://www.home-assistant.io/integrations/<platform>.mqtt/, "Configuration Variables":
# the variables marked "Required"), and what every entity of a device needs to be grouped
# under it and be editable in the UI (unique_id, device.identifiers).
REQUIRED = {
    "sensor": {"state_topic"},
    "switch": {"command_topic"},
    "number": {"command_topic"},
    "button": {"command_topic"},
    "text": {"command_topic"},
    "notify": {"command_topic"},
}
DISCOVERY_TOPIC = re.compile(
    r"homeassistant/(sensor|switch|number|button|text|notify)/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config"
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path) as b:
        yield b


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Emulator]:
    emu = Emulator(
        Scenario(preambles=[], answer=ANSWER, think_ms=50, speedup=20),
        api_key="test-key",
        record=tmp_path / "record.jsonl",
    )
    await emu.start("127.0.0.1", 0)
    yield emu
    await emu.close()


def home_daemon(tmp: Path, cloud: int, port: int, extra: str = "", **env: str) -> Daemon:
    d = Daemon(tmp, cloud, env=env or None)
    d.config.write_text(d.base_config + mqtt_config(port, "kitchen", extra=extra))
    return d


class Watcher:
    """A Home Assistant stand-in: subscribes to everything, keeps the newest payload of each
    topic (retained ones included) and every payload ever seen."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.latest: dict[str, str] = {}
        self.seen: list[tuple[str, str]] = []

    async def run(self) -> None:
        async for m in self.client.messages:
            payload = m.payload.decode() if isinstance(m.payload, bytes) else str(m.payload)
            self.latest[m.topic.value] = payload
            self.seen.append((m.topic.value, payload))

    async def until(self, topic: str, payload: str, timeout: float = 15) -> None:
        await wait_until(lambda: self.latest.get(topic) == payload, timeout, f"{topic}={payload}")

    async def send(self, topic: str, payload: str) -> None:
        await self.client.publish(topic, payload, qos=1)


@contextlib.asynccontextmanager
async def watcher(port: int) -> AsyncIterator[Watcher]:
    async with aiomqtt.Client("127.0.0.1", port, identifier="home-assistant") as client:
        await client.subscribe("#")
        w = Watcher(client)
        task = asyncio.create_task(w.run())
        try:
            yield w
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def discovered(w: Watcher) -> dict[str, dict[str, Any]]:
    return {t: json.loads(p) for t, p in w.latest.items() if t.endswith("/config") and p}


async def test_home_assistant_discovers_one_device_with_its_entities(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    d = home_daemon(tmp_path, emulator.port, broker.port)
    async with watcher(broker.port) as w:
        # a command someone left retained is stale: it must not mute the device at each start
        await w.client.publish("voice-device/kitchen/mute/set", "ON", qos=1, retain=True)
        await d.start()
        try:
            await w.until("voice-device/kitchen/availability", "online")
            await wait_until(lambda: len(discovered(w)) >= 9, 10, "the discovery configs")
            await w.until("voice-device/kitchen/state", "idle")
            await asyncio.sleep(0.5)
            assert (await d.ask("status"))["state"] == "idle"
        finally:
            assert await d.stop() == 0
        await w.until("voice-device/kitchen/availability", "offline")
    assert "ignored a retained command on mute" in d.log.read_text()
    configs = discovered(w)
    keys = {c["unique_id"].removeprefix("voice-device_kitchen_") for c in configs.values()}
    assert keys == {
        "state",
        "mute",
        "volume",
        "wake",
        "announce",
        "ask",
        "last_wake",
        "usage_today",
        "timers",
    }  # (no transcript entity unless the user turns it on)
    for topic, c in configs.items():
        match = DISCOVERY_TOPIC.fullmatch(topic)
        assert match, topic
        assert REQUIRED[match[1]] <= c.keys(), (topic, REQUIRED[match[1]] - c.keys())
        assert c["device"]["identifiers"] == ["voice-device_kitchen"]
        assert c["availability_topic"] == "voice-device/kitchen/availability"
        for key in ("state_topic", "command_topic", "json_attributes_topic"):
            if key in c:
                assert c[key].startswith("voice-device/kitchen/")
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    state = next(c for c in configs.values() if c["unique_id"].endswith("_state"))
    assert state["device_class"] == "enum"
    assert {"idle", "listening", "thinking", "preamble", "answering", "muted", "error"} <= set(
        state["options"]
    )
    assert {"follow_up", "ringing", "connecting"} <= set(state["options"])
    usage = next(c for c in configs.values() if c["unique_id"].endswith("_usage_today"))
    assert usage["unit_of_measurement"] == "USD" and usage["device_class"] == "monetary"
    # retained, so Home Assistant finds them after its own restart
    async with watcher(broker.port) as late:
        await wait_until(lambda: len(discovered(late)) == 9, 10, "retained configs")


async def test_commands_from_home_assistant_reach_the_daemon_and_its_state_is_seen(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    d = home_daemon(tmp_path, emulator.port, broker.port)
    p = "voice-device/kitchen"
    async with watcher(broker.port) as w:
        await d.start()
        try:
            await w.until(f"{p}/state", "idle")
            await w.send(f"{p}/mute/set", "ON")
            await w.until(f"{p}/state", "muted")
            await w.until(f"{p}/mute", "ON")
            assert (await d.ask("status"))["muted"] is True
            await w.send(f"{p}/mute/set", "OFF")
            await w.until(f"{p}/mute", "OFF")
            await w.send(f"{p}/volume/set", "40")
            await w.until(f"{p}/volume", "40")
            assert (await d.ask("status"))["volume"] == 40
            await w.send(f"{p}/ask/set", QUESTION_TEXT)
            await w.until(f"{p}/ask/reply", '{"ok": true}')
            await w.until(f"{p}/state", "idle")
            await w.send(f"{p}/announce/set", "Dinner is ready")
            await wait_until(
                lambda: any(e["event"] == "announce" for e in read_jsonl(d.events)), 15, "announce"
            )
            await w.until(f"{p}/state", "idle")
            await w.send(f"{p}/wake/set", "PRESS")
            await w.until(f"{p}/state", "listening")
            await w.until(f"{p}/state", "idle", timeout=20)  # (nobody speaks: no speech)
            await w.send(f"{p}/volume/set", "loud")  # not a number: ignored, logged
            await w.send(f"{p}/mute/set", "maybe")
            assert (await d.ask("status"))["volume"] == 40
        finally:
            assert await d.stop() == 0
    seen_states = [payload for topic, payload in w.seen if topic == f"{p}/state"]
    assert "thinking" in seen_states and "answering" in seen_states
    # the typed question went to the cloud as a user message
    assert QUESTION_TEXT in (tmp_path / "record.jsonl").read_text()
    # nothing said reached MQTT (publish_transcripts is off): not the question (but in the
    # command Home Assistant sent), not the answer
    published = [payload for topic, payload in w.seen if not topic.endswith("/ask/set")]
    assert not any(QUESTION_TEXT in x or "kitchen timer" in x for x in published)
    log = d.log.read_text()
    assert "volume not carried out" not in log and "ignored 'loud' on volume" in log


async def test_transcripts_are_published_only_when_turned_on(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    d = home_daemon(tmp_path, emulator.port, broker.port, "publish_transcripts = true\n")
    p = "voice-device/kitchen"
    async with watcher(broker.port) as w:
        await d.start()
        try:
            await w.until(f"{p}/state", "idle")
            await w.send(f"{p}/ask/set", QUESTION_TEXT)
            await wait_until(lambda: f"{p}/ask/reply" in w.latest, 20, "the reply")
        finally:
            assert await d.stop() == 0
    assert json.loads(w.latest[f"{p}/ask/reply"]) == {"ok": True, "answer": ANSWER}
    assert w.latest[f"{p}/transcript"] == ANSWER
    assert any(c["unique_id"].endswith("_transcript") for c in discovered(w).values())


async def test_a_broker_down_at_start_restarting_and_flooding_never_stops_the_device(
    tmp_path: Path, emulator: Emulator
) -> None:
    broker = Broker(tmp_path)  # not started yet
    p = "voice-device/kitchen"
    d = home_daemon(tmp_path, emulator.port, broker.port)
    quick = "[cloud]\nbackoff_initial_s = 0.2\nbackoff_max_s = 1.0\n"
    d.config.write_text(d.config.read_text().replace("[cloud]\n", quick, 1))
    await d.start()
    try:
        # alone, it works: asked a question, it answers
        reply = await d.ask(f"ask {QUESTION_TEXT}")
        assert reply["ok"] and reply["answer"] == ANSWER
        assert (await d.ask("status"))["mqtt"]["connected"] is False
        broker.start()
        async with watcher(broker.port) as w:
            await w.until(f"{p}/availability", "online", timeout=20)
            await wait_until(lambda: len(discovered(w)) == 9, 10, "discovery")
        broker.stop()  # a restart: everything is published again
        await asyncio.sleep(1.0)
        broker.start()
        async with watcher(broker.port) as w:
            await w.until(f"{p}/availability", "online", timeout=20)
            await w.until(f"{p}/state", "idle")
            await wait_until(lambda: len(discovered(w)) == 9, 10, "discovery again")
            # a flood of garbage on the shared topic and the command topics
            for i in range(300):
                await w.send("voice-device/arbitration", "{not json" * (i % 50))
                await w.send(f"{p}/volume/set", "x" * 5000)
            await w.send(f"{p}/mute/set", "ON")
            await w.until(f"{p}/state", "muted")
            await w.send(f"{p}/mute/set", "OFF")
            await w.until(f"{p}/state", "idle")
        reply = await d.ask(f"ask {QUESTION_TEXT}")
        assert reply["ok"] and reply["answer"] == ANSWER
    finally:
        assert await d.stop() == 0
        broker.stop()
    log = d.log.read_text()
    # one outage, told once (the retries are at debug level); the garbage is logged bounded
    assert log.count("unreachable") == 2, log  # down at start; the restart
    assert log.count("MQTT broker back after") == 2
    assert log.count("MQTT: ignored") <= 10
    events = [e for e in read_jsonl(d.events) if e["event"] == "mqtt"]
    assert [e["connected"] for e in events] == [False, True, False, True]


async def test_the_password_is_the_systemd_credential_and_never_logged(
    tmp_path: Path, emulator: Emulator
) -> None:
    password = "correct-horse-battery-staple"
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text(password + "\n")
    with Broker(tmp_path, passwords={"kitchen": password}) as broker:
        d = home_daemon(
            tmp_path,
            emulator.port,
            broker.port,
            'username = "kitchen"\n',
            CREDENTIALS_DIRECTORY=str(creds),
        )
        await d.start()
        try:
            await wait_until(
                lambda: any(e["event"] == "mqtt" and e["connected"] for e in read_jsonl(d.events)),
                15,
                "the connection",
            )
            assert (await d.ask("status"))["mqtt"]["connected"] is True
        finally:
            assert await d.stop() == 0
    for f in (d.log, d.events):
        assert password not in f.read_text()
