"""LEDs and button on gpiozero's MockFactory: for each hardware profile we drive the button pin
and read the LED pins (or the APA102 pixels' SPI frames) over time."""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin, MockSPIDevice

from device.adapters.gpio import GpioButton, Leds, PixelRing, TerminalLeds, make_leds
from device.cli import main
from device.config import PROFILES, ConfigError, parse_config
from device.core.leds import (
    PATTERNS,
    RGB,
    Effect,
    Pattern,
    parse_color,
    pattern_name,
    render,
    with_overrides,
)
from device.core.states import ButtonDown, ButtonHeld, ButtonUp, Input, State

# ---------------------------------------------------------------------------------------------
# The table


def test_every_state_has_its_own_pattern_and_offline_one_too() -> None:
    live = {"preamble_live", "answering_live"}
    assert set(PATTERNS) == {s.value for s in State} | {"offline", "timer", "elsewhere"} | live
    looks = {(p.color, p.effect, p.period_s) for p in PATTERNS.values()}
    assert len(looks) == len(PATTERNS), "two patterns look the same"
    assert pattern_name(State.IDLE) == "idle"
    assert pattern_name(State.IDLE, offline=True) == "offline"
    assert pattern_name(State.ERROR, offline=True) == "error"  # an error shows as one
    assert pattern_name(State.IDLE, timer=True) == "timer"
    assert pattern_name(State.IDLE, offline=True, timer=True) == "offline"
    # the ring differs from the error in colour and in motion (a slower blink)
    assert PATTERNS["ringing"].color != PATTERNS["error"].color
    assert PATTERNS["ringing"].period_s > PATTERNS["error"].period_s


def test_the_patterns_say_what_the_device_does() -> None:
    p = PATTERNS
    assert p["idle"].effect is Effect.OFF  # a kitchen device is dark when it is not in use
    assert p["listening"].effect is Effect.SOLID
    assert p["muted"].effect is Effect.SOLID and p["muted"].color == (1.0, 0.0, 0.0)
    assert p["error"].effect is Effect.BLINK
    # preamble and answer differ in motion, not only in colour (colour-blind users,
    # single-colour LEDs): a pulse against a steady light
    assert p["preamble"].effect is Effect.PULSE and p["answering"].effect is Effect.SOLID
    # the listening light is the only steady blue: on while audio streams, off otherwise
    steady_blue = [n for n, x in p.items() if x.effect is Effect.SOLID and x.color[2] > 0.5]
    assert steady_blue == ["listening"]
    # nothing that means "I am sending your voice" looks like waiting
    assert p["connecting"].effect is Effect.SPIN and p["follow_up"].effect is Effect.PULSE


def test_patterns_can_be_changed_in_the_configuration() -> None:
    table = with_overrides({"answering": {"color": "#FFFFFF"}, "thinking": {"period_s": 2}})
    assert table["answering"].color == (1.0, 1.0, 1.0)
    assert table["answering"].effect is Effect.SOLID  # the rest is kept
    assert table["thinking"].period_s == 2.0
    assert table["idle"] == PATTERNS["idle"]
    assert with_overrides({"idle": {"effect": "pulse"}})["idle"].period_s == 1.0
    assert parse_color("#00ccff") == (0.0, 0.8, 1.0)


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ({"listen": {"color": "#0000ff"}}, "no pattern named 'listen'"),
        ({"muted": {"color": "red"}}, "'red' is not a colour"),
        ({"muted": {"effect": "flash"}}, "muted.effect must be one of"),
        ({"error": {"period_s": 0}}, "error.period_s must be"),
        ({"error": {"speed": 2}}, "unknown field 'speed'"),
    ],
)
def test_a_bad_pattern_is_a_configuration_error(patterns: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=r"leds\.patterns") as e:
        parse_config({"leds": {"patterns": patterns}})
    assert message in str(e.value)


def test_spin_goes_round_the_ring() -> None:
    p = PATTERNS["connecting"]
    heads = [max(range(12), key=lambda i: render(p, t, 12)[i][2]) for t in (0.0, 0.2, 0.4)]
    assert len(set(heads)) == 3  # the bright pixel moves


