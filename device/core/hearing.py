"""What the device listens for in each state, and when it must not trust its own ears.

The wake word runs in every state; its verdict counts only where a wake word means
something. The VAD runs only where the user's speech is awaited, and not on the device's
own sounds: a beep while someone is already talking costs a few frames, while a reply's echo
must never open a follow-up turn.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable

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

    Even then, only frames the canceller actually took something out of (`took_out`): it is
    not transparent where there is nothing to remove (its filters alone move the user's
    waveform), so a frame it left within `unchanged_db` of what was heard, the user's words
    after the reply stopped or over its pauses, is sent as heard. Over the answer, the
    words of a correction went from 416, 410, 391 of 468 windows whole (echo 0.1, 0.3, 0.7)
    to 449, 443, 435 (`bench echo`); the device's own voice before the user's words stays
    35 to 60 dB under them, as with the canceller's output throughout (the microphone as
    heard throughout would have it 2 to 27 dB under them).

    With `turn.barge_in = "voice"` there is a third choice (`FrontEnd.hear`), once the
    echo guard's linear subtractor (`adapters.echo.EchoSubtractor`) has learnt the room:
    the microphone with only the far end's linear echo subtracted, for a frame of a reply
    that holds more than the device's voice (someone talking over it:
    `EchoGuard.subtracted_holds_more`), and for every frame while another of its sounds (the
    chime) or the room's tail of any is heard. AEC3's suppressor turns the user down with
    the echo wherever both sound at once; the subtractor leaves the user as heard.
    """

    def __init__(self, tail_ms: int, rate: int = MIC_RATE, unchanged_db: float = 3.0) -> None:
        self.tail = ms_to_samples(tail_ms, rate)
        self.unchanged_db = unchanged_db
        self._until = -1

    def cleaned(self, state: State, pos: int) -> bool:
        """True: send the canceller's output for the frame ending at `pos`."""
        if state in REPLY_VOICE:
            self._until = pos + self.tail
        return pos <= self._until

    def took_out(self, heard_db: float, cleaned_db: float) -> bool:
        """Whether the canceller took the device's voice out of a frame: its output is more
        than `unchanged_db` under what the microphone heard."""
        return heard_db - cleaned_db > self.unchanged_db


def quantile(values: Iterable[float], q: float) -> float:
    """The `q` quantile of `values` (the value at that share of them, sorted); -inf for
    none."""
    ordered = sorted(values)
    if not ordered:
        return -math.inf
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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
        levels = [level for level, voiced in frames if voiced]
        if len(frames) < self.min_frames or len(levels) < self.min_share * len(frames):
            self.gate_db = -math.inf
        else:
            self.gate_db = quantile(levels, self.quantile) + self.margin_db
        last = history[len(history) - self.talking :]
        self.user_talking = any(voiced and self.users(level) for level, voiced in last)
        return self.gate_db

    def users(self, level_db: float) -> bool:
        return level_db >= self.gate_db


ALWAYS_DB = -120.0
"""`audio.noise_suppression_above_db` at or below this: noise suppression always runs."""


