"""What the device hears of itself while it speaks, and what to do about it.

The speaker keeps what it played (`Speaker.take_far_end`); for each microphone frame the
guard takes the same 20 ms of that far-end signal. Two tools, used only while the device
is playing and for `tail_ms` after (so idle listening costs nothing extra):

- echo-match: a second wake word detector listens to the far end. When the device itself
  says a wake word ("you can say okay nabu…"), a detection on the microphone within a
  second of it is its own echo, not the user, and is ignored.
- echo cancellation (optional): WebRTC's AEC3 (pywebrtc-audio) subtracts the far end from
  the microphone, so the user's wake word or speech stands out over the device's voice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ..core.audio import CLOUD_RATE, FRAME_SAMPLES, MIC_RATE, Resampler
from .wakeword import WakeEngine

log = logging.getLogger(__name__)

FAR_FRAME = FRAME_SAMPLES * CLOUD_RATE // MIC_RATE
"""Far-end samples (24 kHz) per microphone frame."""
MATCH_WINDOW_S = 1.5
REFERENCE_THRESHOLD = 0.5
"""A far-end score above this means the device itself is saying the word."""
AEC_LAG = 128
"""Samples (8 ms at 16 kHz) by which WebRTC's AEC3 output lags its input."""


class EchoGuard:
    def __init__(
        self,
        reference: WakeEngine | None,
        tail_ms: int,
        cancel_echo: bool = False,
    ) -> None:
        self._reference = reference
        self._tail = tail_ms * MIC_RATE // 1000
        self._active_until = -1
        self._resampler = Resampler(CLOUD_RATE, MIC_RATE)
        self._far16 = bytearray()
        self._said: dict[int, int] = {}
        self._aec = None
        self._delay = bytes(AEC_LAG * 2) if cancel_echo else b""
        self._resumed = True
        self.path_ms: Callable[[], float] = lambda: 0.0
        """How long after the speaker is handed a sound its echo is in the microphone's
        frames (the devices' latencies): told to the canceller each time it starts."""
        self.aligned = b""
        """The last frame as heard, as late as the canceller's output (`process`)."""
        if cancel_echo:
            from pywebrtc_audio import EchoCanceller

            self._aec = EchoCanceller(MIC_RATE, 1, 0)

    def active(self, pos: int) -> bool:
        """True while the device plays and during the tail after: playback rules apply."""
        return pos <= self._active_until

    def process(self, frame: bytes, far24: bytes, playing: bool, pos: int) -> bytes:
        """The microphone frame ending at `pos`, cleaned of echo where that is switched on.

        With the canceller on, everything comes out `AEC_LAG` samples late, cancelled or
        not (`aligned` is the frame as heard, as late), so that the canceller switching in
        and out neither repeats nor drops a sound: what it held back when it stopped, and
        the stale samples it gives first when it starts again, are replaced by the audio
        they stand for."""
        if playing:
            self._active_until = pos + self._tail
        delayed = self._delay + frame[: len(frame) - len(self._delay)]
        self.aligned = delayed if self._aec is not None else frame
        self._delay = frame[len(frame) - len(self._delay) :]
        if not self.active(pos):
            if self._far16:
                self._far16.clear()
            self._resumed = True
            return self.aligned
        self._far16 += self._resampler.push(far24)
        want = len(frame)
        far = bytes(self._far16[:want]).ljust(want, b"\0")
        del self._far16[:want]
        if self._reference is not None:
            for i, score in enumerate(self._reference.process(far)):
                if score >= REFERENCE_THRESHOLD:
                    self._said[i] = pos
        if self._aec is not None:
            if self._resumed:
                self._aec.stream_delay_ms = max(0, round(self.path_ms()))
            out = self._cancel(frame, far)
            if self._resumed:  # its first samples are what it held back when it stopped
                out = delayed[: AEC_LAG * 2] + out[AEC_LAG * 2 :]
                self._resumed = False
            return out
        return frame

    def _cancel(self, near: bytes, far: bytes) -> bytes:
        assert self._aec is not None
        n = np.frombuffer(near, "<i2")
        f = np.frombuffer(far, "<i2")
        out = [self._aec.process(n[i : i + 160], f[i : i + 160]) for i in range(0, len(n), 160)]
        return bytes(np.concatenate(out).astype("<i2").tobytes())

    def said_by_device(self, word: int, pos: int) -> bool:
        """Did the device itself say wake word `word` within the last moment?"""
        said = self._said.get(word)
        return said is not None and pos - said <= MATCH_WINDOW_S * MIC_RATE
