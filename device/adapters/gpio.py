"""LEDs and the button through gpiozero: real pins on a Pi, gpiozero's MockFactory elsewhere.

gpiozero does the debouncing, the hold timing and the blinking/pulsing threads; this module
only maps our patterns onto its calls and forwards button edges to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from ..config import ButtonConfig, ConfigError, GpioConfig, LedConfig
from ..core.leds import PATTERNS, Effect, Pattern, render
from ..core.states import ButtonDown, ButtonHeld, ButtonUp, Input

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


class RgbLed:
    """An RGB LED (common cathode by default) on three PWM-capable pins; gpiozero animates."""

    def __init__(self, cfg: LedConfig, factory: Any) -> None:
        from gpiozero import RGBLED

        self.led = RGBLED(
            red=cfg.red_pin,
            green=cfg.green_pin,
            blue=cfg.blue_pin,
            active_high=cfg.active_high,
            pin_factory=factory,
        )
        self.brightness = cfg.brightness

    def show(self, pattern: Pattern) -> None:
        half = pattern.period_s / 2
        color = tuple(c * self.brightness for c in pattern.color)
        if pattern.effect is Effect.OFF:
            self.led.off()
        elif pattern.effect is Effect.SOLID:
            self.led.color = color
        elif pattern.effect in (Effect.PULSE, Effect.SPIN):
            period = half if pattern.effect is Effect.SPIN else pattern.period_s
            self.led.pulse(fade_in_time=period / 2, fade_out_time=period / 2, on_color=color)
        elif pattern.effect is Effect.BLINK:
            self.led.blink(on_time=half, off_time=half, on_color=color)

    def close(self) -> None:
        self.led.close()


class SingleLed:
    """One LED (the AIY Voice Kit's button light): motion alone tells the states apart."""

    def __init__(self, cfg: LedConfig, factory: Any) -> None:
        from gpiozero import PWMLED

        self.led = PWMLED(cfg.pin, active_high=cfg.active_high, pin_factory=factory)
        self.brightness = cfg.brightness

    def show(self, pattern: Pattern) -> None:
        half = pattern.period_s / 2
        lit = any(pattern.color)
        if pattern.effect is Effect.OFF or not lit:
            self.led.off()
        elif pattern.effect is Effect.SOLID:
            self.led.value = self.brightness
        elif pattern.effect in (Effect.PULSE, Effect.SPIN):
            period = half if pattern.effect is Effect.SPIN else pattern.period_s
            self.led.pulse(fade_in_time=period / 2, fade_out_time=period / 2)
        elif pattern.effect is Effect.BLINK:
            self.led.blink(on_time=half, off_time=half)

    def close(self) -> None:
        self.led.close()


class PixelRing:
    """APA102 (DotStar) pixels on SPI, as on ReSpeaker HATs. gpiozero has SPI but no APA102
    device, so this draws the frames itself: 4 zero bytes, then per pixel 0xE0 | 5-bit
    brightness, blue, green, red, then 0xFF bytes to clock the data through. Animated
    patterns are redrawn by one small thread at 30 frames a second; still ones once.

    `clock` is read once per frame (monotonic seconds); tests pass one that steps a frame
    at a time, so what is drawn does not depend on how busy the machine is."""

    FPS = 30

    def __init__(
        self, cfg: LedConfig, factory: Any, clock: Callable[[], float] = time.monotonic
    ) -> None:
        from gpiozero import LED, Device, SPIDevice

        Device.pin_factory = factory  # gpiozero's software SPI bus asks the global factory
        self.pixels = cfg.pixels
        self.brightness = cfg.brightness
        self.power = LED(cfg.power_pin, pin_factory=factory) if cfg.power_pin >= 0 else None
        if self.power is not None:
            self.power.on()  # the ReSpeaker 4-mic array powers its LEDs from a GPIO
        self.spi = SPIDevice(port=0, device=0, pin_factory=factory)
        self._clock = clock
        self._pattern = PATTERNS["idle"]
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pixel-ring", daemon=True)
        self._thread.start()

    def frame(self, colors: list[tuple[float, float, float]]) -> list[int]:
        level = 0xE0 | max(1, round(31 * self.brightness))
        data = [0, 0, 0, 0]
        for r, g, b in colors:
            data += [level, round(b * 255), round(g * 255), round(r * 255)]
        return data + [0xFF] * (4 + self.pixels // 16)

    def show(self, pattern: Pattern) -> None:
        with self._lock:
            self._pattern = pattern
        self._changed.set()

    def _run(self) -> None:
        t0 = self._clock()
        while not self._stop.is_set():
            with self._lock:
                pattern = self._pattern
            self._changed.clear()
            colors = render(pattern, self._clock() - t0, self.pixels)
            self.spi._spi.transfer(self.frame(colors))
            if pattern.effect in (Effect.OFF, Effect.SOLID):
                self._changed.wait()
            else:
                self._changed.wait(1 / self.FPS)

    def close(self) -> None:
        self._stop.set()
        self._changed.set()
        self._thread.join(2)
        self.spi._spi.transfer(self.frame([(0.0, 0.0, 0.0)] * self.pixels))
        self.spi.close()
        if self.power is not None:
            self.power.off()
            self.power.close()


def make_leds(cfg: LedConfig, factory: Any, backend: str) -> Leds:
    if backend == "none":
        return NoLeds()
    if backend == "terminal":
        return TerminalLeds()
    kinds: dict[str, Callable[[LedConfig, Any], Leds]] = {
        "rgb": RgbLed,
        "single": SingleLed,
        "apa102": PixelRing,
    }
    return kinds[cfg.kind](cfg, factory)


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
        line = f"  LED {t:7.2f}s  {dot} {pattern.name:<11} {pattern.hex} {how}"
        print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


class GpioButton:
    """Forwards press, hold and release edges to the event loop as the state machine's inputs.

    gpiozero calls back on its own thread; each edge is posted to the loop, where a press is
    stamped with the microphone position (`position`) and handed to the state machine.
    """

    def __init__(
        self,
        cfg: ButtonConfig,
        factory: Any,
        post: Callable[[Input], None],
        position: Callable[[], int],
    ) -> None:
        from gpiozero import Button

        loop = asyncio.get_running_loop()

        def forward(edge: Callable[[], Input]) -> Callable[[], None]:
            def callback() -> None:
                loop.call_soon_threadsafe(lambda: post(edge()))

            return callback

        self.button = Button(
            cfg.pin,
            pull_up=cfg.pull_up,
            bounce_time=0.03,
            hold_time=cfg.hold_ms / 1000,
            pin_factory=factory,
        )
        self.button.when_pressed = forward(lambda: ButtonDown(position()))
        self.button.when_held = forward(ButtonHeld)
        self.button.when_released = forward(ButtonUp)

    @property
    def pin(self) -> Any:
        return self.button.pin

    def close(self) -> None:
        self.button.close()
