"""LEDs and button on gpiozero's MockFactory: we drive the button pin and read the LED pins."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from device.adapters.gpio import GpioButton, GpioLeds, TerminalLeds
from device.config import ButtonConfig, LedConfig
from device.core.leds import PATTERNS, Effect
from device.core.states import State

PINS = LedConfig(red_pin=5, green_pin=6, blue_pin=13)


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory(pin_class=MockPWMPin)


def rgb(factory: MockFactory) -> tuple[float, float, float]:
    return (factory.pin(5).state, factory.pin(6).state, factory.pin(13).state)


def watch(factory: MockFactory, seconds: float) -> list[tuple[float, float, float]]:
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(rgb(factory))
        time.sleep(0.005)
    return seen


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_each_state_shows_its_pattern_on_the_pins(factory: MockFactory, state: State) -> None:
    leds = GpioLeds(PINS, factory)
    pattern = PATTERNS[state]
    try:
        leds.show(pattern)
        seen = watch(factory, max(0.3, pattern.period_s * 1.5))
    finally:
        leds.close()
    brightest = tuple(max(s[i] for s in seen) for i in range(3))
    darkest = tuple(min(s[i] for s in seen) for i in range(3))
    assert brightest == pytest.approx(pattern.color, abs=0.02)
    if pattern.effect in (Effect.BLINK, Effect.PULSE):
        assert darkest == pytest.approx((0, 0, 0), abs=0.1)  # it moves
    else:
        assert darkest == pytest.approx(pattern.color, abs=0.02)  # it holds still
    if pattern.effect is Effect.PULSE:
        levels = {round(s[0] + s[1] + s[2], 2) for s in seen}
        assert len(levels) > 3  # a fade, not an on/off blink


def test_common_anode_leds_are_inverted(factory: MockFactory) -> None:
    leds = GpioLeds(LedConfig(red_pin=5, green_pin=6, blue_pin=13, active_high=False), factory)
    leds.show(PATTERNS[State.MUTED])
    assert rgb(factory) == pytest.approx((0.0, 1.0, 1.0))
    leds.close()


def test_terminal_leds_print_a_timeline() -> None:
    out = io.StringIO()
    leds = TerminalLeds(out)
    leds.show(PATTERNS[State.PREAMBLE])
    leds.show(PATTERNS[State.ANSWERING])
    lines = out.getvalue().splitlines()
    assert "preamble" in lines[0] and "pulse 0.6s" in lines[0]
    assert "answering" in lines[1] and "#00ff33 solid" in lines[1]


async def test_button_edges_reach_the_loop(factory: MockFactory) -> None:
    edges: list[str] = []
    button = GpioButton(ButtonConfig(pin=17, hold_ms=300), factory, edges.append)
    pin = factory.pin(17)
    try:
        pin.drive_low()
        await asyncio.sleep(0.1)
        pin.drive_high()
        await asyncio.sleep(0.1)
        assert edges == ["down", "up"]
        pin.drive_low()
        await asyncio.sleep(0.5)
        pin.drive_high()
        await asyncio.sleep(0.1)
        assert edges == ["down", "up", "down", "held", "up"]
    finally:
        button.close()
