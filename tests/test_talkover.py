"""Talking over the answer (`turn.barge_in = "voice"`), through the real daemon in the
simulated room against the emulator (`bench talkover` measures the same at scale)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from device.bench.echo import PLAIN_ANSWER, SELF_ANSWER
from device.bench.talkover import WITHIN_MS, one_run, sounds
from device.config import ConfigError, parse_config
from tests.helpers import read_jsonl

TIGHT = {"delay_ms": 5.0, "reverb_ms": 30.0}


async def test_a_correction_spoken_over_the_answer_cuts_it_where_it_was_heard(
    tmp_path: Path,
) -> None:
    """The answer stops within 300 ms of the words, the service is told to forget what was
    not played (truncated at the played ms; the emulator had sent all of it already, so
    there is nothing left to cancel), and the words reach it."""
    r = await one_run({"echo_gain": 0.3, **TIGHT}, PLAIN_ANSWER, sounds()["correction"], tmp_path)
    assert r.interrupted and r.latency_ms is not None and r.latency_ms <= WITHIN_MS, r
    assert r.integrity.windows > 10 and r.integrity.whole >= 0.75 * r.integrity.windows, r
    events = read_jsonl(tmp_path / "events.jsonl")
    barge = next(e for e in events if e["event"] == "barge_in")
    record = [x["event"] for x in read_jsonl(tmp_path / "record.jsonl") if "event" in x]
    truncate = next(x for x in record if x["type"] == "conversation.item.truncate")
    assert (truncate["item_id"], truncate["audio_end_ms"]) == (barge["item_id"], barge["played_ms"])
    # the light said the microphone was live while the answer played, then listening
    lights = [e["pattern"] for e in events if e["event"] == "led"]
    assert "answering_live" in lights and "answering" not in lights
    cut = lights.index("listening", lights.index("answering_live"))
    assert cut > 0


@pytest.mark.parametrize("gain", [0.3, 0.7])
async def test_a_lone_stop_spoken_over_the_answer_cuts_it_in_time_and_arrives_whole(
    tmp_path: Path, gain: float
) -> None:
    """One short word, over either answer, in both rooms, at a moderate and a loud echo: the
    neural VAD is asked with the moment before the word as its context, not cold, and hears
    the microphone less the device's linear echo (the word whole), not AEC3's output, whose
    suppressor dulled it (at 0.7, 6 to 14 misses in 26 runs)."""
    stop = sounds()["stop"]
    for reverb in ({"delay_ms": 5.0, "reverb_ms": 30.0}, {"delay_ms": 25.0, "reverb_ms": 120.0}):
        for answer in (PLAIN_ANSWER, SELF_ANSWER):
            folder = tmp_path / f"{reverb['reverb_ms']}-{len(answer)}"
            r = await one_run({"echo_gain": gain, **reverb}, answer, stop, folder)
            assert r.latency_ms is not None and r.latency_ms <= WITHIN_MS, (reverb, answer, r)
            # and the word reaches the service (it was over before the turn opened: once,
            # the turn waited for more speech, timed out and sent nothing)
            assert r.integrity.windows >= 3 and r.integrity.whole >= r.integrity.windows - 1, r


async def test_words_said_over_the_answer_reach_the_service_whole_and_its_voice_does_not(
    tmp_path: Path,
) -> None:
    """Over both answers in both rooms: at least 98 % of the correction's 100 ms windows
    arrive whole (AEC3's output for every frame gave 89 %: its suppressor turns the user
    down with the echo; its output where it took something out, as heard elsewhere, 92 to
    96 %), and what the service got before the words, the device's own voice, is at least
    30 dB under them (the microphone as heard: 2 to 27)."""
    import numpy as np

    from device.bench.harness import read_wav
    from device.core.audio import CLOUD_RATE, MIC_RATE

    correction = sounds()["correction"]
    for gain in (0.1, 0.3):
        whole = windows = 0
        for room in ({"delay_ms": 5.0, "reverb_ms": 30.0}, {"delay_ms": 25.0, "reverb_ms": 120.0}):
            for answer in (PLAIN_ANSWER, SELF_ANSWER):
                folder = tmp_path / f"{gain}-{room['reverb_ms']}-{len(answer)}"
                r = await one_run({"echo_gain": gain, **room}, answer, correction, folder)
                assert r.latency_ms is not None and r.words_at is not None, (gain, room, r)
                whole, windows = whole + r.integrity.whole, windows + r.integrity.windows
                turn = [e for e in read_jsonl(folder / "events.jsonl") if e["event"] == "turn_end"]
                sent = np.frombuffer(read_wav(sorted((folder / "turns").glob("*.wav"))[-1]), "<i2")
                lead = (r.words_at - turn[-1]["start_sample"]) * CLOUD_RATE // MIC_RATE
                before, words = (
                    sent[:lead].astype(float),
                    sent[lead : lead + CLOUD_RATE].astype(float),
                )
                assert lead > 0 and np.mean(before**2) < np.mean(words**2) / 1000, (gain, room)
        assert whole >= 0.98 * windows, (gain, whole, windows)


async def test_the_devices_own_answer_does_not_interrupt_it(tmp_path: Path) -> None:
    """Two answers per conversation, one saying the wake word twice, in a quiet and a loud
    room: the device never takes its own voice for the user's."""
    for gain in (0.1, 0.7):
        for answer in (PLAIN_ANSWER, SELF_ANSWER):
            folder = tmp_path / f"{gain}-{len(answer)}"
            r = await one_run({"echo_gain": gain, **TIGHT}, answer, None, folder)
            assert r.answers == 2 and not r.interrupted, (gain, answer)


