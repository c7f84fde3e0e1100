"""Audio plumbing that needs no device: pre-roll ring, resampling, uplink and playout buffers.

Everything here works on little-endian signed 16-bit mono PCM (`bytes`) and counts audio in
samples, which is exact, rather than in seconds of wall-clock time, which is not.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import soxr

MIC_RATE = 16_000
"""What the wake word model and the VAD want, and what the microphone is opened at."""
CLOUD_RATE = 24_000
"""What the realtime API speaks in both directions (`audio/pcm`)."""
FRAME_MS = 20
FRAME_SAMPLES = MIC_RATE * FRAME_MS // 1000
SAMPLE_BYTES = 2
MAX_PREROLL_MS = 500


def samples_to_ms(samples: int, rate: int) -> int:
    return samples * 1000 // rate


def ms_to_samples(ms: int, rate: int) -> int:
    return ms * rate // 1000


def pcm_samples(pcm: bytes | bytearray) -> int:
    return len(pcm) // SAMPLE_BYTES


class PreRoll:
    """The most recent microphone audio, kept in RAM so the first syllable after a wake is not lost.

    Holds at most `capacity` samples (≤ 0.5 s); older audio is dropped as new frames arrive.
    Positions are absolute sample indices in the microphone stream.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0 or capacity > ms_to_samples(MAX_PREROLL_MS, MIC_RATE):
            raise ValueError(f"pre-roll capacity must be 0..{MAX_PREROLL_MS} ms of audio")
        self.capacity = capacity
        self._buf = bytearray()
        self.end = 0
        """Absolute index of the sample after the newest one held."""

    @property
    def start(self) -> int:
        return self.end - pcm_samples(self._buf)

    def append(self, pcm: bytes) -> None:
        self._buf += pcm
        self.end += pcm_samples(pcm)
        excess = len(self._buf) - self.capacity * SAMPLE_BYTES
        if excess > 0:
            del self._buf[:excess]

    def since(self, sample: int) -> bytes:
        """Audio from `sample` (clamped to what is held) up to the newest sample."""
        first = max(sample, self.start)
        if first >= self.end:
            return b""
        return bytes(self._buf[(first - self.start) * SAMPLE_BYTES :])

    def clear(self) -> None:
        self._buf.clear()


