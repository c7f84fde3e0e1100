"""webrtcvad: a per-frame speech/non-speech verdict; the hysteresis lives in core.endpoint."""

from __future__ import annotations

import webrtcvad

from ..core.audio import MIC_RATE, rms_dbfs


class Vad:
    """webrtcvad with an energy floor, and a fresh start after a gap.

    webrtcvad judges the spectrum more than the level, so faint sounds (the residue echo
    cancellation leaves, a fridge) can pass as speech; frames quieter than `min_dbfs` never
    do. It also carries state between calls; frames it was not shown (while the device
    thinks or speaks) do not age it, so it is `reset()` before listening again.
    """

    def __init__(self, aggressiveness: int, min_dbfs: float = -55.0) -> None:
        self._aggressiveness = aggressiveness
        self._min_dbfs = min_dbfs
        self._vad = webrtcvad.Vad(aggressiveness)

    def reset(self) -> None:
        self._vad = webrtcvad.Vad(self._aggressiveness)

    def is_speech(self, frame: bytes, level_db: float | None = None) -> bool:
        """`frame`: 10, 20 or 30 ms of 16 kHz mono int16; `level_db`: its `rms_dbfs`, if
        the caller has it already."""
        if (rms_dbfs(frame) if level_db is None else level_db) < self._min_dbfs:
            return False
        return bool(self._vad.is_speech(frame, MIC_RATE))