# ---------------------------------------------------------------------------------------------
# Profiles on mock pins


class Apa102Recorder(MockSPIDevice):
    """The pixel ring's side of SPI0: records each frame written while selected."""

    def __init__(self, factory: MockFactory) -> None:
        super().__init__(11, 10, 9, 8, pin_factory=factory)
        self.frames: list[bytes] = []

    def on_select(self) -> None:
        assert self.select_pin is not None
        if self.select_pin.state == self.select_high:
            self.on_start()
        elif self.rx_buf:
            bits = "".join("1" if b else "0" for b in self.rx_buf)
            self.frames.append(bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits) - 7, 8)))

    def pixels(self, frame: bytes, count: int) -> list[tuple[float, float, float]]:
        assert frame[:4] == b"\0\0\0\0"  # start frame
        out = []
        for i in range(count):
            level, b, g, r = frame[4 + 4 * i : 8 + 4 * i]
            assert level & 0xE0 == 0xE0
            out.append((r / 255, g / 255, b / 255))
        assert set(frame[4 + 4 * count :]) == {0xFF}  # end frame
        return out


FAST = {
    n: {"period_s": 0.4}
    for n, p in PATTERNS.items()
    if p.period_s and p.effect is not Effect.SPIN  # (at 30 fps a spin needs a pixel a frame)
}
"""The same effects, quicker: these tests are about drawing them, not about their speed.
(At 30 frames a second a 0.4 s cycle is 12 frames: the ring draws its trough and its peak.)"""


class FrameClock:
    """The pixel ring's clock in the tests: one frame's time passes per frame drawn, so the
    frames show the same phases however busy the machine is."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self) -> float:
        self.frames += 1
        return self.frames / PixelRing.FPS


class Board:
    """A profile's LEDs and button on mock pins, and a way to read what the LEDs show."""

    def __init__(self, profile: str) -> None:
        self.cfg = parse_config(
            {"gpio": {"profile": profile, "pin_factory": "mock"}, "leds": {"patterns": FAST}}
        )
        kind = self.cfg.leds.kind
        # APA102 pixels are read through MockSPIDevice, which needs plain mock pins
        self.factory = MockFactory() if kind == "apa102" else MockFactory(pin_class=MockPWMPin)
        self.recorder = Apa102Recorder(self.factory) if kind == "apa102" else None
        self.patterns = with_overrides(self.cfg.leds.patterns)
        self.leds: Leds = (
            PixelRing(self.cfg.leds, self.factory, clock=FrameClock())
            if kind == "apa102"
            else make_leds(self.cfg.leds, self.factory, "gpio")
        )

    def read(self) -> list[tuple[float, float, float]]:
        """What each light shows now, as (r, g, b) in 0..1."""
        leds = self.cfg.leds
        if leds.kind == "rgb":
            pins = (leds.red_pin, leds.green_pin, leds.blue_pin)
            r, g, b = (float(self.factory.pin(p).state) for p in pins)
            return [(r, g, b)]
        if leds.kind == "single":
            v = float(self.factory.pin(leds.pin).state)
            return [(v, v, v)]
        assert self.recorder is not None
        if not self.recorder.frames:
            return [(0.0, 0.0, 0.0)] * leds.pixels
        return self.recorder.pixels(self.recorder.frames[-1], leds.pixels)

    def watch(self, pattern: Pattern, seconds: float) -> list[list[RGB]]:
        """What the lights show over `seconds` after `show(pattern)`: pins sampled every 5 ms
        while gpiozero animates them, or every frame the ring draws in that much ring time."""
        if self.recorder is not None:
            return self.ring_frames(pattern, seconds)
        seen = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            seen.append(self.read())
            time.sleep(0.005)
        return seen

    def ring_frames(self, pattern: Pattern, seconds: float) -> list[list[RGB]]:
        assert self.recorder is not None
        still = pattern.effect in (Effect.OFF, Effect.SOLID)
        need = 1 if still else math.ceil(seconds * PixelRing.FPS)
        deadline = time.monotonic() + 20
        frames: list[list[RGB]] = []
        while True:
            drawn = self.recorder.frames[len(frames) :]  # (decode each frame once)
            frames += [self.recorder.pixels(f, self.cfg.leds.pixels) for f in drawn]
            shown = frames
            if any(pattern.color):
                # (frames before the ring took the pattern up are the dark idle ones)
                lit = next((i for i, f in enumerate(frames) if any(map(sum, f))), len(frames))
                shown = frames[lit:]
            if len(shown) >= need:
                return shown[-1:] if still else shown[:need]
            assert time.monotonic() < deadline, f"the ring drew {len(frames)} of {need} frames"
            time.sleep(0.01)

    def close(self) -> None:
        self.leds.close()
        Device.pin_factory = None


