"""Tests never touch the machine's own configuration, state or control socket."""

import os
from pathlib import Path

import pytest

os.environ["VOICE_DEVICE_CONFIG"] = "/nonexistent/voice-device-tests/config.toml"
for name in ("RUNTIME_DIRECTORY", "STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
    os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's daemons keep their state and control socket in the test's own folder."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
