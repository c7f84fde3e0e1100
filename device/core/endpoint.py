"""Deciding, from per-frame VAD verdicts, when the user started and stopped speaking.

Counts audio in samples of the microphone stream, never in wall-clock time, so the same
audio always ends a turn at the same sample, whether it is played live or read from a file
as fast as possible.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class SpeechStarted:
    onset_sample: int
    """Start of the first voiced frame in the window that confirmed speech."""


@dataclass(frozen=True)
class TurnEnded:
    end_sample: int
    """Where the turn is cut: the last speech plus the trailing silence that confirmed its end."""
    speech_end_sample: int
    """End of the last voiced frame: our best estimate of where the user actually stopped."""
    reason: str
    """`silence` or `max_length`."""


@dataclass(frozen=True)
class TurnPaused:
    """`commit_ms` of silence: the turn may be over. Sending it now and asking for the answer
    saves the rest of `silence_ms`; the answer is heard only once `TurnEnded` confirms it.
    Counted from the last *firm* speech (`feed`): in a reverberant room the room's tail of
    the last word keeps the VAD voiced for a while, but it is not the user talking on."""

    at_sample: int
    speech_end_sample: int


@dataclass(frozen=True)
class SpeechResumed:
    """The user spoke again after a `TurnPaused`: the turn was not over after all."""

    at_sample: int


@dataclass(frozen=True)
class NoSpeech:
    at_sample: int


EndpointEvent = SpeechStarted | TurnPaused | SpeechResumed | TurnEnded | NoSpeech


class Phase(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    SPEAKING = "speaking"


@dataclass(frozen=True)
class EndpointSettings:
    rate: int = 16_000
    frame_samples: int = 320
    silence_ms: int = 700
    commit_ms: int = 0
    """Silence after which `TurnPaused` says the turn may be over (0, or not below
    `silence_ms`: never)."""
    max_turn_ms: int = 30_000
    vote_window: int = 5
    """Frames considered when voting on whether speech is going on…"""
    vote_needed: int = 3
    """…and how many of them must be voiced. Starting and resuming speech both need the vote,
    so a single click or clatter neither starts a turn nor keeps one alive."""


class Endpointer:
    """Start/end of speech with hysteresis, a no-speech timeout and a maximum turn length."""

    def __init__(self, settings: EndpointSettings) -> None:
        self.s = settings
        self.phase = Phase.IDLE
        self._votes: deque[bool] = deque(maxlen=settings.vote_window)
        self._since = 0
        self._deadline: int | None = None
        self._turn_start = 0
        self._last_voiced_end = 0
        self._firm_votes: deque[bool] = deque(maxlen=settings.vote_window)
        self._last_firm_end = 0
        self._paused = False

    def reconfigure(self, settings: EndpointSettings) -> None:
        self.s = settings
        if self._votes.maxlen != settings.vote_window:
            self._votes = deque(self._votes, maxlen=settings.vote_window)
            self._firm_votes = deque(self._firm_votes, maxlen=settings.vote_window)

    def _samples(self, ms: int) -> int:
        return ms * self.s.rate // 1000

    def wait_for_speech(self, at_sample: int, timeout_ms: int | None) -> None:
        """Start listening for a turn at `at_sample`; give up after `timeout_ms` of no speech."""
        self.phase = Phase.WAITING
        self._paused = False
        self._votes.clear()
        self._firm_votes.clear()
        self._since = at_sample
        self._deadline = None if timeout_ms is None else at_sample + self._samples(timeout_ms)

    def speaking(self, onset_sample: int, at_sample: int) -> None:
        """Follow a turn whose speech another detector has already heard begin at
        `onset_sample` and go on until `at_sample` (the user talking over a reply)."""
        self.phase = Phase.SPEAKING
        self._paused = False
        self._votes.clear()
        self._votes.extend([True] * self.s.vote_needed)
        self._firm_votes.clear()
        self._firm_votes.extend([True] * self.s.vote_needed)
        self._since = self._turn_start = onset_sample
        self._last_voiced_end = self._last_firm_end = at_sample
        self._deadline = None

    def stop(self) -> None:
        self.phase = Phase.IDLE

    def feed(self, end_sample: int, speech: bool, firm: bool | None = None) -> EndpointEvent | None:
        """One frame's VAD verdict; `end_sample` is the sample after the frame. `firm`
        (default: `speech`): speech that is surely the user's own voice, not the tail the
        room gives it (see `TurnPaused`); the turn's end is decided on `speech` alone."""
        if self.phase is Phase.IDLE:
            return None
        firm = speech if firm is None else speech and firm
        self._votes.append(speech)
        self._firm_votes.append(firm)
        voiced = sum(self._votes) >= self.s.vote_needed
        if self.phase is Phase.WAITING:
            if voiced:
                self.phase = Phase.SPEAKING
                first_voiced = list(self._votes).index(True)
                onset = end_sample - (len(self._votes) - first_voiced) * self.s.frame_samples
                onset = max(self._since, onset)
                self._turn_start = onset
                self._last_voiced_end = self._last_firm_end = end_sample
                return SpeechStarted(onset)
            if self._deadline is not None and end_sample >= self._deadline:
                self.phase = Phase.IDLE
                return NoSpeech(end_sample)
            return None
        # SPEAKING
        if speech and voiced:
            self._last_voiced_end = end_sample
        if firm and sum(self._firm_votes) >= self.s.vote_needed:
            self._last_firm_end = end_sample
            if self._paused:
                self._paused = False
                return SpeechResumed(end_sample)
        if end_sample - self._turn_start >= self._samples(self.s.max_turn_ms):
            self.phase = Phase.IDLE
            return TurnEnded(end_sample, self._last_voiced_end, "max_length")
        if end_sample - self._last_voiced_end >= self._samples(self.s.silence_ms):
            self.phase = Phase.IDLE
            return TurnEnded(end_sample, self._last_voiced_end, "silence")
        commit = self.s.commit_ms
        silent = end_sample - self._last_firm_end
        if 0 < commit < self.s.silence_ms and not self._paused and silent >= self._samples(commit):
            self._paused = True
            return TurnPaused(end_sample, self._last_firm_end)
        return None
