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

from ..core.audio import CLOUD_RATE, FRAME_SAMPLES, MIC_RATE
from .wakeword import WakeEngine

log = logging.getLogger(__name__)

FAR_FRAME = FRAME_SAMPLES * CLOUD_RATE // MIC_RATE
"""Far-end samples (24 kHz) per microphone frame."""
MATCH_WINDOW_S = 1.5
REFERENCE_THRESHOLD = 0.5
"""A far-end score above this means the device itself is saying the word."""
AEC_LAG = 128
"""Samples (8 ms at 16 kHz) by which WebRTC's AEC3 output lags its input."""


class FarEndDecimator:
    """What the device played (24 kHz) as the microphone's 16 kHz: exactly two samples for
    every three, at a fixed delay (`DELAY` samples out).

    A streaming resampler will not do here. soxr gives its output in bursts (0, 490, 0,
    489 … samples per 480 in), so a reference cut into 20 ms frames ran short and was
    padded with silence until a backlog built up: each time the device began to speak, its
    reference slid about 70 samples against the echo over the first seconds, and an
    echo canceller chases a path that moves. This is a fixed windowed-sinc filter (2 up,
    low-pass under 8 kHz, 3 down): every frame's output is the same function of the played
    sound, wherever a reply starts."""

    TAPS = 96
    DELAY = (TAPS - 1) / 2 / 3
    """Output samples (16 kHz) by which the reference lags the played sound (0.99 ms)."""

    def __init__(self) -> None:
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        cutoff = 7_750 / (2 * CLOUD_RATE)  # (cycles per sample at the doubled rate)
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(self.TAPS)
        self._even = (2 * h / h.sum())[0::2]  # the filter's taps that meet a played sample …
        self._odd = (2 * h / h.sum())[1::2]  # … for outputs at even and at odd positions
        self._history = np.zeros(self.TAPS // 2 - 1)

    def reset(self) -> None:
        """Nothing has been played since: forget what was."""
        self._history[:] = 0

    def push(self, far24: bytes) -> bytes:
        """A multiple of three samples (24 kHz) in, two thirds as many (16 kHz) out."""
        x = np.concatenate((self._history, np.frombuffer(far24, "<i2").astype(np.float64)))
        self._history = x[len(x) - len(self._history) :]
        even = np.convolve(x, self._even, "valid")
        odd = np.convolve(x, self._odd, "valid")
        out = np.empty(2 * (len(even) // 3))
        out[0::2] = even[0::3]  # (output 2p sits at the doubled rate's 6p: played 3p)
        out[1::2] = odd[1::3]  # (output 2p+1 at 6p+3: between played 3p+1 and 3p+2)
        return np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes()


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
        self._decimator = FarEndDecimator()
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
            if self._resumed is False:
                self._decimator.reset()
            self._resumed = True
            return self.aligned
        far = self._decimator.push(far24)
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