class NoiseFloor:
    """Whether the room is noisy enough for the device's detectors to need noise
    suppression.

    WebRTC noise suppression is worth 10 to 15 points of wake word accuracy at 10 dB SNR
    and nothing at 20 dB or in quiet (`bench accuracy`), and it costs about as much CPU as
    the wake word model itself: in a quiet room it is left out. The room's floor is the
    median, over the last `blocks` seconds, of each second's quietest 20 ms frame
    (minimum statistics: speech has pauses, so a second's minimum is the room, not the
    talk). Noise suppression switches on when the floor reaches `on_db` and off when it
    falls `hysteresis_db` below. It starts on, until the room has been heard for long
    enough to tell; with `on_db` at -120 dBFS or below it never switches off. Levels only,
    observed while nobody is talking to the device; the switch is made only then too
    (`FrontEnd`), never under a turn.
    """

    def __init__(
        self, on_db: float, hysteresis_db: float = 6.0, block_ms: int = 1000, blocks: int = 5
    ) -> None:
        self.on_db = on_db
        self.off_db = on_db - hysteresis_db
        self.block = block_ms // FRAME_MS
        self._minima: deque[float] = deque(maxlen=blocks)
        self._quietest = math.inf
        self._frames = 0
        self.noisy = True
        """Whether noise suppression should run (it does until the room is known)."""

    def observe(self, level_db: float) -> bool:
        """One frame of the room (its level before noise suppression); returns `noisy`.
        Digital silence (-inf) says nothing about the room, only that nothing was heard
        (a real microphone always hears something): it is not counted."""
        if level_db == -math.inf:
            return self.noisy
        self._quietest = min(self._quietest, level_db)
        self._frames += 1
        if self._frames < self.block:
            return self.noisy
        self._minima.append(self._quietest)
        self._quietest, self._frames = math.inf, 0
        if len(self._minima) == self._minima.maxlen and self.on_db > ALWAYS_DB:
            floor = self.floor_db
            if self.noisy and floor < self.off_db:
                self.noisy = False
            elif not self.noisy and floor >= self.on_db:
                self.noisy = True
        return self.noisy

    @property
    def floor_db(self) -> float:
        """The floor as last measured (-inf before a whole block)."""
        return sorted(self._minima)[len(self._minima) // 2] if self._minima else -math.inf


class DeafWindow:
    """When the VAD must not listen: while the device makes a sound, and for its echo's tail
    after (the earcon tail while listening; the room's `echo_tail_ms` in the follow-up
    window, which a reply's echo must not open).

    Only a sound the device actually makes counts, not an output that is merely running
    (filling its buffer, or not yet stopped on a busy machine). Positions are microphone
    samples.
    """

    def __init__(self, echo_tail_ms: int, rate: int = MIC_RATE) -> None:
        self._follow_up_tail = ms_to_samples(echo_tail_ms, rate)
        self._earcon_tail = ms_to_samples(EARCON_TAIL_MS, rate)
        self._last_sound = -(10**9)
        self._vad_ran = False

    def sounded(self, pos: int) -> None:
        """The device made a sound during the frame that ends at `pos`."""
        self._last_sound = pos

    def deaf(self, state: State, pos: int) -> bool:
        tail = self._follow_up_tail if state is State.FOLLOW_UP else self._earcon_tail
        return pos - self._last_sound < tail

    def vad_runs(self, state: State, pos: int) -> tuple[bool, bool]:
        """Whether the VAD hears the frame ending at `pos`, and whether it must first forget
        what it heard before a gap (no stale hangover across one)."""
        runs = state in VAD_STATES and not self.deaf(state, pos)
        fresh = runs and not self._vad_ran
        self._vad_ran = runs
        return runs, fresh


USER_FRAMES = 100
"""The user's voiced frames (2 s) from which their speaking level is taken."""
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


FIRM_DB = 22.0
"""A voiced frame more than this under the user's loudest (`speech_level` of their turn) is
the room's tail of their words, not more of them: an early commit (`turn.commit_ms`)
counts its pause from the last frame above it, the turn's end from the last voiced one.
In `bench accuracy`'s reverberant room the commit came 485 ms after the last word (median;
p95 673), webrtcvad calling the tail speech; with this 330 (466), quiet and noise alike
or sooner, more withdrawn answers only there (13 of 48 turns, 5 before); 25 dB gave 400."""


def is_firm(level_db: float, user_levels: Iterable[float]) -> bool:
    """Whether a voiced frame at `level_db` is within FIRM_DB of the user's loudest in this
    turn (`speech_level` of `user_levels`, the frame's own level among them)."""
    return level_db >= speech_level(user_levels) - FIRM_DB


HELD_BACK_DB = 10.0
"""A voiced frame the background gate held back is worth asking about within this of the
user's loudest in their turn (`HeldBack`)."""
HELD_BACK_MS = 1000
"""…and within this of their last frame over the gate: what bounds how long a room's voices
taken for the user's can hold a turn open."""


class HeldBack:
    """Whether a voiced frame the background-speech gate held back (`BackgroundSpeech`) may
    be the user's after all, and should be asked of the neural VAD.

    Over music webrtcvad calls nearly every frame speech, so the gate is set at the music's
    loud notes, and a soft word after a pause in the user's command (the "is it" of "what
    time … is it") can be no louder: the gate alone ended 6 of 48 turns with a pause inside
    before the user had finished, over music 10 dB down. Silero hears no voice in music and
    does in a word, so such a frame, if it is within `within_db` of the user's loudest 200 ms
    in this turn and within `within_ms` of their last frame over the gate, counts as the
    user's when Silero says it is a voice: 2 of those 48 turns still ended early, the turn
    ended no later (`bench accuracy`, endpointing rows). Over a television Silero hears a
    voice as well; the two bounds are what keep a room's voices from holding the turn open:
    nothing changed over voices 15 and 10 dB down, and at most `within_ms` past the user's
    last frame over the gate can be held in any room. Asked only in a room with background
    speech, while the user has the turn: 12 questions of 32 ms a turn over music, 1 or 2 over
    voices (on average); nothing while the device is idle. Positions are microphone
    samples."""

    def __init__(
        self,
        within_db: float = HELD_BACK_DB,
        within_ms: int = HELD_BACK_MS,
        rate: int = MIC_RATE,
    ) -> None:
        self.within_db = within_db
        self.within = ms_to_samples(within_ms, rate)
        self._passed: int | None = None

    def turn_starts(self) -> None:
        self._passed = None

    def passed(self, pos: int) -> None:
        """A voiced frame over the gate ended at `pos`."""
        self._passed = pos

    def users(
        self,
        voiced: bool,
        over_gate: bool,
        level_db: float,
        user_levels: Iterable[float],
        pos: int,
        is_voice: Callable[[], bool],
    ) -> bool:
        """Whether the frame ending at `pos` is the user speaking: `voiced` (webrtcvad) and
        `over_gate`, or voiced, held back, worth asking and a voice (`is_voice`: the neural
        VAD, asked only then)."""
        if over_gate:
            self.passed(pos)
            return True
        return voiced and self.worth_asking(level_db, user_levels, pos) and is_voice()

    def worth_asking(self, level_db: float, user_levels: Iterable[float], pos: int) -> bool:
        """Whether a voiced frame the gate held back, ending at `pos`, may be the user's."""
        if self._passed is None or pos - self._passed > self.within:
            return False
        user_db = speech_level(user_levels)
        return user_db > -math.inf and level_db >= user_db - self.within_db


ECHO_FAR_DB = -45.0
"""A far end this loud is heard in the room: the echo path is measured on it."""
MIN_ECHO_FRAMES = 25
"""Frames of the device's echo heard before any verdict (half a second)."""


class TalkOver:
    """Whether the user is talking over the device's reply (`turn.barge_in = "voice"`).

    It hears the microphone less the device's echo while the reply sounds (the linear
    subtractor's output once it has learnt the room, where the user's words are whole;
    AEC3's before). Neither removes all of the device's voice: in a lively room bursts of
    it come through, some nearly as loud as the echo itself. So a frame is the user's only
    when

    - it stands `margin_db` over what the canceller is expected to let through now (a high
      quantile of how much of the far end leaked through lately, relative to the loudest
      far-end level of the last `far_ms`; in the far end's pauses, the quiet floor), and
      over the room's background-speech gate;
    - it is within `user_margin_db` of how loud the user spoke in this conversation
      (someone across the room is not the user);
    - a neural VAD (`adapters.vad.NeuralVad`) calls it a voice (a cough or a door is loud,
      and webrtcvad takes it for speech).

    Once `need` of the last `span` frames were the user's, and over them the microphone
    (before the canceller) was on average `excess_db` louder than the device's echo alone
    would make it (a burst the canceller let through is not), the user is talking over the
    reply. What is learnt (the leak, the floor, the echo path) is kept from reply to reply;
    frames are learnt from only once `settle_ms` old, so that the user's first syllables,
    before the VAD is sure of them, never raise the bar. No verdict before `warmup_ms` into
    a reply, nor before the room's echo was heard at all. Levels and verdicts only: no
    audio is kept. Measured in `bench echo` (the talk-over rows).
    """

    def __init__(
        self,
        margin_db: float = 6.0,
        need: int = 5,
        span: int = 8,
        warmup_ms: int = 600,
        settle_ms: int = 300,
        history_ms: int = 3000,
        far_ms: int = 400,
        leak_quantile: float = 0.98,
        lead_ms: int = 200,
        min_db: float = -55.0,
        excess_db: float = 3.0,
        user_margin_db: float = 12.0,
        rate: int = MIC_RATE,
    ) -> None:
        self.margin_db = margin_db
        self.need, self.span = need, span
        self.warmup = ms_to_samples(warmup_ms, rate)
        self.settle = ms_to_samples(settle_ms, rate)
        self.lead = ms_to_samples(lead_ms, rate)
        self.min_db = min_db
        self.leak_quantile = leak_quantile
        self._leaks: deque[float] = deque(maxlen=history_ms // FRAME_MS)
        self._quiet: deque[float] = deque(maxlen=history_ms // FRAME_MS)
        self._far: deque[float] = deque(maxlen=far_ms // FRAME_MS)
        self._erl: deque[float] = deque(maxlen=history_ms // FRAME_MS)
        """How loud the device's voice reaches the microphone, relative to what it played
        (the room's echo path, before the canceller: raw minus far end, dB)."""
        self.excess_db = excess_db
        self.user_margin_db = user_margin_db
        self.user_db = -math.inf
        """How loud the user speaks in this conversation (their turns' loudest 200 ms): a
        voice more than `user_margin_db` under it is someone else in the room."""
        self._pending: deque[tuple[int, float, bool, float | None]] = deque()
        """(pos, value, is a leak, the echo path's gain) of recent frames, learnt from once
        `settle_ms` old: the start of the user's speech, before the VAD is sure of it, must
        not teach the detector that the device leaks that loud."""
        self._recent: deque[tuple[int, bool, float]] = deque(maxlen=span)
        self._since: int | None = None
        self.raw_db = -math.inf

    def far(self, level_db: float, raw_db: float) -> None:
        """The level of what the device played during this frame, and of what the
        microphone heard before the canceller (before `feed`)."""
        self._far.append(level_db)
        self.raw_db = raw_db

    def reset(self) -> None:
        """A reply is over (or not yet sounding): wait for the next one. What was learnt of
        the canceller and the room is kept (it holds for the next reply)."""
        self._pending.clear()
        self._far.clear()
        self._recent.clear()
        self._since = None

    def line(self, gate_db: float) -> float:
        """The level a frame must reach to be the user's, now."""
        far = max(self._far, default=-math.inf)
        leak = quantile(self._leaks, self.leak_quantile)
        quiet = quantile(self._quiet, 0.9)
        expected = max(far + leak, quiet)
        return max(
            expected + self.margin_db, gate_db, self.min_db, self.user_db - self.user_margin_db
        )

    @property
    def converged(self) -> bool:
        """Whether enough of the room's echo has been heard to tell the user from it (not in
        the first moments of the first reply after a start)."""
        return len(self._erl) >= MIN_ECHO_FRAMES

    def excess(self) -> float:
        """How much louder the microphone (before the canceller) is than the device's own
        voice alone would make it: the user adds to the echo, a burst the canceller let
        through does not."""
        far = max(self._far, default=-math.inf)
        if far == -math.inf:
            return math.inf  # nothing played lately: no echo to be louder than
        return self.raw_db - (far + quantile(self._erl, 0.5))

    @property
    def active(self) -> bool:
        """A reply is being listened to (since it began to sound)."""
        return self._since is not None

    def loud_enough(self, level_db: float, gate_db: float) -> bool:
        """Whether a frame is loud enough to be the user's."""
        return self.active and self.converged and level_db >= self.line(gate_db)

    def feed(self, pos: int, level_db: float, candidate: bool, sounding: bool) -> int | None:
        """One frame of the reply, ending at `pos`; `sounding`: the device's voice is playing.
        Returns the sample where the user began, once they are talking over it."""
        if self._since is None:
            if not sounding:
                return None
            self._since = pos
        warm = pos - self._since >= self.warmup
        candidate = candidate and warm
        if candidate:
            self._pending.clear()  # (what led up to the user's words was theirs too)
        elif level_db > -math.inf:
            far = max(self._far, default=-math.inf)
            erl = self.raw_db - far if far > ECHO_FAR_DB else None
            if far > -math.inf:
                self._pending.append((pos, level_db - far, True, erl))
            else:
                self._pending.append((pos, level_db, False, erl))
        while self._pending and pos - self._pending[0][0] >= self.settle:
            _, value, leak, erl = self._pending.popleft()
            (self._leaks if leak else self._quiet).append(value)
            if erl is not None:
                self._erl.append(erl)
        self._recent.append((pos, candidate, self.excess() if candidate else 0.0))
        hits = [(p, x) for p, c, x in self._recent if c]
        if len(hits) < self.need:
            return None
        if sum(min(x, 20.0) for _, x in hits) / len(hits) < self.excess_db:
            return None  # the device's own voice, come through the canceller
        onset = hits[0][0] - FRAME_MS * MIC_RATE // 1000 - self.lead
        self.reset()
        return onset