async def test_a_cough_or_a_door_over_the_answer_does_not_interrupt_it(tmp_path: Path) -> None:
    what = sounds()
    for name in ("cough", "door"):
        r = await one_run({"echo_gain": 0.1, **TIGHT}, SELF_ANSWER, what[name], tmp_path / name)
        assert r.answers == 2 and not r.interrupted, name


def test_the_mode_is_named_in_the_configuration() -> None:
    assert parse_config({}).turn.barge_in == "voice"  # (the measurements hold: README)
    assert parse_config({"turn": {"barge_in": "wake"}}).turn.barge_in == "wake"
    try:
        parse_config({"turn": {"barge_in": "always"}})
    except ConfigError as e:
        assert "turn.barge_in must be one of wake, voice" in str(e)
    else:
        raise AssertionError("accepted")


def test_the_detector_tells_the_user_from_what_the_canceller_lets_through() -> None:
    """Levels only (dBFS per 20 ms frame): the device plays at -15; its echo reaches the
    microphone at -25 and the canceller leaves -60, with bursts at -35; the user, at -20
    as in their own turn, adds to the microphone."""
    from device.core.hearing import TalkOver

    def run(frames: list[tuple[float, float, bool]]) -> int | None:
        t = TalkOver()
        t.user_db = -20.0
        for i, (cleaned, raw, voice) in enumerate(frames, start=1):
            t.far(-15.0, raw)
            candidate = t.loud_enough(cleaned, -math.inf) and voice
            onset = t.feed(i * 320, cleaned, candidate, sounding=True)
            if onset is not None:
                return onset
        return None

    quiet = [(-60.0, -25.0, False)] * 100
    burst = [(-35.0, -25.0, True)] * 8  # the device's own voice, let through: no louder
    assert run(quiet + burst + quiet) is None
    user = [(-21.0, -19.0, True)] * 8  # the user over the echo: louder than it alone
    onset = run(quiet + user + quiet)
    assert onset == 100 * 320 - 200 * 16  # the first frame of the words, less the lead
    far_away = [(-40.0, -24.5, True)] * 8  # another voice, 20 dB under the user's
    assert run(quiet + far_away + quiet) is None


