"""Configuration: dataclass defaults, overridden by a TOML file, the environment, then CLI flags.

A mistake in the file names the key and what was expected, and the daemon exits 78
(EX_CONFIG) so systemd does not restart it in a loop. The API key is never read from the
TOML file: it comes from `AZURE_OPENAI_API_KEY` or a systemd credential.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import math
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from .adapters.wakeword import MICRO_MODELS, OPENWAKEWORD_MODELS
from .core import states as st
from .core.audio import FRAME_SAMPLES, MAX_PREROLL_MS, MIC_RATE
from .core.backoff import BackoffPolicy
from .core.earcons import EARCON_SWITCHES
from .core.endpoint import EndpointSettings
from .core.leds import with_overrides
from .core.realtime import AZURE_EFFORTS, NO_REASONING, REASONING_EFFORTS
from .core.states import State
from .core.wake import DuringPlayback

DEFAULT_PATH = Path("/etc/voice-device/config.toml")
EX_CONFIG = 78
CREDENTIAL_NAME = "azure-openai-api-key"
MQTT_CREDENTIAL_NAME = "mqtt-password"

DEFAULT_INSTRUCTIONS = (
    "You are a voice assistant in someone's home, heard through a small speaker. "
    "Answer in one to three short spoken sentences; no lists, no markdown. "
    "The user's audio starts with the wake word; ignore it. "
    "If you need a moment to reason, say a few words first so the user knows you heard them."
)


class ConfigError(Exception):
    """Something the user must fix in the configuration; the message says what."""


class Secret:
    """A string that never shows itself in repr, str or logs."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class CloudConfig:
    endpoint: str = ""
    """https://<resource>.openai.azure.com, or http://127.0.0.1:8765 for the emulator."""
    deployment: str = ""
    """The model deployment's name; empty: the one cloud.endpoint names (`?model=`), else
    gpt-realtime-2."""
    kind: str = "auto"
    """azure (GA v1), azure-preview (api-version, beta events), openai, or auto (from the URL)."""
    api_version: str = "2025-04-01-preview"
    """Only for azure-preview."""
    auth: str = "api-key"
    """api-key, or entra (Microsoft Entra ID token via the optional azure-identity package)."""
    connect_timeout_s: float = 8.0
    reply_timeout_s: float = 20.0
    keepalive_s: float = 10.0
    """A connection that stops answering pings is found dead within this many seconds."""
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 30.0


@dataclass(frozen=True)
class AssistantConfig:
    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str = "marin"
    reasoning_effort: str = "low"
    speed: float = 1.0
    tools: list[str] = field(
        default_factory=lambda: ["time", "timers", "volume", "end_conversation"]
    )
    """Local functions the model may call: time (the device's date and time), timers
    (timers and alarms), volume, end_conversation (the model closes the conversation)."""


@dataclass(frozen=True)
class AudioConfig:
    input_device: str = ""
    """Name (or part of it) or index of the microphone; empty for the system default."""
    output_device: str = ""
    input_rate: int = 0
    """0: 16 kHz if the microphone offers it, else its own rate (resampled to 16 kHz)."""
    input_channels: int = 0
    """0: mono if offered, else all the microphone's channels (e.g. a 2-mic HAT)."""
    input_channel: int = -1
    """With several channels: -1 mixes them down, 0, 1, … picks one."""
    preroll_ms: int = 300
    jitter_ms: int = 60
    """Reply audio buffered before playback starts, to ride out network jitter."""
    volume: float = 1.0
    """Software gain on everything the speaker plays (0 silent, 1 as received, up to 2)."""
    earcons: list[str] = field(default_factory=lambda: ["wake", "error", "mute"])
    """Sounds the device makes: wake, end_of_turn, error, mute (on, off, and still muted)."""
    earcon_volume: float = 0.3
    echo_cancellation: bool = True
    """WebRTC AEC3 (pywebrtc-audio) on the microphone while the device speaks, so a user's
    wake word is heard over the device's voice (see `voice-device bench echo`)."""
    noise_suppression: int = 3
    """WebRTC noise suppression (0 off, 1 to 3 stronger) on what the wake word and the VAD
    hear; the audio sent to the cloud is not denoised (the service does that itself)."""
    noise_suppression_above_db: float = -50.0
    """Noise suppression runs only while the room's noise floor (its quietest moments over
    a few seconds, dBFS) is at least this loud: in a quiet room it buys nothing and costs as
    much CPU as the wake word model. -120: always."""
    echo_tail_ms: int = 500
    """How long the room keeps echoing the device after it stops: the wake word's playback
    rules last this long, and a follow-up turn cannot start on the echo."""


