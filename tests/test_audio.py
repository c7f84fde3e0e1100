"""Pre-roll, resampling, uplink and playout with real audio arrays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from device.core.audio import (
    CLOUD_RATE,
    MIC_RATE,
    ItemStarted,
    PlayoutBuffer,
    PlayoutStopped,
    PreRoll,
    Resampler,
    ResponsePlayed,
    Uplink,
    resample,
    rms_dbfs,
)


def noise(seconds: float, seed: int = 1, rate: int = MIC_RATE) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * rate)) * 3000).astype("<i2").tobytes()


def test_preroll_keeps_only_its_capacity_and_knows_positions() -> None:
    ring = PreRoll(4800)
    audio = noise(1.0)
    for i in range(0, len(audio), 640):
        ring.append(audio[i : i + 640])
    assert ring.end == 16000 and ring.start == 16000 - 4800
    assert ring.since(16000 - 1600) == audio[-3200:]
    assert ring.since(0) == audio[-9600:]  # clamped to what is held
    assert ring.since(16000) == b""


def test_preroll_refuses_more_than_half_a_second() -> None:
    with pytest.raises(ValueError):
        PreRoll(8001)


@settings(max_examples=40, deadline=None)
@given(hst.lists(hst.integers(1, 2000), min_size=1, max_size=40))
def test_resampling_does_not_depend_on_how_the_audio_is_cut(cuts: list[int]) -> None:
    audio = noise(1.5)
    r = Resampler(MIC_RATE, CLOUD_RATE)
    out, pos = [], 0
    for n in cuts:
        out.append(r.push(audio[pos : pos + 2 * n]))
        pos += 2 * n
    out.append(r.push(audio[pos:], last=True))
    assert b"".join(out) == resample(audio, MIC_RATE, CLOUD_RATE)


def test_resampled_length_is_exactly_three_halves() -> None:
    audio = noise(2.0)
    assert len(resample(audio, MIC_RATE, CLOUD_RATE)) == len(audio) * 3 // 2


def test_resampling_a_sine_keeps_its_frequency_and_level() -> None:
    t = np.arange(MIC_RATE) / MIC_RATE
    sine = (np.sin(2 * np.pi * 1000 * t) * 16000).astype("<i2").tobytes()
    out = np.frombuffer(resample(sine, MIC_RATE, CLOUD_RATE), "<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(out[2400:-2400] * np.hanning(len(out) - 4800)))
    peak_hz = np.argmax(spectrum) * CLOUD_RATE / (len(out) - 4800)
    assert abs(peak_hz - 1000) < 2
    assert abs(rms_dbfs(out[2400:-2400].astype("<i2").tobytes()) - rms_dbfs(sine)) < 0.1


def test_uplink_sends_every_sample_once_in_bounded_chunks() -> None:
    audio = noise(1.3)
    up = Uplink(start_sample=12345, min_chunk_ms=40, max_chunk_ms=100)
    sent: list[bytes] = []
    for i in range(0, len(audio), 640):
        up.push(audio[i : i + 640])
        sent += up.take()
    assert all(len(c) >= 40 * 48 for c in sent)
    up.finish()
    sent += up.take()
    assert all(len(c) <= 100 * 48 for c in sent)
    assert b"".join(sent) == resample(audio, MIC_RATE, CLOUD_RATE)
    assert up.end_sample == 12345 + len(audio) // 2
    assert up.sent_ms == 1300


def test_uplink_holds_audio_until_taken() -> None:
    up = Uplink(0)
    up.push(noise(3.0))
    up.finish()
    chunks = up.take()
    assert len(chunks) == 30 and up.take() == []


def pcm(n: int, value: int = 1000) -> bytes:
    return np.full(n, value, "<i2").tobytes()


def test_playout_reports_each_item_when_its_first_sample_is_pulled() -> None:
    b = PlayoutBuffer()
    b.add("r1", "i1", "commentary", pcm(1000))
    b.add("r1", "i2", "final_answer", pcm(1000, 2000))
    b.end("r1")
    _, ev = b.pull(480)
    assert ev == [ItemStarted("r1", "i1", "commentary")]
    _, ev = b.pull(480)
    assert ev == []
    data, ev = b.pull(480)
    assert ev == [ItemStarted("r1", "i2", "final_answer")]
    assert np.frombuffer(data, "<i2").tolist() == [1000] * 40 + [2000] * 440
    _, ev = b.pull(480)
    _, ev = b.pull(480)
    assert ev == [ResponsePlayed("r1")]
    assert b.idle


def test_playout_end_marker_is_reported_with_the_last_audio() -> None:
    b = PlayoutBuffer()
    b.add("r1", "i1", "final_answer", pcm(480))
    b.end("r1")
    _, ev = b.pull(480)
    assert ev == [ItemStarted("r1", "i1", "final_answer"), ResponsePlayed("r1")]


def test_playout_flush_tells_what_was_heard_and_what_never_was() -> None:
    b = PlayoutBuffer()
    b.add("r1", "i1", "commentary", pcm(24000))
    b.add("r1", "i2", "final_answer", pcm(24000))
    for _ in range(10):
        b.pull(480)
    assert b.flush() == PlayoutStopped("i1", 200, ("i2",))
    data, ev = b.pull(480)
    assert ev == [] and data == bytes(960)


def test_playout_counts_underruns_only_mid_response() -> None:
    b = PlayoutBuffer()
    b.pull(480)
    assert b.underruns == 0
    b.add("r1", "i1", "final_answer", pcm(100))
    data, _ = b.pull(480)
    assert len(data) == 960 and b.underruns == 1
    data, _ = b.pull(480, pad=False)
    assert data == b""


def test_a_sine_sweep_resamples_cleanly_across_chunk_edges() -> None:
    """A 100 Hz to 7 kHz sweep, cut into 20 ms frames as the microphone delivers it:
    the 24 kHz result must match the ideal sweep (THD+N below -60 dB) with no step at any
    chunk edge."""
    seconds, f0, f1 = 2.0, 100.0, 7000.0
    t_in = np.arange(int(seconds * MIC_RATE)) / MIC_RATE
    k = (f1 - f0) / seconds

    def sweep(t: np.ndarray) -> np.ndarray:
        return 0.5 * np.sin(2 * np.pi * (f0 * t + k * t * t / 2))

    pcm = (sweep(t_in) * 32767).astype("<i2").tobytes()
    r = Resampler(MIC_RATE, CLOUD_RATE)
    chunks = [r.push(pcm[i : i + 640]) for i in range(0, len(pcm), 640)]
    out = np.frombuffer(b"".join(chunks) + r.finish(), "<i2").astype(np.float64) / 32767
    ideal = sweep(np.arange(len(out)) / CLOUD_RATE)
    core = slice(1200, len(out) - 1200)  # away from the filter's start-up and the end
    residual = out[core] - ideal[core]
    thd_n_db = 10 * np.log10(np.sum(residual**2) / np.sum(ideal[core] ** 2))
    assert thd_n_db < -60
    # continuity: no sample-to-sample step bigger than the sweep itself can make
    steps = np.abs(np.diff(out[core]))
    assert steps.max() < 2 * np.pi * f1 * 0.5 / CLOUD_RATE * 1.05


@pytest.mark.parametrize(
    ("rate", "channels", "channel"),
    [(16_000, 1, -1), (48_000, 2, 1), (44_100, 2, -1), (48_000, 4, 0)],
)
def test_any_microphone_format_becomes_exact_16k_mono_frames(
    rate: int, channels: int, channel: int
) -> None:
    from device.core.audio import FRAME_SAMPLES, MicConverter

    speechy = np.frombuffer(noise(1.0, seed=3, rate=rate), "<i2")
    other = np.frombuffer(noise(1.0, seed=4, rate=rate), "<i2")
    cols = [other] * channels
    if channel >= 0:
        cols[channel] = speechy
    else:
        cols = [speechy] * channels
    raw = np.stack(cols, axis=1).astype("<i2").tobytes()
    conv = MicConverter(rate, channels, channel)
    frames: list[bytes] = []
    step = 2 * channels * 441  # deliberately not a multiple of a frame
    for i in range(0, len(raw), step):
        frames += conv.push(raw[i : i + step])
    assert all(len(f) == FRAME_SAMPLES * 2 for f in frames)
    got = b"".join(frames)
    want = resample(speechy.tobytes(), rate, MIC_RATE)
    assert got == want[: len(got)]  # every sample of the chosen channel, once, in order
    # what is still inside: at most a partial frame and the resampler's filter delay (~40 ms)
    assert len(want) - len(got) <= 3 * FRAME_SAMPLES * 2


def test_noise_suppression_quietens_steady_noise_frame_by_frame() -> None:
    """What the wake word and the VAD hear: WebRTC noise suppression, fed 20 ms frames (the
    library splits them into its 10 ms blocks, exactly as 10 ms calls would)."""
    from pywebrtc_audio import NoiseSuppressor

    from device.adapters.denoise import Denoiser, denoiser

    pcm = noise(3.0)
    frames = [pcm[i : i + 640] for i in range(0, len(pcm), 640)]
    ns = Denoiser(3)
    heard = b"".join(ns.process(f) for f in frames)
    ten_ms = NoiseSuppressor(MIC_RATE, 1, 3)
    x = np.frombuffer(pcm, "<i2")
    blocks = [ten_ms.process(x[i : i + 160]) for i in range(0, len(x), 160)]
    assert heard == np.concatenate(blocks).astype("<i2").tobytes()
    # once it has learnt the noise (in the first second), it takes most of it away
    one_second = MIC_RATE * 2
    assert rms_dbfs(heard[one_second:]) < rms_dbfs(pcm[one_second:]) - 10
    assert denoiser(0).process(frames[0]) is frames[0]  # level 0: untouched


def _room_frames(x: np.ndarray) -> list[bytes]:
    pcm = x.astype("<i2").tobytes()
    return [pcm[i : i + 640] for i in range(0, len(pcm) - 639, 640)]


def _suppressing(x: np.ndarray, above_db: float = -50.0, level: int = 3) -> list[bool]:
    """Whether the detectors heard `x` denoised, frame by frame, the device idle throughout."""
    from device.adapters.denoise import Suppression

    ns, on = Suppression(level, above_db), []
    for frame in _room_frames(x):
        on.append(ns.on)
        ns.process(frame)
        ns.hear_room(rms_dbfs(frame))
    return on


def test_noise_suppression_runs_only_while_the_room_is_noisy() -> None:
    """Household talk (espeak, about -22 dBFS) in a quiet kitchen (steady noise 40 dB under
    it), then a cooker hood switched on (15 dB under the talk) and off again: suppression
    runs from the hood's first seconds to its last, and not in the quiet, talk or no talk
    (nor for a door banging in it)."""
    from device.bench import corpus as C

    talk = C.negative_speech(0.75, seed=3).astype(float)[: 40 * MIC_RATE]
    talk_rms = C.active_rms(talk.astype("<i2"))
    steady = np.resize(C.noise("pink", 30, 0).astype(float), len(talk))
    steady /= np.sqrt(np.mean(steady**2))
    room = talk + steady * talk_rms * 10 ** (-40 / 20)
    hood = slice(15 * MIC_RATE, 27 * MIC_RATE)
    room[hood] += steady[hood] * talk_rms * 10 ** (-15 / 20)
    for second in (5, 9, 33):  # a door: 50 ms at full scale
        room[second * MIC_RATE : second * MIC_RATE + 800] += 20_000 * np.sign(steady[:800])
    on = _suppressing(np.clip(room, -32768, 32767))
    frames_per_s = 50
    assert all(on[:frames_per_s])  # until the room is known, as before
    assert not any(on[6 * frames_per_s : 15 * frames_per_s])  # quiet: talk and a door alone
    assert all(on[19 * frames_per_s : 27 * frames_per_s])  # the hood, within 4 s
    assert not any(on[31 * frames_per_s :])  # gone within 4 s of it, door or not


def test_noise_suppression_setting_zero_never_and_minus_120_always() -> None:
    """And digital silence (a WAV file's padding, not a room) leaves the choice as it was."""
    hum = np.random.default_rng(1).normal(0, 3, 10 * MIC_RATE)  # about -80 dBFS
    assert not any(_suppressing(hum, level=0))
    assert all(_suppressing(hum, above_db=-120.0))
    assert not any(_suppressing(hum)[6 * 50 :])
    assert all(_suppressing(np.zeros(10 * MIC_RATE)))


def _library_scores(name: str, chunks: list[bytes]) -> list[float]:
    """pymicro-wakeword's own streaming, as its README shows it: per chunk, the best score."""
    from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

    model, features = MicroWakeWord.from_builtin(Model(name)), MicroWakeWordFeatures()
    out = []
    for chunk in chunks:
        scores = [model.process_streaming_prob(f) for f in features.process_streaming(chunk)]
        out.append(max((s for s in scores if s is not None), default=0.0))
    return out


def test_the_wake_word_engine_scores_exactly_as_pymicro_wakeword_does() -> None:
    """The engine's own streaming of the models (cheaper: `bench perf`) gives every chunk the
    very score the library's streaming gives it, on a spoken "okay nabu" and household talk,
    in 20 ms frames and in uneven chunks, two models sharing the features; and a model object
    without the interpreter handles it relies on is run by the library, with the same
    scores."""
    import wave
    from pathlib import Path

    from device.adapters.wakeword import MicroStream, load_engine
    from device.bench import corpus as C

    with wave.open(str(Path("device/assets/demo-okay-nabu-weather.wav"))) as w:
        demo = w.readframes(w.getnframes())
    pcm = demo + C.negative_speech(0.2, seed=5).astype("<i2").tobytes()
    sizes = np.random.default_rng(4).integers(1, 2000, len(pcm) // 500) * 2
    cuts = [0, *np.cumsum(sizes)[np.cumsum(sizes) < len(pcm)], len(pcm)]
    for chunks in (
        [pcm[i : i + 640] for i in range(0, len(pcm), 640)],
        [pcm[a:b] for a, b in itertools.pairwise(cuts)],
    ):
        engine = load_engine("micro", ["okay_nabu", "hey_jarvis"])
        ours = [engine.process(c) for c in chunks]
        for i, name in enumerate(("okay_nabu", "hey_jarvis")):
            assert [s[i] for s in ours] == _library_scores(name, chunks)
        assert max(s[0] for s in ours) > 0.95  # the demo's wake word, heard

    class Opaque:  # a model that only offers the library's own call
        def __init__(self, model: object) -> None:
            self._m = model
            self.sliding_window_size = model.sliding_window_size  # type: ignore[attr-defined]

        def process_streaming_prob(self, features: np.ndarray) -> float | None:
            return self._m.process_streaming_prob(features)  # type: ignore[attr-defined, no-any-return]

    from pymicro_features import MicroFrontend
    from pymicro_wakeword import MicroWakeWord, Model

    stream = MicroStream(Opaque(MicroWakeWord.from_builtin(Model("okay_nabu"))))
    frontend, tenths = MicroFrontend(), [pcm[i : i + 320] for i in range(0, len(pcm) - 319, 320)]
    fallback = []
    for chunk in tenths:
        features = frontend.process_samples(chunk).features
        fallback.append((stream.feed(features) or 0.0) if features else 0.0)
    assert fallback == _library_scores("okay_nabu", tenths)
    assert max(fallback) > 0.95


def test_a_turn_sent_at_a_pause_is_exactly_its_audio_and_sent_again_whole_if_it_goes_on() -> None:
    from device.core.audio import CLOUD_RATE, MIC_RATE, Uplink, resample

    rng = np.random.default_rng(3)
    said = [(rng.standard_normal(n) * 3000).astype("<i2").tobytes() for n in (7040, 4800, 3200)]
    up = Uplink(0)
    for i in range(0, len(said[0]), 640):
        up.push(said[0][i : i + 640])
    up.seal()  # the pause: what the service gets is the first part, converted whole
    first = b"".join(up.take())
    assert first == resample(said[0], MIC_RATE, CLOUD_RATE)
    assert up.sealed_at == len(said[0]) // 2
    up.push(said[1])
    assert up.take() == []  # what follows a seal waits
    up.rewind()  # the user went on: the whole turn again, as if it had never been cut
    up.push(said[2])
    up.finish()
    again = b"".join(up.take())
    assert again == resample(b"".join(said), MIC_RATE, CLOUD_RATE)
    assert up.sent_bytes == len(again)


async def test_the_canceller_is_told_how_late_the_devices_own_sound_comes_back() -> None:
    """AEC3 finds the echo sooner when told the path (in `bench echo`, a lone "stop" over
    the answer at echo 0.7 went from 16-17 to 20 of 26): each time it starts, it is given
    what the devices report (PortAudio's output and input latencies; the simulated room's
    delay)."""
    from device.adapters.echo import EchoGuard
    from device.adapters.room import Room
    from device.app import App, RunOptions
    from tests.helpers import config

    guard = EchoGuard(None, 500, cancel_echo=True)
    guard.path_ms = lambda: 27.4
    guard.process(bytes(640), bytes(960), True, 320)
    assert guard._aec is not None and guard._aec.stream_delay_ms == 27
    room = Room(b"", False, delay_ms=25.0)
    app = App(config("http://127.0.0.1:9"), RunOptions(room=room, leds="none"))
    app.build()
    assert app.front.echo.path_ms() == 25.0
