"""Turning a wake-word model's per-window scores into single, deliberate wake events."""

from __future__ import annotations

import enum
from collections.abc import Sequence
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


class DuringPlayback(enum.StrEnum):
    """What a wake word heard while the device itself speaks (and for the echo's tail) means."""

    ECHO_MATCH = "echo-match"
    """A wake word: unless the device itself just said it (its echo)."""
    THRESHOLD = "threshold"
    """A wake word only above the higher `playback_threshold`."""
    OFF = "off"
    """Nothing: the wake word does not interrupt."""


@dataclass(frozen=True)
class Candidate:
    index: int
    """Which of the wake words."""
    score: float


def choose_wake(
    thresholds: Sequence[float],
    scores: Sequence[float],
    during_playback: bool,
    rule: DuringPlayback,
    playback_threshold: float,
) -> Candidate | None:
    """The best-scoring wake word over its threshold (raised while the device plays, by the
    `threshold` rule; none at all by `off`). The echo-match rule is checked by the caller,
    which knows what the device said."""
    if during_playback and rule is DuringPlayback.OFF:
        return None
    best: Candidate | None = None
    for i, (threshold, score) in enumerate(zip(thresholds, scores, strict=True)):
        if during_playback and rule is DuringPlayback.THRESHOLD:
            threshold = max(threshold, playback_threshold)
        if score >= threshold and (best is None or score > best.score):
            best = Candidate(i, score)
    return best
