"""One PyAudio instance per process, device lookup by name or index, and quiet ALSA/JACK.

PortAudio probes every ALSA plugin and tries to reach a JACK server when it starts; both
libraries print their complaints straight to stderr, which would fill the journal on every
start. Their error hooks are pointed at our logger (DEBUG) before PortAudio initialises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
native_log = logging.getLogger("device.alsa")

_keep_alive: list[Any] = []  # ctypes callbacks must outlive the libraries holding them


def _quiet_native_libraries() -> None:
    if _keep_alive:
        return
    os.environ.setdefault("JACK_NO_START_SERVER", "1")
    try:
        asound = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
        handler_t = ctypes.CFUNCTYPE(
            None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
        )

        def on_alsa_error(file: bytes, line: int, func: bytes, err: int, fmt: bytes) -> None:
            native_log.debug(
                "ALSA %s: %s",
                (func or b"").decode(errors="replace"),
                (fmt or b"").decode(errors="replace"),
            )

        cb = handler_t(on_alsa_error)
        asound.snd_lib_error_set_handler(cb)
        _keep_alive.append(cb)
    except (OSError, AttributeError):
        pass
    try:
        jack = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")
        msg_t = ctypes.CFUNCTYPE(None, ctypes.c_char_p)

        def on_jack(msg: bytes) -> None:
            native_log.debug("JACK: %s", (msg or b"").decode(errors="replace"))

        cb2 = msg_t(on_jack)
        jack.jack_set_error_function(cb2)
        jack.jack_set_info_function(cb2)
        _keep_alive.append(cb2)
    except (OSError, AttributeError):
        pass
    _keep_alive.append(True)


_pa: Any = None


def pyaudio_instance() -> Any:
    """The process's PyAudio (PortAudio initialised once; devices enumerated then)."""
    global _pa
    if _pa is None:
        _quiet_native_libraries()
        import pyaudio

        _pa = pyaudio.PyAudio()
    return _pa


def reinitialize() -> None:
    """Enumerate devices afresh (a USB microphone plugged back in gets a new entry).

    PortAudio lists devices only when it starts, so it is stopped and started again;
    every stream must be closed first.
    """
    global _pa
    if _pa is not None:
        _pa.terminate()
        _pa = None
    pyaudio_instance()


RATES = (16_000, 48_000, 44_100, 32_000, 24_000, 22_050, 8_000)


def supported(device: DeviceInfo, direction: str, rate: int, channels: int) -> bool:
    import pyaudio

    pa = pyaudio_instance()
    try:
        if direction == "input":
            return bool(
                pa.is_format_supported(
                    rate,
                    input_device=device.index,
                    input_channels=channels,
                    input_format=pyaudio.paInt16,
                )
            )
        return bool(
            pa.is_format_supported(
                rate,
                output_device=device.index,
                output_channels=channels,
                output_format=pyaudio.paInt16,
            )
        )
    except ValueError:
        return False


def capture_format(device: DeviceInfo, rate: int = 0, channels: int = 0) -> tuple[int, int]:
    """What to open a microphone at: 16 kHz mono if it offers that, else its own rate
    (resampled in software) and mono if possible, else all its channels."""
    rates = [rate] if rate else [16_000, int(device.default_rate), *RATES]
    counts = [channels] if channels else [1, device.max_input_channels]
    for c in counts:
        for r in rates:
            if c <= device.max_input_channels and supported(device, "input", r, c):
                return r, c
    raise OSError(
        f"microphone '{device.name}' accepts none of {sorted(set(rates))} Hz with "
        f"{'/'.join(map(str, counts))} channel(s) in 16-bit"
    )


class DeviceNotFound(Exception):
    """A configured audio device is not there; the message tells how to list the ones that are."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate: float
    host_api: str


def list_devices() -> list[DeviceInfo]:
    pa = pyaudio_instance()
    out = []
    for i in range(pa.get_device_count()):
        d = pa.get_device_info_by_index(i)
        out.append(
            DeviceInfo(
                index=i,
                name=str(d["name"]),
                max_input_channels=int(d["maxInputChannels"]),
                max_output_channels=int(d["maxOutputChannels"]),
                default_rate=float(d["defaultSampleRate"]),
                host_api=str(pa.get_host_api_info_by_index(d["hostApi"])["name"]),
            )
        )
    return out


def find_device(spec: str, direction: str) -> DeviceInfo:
    """`spec`: "" for the default device, a number for an index, else part of the name.

    `direction` is "input" or "output".
    """
    what = "microphone" if direction == "input" else "speaker"
    devices = list_devices()

    def usable(d: DeviceInfo) -> bool:
        return (d.max_input_channels if direction == "input" else d.max_output_channels) > 0

    hint = "run 'voice-device devices' to list them"
    if not spec:
        pa = pyaudio_instance()
        try:
            info = (
                pa.get_default_input_device_info()
                if direction == "input"
                else pa.get_default_output_device_info()
            )
        except OSError:
            raise DeviceNotFound(f"no default {what} on this system; {hint}") from None
        return devices[int(info["index"])]
    if spec.strip().isdigit():
        index = int(spec)
        if index < len(devices) and usable(devices[index]):
            return devices[index]
        raise DeviceNotFound(f"{what} with index {index} not found; {hint}")
    candidates = [d for d in devices if usable(d)]
    for d in candidates:
        if d.name == spec:
            return d
    matches = [d for d in candidates if spec.lower() in d.name.lower()]
    if not matches:
        raise DeviceNotFound(f"{what} '{spec}' not found; {hint}")
    if len(matches) > 1:
        log.info(
            "%s '%s' matches %d devices (%s); using '%s'",
            what,
            spec,
            len(matches),
            ", ".join(m.name for m in matches),
            matches[0].name,
        )
    return matches[0]
