"""`voice-device` command line.

The daemon and its tools: run, demo, emulator, check, bench, devices, leds. The running
daemon's control verbs, through its control socket: status, mute, wake, ask, volume, timers,
announce.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import (
    EX_CONFIG,
    PREVIEW_RETIRED,
    Config,
    ConfigError,
    Secret,
    config_file,
    load_config,
    realtime_endpoint,
    require_cloud,
)
from .core.audio import MIC_RATE

log = logging.getLogger("device")

ASSETS = Path(__file__).parent / "assets"
DEMO_WAV = ASSETS / "demo-okay-nabu-weather.wav"


def _existing_file(value: str) -> Path:
    p = Path(value)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{value}: no such file")
    return p


def _new_file(value: str) -> Path:
    """A file to write: its folder must be there (checked now, not after minutes of work)."""
    p = Path(value)
    if not p.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: the folder {p.parent} does not exist")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder, not a file")
    return p


def _echo_spec(value: str) -> dict[str, float]:
    from .adapters.room import parse_echo

    try:
        return parse_echo(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _number(value: str, zero: bool) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not (0 <= number < 1e6 if zero else 0 < number < 1e6):
        what = "a number of 0 or more" if zero else "a positive number"
        raise argparse.ArgumentTypeError(f"{value} must be {what}")
    return number


def _positive(value: str) -> float:
    return _number(value, zero=False)


def _not_negative(value: str) -> float:
    return _number(value, zero=True)


def _http_error(value: str) -> int:
    try:
        status = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an HTTP status") from None
    if not 400 <= status <= 599:
        raise argparse.ArgumentTypeError(f"{value}: a refusal is an HTTP status from 400 to 599")
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="voice-device",
        description="Hands-free voice assistant: wake word on the device, "
        "gpt-realtime-2 in the cloud.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    key = (
        "The API key comes from AZURE_OPENAI_API_KEY, or (under systemd) the credential "
        "azure-openai-api-key ($CREDENTIALS_DIRECTORY/azure-openai-api-key); never from the "
        "configuration file. With cloud.auth = 'entra', an Entra ID token instead."
    )
    run = sub.add_parser(
        "run", help="run the assistant (what the systemd service does)", epilog=key
    )
    run.add_argument(
        "--config", type=Path, help="TOML file (default /etc/voice-device/config.toml)"
    )
    run.add_argument(
        "--endpoint", help="Azure OpenAI resource URL, or http://127.0.0.1:8765 for the emulator"
    )
    run.add_argument("--deployment", help="realtime model deployment name (default gpt-realtime-2)")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--input-device", help="microphone: name (or part of it) or index")
    src.add_argument("--input-wav", type=_existing_file, help="use a WAV file as the microphone")
    run.add_argument(
        "--fast",
        action="store_true",
        help="with --input-wav/--output-wav: as fast as possible, not real time",
    )
    out = run.add_mutually_exclusive_group()
    out.add_argument("--output-device", help="speaker: name (or part of it) or index")
    out.add_argument(
        "--output-wav",
        type=_new_file,
        help="write the replies to a WAV file instead of playing them",
    )
    run.add_argument(
        "--simulate-echo",
        metavar="GAIN[:DELAY_MS[:REVERB_MS]]",
        type=_echo_spec,
        help="with --input-wav and --output-wav, for tests and benchmarks: the microphone also "
        "hears the device's own output through a simulated room (GAIN of the direct path, "
        "DELAY_MS to reach the microphone, default 20, and a reverberation tail decaying with "
        "REVERB_MS, default 60), on one clock; the output WAV then holds every 20 ms the "
        "speaker played, silence included, aligned with the input",
    )
    run.add_argument(
        "--events-log", type=_new_file, help="append JSON lines describing what the device does"
    )
    run.add_argument("--leds", choices=["gpio", "terminal", "none"], help="where LED patterns go")
    run.add_argument(
        "--debug", action="store_true", help="verbose logs (secrets and audio are never logged)"
    )
    run.add_argument(
        "--wait-for-devices",
        action="store_true",
        help="a missing microphone is waited for (error LED), and a missing speaker for up "
        "to 30 s, instead of ending the program",
    )
    run.add_argument(
        "--control-socket",
        type=Path,
        help="where `voice-device status|mute|…` reach the daemon "
        "(default $RUNTIME_DIRECTORY/control.sock, else $XDG_RUNTIME_DIR/voice-device/)",
    )
    run.add_argument("--no-control-socket", action="store_true", help="no control socket at all")
    run.add_argument(
        "--state-dir",
        type=Path,
        help="where mute and volume are remembered (default $STATE_DIRECTORY, "
        "else $XDG_STATE_HOME/voice-device)",
    )

    demo = sub.add_parser(
        "demo", help="the whole loop against the local emulator, on a recorded question"
    )
    demo.add_argument(
        "--input-wav",
        type=_existing_file,
        default=DEMO_WAV,
        help="the question (default: a recorded 'okay nabu, what's the weather like today?')",
    )
    demo.add_argument(
        "--output-wav",
        type=_new_file,
        default=Path("demo-reply.wav"),
        help="where the reply is written (default demo-reply.wav)",
    )
    demo.add_argument("--fast", action="store_true", help="don't wait for real time")
    demo.add_argument("--events-log", type=Path, help="also keep the events log")

    emu = sub.add_parser("emulator", help="serve the local stand-in for the Azure realtime service")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8765)
    emu.add_argument(
        "--record",
        type=_new_file,
        help="append every client event received as JSON lines (audio as size + sha256)",
    )
    emu.add_argument("--api-key", help="the only key accepted (default: any non-empty key)")
    emu.add_argument(
        "--save-audio", type=Path, help="write each committed user turn as a WAV in this folder"
    )
    emu.add_argument("--scenario", type=_existing_file, help="TOML or JSON scenario file")
    say = emu.add_argument_group("what the assistant says (overrides the scenario file)")
    say.add_argument("--preamble", action="append", help="a commentary item (repeat for several)")
    say.add_argument("--no-preamble", action="store_true", help="answer without a preamble")
    say.add_argument("--answer", help="the final answer's text")
    say.add_argument("--tool-call", metavar="NAME", help="call this function before answering")
    say.add_argument("--tool-arguments", metavar="JSON", help="the call's arguments (default {})")
    say.add_argument("--think-ms", type=int, help="delay before the first reply item")
    say.add_argument("--speedup", type=_positive, help="audio sent this much faster than real time")
    say.add_argument("--burst", type=int, help="audio chunks sent back to back before a pause")
    say.add_argument("--session-delay-ms", type=int, help="delay before session.created")
    say.add_argument(
        "--phase-on-done",
        action="store_true",
        default=None,
        help="say each item's phase only on response.output_item.done",
    )
    bad = emu.add_argument_group("faults")
    bad.add_argument(
        "--reject", type=_http_error, metavar="STATUS", help="refuse handshakes (401, 429…)"
    )
    bad.add_argument("--retry-after", type=int, metavar="S", help="Retry-After for --reject")
    bad.add_argument("--drop-after", type=int, metavar="N", help="cut TCP after N server events")
    bad.add_argument("--stall-after", type=int, metavar="N", help="go silent after N events")
    bad.add_argument("--stall-for", type=float, metavar="S", help="then cut TCP after S s (60)")
    bad.add_argument("--error-code", help="answer response.create with this error code")
    bad.add_argument("--garbage", action="store_true", help="malformed and unknown events")
    bad.add_argument("--expire-after", type=float, metavar="S", help="session_expired after S s")
    bad.add_argument("--huge-event", action="store_true", help="send one 5 MiB event per response")
    bad.add_argument(
        "--reject-update", metavar="PARAM", help="refuse session.update, naming this field"
    )
    bad.add_argument("--fail-response", metavar="CODE", help="end responses as failed, with CODE")
    bad.add_argument(
        "--fault-connections", type=int, metavar="N", help="misbehave on the first N only"
    )

    chk = sub.add_parser(
        "check", help="check config, key, devices, wake model, GPIO and the cloud", epilog=key
    )
    chk.add_argument("--config", type=Path)
    chk.add_argument("--endpoint")
    chk.add_argument("--input-device")
    chk.add_argument("--output-device")
    chk.add_argument("--no-cloud", action="store_true", help="skip opening a test session")

    bench = sub.add_parser(
        "bench",
        help="measurements: echo handling, accuracy and endpointing, speed and memory, "
        "several devices agreeing who answers",
    )
    bench.add_argument(
        "what",
        choices=["echo", "uplink", "accuracy", "perf", "soak", "arbitration"],
        help="which measurement",
    )
    bench.add_argument(
        "--conversations", type=int, default=500, help="soak: how many (default 500)"
    )
    bench.add_argument("--seed", type=int, default=1, help="soak: the random draw")
    bench.add_argument(
        "--engine",
        action="append",
        choices=["micro", "openwakeword"],
        help="accuracy: only this wake word engine (repeat for both; default both)",
    )
    bench.add_argument("--quick", action="store_true", help="a smaller run")
    bench.add_argument("--out", type=Path, help="also write the results as JSON")

    dev = sub.add_parser("devices", help="list audio inputs and outputs")
    dev.add_argument("--config", type=Path)

    leds = sub.add_parser("leds", help="show every LED pattern in turn (to check the wiring)")
    leds.add_argument("--config", type=Path)
    leds.add_argument("--leds", choices=["gpio", "terminal"], help="default: the configured")
    leds.add_argument("--seconds", type=_not_negative, default=3.0, help="per pattern (default 3)")

    def control(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("--control-socket", type=Path, help="the daemon's socket (default: found)")
        return c

    status = control("status", "what the running daemon is doing")
    status.add_argument("--json", action="store_true", help="the daemon's reply as JSON")
    mute = control("mute", "close (on) or reopen (off) the microphone of the running daemon")
    mute.add_argument("on_off", choices=["on", "off"])
    control("wake", "as a short press of the button: wake, interrupt or end the turn")
    ask = control("ask", "ask a typed question; the answer is spoken (and printed)")
    ask.add_argument("text", nargs="+")
    ask.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")
    vol = control("volume", "show or set the reply volume, in percent (100: as sent)")
    vol.add_argument("percent", nargs="?", type=int)
    timers = control("timers", "list timers and alarms, or set, cancel or stop one")
    timers.add_argument(
        "action", nargs="*", metavar="set DURATION [NAME] | cancel [NAME] | stop",
        help="none: list them; DURATION such as 90s, 5m, 1h30m",
    )  # fmt: skip
    ann = control("announce", "speak a text on the device, out of any conversation")
    ann.add_argument("text", nargs="+")
    ann.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "demo": cmd_demo,
        "emulator": cmd_emulator,
        "devices": cmd_devices,
        "check": cmd_check,
        "bench": cmd_bench,
        "leds": cmd_leds,
        "status": cmd_control,
        "mute": cmd_control,
        "wake": cmd_control,
        "ask": cmd_control,
        "volume": cmd_control,
        "timers": cmd_control,
        "announce": cmd_control,
    }
    try:
        return int(handler[args.command](args))
    except ConfigError as e:
        print(f"voice-device: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130 if args.command == "bench" else 0
    except BrokenPipeError:  # `voice-device check | head -1`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# ---------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .adapters.control import ControlError, daemon_socket_path
    from .adapters.portaudio import DeviceNotFound
    from .adapters.store import default_state_dir
    from .adapters.systemd import setup_logging
    from .adapters.wakeword import WakeModelError
    from .app import App, RunOptions

    overrides = {
        "cloud.endpoint": args.endpoint,
        "cloud.deployment": args.deployment,
        "audio.input_device": args.input_device,
        "audio.output_device": args.output_device,
    }

    def read_config() -> Config:
        cfg = load_config(args.config, overrides=overrides)
        require_cloud(cfg)
        return cfg

    cfg = load_config(args.config, overrides=overrides)
    setup_logging(args.debug, [cfg.api_key.reveal(), cfg.mqtt_password.reveal()])
    require_cloud(cfg)
    if realtime_endpoint(cfg.cloud).kind == "azure-preview":
        log.warning("%s", PREVIEW_RETIRED)
    room = None
    if args.simulate_echo is not None:
        from .adapters.mic import read_wav_16k_mono
        from .adapters.room import Room

        if args.input_wav is None or args.output_wav is None:
            print(
                "voice-device: --simulate-echo needs --input-wav and --output-wav",
                file=sys.stderr,
            )
            return 2
        heard = read_wav_16k_mono(args.input_wav)
        room = Room(heard, not args.fast, record=args.output_wav, **args.simulate_echo)
    opts = RunOptions(
        input_wav=args.input_wav,
        fast=args.fast,
        output_wav=args.output_wav,
        room=room,
        events_log=args.events_log,
        leds=args.leds,
        wait_for_devices=args.wait_for_devices,
        state_dir=args.state_dir or default_state_dir(),
        control_socket=None
        if args.no_control_socket
        else args.control_socket or daemon_socket_path(),
        reload=read_config,
    )
    try:
        return asyncio.run(App(cfg, opts).run())
    except ControlError as e:
        print(f"voice-device: {e}", file=sys.stderr)
        return 1
    except (DeviceNotFound, WakeModelError) as e:
        print(f"voice-device: {e}", file=sys.stderr)
        return EX_CONFIG
    except OSError as e:
        print(f"voice-device: {e}", file=sys.stderr)
        return 1
    finally:
        if room is not None:
            room.close()


def emulator_scenario(args: argparse.Namespace) -> Any:
    """The scenario file (if any) with the command line's choices on top."""
    from .emulator import Faults, Scenario, load_scenario

    sc = load_scenario(args.scenario) if args.scenario else Scenario()
    if args.no_preamble:
        sc.preambles = []
    elif args.preamble:
        sc.preambles = args.preamble
    for flag, attr in (
        ("answer", "answer"),
        ("tool_call", "tool_call"),
        ("tool_arguments", "tool_arguments"),
        ("think_ms", "think_ms"),
        ("speedup", "speedup"),
        ("burst", "burst"),
        ("session_delay_ms", "session_delay_ms"),
        ("phase_on_done", "phase_on_done"),
    ):
        if getattr(args, flag) is not None:
            setattr(sc, attr, getattr(args, flag))
    faults: Faults = sc.faults
    for flag, attr in (
        ("reject", "reject_status"),
        ("retry_after", "retry_after_s"),
        ("drop_after", "drop_after"),
        ("stall_after", "stall_after"),
        ("stall_for", "stall_s"),
        ("error_code", "error_code"),
        ("expire_after", "expire_after_s"),
        ("reject_update", "reject_update"),
        ("fail_response", "fail_response"),
        ("fault_connections", "connections"),
    ):
        if getattr(args, flag) is not None:
            setattr(faults, attr, getattr(args, flag))
    faults.garbage = faults.garbage or args.garbage
    faults.huge_event = faults.huge_event or args.huge_event
    return sc