@pytest.fixture(params=list(PROFILES))
def board(request: pytest.FixtureRequest) -> Iterator[Board]:
    b = Board(request.param)
    yield b
    b.close()


def expected(board: Board, pattern: Pattern) -> tuple[float, float, float]:
    """The brightest a light gets: the colour, or on a single LED its brightness if lit."""
    if board.cfg.leds.kind == "single":
        lit = 1.0 if any(pattern.color) else 0.0
        return (lit, lit, lit)
    return pattern.color


@pytest.mark.parametrize("name", list(PATTERNS))
def test_each_profile_shows_each_pattern(board: Board, name: str) -> None:
    pattern = board.patterns[name]
    board.leds.show(pattern)
    time.sleep(0.05)
    seen = board.watch(pattern, max(0.25, pattern.period_s * 1.6))
    want = expected(board, pattern)
    count = len(seen[0])
    if pattern.effect is Effect.SPIN and count > 1:
        # a ring: in every frame the head is at full colour and the rest is not all lit;
        # over a turn and a half every pixel lights up and goes dark
        for frame in seen:
            head = max(frame, key=sum)
            assert head == pytest.approx(want, abs=0.02) and len(set(frame)) > 1
        for i in range(count):
            assert max(sum(s[i]) for s in seen) == pytest.approx(sum(want), abs=0.02), f"pixel {i}"
            assert min(sum(s[i]) for s in seen) < 0.05, f"pixel {i} never dark"
        return
    for i in range(count):
        brightest = tuple(max(s[i][c] for s in seen) for c in range(3))
        darkest = tuple(min(s[i][c] for s in seen) for c in range(3))
        assert brightest == pytest.approx(want, abs=0.02), f"light {i}"
        if pattern.effect in (Effect.BLINK, Effect.PULSE, Effect.SPIN) and any(want):
            assert darkest == pytest.approx((0, 0, 0), abs=0.15), f"light {i} does not move"
        else:
            assert darkest == pytest.approx(want, abs=0.02), f"light {i} does not hold"
    if pattern.effect is Effect.PULSE and any(want):
        levels = {round(sum(s[0]), 2) for s in seen}
        assert len(levels) > 3  # a fade, not an on/off blink


def test_the_respeaker_4mic_array_powers_its_pixels_and_has_no_button() -> None:
    b = Board("respeaker-4mic")
    try:
        assert b.cfg.leds.pixels == 12 and not b.cfg.button.enabled
        assert b.factory.pin(5).state == 1  # GPIO5 powers the ring
        b.leds.show(PATTERNS["muted"])
        time.sleep(0.1)
        assert b.read() == [(1.0, 0.0, 0.0)] * 12
    finally:
        b.close()
    assert b.factory.pin(5).state == 0
    assert b.recorder is not None
    assert set(b.recorder.pixels(b.recorder.frames[-1], 12)) == {(0.0, 0.0, 0.0)}  # dark


def test_a_profile_is_overridden_key_by_key() -> None:
    cfg = parse_config({"gpio": {"profile": "aiy-voice"}, "button": {"pin": 24}})
    assert (cfg.leds.kind, cfg.leds.pin, cfg.button.pin) == ("single", 25, 24)
    with pytest.raises(ConfigError, match=r"gpio\.profile"):
        parse_config({"gpio": {"profile": "respeaker"}})