def pcm_to_float(pcm: bytes | bytearray) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm(x: np.ndarray) -> bytes:
    return bytes(np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2").tobytes())


class Resampler:
    """Streaming sample-rate conversion with soxr.

    Works in float32 because soxr's int16 path dithers: the same audio cut into different
    chunks would give slightly different output. In float the output depends only on the
    input, so a turn can be checked sample by sample against a one-shot conversion.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        self._finished = False

    def push(self, pcm: bytes, last: bool = False) -> bytes:
        if self._finished:
            raise RuntimeError("resampler already finished")
        self._finished = last
        if self.in_rate == self.out_rate:
            return bytes(pcm)
        out = self._stream.resample_chunk(pcm_to_float(pcm), last=last)
        return float_to_pcm(out)

    def finish(self) -> bytes:
        return self.push(b"", last=True)


def resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """One-shot conversion, identical to a `Resampler` fed the same audio in any chunks."""
    r = Resampler(in_rate, out_rate)
    return r.push(pcm, last=True)


class MicConverter:
    """Whatever the microphone delivers (rate, channels) → 16 kHz mono 20 ms frames.

    A 2-mic HAT gives interleaved stereo at 48 kHz; the wake word wants 16 kHz mono. One
    channel is picked (`channel` ≥ 0) or all are averaged (`channel` = -1), then resampled
    by a streaming soxr, then cut into exact frames: no sample lost or repeated at any edge.
    """

    def __init__(self, rate: int, channels: int, channel: int = -1) -> None:
        if channel >= channels:
            raise ValueError(f"channel {channel} does not exist (the device has {channels})")
        self.rate = rate
        self.channels = channels
        self.channel = channel
        self._resampler = Resampler(rate, MIC_RATE) if rate != MIC_RATE else None
        self._pending = bytearray()

    def push(self, raw: bytes) -> list[bytes]:
        if self.channels > 1:
            x = np.frombuffer(raw, "<i2").reshape(-1, self.channels)
            mono = x[:, self.channel] if self.channel >= 0 else x.astype(np.int32).mean(axis=1)
            raw = bytes(np.rint(mono).astype("<i2").tobytes())
        if self._resampler is not None:
            raw = self._resampler.push(raw)
        self._pending += raw
        size = FRAME_SAMPLES * SAMPLE_BYTES
        frames = [
            bytes(self._pending[i : i + size])
            for i in range(0, len(self._pending) - size + 1, size)
        ]
        del self._pending[: len(frames) * size]
        return frames


class Uplink:
    """One user turn on its way to the cloud.

    Takes 16 kHz microphone audio from the turn's first sample, converts it to 24 kHz and
    hands out chunks for `input_audio_buffer.append`. Audio waits here (RAM only) while the
    session is still connecting, so nothing between the turn's start and its end is lost.

    A turn sent at a pause (`seal`) is, exactly, the conversion of its audio up to there;
    what is heard after is kept but not handed out, unless the user goes on (`rewind`: the
    whole turn is handed out again from its start, converted in one piece, as if it had
    never been sent). The turn's own audio stays here until the turn is over: at most
    `turn.max_turn_ms` of 16 kHz (960 KB for 30 s).
    """

    def __init__(
        self,
        start_sample: int,
        in_rate: int = MIC_RATE,
        out_rate: int = CLOUD_RATE,
        min_chunk_ms: int = 40,
        max_chunk_ms: int = 100,
    ) -> None:
        self.start_sample = start_sample
        self.end_sample = start_sample
        """Absolute index (mic stream) of the sample after the last one taken in."""
        self.sealed_at: int | None = None
        """Where the turn was sent at a pause (the sample after its last one), if it was."""
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._resampler = Resampler(in_rate, out_rate)
        self._heard = bytearray()
        self._pending = bytearray()
        self._min_chunk = ms_to_samples(min_chunk_ms, out_rate) * SAMPLE_BYTES
        self._max_chunk = ms_to_samples(max_chunk_ms, out_rate) * SAMPLE_BYTES
        self.finished = False
        self.sent_bytes = 0

    def push(self, pcm: bytes) -> None:
        if self.finished:
            raise RuntimeError("turn already ended")
        self.end_sample += pcm_samples(pcm)
        self._heard += pcm
        if self.sealed_at is None:
            self._pending += self._resampler.push(pcm)

    def seal(self) -> None:
        """The turn is sent as it is now: the converter's tail with it, so that the last
        chunk ends on the last sample heard."""
        if self.sealed_at is None and not self.finished:
            self._pending += self._resampler.finish()
            self.sealed_at = self.end_sample

    def rewind(self) -> None:
        """Hand out the whole turn again from its first sample (the service dropped what it
        had of it): everything heard so far, converted afresh, and what follows."""
        self._resampler = Resampler(self.in_rate, self.out_rate)
        self._pending = bytearray(self._resampler.push(bytes(self._heard)))
        self.sealed_at = None
        self.sent_bytes = 0

    def finish(self) -> None:
        """The turn ended: flush the resampler's tail so every input sample is accounted for."""
        if not self.finished:
            if self.sealed_at is None:
                self._pending += self._resampler.finish()
            self.finished = True

    def take(self) -> list[bytes]:
        """Chunks ready to send: at least `min_chunk_ms` each, or whatever is left once
        finished or sealed."""
        chunks: list[bytes] = []
        last = self.finished or self.sealed_at is not None
        while len(self._pending) >= self._min_chunk or (last and self._pending):
            size = min(len(self._pending), self._max_chunk)
            chunks.append(bytes(self._pending[:size]))
            del self._pending[:size]
        self.sent_bytes += sum(len(c) for c in chunks)
        return chunks

    @property
    def sent_ms(self) -> int:
        return samples_to_ms(self.sent_bytes // SAMPLE_BYTES, self.out_rate)


# ---------------------------------------------------------------------------------------------
# Playout: what the speaker plays, and what it has played, per item


class Source(enum.StrEnum):
    """Where a played sound comes from: only replies are part of the server's conversation."""

    REPLY = "reply"
    """Audio the service sent for a response."""
    EARCON = "earcon"
    """One of the device's own short sounds; the state machine never hears of it."""
    REPLAY = "replay"
    """The last answer played again from memory (double press)."""


@dataclass(frozen=True)
class ItemStarted:
    """The first sample of an assistant item went to the speaker."""

    response_id: str
    item_id: str
    phase: str | None
    source: Source = Source.REPLY


@dataclass(frozen=True)
class ResponsePlayed:
    """Everything received for a response has gone to the speaker."""

    response_id: str
    source: Source = Source.REPLY


@dataclass(frozen=True)
class PlayoutStopped:
    """Playback was cut (barge-in). `played_ms` is how much of `item_id` the speaker was given.

    Only the service's items are named: the device's own sounds and repeats are in no
    conversation, so a cut earcon reports `item_id` None and is not among the unplayed."""

    item_id: str | None
    played_ms: int
    unplayed_item_ids: tuple[str, ...]


PlayoutEvent = ItemStarted | ResponsePlayed | PlayoutStopped


@dataclass
class _Segment:
    response_id: str
    item_id: str
    phase: str | None
    source: Source
    pcm: bytearray = field(default_factory=bytearray)


MAX_ITEMS_PLAYED = 64
"""Items of one response whose played samples are counted (a response has a few)."""


class PlayoutBuffer:
    """Queue of reply audio with per-item played-sample counts.

    Owned by whoever renders audio (a PortAudio callback, or a WAV writer): it is told what
    arrived and pulls fixed-size blocks; the events it returns say which item the listener
    is hearing, which is what the LEDs follow.
    """

    def __init__(self, rate: int = CLOUD_RATE) -> None:
        self.rate = rate
        # segments, and (response id, source) pairs as end markers
        self._queue: deque[_Segment | tuple[str, Source]] = deque()
        self._played: dict[str, int] = {}
        self._current: _Segment | None = None
        self._samples = 0
        """Samples queued: kept as a count, so that each delta costs the same however many
        are queued (a flood of tiny ones must not freeze the loop)."""
        self.underruns = 0

    def add(
        self,
        response_id: str,
        item_id: str,
        phase: str | None,
        pcm: bytes,
        source: Source = Source.REPLY,
    ) -> None:
        if not pcm:
            return
        self._samples += pcm_samples(pcm)
        last = self._queue[-1] if self._queue else None
        if isinstance(last, _Segment) and last.item_id == item_id:
            last.pcm += pcm
        else:
            self._queue.append(_Segment(response_id, item_id, phase, source, bytearray(pcm)))

    def end(self, response_id: str, source: Source = Source.REPLY) -> None:
        self._queue.append((response_id, source))

    @property
    def buffered_samples(self) -> int:
        return self._samples

    def relabel(self, item_id: str, phase: str) -> bool:
        """The item's phase became known late: what is still queued of it carries the new
        phase. True if the item has already started playing (the listener is hearing it)."""
        for s in self._queue:
            if isinstance(s, _Segment) and s.item_id == item_id:
                s.phase = phase
        current = self._current
        return current is not None and current.item_id == item_id

    @property
    def idle(self) -> bool:
        return not self._queue

    @property
    def segments(self) -> int:
        """Pieces queued (a run of one item's audio is one)."""
        return len(self._queue)

    def pull(self, samples: int, pad: bool = True) -> tuple[bytes, list[PlayoutEvent]]:
        """Up to `samples` of audio; padded with silence (an underrun) when `pad` is set."""
        out = bytearray()
        events: list[PlayoutEvent] = []
        want = samples * SAMPLE_BYTES
        while self._queue:
            head = self._queue[0]
            if isinstance(head, tuple):
                # An end marker right after the last audio is reported with that audio.
                self._queue.popleft()
                self._played.clear()
                self._current = None
                events.append(ResponsePlayed(*head))
                continue
            if len(out) >= want:
                break
            if head.item_id not in self._played:
                self._played[head.item_id] = 0
                if len(self._played) > MAX_ITEMS_PLAYED:  # the oldest item's count goes
                    del self._played[next(iter(self._played))]
                events.append(ItemStarted(head.response_id, head.item_id, head.phase, head.source))
            self._current = head
            n = min(want - len(out), len(head.pcm))
            out += head.pcm[:n]
            del head.pcm[:n]
            self._samples -= n // SAMPLE_BYTES
            self._played[head.item_id] += n // SAMPLE_BYTES
            if not head.pcm:
                self._queue.popleft()
        if pad and len(out) < want:
            if self._current is not None:
                self.underruns += 1
            out += bytes(want - len(out))
        return bytes(out), events

    def flush(self) -> PlayoutStopped:
        """Drop everything queued; report what was being heard and what never was."""
        unplayed: dict[str, None] = {}  # (in order, each once)
        for s in self._queue:
            if (
                isinstance(s, _Segment)
                and s.source is Source.REPLY
                and s.item_id not in self._played
            ):
                unplayed[s.item_id] = None
        self._queue.clear()
        self._samples = 0
        current = self._current
        self._current = None
        if current is None or current.source is not Source.REPLY:
            return PlayoutStopped(None, 0, tuple(unplayed))
        played = self._played.get(current.item_id, 0)
        return PlayoutStopped(current.item_id, samples_to_ms(played, self.rate), tuple(unplayed))


def scale(pcm: bytes, gain: float) -> bytes:
    """Software volume: `gain` times the samples, clipped to int16."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) * gain
    return bytes(np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes())


def mix(a: bytes, b: bytes) -> bytes:
    """The sum of two equally long int16 blocks, clipped (two sounds in one room)."""
    x = np.frombuffer(a, "<i2").astype(np.int32) + np.frombuffer(b, "<i2").astype(np.int32)
    return bytes(np.clip(x, -32768, 32767).astype("<i2").tobytes())


FULL_SCALE_DB = 20 * math.log10(32768)


PITCH_FRAME = 640
"""40 ms at 16 kHz: two periods of the lowest voice looked for."""
PITCH_HOP = 160
PITCH_RANGE_HZ = (70, 400)


def pitch_hz(x: np.ndarray, rate: int = MIC_RATE) -> float:
    """The median fundamental of the voiced 40 ms frames of `x` (int16 or float samples):
    frames within 20 dB of the loudest whose autocorrelation repeats at ≥ 0.5 within a
    70 to 400 Hz period. 0.0 when nothing is voiced."""
    n = PITCH_FRAME
    if len(x) < n:
        return 0.0
    starts = np.arange(0, len(x) - n + 1, PITCH_HOP)
    frames = np.asarray(x, np.float64)[starts[:, None] + np.arange(n)]
    frames -= frames.mean(axis=1, keepdims=True)
    energy = np.einsum("ij,ij->i", frames, frames)
    frames = frames[energy >= energy.max() * 0.01]  # (within 20 dB of the loudest)
    if not len(frames) or energy.max() <= 0:
        return 0.0
    shortest, longest = rate // PITCH_RANGE_HZ[1], rate // PITCH_RANGE_HZ[0]
    # (n + longest ≤ 1024: no lag of interest wraps around)
    spectrum = np.fft.rfft(frames, 1024)
    ac = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, 1024)[:, : longest + 1]
    lags = shortest + np.argmax(ac[:, shortest:], axis=1)
    rows = np.arange(len(frames))
    voiced = ac[rows, lags] >= 0.5 * ac[:, 0]
    if not voiced.any():
        return 0.0
    return float(np.median(rate / lags[voiced]))


def rms_dbfs(pcm: bytes) -> float:
    """Loudness of an int16 block relative to full scale; -inf for digital silence. (Runs
    on every frame: one dot product, no float copy of the block at full precision.)"""
    if len(pcm) < 2:
        return -math.inf
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    energy = float(np.dot(x, x))
    return 10 * math.log10(energy / len(x)) - FULL_SCALE_DB if energy > 0 else -math.inf
