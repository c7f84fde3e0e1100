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
import math
from collections import deque
from collections.abc import Callable

import numpy as np

from ..core.audio import CLOUD_RATE, FRAME_SAMPLES, MIC_RATE, rms_dbfs
from .wakeword import WakeEngine

log = logging.getLogger(__name__)

FAR_FRAME = FRAME_SAMPLES * CLOUD_RATE // MIC_RATE
"""Far-end samples (24 kHz) per microphone frame."""
MATCH_WINDOW_S = 1.5
REFERENCE_THRESHOLD = 0.5
"""A far-end score above this means the device itself is saying the word."""
AEC_LAG = 128
"""Samples (8 ms at 16 kHz) by which WebRTC's AEC3 output lags its input."""
ERLE_FRAMES = 100
"""Frames (2 s) over which `EchoSubtractor.erle_db` is judged."""
QUIET = 100
"""A microphone frame under this RMS (about -50 dBFS) says nothing about the echo."""
SUBTRACTED_DB = 12.0
"""The subtractor's output is sent once it leaves the device's voice this far down…"""
OVER_ECHO_DB = 6.0
"""…for frames it leaves this much louder than it typically leaves the device's voice."""
EARLY_MS = 10
"""The subtractor's filter starts this much before the echo's expected delay."""


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
        subtract: bool = False,
    ) -> None:
        """`subtract`: also keep `subtracted` (with `cancel_echo`; for `turn.barge_in =
        "voice"`, where words said over a reply are sent)."""
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
        self.subtracted = b""
        """The last frame with only the far end's linear echo taken out (`EchoSubtractor`),
        as late as the canceller's output; the frame as heard while the guard is idle."""
        self._subtractor: EchoSubtractor | None = None
        self._sub_delay = b""
        self._far_late = np.zeros(0)
        if cancel_echo:
            from pywebrtc_audio import EchoCanceller

            self._aec = EchoCanceller(MIC_RATE, 1, 0)
            if subtract:
                self._subtractor = EchoSubtractor()
                self._sub_delay = bytes(AEC_LAG * 2)

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
            self.subtracted = self.aligned  # (the subtractor's delay line: see `_subtract`)
            return self.aligned
        far = self._decimator.push(far24)
        if self._reference is not None:
            for i, score in enumerate(self._reference.process(far)):
                if score >= REFERENCE_THRESHOLD:
                    self._said[i] = pos
        if self._aec is not None:
            if self._resumed:
                self._aec.stream_delay_ms = max(0, round(self.path_ms()))
            self.subtracted = self._subtract(frame, far)
            out = self._cancel(frame, far)
            if self._resumed:  # its first samples are what it held back when it stopped
                out = delayed[: AEC_LAG * 2] + out[AEC_LAG * 2 :]
                self._resumed = False
            return out
        return frame

    @property
    def subtracted_learnt(self) -> bool:
        """Whether `subtracted` can be used: the subtractor has learnt the room (it leaves
        the device's voice at least SUBTRACTED_DB down)."""
        s = self._subtractor
        return s is not None and s.erle_db >= SUBTRACTED_DB

    def subtracted_holds_more(self) -> bool:
        """Whether `subtracted` is the one to send for the last frame: it can be used, and
        the frame holds more than the device's voice (`OVER_ECHO_DB` above what it typically
        leaves of what was heard): someone is talking over it. Of the device's voice alone
        the canceller's output is the better (it leaves far less of it)."""
        s = self._subtractor
        if s is None or not self.subtracted_learnt:
            return False
        left = rms_dbfs(self.subtracted) - rms_dbfs(self.aligned)
        return left > OVER_ECHO_DB - s.typical_db

    def _subtract(self, frame: bytes, far: bytes) -> bytes:
        """The frame less the far end's echo, through the same AEC_LAG delay as the
        canceller's output (while the guard is idle its output is the frame as heard)."""
        s = self._subtractor
        if s is None:
            return self.aligned
        if self._resumed:  # the far end was silent since: start it again at its delay
            s.forget_far()
            late = max(0, round((self.path_ms() - EARLY_MS) * MIC_RATE / 1000))
            self._far_late = np.zeros(late)
            self._sub_delay = self.aligned[: len(self._sub_delay)]  # (the last frame's end)
        f = np.concatenate((self._far_late, np.frombuffer(far, "<i2")))
        self._far_late = f[len(frame) // 2 :]
        near = np.frombuffer(frame, "<i2").astype(np.float64)
        clean = s.process(near, f[: len(near)].astype(np.float64))
        out: bytes = np.clip(np.rint(clean), -32768, 32767).astype("<i2").tobytes()
        delayed = self._sub_delay + out[: len(out) - len(self._sub_delay)]
        self._sub_delay = out[len(out) - len(self._sub_delay) :]
        return delayed

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


class EchoSubtractor:
    """A linear echo canceller for what the service is sent while the device speaks.

    WebRTC's AEC3 ends in a suppressor: wherever it still expects echo it turns the
    microphone down, the user's words with it. That is right for the device's own detectors
    (its voice must never wake or interrupt it) and wrong for the words a user says over an
    answer, which must reach the service whole. This removes only what the far end predicts:
    the microphone minus the far end through an estimate of the room (a partitioned-block
    frequency-domain NLMS filter of `taps_ms`), so the user's voice passes untouched and
    the device's voice is left `erle_db` under what was heard.

    Two copies of the filter (the two-path scheme of Speex's MDF and others): the
    background one adapts on every block, and is led astray while the user talks (their
    voice is not in the far end, yet it learns from it); the foreground one, whose output is
    used, never adapts itself: it takes the background's coefficients only when these leave
    clearly less of the microphone behind, which over someone's voice they do not. A
    background gone far wrong starts again from the foreground. Costs about 0.2 ms of each
    20 ms frame here (400 ms of taps; the guard's whole work per frame while the device
    speaks goes from 0.18 to 0.45 ms), only while it speaks, and only with talk-over on.
    """

    def __init__(self, taps_ms: int = 400, block: int = FRAME_SAMPLES, step: float = 1.0) -> None:
        self.block = block
        parts = max(1, taps_ms * MIC_RATE // 1000 // block)
        bins = block + 1
        self._x = np.zeros((parts, bins), complex)
        """The far end's last `parts` blocks, as spectra of two blocks each (newest first)."""
        self._back = np.zeros((parts, bins), complex)
        self._fore = np.zeros((parts, bins), complex)
        self._last = np.zeros(block)
        self._power = np.zeros(bins)
        self._step = step
        self._floor = 1e4 * parts * block  # (a far end too quiet to learn from)
        self._err_back = 0.0
        self._err_fore = 0.0
        self._ratios: deque[float] = deque(maxlen=ERLE_FRAMES)
        self.erle_db = 0.0
        """How far under what was heard it leaves the device's voice, lately: the frames it
        turned down most (those with no one talking over them) of the last ERLE_FRAMES (0
        until a quarter of them were heard)."""
        self.typical_db = 0.0
        """How far under what was heard it typically leaves the device's voice lately (the
        median frame, some with someone talking over it)."""

    def forget_far(self) -> None:
        """The far end has been silent (nothing played): no echo of it is left to come."""
        self._x[:] = 0
        self._last[:] = 0

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """`near`, `far`: float64 arrays of a whole number of blocks, the far end already as
        late as its echo (less than the filter's length). Returns the near end without it."""
        b = self.block
        out = np.empty_like(near)
        for i in range(0, len(near), b):
            out[i : i + b] = self._block(near[i : i + b], far[i : i + b])
        heard = float(np.dot(near, near))
        if heard > len(near) * QUIET**2:
            self._ratios.append(float(np.dot(out, out)) / heard)
            ordered = sorted(self._ratios)  # (once a frame: both are read several times)
            self.typical_db = -10 * math.log10(ordered[len(ordered) // 2] + 1e-12)
            if len(ordered) >= ERLE_FRAMES // 4:
                self.erle_db = -10 * math.log10(ordered[len(ordered) // 5] + 1e-12)
        return out

    def _block(self, d: np.ndarray, x: np.ndarray) -> np.ndarray:
        b = self.block
        self._x = np.roll(self._x, 1, axis=0)
        self._x[0] = np.fft.rfft(np.concatenate((self._last, x)))
        self._last = x
        e_back = d - np.fft.irfft((self._back * self._x).sum(axis=0))[b:]
        e_fore = d - np.fft.irfft((self._fore * self._x).sum(axis=0))[b:]
        # the background learns (normalised per frequency, never by less than the block's
        # own far-end power, so an onset cannot overshoot), its gradient kept causal
        far_power = (np.abs(self._x) ** 2).sum(axis=0)
        self._power = np.maximum(0.9 * self._power + 0.1 * far_power, far_power)
        err = np.fft.rfft(np.concatenate((np.zeros(b), e_back)))
        grad = np.fft.irfft(np.conj(self._x) * (self._step * err / (self._power + self._floor)))
        grad[:, b:] = 0
        self._back += np.fft.rfft(grad)
        # which of the two leaves less of the far end behind
        self._err_back = 0.9 * self._err_back + 0.1 * float(np.dot(e_back, e_back))
        self._err_fore = 0.9 * self._err_fore + 0.1 * float(np.dot(e_fore, e_fore))
        if self._err_back < 0.9 * self._err_fore:
            self._fore = self._back.copy()
            self._err_fore = self._err_back
            return e_back
        if not self._err_back <= 8 * self._err_fore:  # (gone far wrong, or not a number)
            self._back = self._fore.copy()
            self._err_back = self._err_fore
        return e_fore
