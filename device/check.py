"""`voice-device check`: is everything in place? Config, key, devices, wake model, GPIO, cloud.

Each line is ✓ (fine), ! (works, but worth knowing) or ✗ (will not work), with what to do
about it. The cloud check opens one real session with the configured credentials (the user
asked for it: this is the only time a session opens without a wake) and closes it again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PREVIEW_RETIRED, Config, ConfigError, realtime_endpoint, require_cloud
from .core import realtime as rt

OK, WARN, FAIL = "✓", "!", "✗"


@dataclass
class Line:
    mark: str
    what: str
    detail: str


def check_key(cfg: Config, env: dict[str, str]) -> Line:
    if cfg.cloud.auth == "entra":
        try:
            import azure.identity  # noqa: F401
        except ImportError:
            return Line(
                FAIL,
                "credentials",
                "cloud.auth = 'entra' needs azure-identity: pip install 'voice-device[entra]'",
            )
        return Line(OK, "credentials", "Microsoft Entra ID (azure-identity)")
    if "AZURE_OPENAI_API_KEY" in env:
        return Line(OK, "api key", "from AZURE_OPENAI_API_KEY")
    if cfg.api_key:
        return Line(OK, "api key", "from the azure-openai-api-key credential")
    return Line(FAIL, "api key", "none: set AZURE_OPENAI_API_KEY or the service credential")


async def check_mic(cfg: Config) -> Line:
    """The microphone opened exactly as `run` opens it (the format it negotiates, and
    audio.input_rate / input_channels / input_channel), half a second of it read."""
    import numpy as np

    from .adapters.mic import MicFailure, PyAudioMic
    from .adapters.portaudio import DeviceNotFound
    from .core.audio import MIC_RATE, rms_dbfs

    a = cfg.audio
    mic = PyAudioMic(a.input_device, a.input_rate, a.input_channels, a.input_channel)
    try:
        await mic.open()
        pcm = b"".join([await mic.read() for _ in range(25)])
    except (DeviceNotFound, OSError, ValueError, MicFailure) as e:
        return Line(FAIL, "microphone", str(e))
    finally:
        await mic.close()
    level = rms_dbfs(pcm)
    if math.isinf(level) or not np.frombuffer(pcm, "<i2").any():
        return Line(
            WARN, "microphone", f"'{mic.name}' gives digital silence: muted, or the wrong card?"
        )
    return Line(OK, "microphone", f"'{mic.name}' at {MIC_RATE} Hz, level {level:.0f} dBFS")


def check_speaker(spec: str) -> Line:
    import pyaudio

    from .adapters.portaudio import DeviceNotFound, find_device, pyaudio_instance
    from .core.audio import CLOUD_RATE

    try:
        dev = find_device(spec, "output")
        stream = pyaudio_instance().open(
            format=pyaudio.paInt16,
            channels=1,
            rate=CLOUD_RATE,
            output=True,
            output_device_index=dev.index,
            start=False,
        )
        stream.close()
    except DeviceNotFound as e:
        return Line(FAIL, "speaker", str(e))
    except (OSError, ValueError) as e:
        return Line(FAIL, "speaker", f"cannot open at {CLOUD_RATE} Hz mono: {e}")
    return Line(OK, "speaker", f"'{dev.name}' opens at {CLOUD_RATE} Hz")


def check_wake(cfg: Config) -> Line:
    from .adapters.wakeword import WakeModelError, load_engine

    w = cfg.wake
    try:
        engine = load_engine(w.engine, w.models, w.thresholds)
    except WakeModelError as e:
        return Line(FAIL, "wake word", str(e))
    words = ", ".join(f"'{x.phrase}' (threshold {x.threshold:.2f})" for x in engine.words)
    return Line(OK, "wake word", f"{words}, {w.engine} engine")


def check_gpio(cfg: Config) -> Line:
    from gpiozero.pins.mock import MockFactory

    from .adapters.gpio import make_pin_factory

    try:
        factory = make_pin_factory(cfg.gpio)
    except ConfigError as e:
        return Line(FAIL, "gpio", str(e))
    name = type(factory).__name__
    factory.close()
    if isinstance(factory, MockFactory):
        return Line(WARN, "gpio", "simulated (no GPIO here): the LED and button will not work")
    return Line(OK, "gpio", f"{name}, {describe_board(cfg)}")


def describe_board(cfg: Config) -> str:
    """'respeaker-2mic: 3 APA102 pixels on SPI0, button on BCM 17', and so on."""
    leds, b = cfg.leds, cfg.button
    if leds.kind == "rgb":
        what = f"RGB LED on BCM {leds.red_pin}/{leds.green_pin}/{leds.blue_pin}"
    elif leds.kind == "single":
        what = f"LED on BCM {leds.pin}"
    else:
        what = f"{leds.pixels} APA102 pixels on SPI0"
        if leds.power_pin >= 0:
            what += f" (powered from BCM {leds.power_pin})"
    button = f"button on BCM {b.pin} ({b.mode})" if b.enabled else "no button"
    return f"{cfg.gpio.profile}: {what}, {button}"


async def check_cloud(cfg: Config, credential: Any = None) -> Line:
    """Open a session with the configured credentials, send session.update, close."""
    from .adapters.cloud import CloudSession, auth_headers
    from .adapters.entra import EntraTokens
    from .core.states import SessionFailed, SessionLost, SessionReady
    from .link import session_settings
    from .tools import Toolbox

    endpoint = realtime_endpoint(cfg.cloud)
    bearer = EntraTokens(credential).bearer if cfg.cloud.auth == "entra" else None
    status: asyncio.Queue[Any] = asyncio.Queue()
    session = CloudSession(
        endpoint,
        auth_headers(endpoint.kind, cfg.api_key, bearer),
        session_settings(cfg, Toolbox(cfg.assistant.tools).declarations),
        rt.ClientEvents("check"),
        on_event=lambda ev: None,
        on_status=status.put_nowait,
        connect_timeout_s=cfg.cloud.connect_timeout_s,
        keepalive_s=cfg.cloud.keepalive_s,
        entra=bearer is not None,
    )
    t0 = time.monotonic()
    task = asyncio.create_task(session.run())
    try:
        # ready means the service took the settings (session.updated); a refusal of them
        # fails the session, naming the field
        first = await status.get()
        if isinstance(first, SessionFailed | SessionLost):
            return Line(FAIL, "cloud", f"{first.code}: {first.message}")
        assert isinstance(first, SessionReady)
        opened = time.monotonic() - t0
        return Line(
            OK,
            "cloud",
            f"session opened in {opened:.2f} s ({endpoint.kind}, "
            f"{session.session_id or 'no id'}); settings accepted",
        )
    finally:
        session.close("check done")
        await asyncio.wait_for(task, 5)


async def check_mqtt(cfg: Config) -> Line:
    """The broker reached and our credentials taken, as `run` connects."""
    import aiomqtt

    from .home import connection, device_id

    m = cfg.mqtt
    where = f"{m.host}:{m.port}"
    try:
        async with asyncio.timeout(CHECK_MQTT_S):
            client = connection(
                m, cfg.mqtt_password, f"voice-device-check-{device_id(m)}", timeout=CHECK_MQTT_S
            )
            async with client:
                pass
    except TimeoutError:
        return Line(FAIL, "mqtt", f"{where}: no answer in {CHECK_MQTT_S:.0f} s")
    except (aiomqtt.MqttError, OSError) as e:  # (ssl.SSLError is an OSError)
        return Line(FAIL, "mqtt", f"{where}: {e}")
    return Line(OK, "mqtt", f"{where} as '{device_id(m)}' (Home Assistant discovery on)")


CHECK_MQTT_S = 5.0


def run_checks(
    load: Callable[[], Config],
    env: dict[str, str],
    cloud: bool,
    out: Callable[[str], None],
    source: Path | None = None,
) -> int:
    """Print every check; 0 when nothing is ✗, 1 otherwise, 78 for a configuration error.
    `source`: the configuration file read (None: there is none)."""
    try:
        cfg = load()
    except ConfigError as e:
        out(f"  {FAIL} config       {e}")
        out("verdict: fix the configuration first")
        return 78
    if source is None:
        read = "no file: the defaults and the environment (see systemd/config.example.toml)"
    else:
        read = f"{source} is valid"
    lines = [Line(OK, "config", read)]
    lines.append(check_key(cfg, env))
    if cfg.cloud.endpoint:
        ep = realtime_endpoint(cfg.cloud)
        lines.append(Line(OK, "endpoint", f"{ep.url} ({ep.kind}, {ep.dialect} events)"))
        if ep.kind == "azure-preview":
            lines.append(Line(WARN, "endpoint", PREVIEW_RETIRED))
    else:
        lines.append(
            Line(
                FAIL,
                "endpoint",
                "cloud.endpoint is not set (config, AZURE_OPENAI_ENDPOINT or --endpoint)",
            )
        )
    lines.append(asyncio.run(check_mic(cfg)))
    lines.append(check_speaker(cfg.audio.output_device))
    lines.append(check_wake(cfg))
    lines.append(check_gpio(cfg))
    unset = False
    if cloud:
        try:
            require_cloud(cfg)
            lines.append(asyncio.run(check_cloud(cfg)))
        except ConfigError as e:
            lines.append(Line(FAIL, "cloud", str(e)))
            unset = True
        if cfg.mqtt.enabled:
            lines.append(asyncio.run(check_mqtt(cfg)))
    for line in lines:
        out(f"  {line.mark} {line.what:<12} {line.detail}")
    failed = [line.what for line in lines if line.mark == FAIL]
    out("verdict: ready" if not failed else f"verdict: not ready ({', '.join(failed)})")
    if unset:
        return 78  # what `run` would exit with: the configuration needs an edit first
    return 1 if failed else 0
