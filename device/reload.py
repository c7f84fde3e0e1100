"""Reloading the configuration (SIGHUP, `systemctl reload`) under a running daemon.

The new configuration and its wake word models are read off the event loop while the wake
word keeps listening; a configuration with a mistake is reported and the running one kept.
What cannot change under a running daemon (the audio devices, the pin library) is named and
waits for the next restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from .adapters.systemd import REDACT
from .config import Config, MqttConfig, machine_settings, setting
from .front import detectors

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger(__name__)

RESTART_KEYS = (
    "audio.input_device",
    "audio.output_device",
    "audio.input_rate",
    "audio.input_channels",
    "audio.input_channel",
    "audio.jitter_ms",
    "gpio.pin_factory",
    *(f"mqtt.{f.name}" for f in dataclasses.fields(MqttConfig)),
)
"""What a reload cannot change under a running daemon: the audio devices, the pin library and
the MQTT connection."""


async def reload(app: App) -> None:
    assert app.opts.reload is not None
    app.notifier.reloading()
    log.info("reloading the configuration")
    try:
        new = await asyncio.to_thread(app.opts.reload)
        found = await asyncio.to_thread(detectors, new)
    except Exception as e:  # ConfigError, a model that does not load…
        _failed(app, e)
        return
    try:
        _swap_gpio(app, app.cfg, new)
    except Exception as e:  # the pins as they were are back; nothing else was changed
        _failed(app, e)
        return
    REDACT.add(new.api_key.reveal())
    REDACT.add(new.mqtt_password.reveal())
    apply(app, new, found)
    app.verbs.reload_failed = None
    app.notifier.ready(app.status_text())


def _failed(app: App, e: Exception) -> None:
    """Said in the journal, in systemd's status line and in `voice-device status`."""
    log.error("configuration not reloaded, keeping the running one: %s", e)
    app.verbs.reload_failed = (str(e), time.monotonic())
    app.notifier.ready(f"{app.status_text()} (reload failed: {e})")


def _swap_gpio(app: App, old: Config, new: Config) -> None:
    """New LEDs and button, all or nothing: if the new ones cannot be made (a pin the
    board lacks), the old ones are made again and the error raised."""
    if (new.leds, new.button, new.gpio) == (old.leds, old.button, old.gpio):
        return
    app.leds.close()
    if app.button is not None:
        app.button.close()
    try:
        app.build_gpio(new)
    except Exception:
        app.build_gpio(old)
        raise


def apply(app: App, new: Config, found: Any) -> None:
    old = app.cfg
    later = [k for k in RESTART_KEYS if setting(old, k) != setting(new, k)]
    if later:
        log.warning("%s changed: takes effect at the next restart", ", ".join(later))
    app.front.configure(new, found)
    app.machine.reconfigure(machine_settings(new))
    if new.audio.volume != old.audio.volume:  # the file changed it: the file wins
        app.speaker.volume = new.audio.volume
    app.verbs.volume_config = new.audio.volume
    app.verbs.announce_per_hour = new.announce.max_per_hour
    app.presenter.configure(new)
    app.presenter.show_leds(app.machine.state)
    app.link.configure(new)
    app.meter.configure(new)
    app.machine.budget_note = app.meter.budget_note()  # (a budget raised)
    app.cfg = new
    log.info("configuration reloaded (the next session uses it)")
