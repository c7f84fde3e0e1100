"""What the device remembers across restarts: mute and volume (`state.json`) and the tokens
used per day and month (`usage.json`), nothing else (never audio, never words).

Small JSON files in the service's StateDirectory ($STATE_DIRECTORY, /var/lib/voice-device),
or $XDG_STATE_HOME/voice-device when run by hand. Written atomically (temporary file, fsync,
rename) so a power cut leaves the old file or the new one, never half of one. A file that
cannot be read is reported and treated as empty; one that cannot be written (disk full,
read-only) is reported and the device goes on with the setting in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "state.json"
MAX_BYTES = 4096
"""Far more than the few fields it holds."""


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (set by systemd's StateDirectory=), else the XDG state home."""
    given = os.environ.get("STATE_DIRECTORY", "")
    if given:
        return Path(given.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "voice-device"


@dataclass(frozen=True)
class Remembered:
    muted: bool = False
    volume: float | None = None
    """Set with `voice-device volume`; None: the configured audio.volume."""
    volume_config: float | None = None
    """audio.volume when `volume` was set: a later change of the configuration wins."""


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME

    def load(self) -> Remembered:
        """What was remembered; anything odd in its place is forgotten (see `read_json`)."""
        data = read_json(self.path, MAX_BYTES)
        if data is None:
            return Remembered()
        muted = data.get("muted") is True
        volume = _number(data.get("volume"))
        return Remembered(muted, volume, _number(data.get("volume_config")))

    def save(self, state: Remembered) -> bool:
        """Write `state`; False (and a warning) when it could not be written."""
        return write_json(self.path, asdict(state))


def read_json(path: Path, max_bytes: int) -> dict[str, Any] | None:
    """A saved JSON object, or None: anything odd in its place (not a file, huge, not JSON,
    nested without end) is reported and forgotten, never fatal: a bad file must not stop
    every start."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would hang the start
            raise ValueError("not a regular file")
        with path.open("rb") as f:
            text = f.read(max_bytes + 1)
        if len(text) > max_bytes:
            raise ValueError(f"over {max_bytes} bytes")
        data = json.loads(text)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:
        log.warning("ignoring the saved state in %s: %s", path, e or type(e).__name__)
        return None
    if not isinstance(data, dict):
        log.warning("ignoring the saved state in %s: not a JSON object", path)
        return None
    return data


def write_json(path: Path, data: dict[str, Any]) -> bool:
    """Atomically (temporary file, fsync, rename); False (and a warning) when it could not
    be written: the device goes on with what it has in memory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not save the device's state to %s: %s", path, e.strerror or e)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    return True


class Memory:
    """What is remembered now, saved on every change (nothing is saved without a directory)."""

    def __init__(self, directory: Path | None) -> None:
        self.store = StateStore(directory) if directory is not None else None
        self.value = self.store.load() if self.store is not None else Remembered()

    def update(self, **changes: Any) -> None:
        if self.store is None:
            return
        self.value = replace(self.value, **changes)
        self.store.save(self.value)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0.0 <= value <= 2.0 else None