def _device_answer_and_user_over_it(gain: float, delay_ms: float, reverb_ms: float):  # type: ignore[no-untyped-def]
    """Real speech in the simulated room's acoustics: the device's answer (espeak's own
    voice) twice, heard through the room, and the user's correction 0.8 s into the second
    answer. Returns (microphone, far end as played at 16 kHz, the user alone), float64."""
    import numpy as np

    from device.adapters.room import room_response
    from device.core.audio import MIC_RATE
    from device.emulator.voice import espeak

    answer = np.frombuffer(espeak(PLAIN_ANSWER, MIC_RATE), "<i2").astype(float)
    answer = answer[: len(answer) // 320 * 320]  # (whole 20 ms frames)
    far = np.concatenate((answer, np.zeros(MIC_RATE // 2), answer, np.zeros(MIC_RATE)))
    words = np.frombuffer(sounds()["correction"], "<i2").astype(float)
    user = np.zeros(len(far))
    at = len(answer) + MIC_RATE // 2 + 4 * MIC_RATE // 5
    user[at : at + len(words)] = words
    echo = np.convolve(far, room_response(delay_ms, reverb_ms, gain))[: len(far)]
    return np.clip(user + echo, -32768, 32767), far, user


def test_the_subtractor_sends_the_users_words_over_the_answer_whole() -> None:
    """`EchoSubtractor` (what the service is sent of words said over an answer), on real
    speech in both rooms at echo 0.7: having heard one answer it leaves the device's voice
    at least 20 dB under what was heard, and every 100 ms window of the user's words said
    over the second one is whole (correlation ≥ 0.9, within 3 dB: the uplink measure)."""
    import numpy as np

    from device.adapters.echo import SUBTRACTED_DB, EchoSubtractor
    from device.bench.uplink import compare
    from device.core.audio import CLOUD_RATE, MIC_RATE, resample

    def at_24k(x: np.ndarray) -> np.ndarray:
        pcm = np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
        return np.frombuffer(resample(pcm, MIC_RATE, CLOUD_RATE), "<i2")

    for delay_ms, reverb_ms in ((5.0, 30.0), (25.0, 120.0)):
        mic, far, user = _device_answer_and_user_over_it(0.7, delay_ms, reverb_ms)
        s = EchoSubtractor()
        late = int(max(0.0, delay_ms - 10) * MIC_RATE / 1000)  # (told the path, 10 ms early)
        far_late = np.concatenate((np.zeros(late), far))[: len(far)]
        out = np.concatenate(
            [s.process(mic[i : i + 320], far_late[i : i + 320]) for i in range(0, len(mic), 320)]
        )
        start = np.flatnonzero(user)[0]
        second = len(far) - MIC_RATE - (len(far) - MIC_RATE - MIC_RATE // 2) // 2
        alone = slice(second, start)  # the second answer before the words: the device alone
        left_db = 10 * np.log10(np.mean(mic[alone] ** 2) / np.mean(out[alone] ** 2))
        assert left_db >= 20, (reverb_ms, left_db)
        assert s.erle_db >= SUBTRACTED_DB
        words = slice(start, start + int(np.flatnonzero(user)[-1] - start))
        got = compare(at_24k(out[words]), at_24k(user[words]))
        assert got.windows >= 15 and got.whole == got.windows, (reverb_ms, got)
        # the microphone as heard: the device's voice over the words breaks them
        heard = compare(at_24k(mic[words]), at_24k(user[words]))
        assert heard.whole < heard.windows - 2, (reverb_ms, heard)


def test_the_echo_reference_keeps_its_place_from_a_replys_first_frame() -> None:
    """The far end at 16 kHz, 20 ms at a time from the first frame of a reply, is the played
    sound at one fixed delay: frame by frame the same as converted in one piece, two
    samples for every three, and as a resampler would have it (soxr's, whose bursty
    output, padded to frames, slid ~70 samples against the echo over a reply's first
    seconds)."""
    import numpy as np

    from device.adapters.echo import FAR_FRAME, FarEndDecimator
    from device.core.audio import CLOUD_RATE, MIC_RATE, resample
    from device.emulator.voice import espeak

    played = espeak(PLAIN_ANSWER, CLOUD_RATE)
    played = played[: len(played) // (2 * FAR_FRAME) * 2 * FAR_FRAME]
    d = FarEndDecimator()
    framed = b"".join(
        d.push(played[i : i + 2 * FAR_FRAME]) for i in range(0, len(played), 2 * FAR_FRAME)
    )
    d.reset()
    assert framed == d.push(played) and len(framed) * 3 == len(played) * 2
    ref = np.frombuffer(resample(played, CLOUD_RATE, MIC_RATE), "<i2").astype(float)
    got = np.frombuffer(framed, "<i2").astype(float)
    lag = round(FarEndDecimator.DELAY)
    for second in range(0, len(got) // MIC_RATE - 1):  # the same delay throughout
        window = slice(second * MIC_RATE + 100, (second + 1) * MIC_RATE)
        a, b = got[window], ref[window.start - lag : window.stop - lag]
        if np.std(b) > 100:
            corr = np.dot(a - a.mean(), b - b.mean()) / (np.std(a) * np.std(b) * len(a))
            assert corr > 0.99, (second, corr)


def test_silero_is_loaded_when_a_conversation_needs_it_not_while_the_device_only_listens() -> None:
    """Talking over the reply is the default; its neural VAD (0.15 s of CPU to load, 4 MB)
    is not loaded while the device only listens for its wake word (the always-on cost), and
    is ready soon after the first conversation begins, long before a reply plays."""
    import time

    from device.core.states import State
    from device.events import EventLog
    from device.front import FrontEnd
    from tests.helpers import config

    class Speaker:
        playing = False

        def take_far_end(self, samples: int) -> bytes:
            return bytes(2 * samples)

    state = [State.IDLE]
    front = FrontEnd(
        config("http://127.0.0.1:9"), EventLog(None), lambda e: None, lambda: state[0],
        lambda f: None,
    )  # fmt: skip
    for _ in range(100):
        front.hear(bytes(640), Speaker())  # type: ignore[arg-type]
    assert front.neural_vad is None
    state[0] = State.CONNECTING
    front.hear(bytes(640), Speaker())  # type: ignore[arg-type]
    deadline = time.monotonic() + 20
    while front.neural_vad is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert front.neural_vad is not None
    # with the wake word alone it is never loaded
    wake_only = FrontEnd(
        config("http://127.0.0.1:9", turn={"barge_in": "wake"}), EventLog(None),
        lambda e: None, lambda: State.CONNECTING, lambda f: None,
    )  # fmt: skip
    wake_only.hear(bytes(640), Speaker())  # type: ignore[arg-type]
    time.sleep(0.5)
    assert wake_only.neural_vad is None
    # …unless the room has other people's speech in it: then it judges what the
    # background gate holds back in the user's turn (`core.hearing.HeldBack`)
    from device.bench import corpus as C

    state[0] = State.IDLE
    tv_room = FrontEnd(
        config("http://127.0.0.1:9", turn={"barge_in": "wake"}), EventLog(None),
        lambda e: None, lambda: state[0], lambda f: None,
    )  # fmt: skip
    tv = C.noise("babble", 4, 1).tobytes()
    for i in range(0, len(tv), 640):
        tv_room.hear(tv[i : i + 640], Speaker())  # type: ignore[arg-type]
    assert tv_room.neural_vad is None
    state[0] = State.CONNECTING
    tv_room.hear(tv[:640], Speaker())  # type: ignore[arg-type]
    deadline = time.monotonic() + 20
    while tv_room.neural_vad is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tv_room.background.gate_db > -60 and tv_room.neural_vad is not None