@dataclass(frozen=True)
class WakeConfig:
    engine: str = "micro"
    """micro (pymicro-wakeword) or openwakeword (pyopen-wakeword, an optional extra)."""
    models: list[str] = field(default_factory=lambda: ["okay_nabu"])
    """Wake words listened for at once: built-in names or paths to model files."""
    thresholds: dict[str, float] = field(default_factory=dict)
    """Per model, the score a detection must reach; a model without one uses its own."""
    refractory_ms: int = 2000
    """After a wake, the same utterance cannot wake the device again for this long."""
    during_playback: str = "echo-match"
    """While the device speaks: echo-match (ignore a wake word the device itself is saying),
    threshold (require playback_threshold), or off (the wake word does not interrupt)."""
    playback_threshold: float = 0.97
    second_look: bool = True
    """A near miss from a high voice (a woman's, a child's) is heard again a tenth lower
    before it is let go (`adapters.wakeword.SecondLook`)."""


@dataclass(frozen=True)
class TurnConfig:
    detection: str = "local"
    """local (the device's VAD ends turns), server_vad or semantic_vad (the service does)."""
    vad_aggressiveness: int = 2
    silence_ms: int = 700
    commit_ms: int = 300
    """Silence after which the turn is sent and the answer asked for, held back until
    `silence_ms` confirms the turn is over (talking on withdraws it). 0, or not below
    `silence_ms`: the turn is sent only at `silence_ms`."""
    no_speech_timeout_ms: int = 5000
    max_turn_ms: int = 30_000
    follow_up_ms: int = 5000
    follow_up: str = "auto"
    """auto (listen on after an answer that invites a reply), always, or never."""
    barge_in: str = "voice"
    """How to interrupt a reply by voice: voice (the wake word, or talking over it without
    it; the default since `bench echo` measured it) or wake (only the wake word, and the
    microphone is not live during a reply)."""


@dataclass(frozen=True)
class TimersConfig:
    ring_timeout_s: int = 300
    """A ring nobody stops ends by itself after this long."""
    idle_led: str = "auto"
    """While a timer runs, the idle light shows it dimly: auto (not on a single LED), on, off."""


@dataclass(frozen=True)
class AnnounceConfig:
    max_per_hour: int = 20
    """`voice-device announce` refuses more than this in an hour (an automation in a loop
    must not run up a bill). 0: announcements off."""


