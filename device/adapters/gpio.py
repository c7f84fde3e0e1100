"""LEDs and the button through gpiozero: real pins on a Pi, gpiozero's MockFactory elsewhere.

gpiozero does the debouncing, the hold timing and the blinking/pulsing threads; this module
only maps our patterns onto its calls and forwards button edges to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from ..config import ButtonConfig, ConfigError, GpioConfig, LedConfig
from ..core.leds import Effect, Pattern

log = logging.getLogger(__name__)


def make_pin_factory(cfg: GpioConfig) -> Any:
    """The configured gpiozero pin factory; `auto` falls back to a simulation off the Pi."""
    from gpiozero import Device
    from gpiozero.exc import BadPinFactory
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    if cfg.pin_factory == "mock":
        return MockFactory(pin_class=MockPWMPin)
    if cfg.pin_factory == "auto":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return Device._default_pin_factory()
            except BadPinFactory:
                log.warning(
                    "no GPIO on this machine: LEDs and button are simulated "
                    "(on a Pi, install python3-lgpio; see README 'LEDs dark')"
                )
                return MockFactory(pin_class=MockPWMPin)
    import importlib.metadata

    names = {ep.name: ep for ep in importlib.metadata.entry_points(group="gpiozero_pin_factories")}
    if cfg.pin_factory not in names:
        raise ConfigError(
            f"gpio.pin_factory {cfg.pin_factory!r} is unknown; "
            f"use auto, mock or one of {', '.join(sorted(names))}"
        )
    try:
        return names[cfg.pin_factory].load()()
    except Exception as e:
        raise ConfigError(f"gpio.pin_factory {cfg.pin_factory!r} failed to start: {e}") from e


class Leds(Protocol):
    def show(self, pattern: Pattern) -> None: ...
    def close(self) -> None: ...


class NoLeds:
    def show(self, pattern: Pattern) -> None:
        pass

    def close(self) -> None:
        pass


class GpioLeds:
    """An RGB LED (common cathode by default) on three PWM-capable pins."""

    def __init__(self, cfg: LedConfig, factory: Any) -> None:
        from gpiozero import RGBLED

        self.led = RGBLED(
            red=cfg.red_pin,
            green=cfg.green_pin,
            blue=cfg.blue_pin,
            active_high=cfg.active_high,
            pin_factory=factory,
        )

    def show(self, pattern: Pattern) -> None:
        half = pattern.period_s / 2
        if pattern.effect is Effect.OFF:
            self.led.off()
        elif pattern.effect is Effect.SOLID:
            self.led.color = pattern.color
        elif pattern.effect is Effect.PULSE:
            self.led.pulse(fade_in_time=half, fade_out_time=half, on_color=pattern.color)
        elif pattern.effect is Effect.BLINK:
            self.led.blink(on_time=half, off_time=half, on_color=pattern.color)

    def close(self) -> None:
        self.led.close()


class TerminalLeds:
    """Prints each pattern change as a line of the LED timeline."""

    def __init__(self, out: TextIO | None = None, inner: Leds | None = None) -> None:
        self.out = out or sys.stdout
        self.inner = inner
        self.t0 = time.monotonic()
        self.color = self.out.isatty()

    def show(self, pattern: Pattern) -> None:
        if self.inner is not None:
            self.inner.show(pattern)
        t = time.monotonic() - self.t0
        dot = "●"
        if self.color and pattern.effect is not Effect.OFF:
            r, g, b = (round(c * 255) for c in pattern.color)
            dot = f"\x1b[38;2;{r};{g};{b}m●\x1b[0m"
        elif pattern.effect is Effect.OFF:
            dot = "○"
        how = pattern.effect.value
        if pattern.period_s:
            how += f" {pattern.period_s:g}s"
        print(
            f"  LED {t:7.2f}s  {dot} {pattern.name:<11} {pattern.hex} {how}",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


class GpioButton:
    """Forwards press, hold and release edges to the event loop.

    gpiozero calls back on its own thread; each edge is posted to the loop, where it is
    stamped with the microphone position and handed to the state machine.
    """

    def __init__(self, cfg: ButtonConfig, factory: Any, post: Callable[[str], None]) -> None:
        from gpiozero import Button

        loop = asyncio.get_running_loop()

        def forward(edge: str) -> Callable[[], None]:
            def callback() -> None:
                loop.call_soon_threadsafe(post, edge)

            return callback

        self.button = Button(
            cfg.pin,
            pull_up=cfg.pull_up,
            bounce_time=0.03,
            hold_time=cfg.hold_ms / 1000,
            pin_factory=factory,
        )
        self.button.when_pressed = forward("down")
        self.button.when_held = forward("held")
        self.button.when_released = forward("up")

    @property
    def pin(self) -> Any:
        return self.button.pin

    def close(self) -> None:
        self.button.close()
