"""WebRTC noise suppression on what the device itself listens to (wake word, VAD).

Only the local detectors hear the denoised signal; the cloud gets the microphone's audio
and does its own far-field noise reduction (denoising twice makes speech worse). Measured
with `voice-device bench accuracy`: at 10 dB of pink noise the wake word is accepted 86 %
of the time instead of 72 %, and 48 of 48 turns end on time instead of 8.
"""

from __future__ import annotations

import numpy as np


class Denoiser:
    CHUNK = 160  # WebRTC processes 10 ms at a time

    def __init__(self, level: int, rate: int = 16_000) -> None:
        from pywebrtc_audio import NoiseSuppressor

        self._ns = NoiseSuppressor(rate, 1, level)

    def process(self, pcm: bytes) -> bytes:
        x = np.frombuffer(pcm, "<i2")
        out = [self._ns.process(x[i : i + self.CHUNK]) for i in range(0, len(x), self.CHUNK)]
        return bytes(np.concatenate(out).astype("<i2").tobytes())


class Passthrough:
    def process(self, pcm: bytes) -> bytes:
        return pcm


def denoiser(level: int) -> Denoiser | Passthrough:
    return Denoiser(level) if level > 0 else Passthrough()