@dataclass(frozen=True)
class LedConfig:
    backend: str = "gpio"
    """gpio, terminal or none."""
    kind: str = "rgb"
    """rgb (three pins), single (one pin) or apa102 (a pixel ring on SPI); set by gpio.profile."""
    red_pin: int = 5
    green_pin: int = 6
    blue_pin: int = 13
    pin: int = 25
    pixels: int = 3
    power_pin: int = -1
    """A GPIO that powers the pixels (the ReSpeaker 4-mic array's is 5); -1 for none."""
    active_high: bool = True
    brightness: float = 1.0
    patterns: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per pattern name, any of color ('#rrggbb'), effect and period_s to change."""


@dataclass(frozen=True)
class ButtonConfig:
    enabled: bool = True
    pin: int = 17
    hold_ms: int = 1000
    pull_up: bool = True
    mode: str = "press"
    """press: a short press wakes, a long one mutes; hold-to-talk: talk while it is held."""
    double_press: str = "none"
    """none, repeat (the last answer), cancel (everything) or mute. Other than none, a
    short press waits double_press_ms to see whether a second one follows."""
    double_press_ms: int = 400


@dataclass(frozen=True)
class GpioConfig:
    profile: str = "generic-rgb"
    """Hardware: generic-rgb, respeaker-2mic, respeaker-4mic or aiy-voice. It sets the LED
    kind and pins and the button pin; keys set in [leds] or [button] win."""
    pin_factory: str = "auto"
    """auto (real pins on a Pi, simulated elsewhere), mock, or a gpiozero factory name."""


@dataclass(frozen=True)
class HooksConfig:
    command: str = ""
    """Run on state changes with VOICE_DEVICE_STATE and VOICE_DEVICE_REASON set."""
    states: list[str] = field(default_factory=list)
    """Only these states (empty: all)."""


@dataclass(frozen=True)
class UsageConfig:
    """Prices per million tokens (the defaults: gpt-realtime's list prices in USD; set your
    Azure region's) and an optional monthly budget."""

    currency: str = "USD"
    text_input_per_million: float = 4.0
    audio_input_per_million: float = 32.0
    cached_input_per_million: float = 0.4
    text_output_per_million: float = 16.0
    audio_output_per_million: float = 64.0
    monthly_budget: float = 0.0
    """In `currency`; once this month's estimate reaches it, a wake plays a notice instead of
    opening a session, until the month turns or the budget is raised. 0: no budget."""


@dataclass(frozen=True)
class MqttConfig:
    """Home Assistant over MQTT, and one answer when several devices hear a wake. These key
    names are a contract (README). The password is never here: it is the systemd credential
    `mqtt-password` (or $VOICE_DEVICE_MQTT_PASSWORD)."""

    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    tls: bool = False
    """TLS with the system's certificate authorities (brokers usually listen on 8883 for it)."""
    username: str = ""
    device_id: str = ""
    """Names this device on the broker and in Home Assistant (default: the host name)."""
    topic_prefix: str = ""
    """Where its state and commands live (default: voice-device/<device_id>)."""
    discovery_prefix: str = "homeassistant"
    publish_transcripts: bool = False
    """Publish what the user said and the answer's words (off: nothing said leaves over
    MQTT; audio never does)."""
    arbitration: bool = True
    """Agree with the other devices on the broker which one answers a wake word."""
    arbitration_window_ms: int = 150
    """How long a wake waits for other devices' claims, from its own wake (20 to 150)."""
    arbitration_topic: str = "voice-device/arbitration"
    """Shared by the devices that may hear the same words."""


@dataclass(frozen=True)
class Config:
    cloud: CloudConfig = field(default_factory=CloudConfig)
    assistant: AssistantConfig = field(default_factory=AssistantConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    wake: WakeConfig = field(default_factory=WakeConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    leds: LedConfig = field(default_factory=LedConfig)
    button: ButtonConfig = field(default_factory=ButtonConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    timers: TimersConfig = field(default_factory=TimersConfig)
    announce: AnnounceConfig = field(default_factory=AnnounceConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    api_key: Secret = field(default_factory=lambda: Secret(""), repr=False)
    mqtt_password: Secret = field(default_factory=lambda: Secret(""), repr=False)
    origin: str = field(default="the configuration", compare=False)
    """Where it was read from (a file's path), for messages that say what to edit."""


SECTIONS: dict[str, Any] = {
    name: t
    for name, t in typing.get_type_hints(Config).items()
    if name not in ("api_key", "mqtt_password", "origin")
}


# ---------------------------------------------------------------------------------------------
# Loading


def _type_name(t: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if args:
        return " or ".join(names.get(a, str(a)) for a in args)
    return names.get(t, str(t))


def _coerce(key: str, value: Any, t: Any) -> Any:
    """Check a TOML value against a field's annotation; ints are fine where floats are wanted."""
    if t is Any:
        return value
    if isinstance(t, types.UnionType):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    if typing.get_origin(t) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r} ({type(value).__name__})")
        _, item_type = typing.get_args(t)
        return {k: _coerce(f"{key}.{k}", v, item_type) for k, v in value.items()}
    if typing.get_origin(t) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r} ({type(value).__name__})")
        (item_type,) = typing.get_args(t)
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    ok = (
        (t is bool and isinstance(value, bool))
        or (t is int and isinstance(value, int) and not isinstance(value, bool))
        or (t is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (t is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"{key} must be {_type_name(t)}, got {value!r} ({type(value).__name__})")
    if t is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value) if t is float else value


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _build_section(name: str, cls: Any, table: Mapping[str, Any], origin: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown key '{name}.{key}' in {origin}{_suggest(key, known)}")
        values[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**values)


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "generic-rgb": {
        "leds": {"kind": "rgb", "red_pin": 5, "green_pin": 6, "blue_pin": 13},
        "button": {"enabled": True, "pin": 17},
    },
    "respeaker-2mic": {
        "leds": {"kind": "apa102", "pixels": 3, "power_pin": -1},
        "button": {"enabled": True, "pin": 17},
    },
    "respeaker-4mic": {
        "leds": {"kind": "apa102", "pixels": 12, "power_pin": 5},
        "button": {"enabled": False},
    },
    "aiy-voice": {
        "leds": {"kind": "single", "pin": 25},
        "button": {"enabled": True, "pin": 23},
    },
}
"""Pins from the boards' documentation: ReSpeaker HATs drive APA102 pixels on SPI0 (the
2-mic HAT's button is GPIO17; the 4-mic array has none and powers its 12 pixels from GPIO5);
Google's AIY Voice HAT has its button on GPIO23 and the button's LED on GPIO25."""


def _with_profile(data: Mapping[str, Any], origin: str) -> dict[str, Any]:
    gpio = data.get("gpio") if isinstance(data.get("gpio"), dict) else {}
    profile = (gpio or {}).get("profile", "generic-rgb")
    if profile not in PROFILES:
        raise ConfigError(
            f"gpio.profile in {origin} must be one of {', '.join(PROFILES)} (got {profile!r})"
        )
    merged: dict[str, Any] = dict(data)
    for section, defaults in PROFILES[profile].items():
        own = data.get(section)
        merged[section] = {**defaults, **own} if isinstance(own, dict) else dict(defaults)
    return merged


def parse_config(data: Mapping[str, Any], origin: str = "the configuration") -> Config:
    sections: dict[str, Any] = {}
    data = _with_profile(data, origin)
    for name, table in data.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"unknown section '[{name}]' in {origin}{_suggest(name, list(SECTIONS))}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"'{name}' in {origin} must be a table ([{name}])")
        sections[name] = _build_section(name, SECTIONS[name], table, origin)
    cfg = Config(**sections, origin=origin)
    validate(cfg)
    return cfg


MAX_CONFIG_BYTES = 1 << 20


def read_toml(path: Path) -> dict[str, Any]:
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ConfigError(f"configuration file {path} is not a regular file")
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"configuration file {path} is over {MAX_CONFIG_BYTES} bytes")
        return tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"configuration file {path} is not readable by this user") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text (save it as UTF-8)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path} is not valid TOML: nested too deeply") from None
    except OSError as e:
        raise ConfigError(f"configuration file {path} cannot be read: {e.strerror}") from None


def _choices(kind: type[enum.StrEnum]) -> str:
    """`a, b or c`: the values of a choice, for a message."""
    *first, last = [k.value for k in kind]
    return f"{', '.join(first)} or {last}"


LIMITS: dict[str, tuple[float, float]] = {
    "cloud.connect_timeout_s": (0.1, 120),
    "cloud.reply_timeout_s": (1, 300),
    "cloud.keepalive_s": (0.2, 300),
    "cloud.backoff_initial_s": (0.01, 600),
    "cloud.backoff_max_s": (0.01, 3600),
    "turn.silence_ms": (200, 5000),
    "turn.commit_ms": (0, 5000),
    "turn.no_speech_timeout_ms": (1000, 60_000),
    "turn.max_turn_ms": (2000, 300_000),
    "turn.follow_up_ms": (0, 60_000),
    "wake.refractory_ms": (0, 60_000),
    "audio.input_channel": (-1, 15),
    "audio.noise_suppression_above_db": (-120, 0),
    "button.hold_ms": (200, 10_000),
    "leds.red_pin": (0, 27),
    "leds.green_pin": (0, 27),
    "leds.blue_pin": (0, 27),
    "leds.pin": (0, 27),
    "leds.power_pin": (-1, 27),
    "button.pin": (0, 27),
    "usage.text_input_per_million": (0, 10_000),
    "usage.audio_input_per_million": (0, 10_000),
    "usage.cached_input_per_million": (0, 10_000),
    "usage.text_output_per_million": (0, 10_000),
    "usage.audio_output_per_million": (0, 10_000),
    "usage.monthly_budget": (0, 1_000_000),
    "mqtt.port": (1, 65535),
    "mqtt.arbitration_window_ms": (20, 150),
}
"""Every duration, count and pin, with its sane range: a mistyped value (inf, 2**63, a pin
the header does not have) is a configuration error naming the range, not a device that
never wakes, never stops listening, or dies in gpiozero."""


def _check_limits(cfg: Config) -> None:
    for key, (lowest, highest) in LIMITS.items():
        value = setting(cfg, key)
        _check(
            lowest <= value <= highest,
            f"{key} must be between {lowest:g} and {highest:g} (got {value!r})",
        )


def _check_pins(cfg: Config) -> None:
    """Pins that clash would fail in gpiozero, at start or, worse, on a reload."""
    used: dict[int, str] = {}
    leds, button = cfg.leds, cfg.button
    pins: list[tuple[str, int]] = []
    if cfg.leds.backend == "gpio":
        if leds.kind == "rgb":
            pins += [("leds.red_pin", leds.red_pin), ("leds.green_pin", leds.green_pin)]
            pins += [("leds.blue_pin", leds.blue_pin)]
        elif leds.kind == "single":
            pins.append(("leds.pin", leds.pin))
        elif leds.power_pin >= 0:
            pins.append(("leds.power_pin", leds.power_pin))
    if button.enabled:
        pins.append(("button.pin", button.pin))
    for key, pin in pins:
        _check(pin not in used, f"{key} and {used.get(pin)} are both GPIO{pin}: give each its own")
        used[pin] = key


def setting(cfg: Config, dotted: str) -> Any:
    """The value of `section.key`."""
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    a, t, w = cfg.audio, cfg.turn, cfg.wake
    _check(
        re.fullmatch(r"[A-Za-z]{3}", cfg.usage.currency) is not None,
        f"usage.currency must be a three-letter code such as USD or EUR "
        f"(got {cfg.usage.currency!r})",
    )
    _check(
        0 <= a.preroll_ms <= MAX_PREROLL_MS,
        f"audio.preroll_ms must be between 0 and {MAX_PREROLL_MS} (got {a.preroll_ms})",
    )
    _check(0 <= a.jitter_ms <= 1000, "audio.jitter_ms must be between 0 and 1000")
    _check(0.0 <= a.volume <= 2.0, "audio.volume must be between 0 and 2")
    _check(0.0 <= a.earcon_volume <= 1.0, "audio.earcon_volume must be between 0 and 1")
    for name in a.earcons:
        _check(
            name in EARCON_SWITCHES,
            f"audio.earcons: unknown sound {name!r}; known: {', '.join(EARCON_SWITCHES)}",
        )
    _check(
        a.input_rate in (0, 8000, 16000, 22050, 32000, 44100, 48000, 96000),
        "audio.input_rate must be 0 (automatic) or a standard rate such as 48000",
    )
    _check(0 <= a.input_channels <= 16, "audio.input_channels must be between 0 and 16")
    _check(a.input_channel >= -1, "audio.input_channel must be -1 (mix) or a channel number")

    efforts = REASONING_EFFORTS if endpoint_kind(cfg.cloud) == "openai" else AZURE_EFFORTS
    _check(
        cfg.assistant.reasoning_effort in (*efforts, NO_REASONING),
        f"assistant.reasoning_effort must be one of {', '.join(efforts)}, or {NO_REASONING} "
        f"for a deployment that does not reason (got {cfg.assistant.reasoning_effort!r})",
    )
    _check(0.25 <= cfg.assistant.speed <= 1.5, "assistant.speed must be between 0.25 and 1.5")
    _check(t.vad_aggressiveness in (0, 1, 2, 3), "turn.vad_aggressiveness must be 0, 1, 2 or 3")
    _check(200 <= t.silence_ms <= 5000, "turn.silence_ms must be between 200 and 5000")
    _check(t.commit_ms == 0 or t.commit_ms >= 100, "turn.commit_ms must be 0 (off) or >= 100")
    _check(t.no_speech_timeout_ms >= 1000, "turn.no_speech_timeout_ms must be at least 1000")
    _check(t.max_turn_ms >= 2000, "turn.max_turn_ms must be at least 2000")
    _check(t.follow_up_ms >= 0, "turn.follow_up_ms must not be negative")
    _check(
        t.follow_up in set(st.FollowUp),
        f"turn.follow_up must be auto, always or never (got {t.follow_up!r})",
    )
    _check(
        10 <= cfg.timers.ring_timeout_s <= 3600,
        "timers.ring_timeout_s must be between 10 and 3600",
    )
    _check(
        cfg.timers.idle_led in ("auto", "on", "off"),
        f"timers.idle_led must be auto, on or off (got {cfg.timers.idle_led!r})",
    )
    _check(
        0 <= cfg.announce.max_per_hour <= 1000,
        "announce.max_per_hour must be between 0 and 1000",
    )
    _check(
        w.engine in WAKE_ENGINES, f"wake.engine must be micro or openwakeword (got {w.engine!r})"
    )
    _check(bool(w.models), "wake.models must name at least one wake word")
    builtin = MICRO_MODELS if w.engine == "micro" else OPENWAKEWORD_MODELS
    for name in w.models:
        is_file = "/" in name or name.endswith((".json", ".tflite"))
        _check(
            is_file or name in builtin,
            f"wake.models: {name!r} is not a built-in {w.engine} wake word "
            f"({', '.join(builtin)}), nor a path to a model file of your own"
            f"{_suggest(name, list(builtin))}",
        )
    for name, value in w.thresholds.items():
        _check(name in w.models, f"wake.thresholds.{name}: {name!r} is not in wake.models")
        _check(0.0 < value < 1.0, f"wake.thresholds.{name} must be between 0 and 1")
    _check(w.refractory_ms >= 0, "wake.refractory_ms must not be negative")
    _check(
        w.during_playback in set(DuringPlayback),
        f"wake.during_playback must be {_choices(DuringPlayback)}",
    )
    _check(0.0 < w.playback_threshold < 1.0, "wake.playback_threshold must be between 0 and 1")
    _check(0 <= a.echo_tail_ms <= 3000, "audio.echo_tail_ms must be between 0 and 3000")
    _check(a.noise_suppression in (0, 1, 2, 3), "audio.noise_suppression must be 0, 1, 2 or 3")
    _check(
        cfg.leds.backend in ("gpio", "terminal", "none"),
        f"leds.backend must be gpio, terminal or none (got {cfg.leds.backend!r})",
    )
    b, leds = cfg.button, cfg.leds
    _check(b.hold_ms >= 200, "button.hold_ms must be at least 200")
    _check(b.mode in set(st.ButtonMode), f"button.mode must be {_choices(st.ButtonMode)}")
    _check(
        b.double_press in set(st.DoublePress),
        f"button.double_press must be {_choices(st.DoublePress)}",
    )
    _check(100 <= b.double_press_ms <= 1000, "button.double_press_ms must be 100 to 1000")
    _check(leds.kind in ("rgb", "single", "apa102"), "leds.kind must be rgb, single or apa102")
    _check(1 <= leds.pixels <= 255, "leds.pixels must be between 1 and 255")
    _check(0.0 < leds.brightness <= 1.0, "leds.brightness must be between 0 and 1")
    try:
        with_overrides(leds.patterns)
    except ValueError as e:
        raise ConfigError(f"leds.patterns: {e}") from None
    for name in cfg.hooks.states:
        _check(
            name in [s.value for s in State],
            f"hooks.states: {name!r} is not a state ({', '.join(s.value for s in State)})",
        )
    c = cfg.cloud
    _check(c.connect_timeout_s > 0, "cloud.connect_timeout_s must be positive")
    _check(c.reply_timeout_s > 0, "cloud.reply_timeout_s must be positive")
    _check(c.keepalive_s >= 0.2, "cloud.keepalive_s must be at least 0.2")
    _check(
        0 < c.backoff_initial_s <= c.backoff_max_s,
        "cloud.backoff_initial_s must be positive and at most cloud.backoff_max_s",
    )
    _check(
        c.kind in ENDPOINT_KINDS,
        f"cloud.kind must be one of {', '.join(ENDPOINT_KINDS)} (got {c.kind!r})",
    )
    _check(c.auth in ("api-key", "entra"), f"cloud.auth must be api-key or entra (got {c.auth!r})")
    _check(
        not (c.auth == "entra" and endpoint_kind(c) == "openai"),
        "cloud.auth = 'entra' works with Azure endpoints only",
    )
    _check(
        t.barge_in in BARGE_IN,
        f"turn.barge_in must be one of {', '.join(BARGE_IN)} (got {t.barge_in!r})",
    )
    _check(
        t.detection in TURN_DETECTION,
        f"turn.detection must be one of {', '.join(TURN_DETECTION)} (got {t.detection!r})",
    )
    for name in cfg.assistant.tools:
        _check(
            name in KNOWN_TOOLS,
            f"assistant.tools: unknown tool {name!r}; known: {', '.join(KNOWN_TOOLS)}",
        )
    _check_limits(cfg)
    _check_pins(cfg)
    _check_mqtt(cfg.mqtt)
    if c.endpoint:
        realtime_endpoint(c)  # raises ConfigError if the URL is not usable


TOPIC_PART = re.compile(r"[A-Za-z0-9_-]+")
"""A device id: one topic level, and part of Home Assistant's ids and discovery topics."""


def _check_mqtt(m: MqttConfig) -> None:
    _check(
        not m.device_id or TOPIC_PART.fullmatch(m.device_id) is not None,
        f"mqtt.device_id may hold only letters, digits, '_' and '-' (got {m.device_id!r})",
    )
    for key in ("topic_prefix", "discovery_prefix", "arbitration_topic"):
        topic = getattr(m, key)
        _check(
            not any(c in topic for c in "+#\0")
            and not topic.startswith("/")
            and not topic.endswith("/")
            and "//" not in topic,
            f"mqtt.{key} must be a plain topic such as 'a/b', without +, #, or a leading, "
            f"trailing or doubled '/' (got {topic!r})",
        )
    _check(
        bool(m.discovery_prefix) and bool(m.arbitration_topic),
        "mqtt.discovery_prefix and mqtt.arbitration_topic may not be empty",
    )
    _check(not m.enabled or bool(m.host.strip()), "mqtt.host is empty: name the MQTT broker")


def read_credential(env: Mapping[str, str], variable: str, name: str) -> Secret:
    """From the environment, else from the systemd credential the unit loads."""
    key = env.get(variable, "").strip()
    if key:
        return Secret(key)
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / name
        try:
            return Secret(path.read_text(encoding="utf-8").strip())
        except OSError:
            pass
    return Secret("")


def read_api_key(env: Mapping[str, str]) -> Secret:
    return read_credential(env, "AZURE_OPENAI_API_KEY", CREDENTIAL_NAME)


def read_mqtt_password(env: Mapping[str, str]) -> Secret:
    """An empty credential (the installer makes one) means no password."""
    return read_credential(env, "VOICE_DEVICE_MQTT_PASSWORD", MQTT_CREDENTIAL_NAME)


ENV_OVERRIDES = {
    "AZURE_OPENAI_ENDPOINT": ("cloud", "endpoint"),
    "AZURE_OPENAI_DEPLOYMENT": ("cloud", "deployment"),
}


def config_file(path: Path | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """The file `load_config` reads: `path`, else $VOICE_DEVICE_CONFIG or the default path
    if it exists (None: no file, only the defaults and the environment)."""
    env = os.environ if env is None else env
    if path is not None:
        return path
    default = Path(env.get("VOICE_DEVICE_CONFIG") or DEFAULT_PATH)
    return default if default.exists() else None


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """File (explicit path, else the default path if it exists) → environment → `overrides`.

    The default path is $VOICE_DEVICE_CONFIG, else /etc/voice-device/config.toml.

    `overrides` maps "section.key" to a value (from CLI flags); None values are skipped.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    origin = "the defaults"
    source = config_file(path, env)
    if source is not None:
        data = read_toml(source)
        origin = str(source)
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            merged.setdefault(section, {})[key] = env[var]
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        merged.setdefault(section, {})[key] = value
    cfg = parse_config(merged, origin)
    return dataclasses.replace(
        cfg, api_key=read_api_key(env), mqtt_password=read_mqtt_password(env)
    )


def require_cloud(cfg: Config) -> None:
    """What `run` needs beyond a valid file: somewhere to connect to and a key."""
    if not cfg.cloud.endpoint:
        raise ConfigError(
            "cloud.endpoint is not set: put your Azure OpenAI resource URL "
            "(https://<resource>.openai.azure.com) in the config file, set "
            "AZURE_OPENAI_ENDPOINT, or pass --endpoint"
        )
    if is_placeholder(cfg.cloud.endpoint):
        raise ConfigError(
            f"cloud.endpoint is still the example's {cfg.cloud.endpoint.strip()!r}: edit "
            f"cloud.endpoint in {cfg.origin} (the Azure portal shows your resource's endpoint "
            "under Keys and Endpoint)"
        )
    if cfg.cloud.auth == "entra":
        try:
            import azure.identity  # noqa: F401
        except ImportError:
            raise ConfigError(
                "cloud.auth = 'entra' needs the azure-identity package: "
                "pip install 'voice-device[entra]'"
            ) from None
        return
    if not cfg.api_key:
        raise ConfigError(
            "no API key: set AZURE_OPENAI_API_KEY, or give the service a credential "
            f"named '{CREDENTIAL_NAME}' (LoadCredential= in the unit)"
        )


ENDPOINT_KINDS = ("auto", "azure", "azure-preview", "openai")
TURN_DETECTION = ("local", "server_vad", "semantic_vad")
BARGE_IN = ("wake", "voice")
WAKE_ENGINES = ("micro", "openwakeword")
KNOWN_TOOLS = ("time", "timers", "volume", "end_conversation")


@dataclass(frozen=True)
class Endpoint:
    """Where the realtime session connects, and how it speaks and authenticates there."""

    url: str
    kind: str
    """azure, azure-preview or openai."""
    dialect: str
    """ga, or beta for the Azure preview API."""


PLACEHOLDER_NAMES = frozenset({"my-resource", "your-resource"})
"""First labels of example host names (systemd/config.example.toml's); the README's
`<resource>` is caught by its brackets."""


def is_placeholder(endpoint: str) -> bool:
    """The example's endpoint, not a real one (a DNS failure at the first wake otherwise)."""
    host = urlsplit(endpoint.strip()).hostname or ""
    first = host.split(".")[0].strip("<>{}[]")
    return "<" in endpoint or "{" in endpoint or first.lower() in PLACEHOLDER_NAMES


def endpoint_kind(c: CloudConfig) -> str:
    if c.kind != "auto":
        return c.kind
    parts = urlsplit(c.endpoint.strip())
    if parts.hostname == "api.openai.com":
        return "openai"
    if "api-version" in parts.query or parts.path.rstrip("/").endswith("/openai/realtime"):
        return "azure-preview"
    return "azure"


DEFAULT_DEPLOYMENT = "gpt-realtime-2"


def deployment_of(c: CloudConfig) -> str:
    """cloud.deployment, else the deployment the endpoint URL names (`model=`, or the
    preview's `deployment=`), else gpt-realtime-2. Both given and different is a mistake
    to name, never a silent choice of one."""
    query = parse_qs(urlsplit(c.endpoint.strip()).query)
    named = (query.get("model") or query.get("deployment") or [""])[0]
    if c.deployment and named and named != c.deployment:
        raise ConfigError(
            f"cloud.endpoint names the deployment {named!r} but cloud.deployment is "
            f"{c.deployment!r}: keep one of them"
        )
    return c.deployment or named or DEFAULT_DEPLOYMENT


PREVIEW_RETIRED = (
    "Azure retired the preview realtime API (api-version, /openai/realtime) on 2026-04-30 "
    "and gpt-realtime-2 is not offered on it: use the resource URL, e.g. "
    "https://<resource>.openai.azure.com, which the device turns into the GA URL"
)


def realtime_endpoint(c: CloudConfig) -> Endpoint:
    """The one URL to connect to, whichever form of the endpoint the user pasted: a bare
    resource URL, with `/openai/v1/` (the portal's GA form), a whole realtime URI, a
    cognitiveservices.azure.com or Foundry services.ai.azure.com host, wss://."""
    kind = endpoint_kind(c)
    deployment = deployment_of(c)
    parts = urlsplit(c.endpoint.strip())
    base = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    if kind == "azure-preview":
        url = realtime_url(base, deployment, "/openai/realtime")
        query = urlencode({"api-version": c.api_version, "deployment": deployment})
        return Endpoint(url.split("?", 1)[0] + "?" + query, kind, "beta")
    if kind == "openai":
        return Endpoint(realtime_url(base, deployment, "/v1/realtime"), kind, "ga")
    return Endpoint(realtime_url(c.endpoint, deployment), kind, "ga")


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: this machine, where the emulator runs."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def realtime_url(endpoint: str, deployment: str, path: str = "/openai/v1/realtime") -> str:
    """The Azure GA realtime URL for a resource endpoint and deployment name.

    http:// becomes ws:// and https:// becomes wss://; a bare resource URL gets the
    `/openai/v1/realtime` path; `model=` names the deployment.
    """
    parts = urlsplit(endpoint.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            "cloud.endpoint must not hold a user name or password "
            "(the key comes from AZURE_OPENAI_API_KEY or the azure-openai-api-key credential)"
        )
    if scheme is None or not parts.netloc:
        raise ConfigError(
            f"cloud.endpoint must be a URL like https://<resource>.openai.azure.com "
            f"(got {endpoint!r})"
        )
    if scheme == "ws" and not is_loopback(parts.hostname or ""):
        raise ConfigError(
            f"cloud.endpoint {endpoint.strip()!r} is not encrypted: the key would cross the "
            "network in clear text; use https:// (plain http:// is for a local emulator only)"
        )
    if not deployment:
        raise ConfigError("cloud.deployment must name the model deployment")
    given = parts.path.rstrip("/")
    # a path that already ends in /realtime is kept (a proxy's own); anything else, from
    # /openai/v1 to a Foundry project's /api/projects/…, becomes the realtime path
    path = given if given.endswith("/realtime") else path
    return urlunsplit((scheme, parts.netloc, path, urlencode({"model": deployment}), ""))


def machine_settings(cfg: Config) -> st.Settings:
    t, b = cfg.turn, cfg.button
    return st.Settings(
        rate=MIC_RATE,
        preroll_ms=cfg.audio.preroll_ms,
        no_speech_ms=t.no_speech_timeout_ms,
        follow_up_ms=t.follow_up_ms,
        reply_timeout_s=cfg.cloud.reply_timeout_s,
        server_turns=t.detection != "local",
        hold_to_talk=st.ButtonMode(b.mode) is st.ButtonMode.HOLD_TO_TALK,
        double_press=st.DoublePress(b.double_press),
        double_press_s=b.double_press_ms / 1000,
        follow_up=st.FollowUp(t.follow_up),
        talk_over=t.barge_in == "voice",
        ring_timeout_s=float(cfg.timers.ring_timeout_s),
        backoff=BackoffPolicy(cfg.cloud.backoff_initial_s, cfg.cloud.backoff_max_s),
        endpoint=EndpointSettings(
            rate=MIC_RATE,
            frame_samples=FRAME_SAMPLES,
            silence_ms=t.silence_ms,
            commit_ms=t.commit_ms,
            max_turn_ms=t.max_turn_ms,
        ),
    )
