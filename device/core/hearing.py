"""What the device listens for in each state, and when it must not trust its own ears.

The wake word runs in every state; its verdict counts only where a wake word means
something. The VAD runs only where the user's speech is awaited, and not on the device's
own sounds: a beep while someone is already talking costs a few frames, while a reply's echo
must never open a follow-up turn.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from .audio import FRAME_MS, MIC_RATE, ms_to_samples
from .states import State

WAKE_STATES = frozenset(
    {
        State.IDLE,
        State.ERROR,
        State.FOLLOW_UP,
        State.THINKING,
        State.PREAMBLE,
        State.ANSWERING,
        State.RINGING,
    }
)
"""Where a wake word means something: to wake, to interrupt a reply (barge-in), or to stop
a ring and listen."""
VAD_STATES = frozenset({State.CONNECTING, State.LISTENING, State.FOLLOW_UP})
"""Where the user's speech is awaited."""
IDLE_STATES = frozenset({State.IDLE, State.ERROR})
"""Where nobody is talking to the device: what is heard is the room (`BackgroundSpeech`)."""
EARCON_TAIL_MS = 150
"""While listening, the VAD ignores the device's own sounds and this much of their echo."""


REPLY_VOICE = frozenset({State.PREAMBLE, State.ANSWERING})


class UplinkChoice:
    """Whether the service is sent the echo-cancelled microphone or the microphone as it is.

    The canceller is there for the device's own *voice*: a reply's echo would otherwise be
    heard by the service as the user's words. Around the device's short sounds (the wake
    chime while the user goes on talking) it does harm: WebRTC's AEC3, not yet converged on
    the room, suppresses everything under and after the chime by 20 dB or more for about
    half a second, and its output lags its input by 8 ms, so switching it in and out cuts
    and repeats audio. So the uplink carries the canceller's output only while a reply is
    heard and for `tail_ms` of its echo after; otherwise what the microphone heard. (The
    device's own detectors always listen to the cleaned signal.)
    """

    def __init__(self, tail_ms: int, rate: int = MIC_RATE) -> None:
        self.tail = ms_to_samples(tail_ms, rate)
        self._until = -1

    def cleaned(self, state: State, pos: int) -> bool:
        """True: send the canceller's output for the frame ending at `pos`."""
        if state in REPLY_VOICE:
            self._until = pos + self.tail
        return pos <= self._until


class BackgroundSpeech:
    """How loud other people's speech is in the room (a television, a conversation), so
    that the user's turn can end while it goes on.

    webrtcvad calls any voice speech, so over a TV the turn never ended (30 s of the room
    streamed after every question). Frames are observed while nobody is talking to the
    device (idle); when a turn starts, the frames from before the wake word (the last
    `skip_ms` are the wake word itself) tell whether the room holds speech at all (at least
    `min_share` of them voiced), and if so how loud its loud part is (the `quantile` of the
    voiced frames' levels). During the turn a frame counts as the user's only if it is
    `margin_db` above that; in a room without background speech nothing changes. Levels and
    verdicts only: no audio is kept. Only the idle stretch just before the turn counts (the
    history starts again with each conversation), and less than `min_ms` of it sets no gate.
    Measured in `bench accuracy` (endpointing rows).

    It also tells whether the user is already talking when the turn starts
    (`user_talking`: one of the last `talking_ms` heard voiced and over the gate): the wake
    word fires about 200 ms after the word ends, so someone who goes straight on is by then
    saying the command, and the wake chime would land on it (`FrontEnd`).
    """

    def __init__(
        self,
        window_ms: int = 2000,
        skip_ms: int = 1200,
        margin_db: float = 3.0,
        quantile: float = 0.95,
        min_share: float = 0.3,
        min_ms: int = 1000,
        talking_ms: int = 60,
    ) -> None:
        self.skip = skip_ms // FRAME_MS
        self.talking = talking_ms // FRAME_MS
        self.min_frames = min_ms // FRAME_MS
        self.margin_db = margin_db
        self.quantile = quantile
        self.min_share = min_share
        self._frames: deque[tuple[float, bool]] = deque(maxlen=(window_ms + skip_ms) // FRAME_MS)
        self.gate_db = -math.inf
        """The level a frame must reach to count as the user's, for the turn under way."""
        self.user_talking = False
        """Whether the user was speaking as the turn under way started."""

    def observe(self, level_db: float, voiced: bool) -> None:
        """One frame heard while nobody is talking to the device."""
        self._frames.append((level_db, voiced))

    def turn_starts(self) -> float:
        """Fix the gate for the turn beginning now (and its follow-ups); returns it."""
        history = list(self._frames)
        frames = history[: max(0, len(history) - self.skip)]
        self._frames.clear()  # the next conversation learns from the idle time before it
        levels = sorted(level for level, voiced in frames if voiced)
        if len(frames) < self.min_frames or len(levels) < self.min_share * len(frames):
            self.gate_db = -math.inf
        else:
            loud = levels[min(len(levels) - 1, int(self.quantile * len(levels)))]
            self.gate_db = loud + self.margin_db
        last = history[len(history) - self.talking :]
        self.user_talking = any(voiced and self.users(level) for level, voiced in last)
        return self.gate_db

    def users(self, level_db: float) -> bool:
        return level_db >= self.gate_db


class DeafWindow:
    """When the VAD must not listen: while the device makes a sound, and for its echo's tail
    after (the earcon tail while listening; the room's `echo_tail_ms` in the follow-up
    window, which a reply's echo must not open).

    Only a sound the device actually makes counts, not an output that is merely running
    (filling its buffer, or not yet stopped on a busy machine). Positions are microphone
    samples.
    """

    def __init__(self, echo_tail_ms: int, rate: int = MIC_RATE) -> None:
        self.echo_tail_ms = echo_tail_ms
        self.rate = rate
        self._last_sound = -(10**9)
        self._vad_ran = False

    def sounded(self, pos: int) -> None:
        """The device made a sound during the frame that ends at `pos`."""
        self._last_sound = pos

    def deaf(self, state: State, pos: int) -> bool:
        tail_ms = self.echo_tail_ms if state is State.FOLLOW_UP else EARCON_TAIL_MS
        return pos - self._last_sound < ms_to_samples(tail_ms, self.rate)

    def vad_runs(self, state: State, pos: int) -> tuple[bool, bool]:
        """Whether the VAD hears the frame ending at `pos`, and whether it must first forget
        what it heard before a gap (no stale hangover across one)."""
        runs = state in VAD_STATES and not self.deaf(state, pos)
        fresh = runs and not self._vad_ran
        self._vad_ran = runs
        return runs, fresh


WAKE_WORD_FRAMES = 60
"""Frames (1.2 s) before a wake in which the wake word was spoken."""
LOUDEST_FRAMES = 10


def speech_level(levels: Iterable[float]) -> float:
    """The speech level over a wake word: the mean power of its loudest 200 ms (the voiced
    part, whatever the word's length and the pauses around it), in dBFS."""
    top = sorted((x for x in levels if x > -math.inf), reverse=True)[:LOUDEST_FRAMES]
    if not top:
        return -math.inf
    return 10 * math.log10(sum(10 ** (x / 10) for x in top) / len(top))
