"""Tests never read the machine's own /etc/voice-device/config.toml (a Pi may have one)."""

import os

os.environ["VOICE_DEVICE_CONFIG"] = "/nonexistent/voice-device-tests/config.toml"
