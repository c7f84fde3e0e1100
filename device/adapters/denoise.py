"""WebRTC noise suppression on what the device itself listens to (wake word, VAD).

Only the local detectors hear the denoised signal; the cloud gets the microphone's audio
and does its own far-field noise reduction (denoising twice makes speech worse). Measured
with `voice-device bench accuracy`: at 10 dB of pink noise the wake word is accepted 86 %
of the time instead of 72 %, and 48 of 48 turns end on time instead of 8.
"""

from __future__ import annotations

import numpy as np


class Denoiser:
    def __init__(self, level: int, rate: int = 16_000) -> None:
        from pywebrtc_audio import NoiseSuppressor

        self._ns = NoiseSuppressor(rate, 1, level)

    def process(self, pcm: bytes) -> bytes:
        # WebRTC works on 10 ms blocks; pywebrtc-audio splits a 20 ms frame into them itself,
        # with the same output as two 10 ms calls, for less Python per frame
        out = self._ns.process(np.frombuffer(pcm, "<i2"))
        return np.asarray(out, "<i2").tobytes()


class Passthrough:
    def process(self, pcm: bytes) -> bytes:
        return pcm


def denoiser(level: int) -> Denoiser | Passthrough:
    return Denoiser(level) if level > 0 else Passthrough()