def cmd_emulator(args: argparse.Namespace) -> int:
    from .emulator import Emulator, serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        scenario = emulator_scenario(args)
    except (ValueError, OSError) as e:
        print(f"voice-device emulator: {e}", file=sys.stderr)
        return EX_CONFIG
    emu = Emulator(scenario, api_key=args.api_key, record=args.record, save_audio=args.save_audio)
    try:
        asyncio.run(serve_forever(emu, args.host, args.port))
    except OSError as e:
        print(
            f"voice-device emulator: cannot listen on {args.host}:{args.port}: "
            f"{e.strerror or e} (another emulator? choose one with --port)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .adapters.portaudio import pyaudio_instance
    from .adapters.systemd import setup_logging
    from .check import run_checks

    overrides = {
        "cloud.endpoint": args.endpoint,
        "audio.input_device": args.input_device,
        "audio.output_device": args.output_device,
    }
    setup_logging(False, [])
    logging.getLogger().setLevel(logging.ERROR)
    pyaudio_instance()  # PortAudio's start-up chatter is silenced before the report begins
    print("voice-device check")
    return run_checks(
        lambda: load_config(args.config, overrides=overrides),
        dict(os.environ),
        cloud=not args.no_cloud,
        out=print,
        source=config_file(args.config),
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from .adapters.portaudio import pyaudio_instance

    logging.basicConfig(level=logging.ERROR)
    pyaudio_instance()
    if args.what == "echo":
        from .bench import echo

        return echo.run(args.quick, args.out)
    if args.what == "uplink":
        from .bench import uplink

        return uplink.run(args.quick, args.out)
    if args.what == "accuracy":
        from .bench import accuracy

        return accuracy.run(args.quick, args.out, args.engine)
    if args.what == "perf":
        from .bench import perf

        return perf.run(args.quick, args.out)
    if args.what == "soak":
        from .bench import soak

        conversations = min(args.conversations, 50) if args.quick else args.conversations
        return soak.run(conversations, args.seed, args.out)
    if args.what == "arbitration":
        from .bench import arbitration

        return arbitration.main(args.quick, args.out)
    return 2


def cmd_devices(args: argparse.Namespace) -> int:
    from .adapters.portaudio import DeviceNotFound, find_device, list_devices, supported

    cfg = load_config(args.config)
    devices = list_devices()
    chosen: dict[int, str] = {}
    for spec, direction in ((cfg.audio.input_device, "input"), (cfg.audio.output_device, "output")):
        try:
            index = find_device(spec, direction).index
            chosen[index] = chosen.get(index, "") + f" ← {direction}"
        except DeviceNotFound as e:
            print(f"note: {str(e).split(';')[0]}", file=sys.stderr)
    if not devices:
        print("no audio devices found (is the sound card enabled? see README 'Troubleshooting')")
        return 1
    rates = (16_000, 24_000, 44_100, 48_000)

    def works(d: Any, direction: str, most: int) -> str:
        if most == 0:
            return "-"
        parts = []
        counts = {1, 2, most} if most <= 8 else {1, 2}  # (virtual devices claim 128)
        for channels in sorted(c for c in counts if c <= most):
            ok = [
                f"{r // 1000}k" if r % 1000 == 0 else f"{r / 1000:g}k"
                for r in rates
                if supported(d, direction, r, channels)
            ]
            if ok:
                parts.append(f"{channels}ch {','.join(ok)}")
        return "; ".join(parts) or "none of the usual rates"

    print(f"{'index':>5}  {'name':<28} {'default':>7}  {'in: channels rates':<34} out")
    for d in devices:
        name = d.name + chosen.get(d.index, "")
        print(
            f"{d.index:>5}  {name:<28} {d.default_rate:>7.0f}  "
            f"{works(d, 'input', d.max_input_channels):<34} "
            f"{works(d, 'output', d.max_output_channels)}"
        )
    print("\nselect with --input-device/--output-device NAME (or part of it) or INDEX;")
    print("a microphone without 16 kHz is captured at its own rate and converted")
    return 0


def cmd_leds(args: argparse.Namespace) -> int:
    """Every pattern in turn, named as it shows, on the configured LEDs (or the terminal)."""
    import time

    from .adapters.gpio import make_leds, make_pin_factory
    from .core.leds import with_overrides

    cfg = load_config(args.config)
    backend = args.leds or cfg.leds.backend
    if backend == "none":
        print("leds.backend is none: nothing to show (try --leds terminal or gpio)")
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    factory = make_pin_factory(cfg.gpio) if backend == "gpio" else None
    leds = make_leds(cfg.leds, factory, backend)
    if backend == "gpio":
        print(f"LEDs: {cfg.gpio.profile} ({cfg.leds.kind}); each pattern for {args.seconds:g} s")
    try:
        for p in with_overrides(cfg.leds.patterns).values():
            if backend == "gpio":
                how = p.effect.value + (f" every {p.period_s:g} s" if p.period_s else "")
                print(f"  {p.name:<11} {p.hex} {how}", flush=True)
            leds.show(p)
            time.sleep(args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        leds.close()
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    from .adapters.control import ControlError, request

    line = args.command
    timeout = 10.0
    if args.command == "mute":
        line += " " + args.on_off
    elif args.command == "ask":
        line += " " + " ".join(args.text)
        timeout = args.timeout
    elif args.command == "volume" and args.percent is not None:
        line += f" {args.percent}"
    elif args.command == "timers" and args.action:
        line += " " + " ".join(args.action)
    elif args.command == "announce":
        line += " " + " ".join(args.text)
        timeout = args.timeout
    try:
        reply = request(line, args.control_socket, timeout)
    except ControlError as e:
        print(f"voice-device: {e}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"voice-device: {reply.get('error', 'failed')}", file=sys.stderr)
        return 1
    if args.command == "status":
        print(json.dumps(reply, indent=2) if args.json else _status_lines(reply))
    elif args.command == "ask":
        print(reply.get("answer") or "(the answer was spoken)")
    elif args.command == "volume":
        print(f"volume {reply['volume']}%")
    elif args.command == "timers":
        print(_timers_lines(reply))
    elif args.command == "announce":
        print("queued: the device is busy" if reply.get("queued") else "spoken")
    else:
        print(reply.get("state", "ok"))
    return 0


def _timers_lines(r: dict[str, Any]) -> str:
    if "timers" in r:
        rows = [
            f"{t['name']}: {t['time_left']} left" if t["kind"] == "timer"
            else f"{t['name']}: alarm at {t['rings_at']}"
            for t in r["timers"]
        ]  # fmt: skip
        return "\n".join(rows) or "no timers or alarms"
    if "set" in r:
        return f"timer '{r['set']}' set for {r['seconds']} s"
    if "cancelled" in r:
        return f"'{r['cancelled']}' cancelled"
    return "stopped"


def _status_lines(r: dict[str, Any]) -> str:
    lines = [f"state:    {r['state']} ({r['status']})"]
    session = r.get("session")
    lines.append(f"session:  {session['id'] if session else 'none'}")
    mic = r["microphone"] + ("" if r["microphone_open"] else " (closed)")
    lines.append(f"mic:      {mic}")
    lines.append(f"volume:   {r['volume']}%")
    err = r.get("last_error")
    if err:
        lines.append(f"last error: {err['code']}: {err['message']} ({err['ago_s']:.0f} s ago)")
    reload = r.get("reload_failed")
    if reload:
        lines.append(
            f"reload:   failed {reload['ago_s']:.0f} s ago, the running configuration kept: "
            f"{reload['error']}"
        )
    timers = r.get("timers")
    if timers:
        lines.append(f"timers:   {_timers_lines({'timers': timers}).replace(chr(10), '; ')}")
    usage = r.get("usage")
    if usage:
        lines.append(f"usage:    {_usage_line(usage)}")
    hours, rest = divmod(int(r["uptime_s"]), 3600)
    lines.append(f"uptime:   {hours}h{rest // 60:02d}m{rest % 60:02d}s (pid {r['pid']})")
    return "\n".join(lines)


def _usage_line(u: dict[str, Any]) -> str:
    from .core.usage import money

    show = functools.partial(money, currency=str(u.get("currency", "USD")))
    today, month = u["today"], u["month"]
    line = (
        f"today {today['total']:,} tokens (about {show(today['cost'])}), this month "
        f"{month['total']:,} (about {show(month['cost'])}"
    )
    if u.get("budget"):
        line += f" of a {show(u['budget'])} budget"
    return line + "; estimated from usage.* prices)"


# ---------------------------------------------------------------------------------------------
# The demo


def _describe(ev: dict[str, Any]) -> str | None:
    name = ev["event"]
    if name == "ready":
        return f"ready: listening for {ev['wake_word']} in {Path(ev['mic']).name}"
    if name == "wake":
        return f"wake word '{ev['word']}' heard (score {ev['score']:.2f})"
    if name == "led":
        return f"LED  {ev['pattern']:<10} {ev['color']} {ev['effect']}"
    if name == "session_open":
        return "session open (emulator)"
    if name == "session_closed":
        return f"session closed ({ev['reason']})"
    if name == "turn_end":
        secs = (ev["end_sample"] - ev["start_sample"]) / MIC_RATE
        return f"end of turn ({ev['reason']}): {secs:.2f} s of speech and pre-roll"
    if name == "turn_commit" and ev["early"]:
        return "a pause: turn sent, answer asked for (held until the turn is over)"
    if name == "turn_withdrawn":
        return "speech again: answer withdrawn, the turn goes on"
    if name == "audio_sent":
        return f"{ev['ms']} ms of audio sent"
    if name == "playback_start":
        return f"speaker: {ev['phase']} item starts playing"
    if name == "error":
        return f"error {ev['code']}: {ev['message']}"
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    from .adapters.mic import read_wav_16k_mono
    from .app import App, RunOptions
    from .config import parse_config
    from .emulator import Emulator, Scenario

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def go(events_path: Path) -> int:
        # an answer that asks something back: the follow-up window opens (turn.follow_up)
        answer = "Today looks sunny, with a high of twenty one degrees. Shall I check tomorrow?"
        emu = Emulator(Scenario(answer=answer))
        await emu.start("127.0.0.1", 0)
        cfg: Config = parse_config(
            {
                "cloud": {"endpoint": f"http://127.0.0.1:{emu.port}"},
                "button": {"enabled": False},
            }
        )
        import dataclasses

        cfg = dataclasses.replace(cfg, api_key=Secret("demo-key"))
        opts = RunOptions(
            input_wav=args.input_wav,
            fast=args.fast,
            output_wav=args.output_wav,
            events_log=events_path,
            leds="none",
        )
        print(f"emulator on 127.0.0.1:{emu.port}; the device hears {args.input_wav.name}\n")
        app = App(cfg, opts)
        heard_s = math.inf
        if args.fast:  # the silence after the recording is read far ahead of the clock
            heard_s = len(read_wav_16k_mono(args.input_wav)) / 2 / MIC_RATE
        follower = asyncio.create_task(_follow(events_path, heard_s))
        try:
            code = await app.run()
        finally:
            await asyncio.sleep(0.2)
            follower.cancel()
            await emu.close()
        said.extend([*emu.scenario.preambles, emu.scenario.answer])
        return code

    said: list[str] = []

    with tempfile.TemporaryDirectory() as tmp:
        events_path = args.events_log or Path(tmp) / "events.jsonl"
        code = asyncio.run(go(events_path))
        events = [json.loads(line) for line in events_path.read_text().splitlines()]
    states = [e["state"] for e in events if e["event"] == "state"]
    print("\nstates: " + " → ".join(["idle", *states]))
    if not any(e["event"] == "wake" for e in events):
        print(f"no wake word was heard in {args.input_wav.name}: nothing was sent, no reply")
        return code
    if any(e["event"] == "playback_start" for e in events):
        print("the reply said (the emulator's words): " + " ".join(f'"{t}"' for t in said))
    print(f"reply written to {args.output_wav}; listen with: aplay {args.output_wav}")
    return code


async def _follow(path: Path, heard_s: float) -> None:
    """Print the events log as it grows (the demo's running commentary). `heard_s`: how
    long the recording is, with --fast (past it the microphone hears only silence, read far
    ahead of the clock, so its column says `end`); infinite otherwise."""
    while not path.exists():
        await asyncio.sleep(0.05)
    with path.open(encoding="utf-8") as f:
        while True:
            line = f.readline()
            if not line:
                await asyncio.sleep(0.05)
                continue
            ev = json.loads(line)
            text = _describe(ev)
            if text:
                mic_s = ev["audio_ms"] / 1000
                mic = f"{mic_s:6.2f}s" if mic_s <= heard_s + 0.5 else "   end "
                print(f"  {ev['t']:6.2f}s  mic {mic}  {text}", flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
