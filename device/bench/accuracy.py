"""Wake word accuracy and endpointing on a synthetic corpus (`voice-device bench accuracy`).

Positives: each wake word said by 8 espeak-ng voices at 3 speeds and 3 pitches (72
utterances), half of them followed by a command, in quiet, with sox reverb, reverberated and
20 dB quieter (far: a far or quiet talker), with sox noise (white, pink or brown in turn) at
20, 10 and 5 dB SNR, and with babble (other voices) at 10 dB.
Negatives: over an hour of ordinary household sentences in the same voices, babble and sox
noise, streamed through each detector as the device hears them; every detection is
a false accept (one per 2 s refractory period). Near misses ("okay now", "alexander"…)
are scored apart: how often a phrase chosen to sound alike is taken for the wake word.
Everything goes through the device's own detection path (WebRTC noise suppression at
audio.noise_suppression while the room's floor calls for it), so the numbers are the
device's, not the bare model's.

Endpointing: the commands, with and without pauses between their parts, through the
device's VAD and endpointer: how long after the true end of speech the turn ends, and
whether a pause ever ends it early.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters.denoise import Suppression
from ..adapters.vad import NeuralVad, Vad
from ..adapters.wakeword import MICRO_MODELS, OPENWAKEWORD_MODELS, WakeEngine, load_engine
from ..config import AudioConfig, WakeConfig
from ..core.audio import rms_dbfs
from ..core.endpoint import Endpointer, EndpointSettings, SpeechResumed, TurnEnded, TurnPaused
from ..core.hearing import USER_FRAMES, BackgroundSpeech, HeldBack, is_firm
from . import corpus as C
from .harness import louder

CONDITIONS = ["quiet", "reverb", "far", "20 dB", "10 dB", "5 dB", "babble"]
HIGH_CONDITIONS = ["quiet", "far", "10 dB"]
"""For the high voices (`corpus.HIGH_VOICES`), reported as "high quiet" and so on."""
HIGH_MINUTES = 20
"""Household talk in the high voices among the negatives (4 with --quick)."""
FAR_DB = -20.0
"""A far or quiet talker: the reverberated utterance, this much quieter."""
THRESHOLDS = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]
NOISE_KINDS = ["white", "pink", "brown"]
NOISE_SUPPRESSION = AudioConfig.noise_suppression
SUPPRESS_ABOVE_DB = AudioConfig.noise_suppression_above_db
SECOND_LOOK = WakeConfig.second_look


def detector(engine: str, models: list[str]) -> WakeEngine:
    """The wake word models as the device loads them (with its second look)."""
    return load_engine(engine, models, second_look=SECOND_LOOK)


def detectors_hear() -> Suppression:
    """Noise suppression as the device runs it: only while the room is noisy."""
    return Suppression(NOISE_SUPPRESSION, SUPPRESS_ABOVE_DB)


def idle_frame(heard: Suppression, frame: bytes) -> bytes:
    """A frame the idle device hears: what its detectors get (and the room noted)."""
    out = heard.process(frame)
    heard.hear_room(rms_dbfs(frame))
    return out


MICRO_EXTRA_MINUTES = 120
"""More household talk for the micro engine's false accepts (over three hours in all);
openWakeWord, 30 times slower, is run over the first hour only."""
GAP = np.zeros(C.RATE, "<i2")  # a second of silence: the detector's window empties


def in_condition(x: np.ndarray, condition: str, seed: int) -> np.ndarray:
    return in_condition_padded(C.padded(x), condition, seed)


def in_condition_padded(clip: np.ndarray, condition: str, seed: int) -> np.ndarray:
    if condition == "quiet":
        return clip
    if condition == "reverb":
        return C.reverberate(clip)
    if condition == "far":
        return np.frombuffer(louder(C.reverberate(clip).tobytes(), FAR_DB), "<i2")
    kind, *below = condition.split()
    if kind in ("babble", "music"):  # "babble 15 dB": voices that much below; plain: 10 dB
        return C.with_noise(clip, float(below[0]) if below else 10.0, kind, seed)
    snr = float(condition.split()[0])
    return C.with_noise(clip, snr, NOISE_KINDS[seed % len(NOISE_KINDS)], seed)


def scores_per_clip(engine: WakeEngine, clips: list[np.ndarray]) -> np.ndarray:
    """Highest score of each word in each clip: clips go through one detector, a second of
    silence apart, as they would through the device (no model reloads in between)."""
    heard = detectors_hear()
    out = np.zeros((len(clips), len(engine.words)))
    for c, clip in enumerate(clips):
        pcm = np.concatenate([clip, GAP]).tobytes()
        for i in range(0, len(pcm), 640):
            scores = engine.process(idle_frame(heard, pcm[i : i + 640]))
            out[c] = np.maximum(out[c], scores)
    return out


def false_accepts(engine: WakeEngine, stream: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """Detections per word and threshold in a long stream, one per 2 s refractory period."""
    heard = detectors_hear()
    count = np.zeros((len(engine.words), len(thresholds)), dtype=int)
    quiet_until = np.zeros_like(count)
    pcm = stream.tobytes()
    for frame, i in enumerate(range(0, len(pcm), 640), start=1):
        scores = engine.process(idle_frame(heard, pcm[i : i + 640]))
        for w, s in enumerate(scores):
            for t, th in enumerate(thresholds):
                if s >= th and frame >= quiet_until[w, t]:
                    count[w, t] += 1
                    quiet_until[w, t] = frame + 100
    return count


@dataclass
class WakeResult:
    engine: str
    word: str
    default_threshold: float
    accepted: dict[str, dict[str, float]]
    """condition → threshold (as str) → share of utterances accepted."""
    false_accepts_per_hour: dict[str, float]
    negative_minutes: float
    near_misses_accepted: dict[str, float]
    """threshold → share of near-miss utterances taken for a wake word."""
    high_near_misses_accepted: dict[str, float]
    """The same in the high voices."""
    looks_per_hour: float
    """Second looks taken in the negative audio (each costs about two model passes over 2 s)."""


def measure_wake(
    engine_name: str, models: list[str], negatives: np.ndarray, progress: Callable[[str], None]
) -> list[WakeResult]:
    engine = detector(engine_name, models)
    thresholds = sorted({*THRESHOLDS, *(round(w.threshold, 2) for w in engine.words)})
    per_word: dict[str, dict[str, np.ndarray]] = {m: {} for m in models}
    sets = [("", C.VOICES, CONDITIONS), ("high ", C.HIGH_VOICES, HIGH_CONDITIONS)]
    for word_index, model in enumerate(models):
        for label, voices, conditions in sets:
            utterances = C.positive_utterances(model, voices)
            for condition in conditions:
                clips = [in_condition(C.say(u), condition, n) for n, u in enumerate(utterances)]
                progress(f"{engine_name} {model}: {label}{condition} ({len(clips)} utterances)")
                # a detector of its own per condition: the model's front end adapts to what
                # it heard (its noise estimate), and one condition must not carry into the next
                fresh = detector(engine_name, models)
                per_word[model][label + condition] = scores_per_clip(fresh, clips)[:, word_index]
    progress(f"{engine_name}: near misses")
    near = scores_per_clip(detector(engine_name, models), C.near_miss_clips())
    near_high = scores_per_clip(
        detector(engine_name, models), C.near_miss_clips(voices=C.HIGH_VOICES)
    )
    progress(f"{engine_name}: {len(negatives) / C.RATE / 60:.0f} min of negative audio")
    listening = detector(engine_name, models)
    fa = false_accepts(listening, negatives, thresholds)
    hours = len(negatives) / C.RATE / 3600
    results = []
    for w, (model, word) in enumerate(zip(models, engine.words, strict=True)):
        results.append(
            WakeResult(
                engine_name,
                model,
                word.threshold,
                {
                    cond: {f"{t:.2f}": float(np.mean(scores >= t)) for t in thresholds}
                    for cond, scores in per_word[model].items()
                },
                {f"{t:.2f}": float(fa[w, i] / hours) for i, t in enumerate(thresholds)},
                len(negatives) / C.RATE / 60,
                {f"{t:.2f}": float(np.mean(near[:, w] >= t)) for t in thresholds},
                {f"{t:.2f}": float(np.mean(near_high[:, w] >= t)) for t in thresholds},
                getattr(listening, "looks", 0) / hours,
            )
        )
    return results


# ---------------------------------------------------------------------------------------------
# Endpointing


@dataclass
class EndpointResult:
    condition: str
    turns: int
    late_ms_median: float
    late_ms_p95: float
    cut_short: int
    """Turns ended before the speech did (a pause mistaken for the end)."""
    never_ended: int
    commit_ms_median: float = float("nan")
    """When the turn that stood was sent and its answer asked for (`turn.commit_ms`)."""
    commit_ms_p95: float = float("nan")
    withdrawn: int = 0
    """Answers asked for at a pause and withdrawn because the user went on."""


LEAD_S = 3.2
"""The room before the turn: what the device hears while idle (the wake word's 1.2 s and
two seconds before it), from which it learns how loud any background speech is."""


@dataclass
class Endpointed:
    end: int
    """Where the turn ended (samples from its start)."""
    commit: int
    """Where the turn that stood was sent: the last pause of `commit_ms` before the end."""
    withdrawn: int
    """Pauses of `commit_ms` the user spoke again after."""


def run_endpointer(audio: np.ndarray, settings: EndpointSettings) -> Endpointed | None:
    """Where the device would end this turn (in samples from the turn's start, which is
    LEAD_S into `audio`): denoised audio, webrtcvad, the background-speech gate (and Silero
    on the frames it holds back, `HeldBack`), the endpointer, as `FrontEnd` runs them."""
    heard, vad, ep = detectors_hear(), Vad(2), Endpointer(settings)
    idle_vad, background = Vad(2), BackgroundSpeech()
    neural: NeuralVad | None = None
    held_back = HeldBack()
    lead = int(LEAD_S * C.RATE) * 2
    pcm = audio.tobytes()
    paused_at: int | None = None
    withdrawn = 0
    levels: deque[float] = deque(maxlen=USER_FRAMES)  # (the user's voiced frames)
    for i in range(0, len(pcm) - 639, 640):
        if i < lead:
            frame = idle_frame(heard, pcm[i : i + 640])
            background.observe(rms_dbfs(frame), idle_vad.is_speech(frame))
            continue
        frame = heard.process(pcm[i : i + 640])
        level = rms_dbfs(frame)
        if i == lead:
            if background.turn_starts() > -math.inf:  # (a room with background speech)
                neural = NeuralVad()
            ep.wait_for_speech(0, 5000)
        at = (i - lead) // 2 + 320
        voiced = vad.is_speech(frame)
        speech = voiced and background.users(level)
        if neural is not None:  # (as `FrontEnd._users`)
            neural.hear(frame)
            speech = held_back.users(voiced, speech, level, levels, at, neural.is_speech)
        if speech:
            levels.append(level)
        firm = speech and is_firm(level, levels)
        ev = ep.feed(at, speech, firm)
        if isinstance(ev, TurnPaused):
            paused_at = ev.at_sample
        elif isinstance(ev, SpeechResumed):
            paused_at, withdrawn = None, withdrawn + 1
        elif isinstance(ev, TurnEnded):
            commit = paused_at if paused_at is not None else ev.end_sample
            return Endpointed(ev.end_sample, commit, withdrawn)
    return None


def endpoint_turns() -> Iterable[tuple[np.ndarray, int]]:
    """(clean audio, true end) for commands said plainly and with pauses of 0.2 to 0.5 s."""
    for n, (voice, wpm) in enumerate(itertools.product(C.VOICES, C.SPEEDS)):
        command = C.COMMANDS[n % len(C.COMMANDS)]
        plain = C.say(C.Utterance(command, voice, wpm, 50))
        yield C.padded(plain, 0.3, 3.0), C.speech_end(C.padded(plain, 0.3, 0))
        first, second = command.split(" ", 2)[:2], command.split(" ", 2)[2:]
        if second:
            a = C.say(C.Utterance(" ".join(first), voice, wpm, 50))
            b = C.say(C.Utterance(second[0], voice, wpm, 50))
            pause = np.zeros(int((0.2 + 0.1 * (n % 4)) * C.RATE), "<i2")
            a = a[: C.speech_end(a)]  # espeak's own trailing silence would lengthen the pause
            joined = np.concatenate([a, pause, b])
            yield C.padded(joined, 0.3, 3.0), C.speech_end(C.padded(joined, 0.3, 0))


ENDPOINT_CONDITIONS = [
    "quiet",
    "reverb",
    "20 dB",
    "10 dB",
    "babble 15 dB",
    "babble 10 dB",
    "music 10 dB",
]


def measure_endpointing(
    silence_ms: int, commit_ms: int, progress: Callable[[str], None]
) -> list[EndpointResult]:
    settings = EndpointSettings(silence_ms=silence_ms, commit_ms=commit_ms)
    turns = list(endpoint_turns())
    results = []
    lead = np.zeros(int(LEAD_S * C.RATE), "<i2")
    for condition in ENDPOINT_CONDITIONS:
        progress(f"endpointing: {condition} ({len(turns)} turns)")
        late, commits, cut, never, withdrawn = [], [], 0, 0, 0
        for n, (clean, true_end) in enumerate(turns):
            # the background goes on through the lead (the room before the turn) as well
            audio = in_condition_padded(np.concatenate([lead, clean]), condition, n)
            got = run_endpointer(audio, settings)
            if got is None:
                never += 1
                continue
            ms = (got.end - true_end) * 1000 / C.RATE
            if ms < 0:
                cut += 1
            late.append(ms)
            commits.append((got.commit - true_end) * 1000 / C.RATE)
            withdrawn += got.withdrawn
        results.append(
            EndpointResult(
                condition,
                len(turns),
                statistics.median(late) if late else float("nan"),
                float(np.percentile(late, 95)) if late else float("nan"),
                cut,
                never,
                statistics.median(commits) if commits else float("nan"),
                float(np.percentile(commits, 95)) if commits else float("nan"),
                withdrawn,
            )
        )
    return results


# ---------------------------------------------------------------------------------------------


def run(quick: bool = False, out: Path | None = None, engines: list[str] | None = None) -> int:
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        print(f"  [{time.monotonic() - t0:5.0f} s] {msg}", flush=True)

    minutes = 6 if quick else 50
    print(
        f"bench accuracy{' --quick' if quick else ''}: {minutes} min of household talk "
        f"(and {4 if quick else HIGH_MINUTES} in high voices) "
        f"{'' if quick else f'(micro: {minutes + MICRO_EXTRA_MINUTES} min) '}and "
        f"{2 if quick else 12} min of noise per engine; "
        f"this takes {'about 4' if quick else 'about 20'} minutes here",
        flush=True,
    )
    negatives = np.concatenate(
        [
            C.negative_speech(minutes),
            C.negative_speech(4 if quick else HIGH_MINUTES, seed=5, voices=C.HIGH_VOICES),
            *(C.noise(k, 30 if quick else 180, 1) for k in ("white", "pink", "brown", "babble")),
        ]
    )
    # the default engine is held to at most 0.1 false accepts an hour: three hours of it
    longer = (
        negatives
        if quick
        else np.concatenate([negatives, C.negative_speech(MICRO_EXTRA_MINUTES, seed=11)])
    )
    wake: list[WakeResult] = []
    engines = engines or ["micro", "openwakeword"]
    for name in engines:
        models = list(MICRO_MODELS if name == "micro" else OPENWAKEWORD_MODELS[:4])
        if quick:
            models = models[:1]
        heard = longer if name == "micro" else negatives
        wake += measure_wake(name, models, heard, progress)
    endpointing = measure_endpointing(700, 300, progress)
    report(wake, endpointing)
    if out is not None:
        out.write_text(
            json.dumps(
                {
                    "wake": [r.__dict__ for r in wake],
                    "endpointing": [r.__dict__ for r in endpointing],
                },
                indent=2,
            )
        )
    return 0


def wake_table(
    wake: list[WakeResult],
    label: str,
    conditions: list[str],
    last: str,
    value: Callable[[WakeResult, str], float],
    threshold: bool = True,
) -> None:
    """One row per engine and word at its default threshold: the share accepted in each of
    `conditions` of the set `label` names ("" or "high "), its near misses, then `last`."""
    cols = "".join(f"{c:>8}" for c in conditions)
    head = f"{'threshold':>9}" if threshold else ""
    print(f"{'engine':<13}{'wake word':<13}{head}{cols}{'near':>7}{last:>9}")
    for r in wake:
        t = f"{r.default_threshold:.2f}"
        near = r.high_near_misses_accepted if label else r.near_misses_accepted
        row = "".join(f"{r.accepted[label + c][t]:>8.0%}" for c in conditions)
        first = f"{t:>9}" if threshold else ""
        print(f"{r.engine:<13}{r.word:<13}{first}{row}{near[t]:>7.0%}{value(r, t):>9.1f}")


def report(wake: list[WakeResult], endpointing: list[EndpointResult]) -> None:
    if wake:
        n = len(C.positive_utterances("alexa"))
        minutes = " / ".join(
            dict.fromkeys(f"{r.negative_minutes:.0f} min ({r.engine})" for r in wake)
        )
        print(
            f"\nWake words: share of {n} utterances accepted per condition (far = reverberated "
            "and 20 dB quieter;\nsox noise at 20/10/5 dB SNR; babble = other voices at 10 dB), "
            "near-miss phrases taken for the\nwake word, and false accepts per hour over "
            f"{minutes} of other speech and noise"
        )
        wake_table(wake, "", CONDITIONS, "FA/h", lambda r, t: r.false_accepts_per_hour[t])
        print(
            f"\nHigh voices ({len(C.HIGH_VOICES)} voices at 150-310 Hz, none in the corpus "
            "above;\nthe second look's warps were chosen on them), at the default threshold; "
            "second looks taken\nper hour of the negative audio"
        )
        wake_table(wake, "high ", HIGH_CONDITIONS, "looks/h", lambda r, t: r.looks_per_hour, False)
        print("\nBy threshold: quiet / 10 dB / near misses / false accepts per hour")
        for r in wake:
            cells = [
                f"{t}: {r.accepted['quiet'][t]:.0%} / {r.accepted['10 dB'][t]:.0%} / "
                f"{r.near_misses_accepted[t]:.0%} / {r.false_accepts_per_hour[t]:.1f}"
                for t in (f"{x:.2f}" for x in THRESHOLDS)
            ]
            print(f"  {r.engine} {r.word}:\n    " + "\n    ".join(cells))
    print(
        "\nEndpointing (turn.silence_ms = 700, turn.commit_ms = 300): after the true end of "
        "speech, when the\nturn that stood was sent (commit) and when it was over (end); "
        "answers asked for at a pause\nand withdrawn because the user went on"
    )
    print(
        f"{'condition':<14}{'turns':>6}{'commit':>8}{'p95':>8}{'end':>8}{'p95':>8}"
        f"{'cut short':>11}{'never ended':>13}{'withdrawn':>11}"
    )
    for e in endpointing:
        print(
            f"{e.condition:<14}{e.turns:>6}{_ms(e.commit_ms_median):>8}{_ms(e.commit_ms_p95):>8}"
            f"{_ms(e.late_ms_median):>8}{_ms(e.late_ms_p95):>8}"
            f"{e.cut_short:>11}{e.never_ended:>13}{e.withdrawn:>11}"
        )


def _ms(value: float) -> str:
    """A latency, or a dash where there is none (no turn ended)."""
    return "\u2013" if math.isnan(value) else f"{value:.0f}ms"


def as_json(results: Any) -> str:
    return json.dumps(results, indent=2, default=lambda o: o.__dict__)
