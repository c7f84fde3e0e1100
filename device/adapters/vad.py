"""webrtcvad: a per-frame speech/non-speech verdict; the hysteresis lives in core.endpoint."""

from __future__ import annotations

import webrtcvad

from ..core.audio import MIC_RATE


class Vad:
    def __init__(self, aggressiveness: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        """`frame`: 10, 20 or 30 ms of 16 kHz mono int16."""
        return bool(self._vad.is_speech(frame, MIC_RATE))
