"""Turning a wake-word model's per-window scores into single, deliberate wake events."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Detection:
    word: str
    score: float
    end_sample: int
    """Sample after the audio window that crossed the threshold: the wake word's end, as heard."""


class WakeFilter:
    """Threshold plus refractory period, in microphone samples.

    A model keeps scoring high for several windows while one "okay nabu" passes through it;
    the refractory period makes that one utterance wake the device once.
    """

    def __init__(self, refractory_samples: int) -> None:
        self.refractory_samples = refractory_samples
        self._quiet_until = -1

    def offer(self, word: str, score: float, threshold: float, end_sample: int) -> Detection | None:
        if score < threshold:
            return None
        if end_sample < self._quiet_until:
            return None
        self._quiet_until = end_sample + self.refractory_samples
        return Detection(word, score, end_sample)

    def quiet_until(self, sample: int) -> None:
        """Ignore detections until `sample` (e.g. while the device itself is speaking)."""
        self._quiet_until = max(self._quiet_until, sample)