def test_common_anode_leds_are_inverted() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    cfg = parse_config({"leds": {"active_high": False}})
    leds = make_leds(cfg.leds, factory, "gpio")
    leds.show(PATTERNS["muted"])
    assert tuple(factory.pin(p).state for p in (5, 6, 13)) == pytest.approx((0.0, 1.0, 1.0))
    leds.close()


def test_pixel_frames_follow_the_apa102_format() -> None:
    cfg = parse_config({"gpio": {"profile": "respeaker-2mic"}, "leds": {"brightness": 0.5}})
    factory = MockFactory()
    try:
        ring = PixelRing(cfg.leds, factory)
        frame = ring.frame([(1.0, 0.5, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0)])
        ring.close()
    finally:
        Device.pin_factory = None
    assert frame[:4] == [0, 0, 0, 0]
    assert frame[4:8] == [0xE0 | 16, 0, 128, 255]  # brightness, blue, green, red
    assert frame[8:12] == [0xE0 | 16, 255, 0, 0]
    assert frame[16:] == [0xFF] * 4


@pytest.mark.parametrize("profile", [p for p in PROFILES if PROFILES[p]["button"]["enabled"]])
async def test_each_profiles_button_reaches_the_loop(profile: str) -> None:
    cfg = parse_config({"gpio": {"profile": profile}, "button": {"hold_ms": 300}})
    factory = MockFactory(pin_class=MockPWMPin)
    edges: list[Input] = []
    button = GpioButton(cfg.button, factory, edges.append, position=lambda: 320)
    pin = factory.pin(cfg.button.pin)
    try:
        pin.drive_low()
        await asyncio.sleep(0.1)
        pin.drive_high()
        await asyncio.sleep(0.1)
        assert edges == [ButtonDown(320), ButtonUp()]
        pin.drive_low()
        await asyncio.sleep(0.5)
        pin.drive_high()
        await asyncio.sleep(0.1)
        assert edges == [ButtonDown(320), ButtonUp(), ButtonDown(320), ButtonHeld(), ButtonUp()]
        # debouncing is gpiozero's (lgpio's, in the kernel, on a Pi; mock pins only store
        # the setting): we ask for it
        assert pin.bounce == pytest.approx(0.03)
    finally:
        button.close()


# ---------------------------------------------------------------------------------------------
# Terminal and `voice-device leds`


def test_terminal_leds_print_a_timeline() -> None:
    out = io.StringIO()
    leds = TerminalLeds(out)
    leds.show(PATTERNS["preamble"])
    leds.show(PATTERNS["answering"])
    lines = out.getvalue().splitlines()
    assert "preamble" in lines[0] and "pulse 0.6s" in lines[0]
    assert "answering" in lines[1] and "#00ff33 solid" in lines[1]


def test_the_leds_command_shows_every_pattern_in_turn(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[leds.patterns.answering]\ncolor = "#ffffff"\n')
    assert main(["leds", "--config", str(config), "--leds", "terminal", "--seconds", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in lines] == list(PATTERNS)
    assert "#ffffff solid" in lines[list(PATTERNS).index("answering")]


def test_the_leds_command_drives_the_pins(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[gpio]\nprofile = "aiy-voice"\npin_factory = "mock"\n')
    assert main(["leds", "--config", str(config), "--seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert "aiy-voice (single)" in out
    assert all(name in out for name in PATTERNS)


@pytest.mark.parametrize(
    ("profile", "words"),
    [
        ("generic-rgb", "generic-rgb: RGB LED on BCM 5/6/13, button on BCM 17 (press)"),
        ("respeaker-2mic", "respeaker-2mic: 3 APA102 pixels on SPI0, button on BCM 17 (press)"),
        ("respeaker-4mic", "12 APA102 pixels on SPI0 (powered from BCM 5), no button"),
        ("aiy-voice", "aiy-voice: LED on BCM 25, button on BCM 23 (press)"),
    ],
)
def test_check_describes_the_board(profile: str, words: str) -> None:
    from device.check import describe_board

    assert words in describe_board(parse_config({"gpio": {"profile": profile}}))
