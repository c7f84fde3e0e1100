"""Speech for measuring the wake word and endpointing: espeak-ng voices, sox noise and reverb.

Deterministic: the same corpus every run (seeded), so numbers compare between commits.
Everything is 16 kHz mono int16 numpy arrays.
"""

from __future__ import annotations

import functools
import itertools
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.audio import MIC_RATE
from ..emulator.voice import espeak
from . import harness

RATE = MIC_RATE
VOICES = [
    "en-us",
    "en",
    "en-gb-x-rp",
    "en-029",
    "en-gb-scotland",
    "en-us+f3",
    "en-gb+f4",
    "en-us+m3",
]
HIGH_VOICES = [
    "en+f1",
    "en+f2",
    "en+f5",
    "en-us+f4",
    "en+Annie",
    "en+Alicia",
    "en+Andrea",
    "en+anika",
]
"""High voices (150 to 310 Hz: women's and children's range), none of them in `VOICES`, of
which only one is a high one (en-us+f3; en-gb+f4 speaks at a man's pitch). The second look's
warps (`SecondLook.WARPS`) were chosen on these; its pitch gate and wait on `VOICES`."""
SPEEDS = [140, 165, 190]
PITCHES = [35, 50, 65]

PHRASES = {
    "okay_nabu": "okay nabu",
    "hey_jarvis": "hey jarvis",
    "alexa": "alexa",
    "hey_mycroft": "hey mycroft",
}
COMMANDS = [
    "what time is it",
    "what's the weather like today",
    "set a timer for ten minutes",
    "turn on the kitchen lights",
    "how many grams are in a cup of flour",
    "play some music",
]
NEAR_MISSES = [
    "okay now",
    "okay nana",
    "okay navigate",
    "okay, no",
    "hey, nabu",
    "okay google",
    "hey nancy",
    "a cabin, you",
    "ok, cabo",
    "alexander",
    "a lexus",
    "election",
    "hey harvest",
    "hey travis",
    "hey jarvis's car",
    "hey microsoft",
    "my craft",
    "hey, my raft",
    "a mycologist",
    "okay, not you",
    "no, nabu",
    "kanabu",
]
SENTENCES = [
    "Could you pass me the salt, please?",
    "The kettle is boiling, can you turn it off?",
    "I think we need more milk for the weekend.",
    "Dinner will be ready in about twenty minutes.",
    "Did anyone see where I left my glasses?",
    "The weather was lovely yesterday afternoon.",
    "We should paint the hallway before the holidays.",
    "My sister is coming over on Sunday.",
    "This recipe needs two eggs and a spoon of honey.",
    "Let's go for a walk after lunch.",
    "The train was late again this morning.",
    "I can't find the remote control anywhere.",
    "Please remember to water the plants on the balcony.",
    "That film was much better than I expected.",
    "The children have a school trip on Thursday.",
    "Put the leftovers in the fridge, please.",
    "I'll call the plumber about the leaking tap.",
    "How was your day at work today?",
    "We are out of coffee, add it to the list.",
    "The oven needs to be cleaned this weekend.",
    "Can you help me carry the shopping inside?",
    "It's getting dark earlier every evening.",
    "I read an interesting article about bees.",
    "The neighbours are having a party tonight.",
    "Don't forget your umbrella, it might rain.",
    "Our new dishwasher is very quiet.",
    "I need to finish this report by Friday.",
    "The cat knocked the vase off the table.",
    "Let's order a pizza and watch a movie.",
    "The garden looks beautiful in the spring.",
    "Grandma sent us a postcard from the seaside.",
    "I'm making soup with the last carrots.",
    "Turn the music down a little, please.",
    "The bus stop has moved to the other corner.",
    "We could visit the museum next Saturday.",
    "Who wants tea and who wants coffee?",
    "My phone battery is almost empty again.",
    "The bread from the bakery is still warm.",
    "I have a dentist appointment on Monday.",
    "Let me know when the washing machine is done.",
    "The new neighbours seem very friendly.",
    "Can you set the table for five people?",
    "It smells like something is burning.",
    "The football match starts at eight o'clock.",
    "I'd like to learn to play the guitar.",
    "The library closes early on Wednesdays.",
    "There's a spider in the bathroom sink.",
    "We should book the holiday soon.",
    "The soup needs a little more pepper.",
    "Is there any cake left from yesterday?",
    "The window in the bedroom won't close properly.",
    "I'll be home late, don't wait for me.",
    "Nobody answered the phone at the office.",
    "My back hurts from gardening all day.",
    "Let's invite the Millers for dinner.",
    "The dog needs a bath after that walk.",
    "Our internet was slow all evening.",
    "Could you check the post on your way in?",
    "I found a great recipe for lemon cake.",
    "The traffic on the bridge was terrible.",
    "Okay, let's get started with the cleaning.",
    "Okay, I'll do the dishes tonight.",
    "Hey, have you seen my keys anywhere?",
    "Hey, can you open the door for me?",
    "Jars of jam are on the top shelf.",
    "The knob on the cooker is loose.",
    "A new bakery opened near the station.",
    "Alex said he would bring the drinks.",
    "My friend Nabil is visiting next month.",
    "We need a bigger table for the kitchen.",
]


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str
    wpm: int
    pitch: int


def positive_utterances(word: str, voices: list[str] = VOICES) -> list[Utterance]:
    """Every voice, speed and pitch, alternating the wake word alone and with a command."""
    out = []
    for n, (voice, wpm, pitch) in enumerate(itertools.product(voices, SPEEDS, PITCHES)):
        text = PHRASES[word] if n % 2 == 0 else f"{PHRASES[word]}, {COMMANDS[n % len(COMMANDS)]}"
        out.append(Utterance(text, voice, wpm, pitch))
    return out


@functools.lru_cache(maxsize=4096)
def say(u: Utterance) -> np.ndarray:
    return np.frombuffer(espeak(u.text, RATE, voice=u.voice, wpm=u.wpm, pitch=u.pitch), "<i2")


def _sox(args: list[str], data: np.ndarray | None = None) -> np.ndarray:
    """Run sox on `data` (or on nothing, for `synth`), returning 16 kHz mono int16."""
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "in.wav", Path(d) / "out.wav"
        fmt = ["-r", str(RATE), "-c", "1", "-b", "16"]
        if data is None:
            cmd = ["sox", "-R", "-n", *fmt, str(dst), *args]
        else:
            write_wav(src, data)
            cmd = ["sox", "-R", str(src), *fmt, str(dst), *args]
        subprocess.run(cmd, check=True, capture_output=True)
        return read_wav(dst)


def write_wav(path: Path, x: np.ndarray) -> None:
    harness.write_wav(path, np.asarray(x, dtype="<i2").tobytes(), RATE)


def read_wav(path: Path) -> np.ndarray:
    return np.frombuffer(harness.read_wav(path), "<i2").copy()


@functools.lru_cache(maxsize=8)
def noise(kind: str, seconds: int, seed: int) -> np.ndarray:
    """sox's pink/brown/white noise, babble (several espeak voices talking at once), or music
    (plucked chords, two a second, from a major scale)."""
    if kind == "music":
        return _music(seconds, seed)
    if kind == "babble":
        rng = np.random.default_rng(seed)
        total = np.zeros(seconds * RATE)
        for k in range(4):
            pos = 0
            while pos < len(total):
                s = SENTENCES[int(rng.integers(len(SENTENCES)))]
                x = say(Utterance(s, VOICES[(k + pos) % len(VOICES)], 170, 50)).astype(float)
                n = min(len(x), len(total) - pos)
                total[pos : pos + n] += x[:n]
                pos += n
        return np.asarray(np.clip(total / 2, -32768, 32767).astype("<i2"))
    return _sox(["synth", str(seconds), f"{kind}noise"]).astype("<i2")


def _music(seconds: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    beat = RATE // 2
    t = np.arange(beat) / RATE
    scale = [0, 2, 4, 5, 7, 9, 11]
    out = np.zeros(seconds * RATE)
    for start in range(0, len(out) - beat + 1, beat):
        root = int(rng.integers(7))
        for step in (0, 2, 4):  # a triad of the scale, an octave below middle C to above it
            degree = root + step
            semis = scale[degree % 7] + 12 * (degree // 7) - 12
            f0 = 261.63 * 2 ** (semis / 12)
            note = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3, 4))
            out[start : start + beat] += note * np.exp(-t / 0.18)
    out *= 0.25 * 32767 / np.max(np.abs(out))
    return out.astype("<i2")


def reverberate(x: np.ndarray) -> np.ndarray:
    """sox reverb: a medium room (reverberance 50 %, room scale 70 %), wet and dry mixed."""
    padded = np.concatenate([x, np.zeros(RATE // 2, dtype="<i2")])
    return _sox(["reverb", "50", "50", "70"], padded)


def active_rms(x: np.ndarray) -> float:
    """RMS over the loud part (frames within 30 dB of the loudest), i.e. the speech itself."""
    f = x[: len(x) // 320 * 320].astype(float).reshape(-1, 320)
    e = np.sqrt(np.mean(f**2, axis=1))
    return float(np.sqrt(np.mean(e[e > e.max() * 10 ** (-30 / 20)] ** 2)))


def with_noise(x: np.ndarray, snr_db: float, kind: str, seed: int) -> np.ndarray:
    n = noise(kind, 30, 0).astype(float)
    start = seed * 4801 % (len(n) - len(x) - 1)
    seg = n[start : start + len(x)]
    gain = active_rms(x) / (np.sqrt(np.mean(seg**2)) * 10 ** (snr_db / 20))
    return np.asarray(np.clip(x.astype(float) + seg * gain, -32768, 32767).astype("<i2"))


def padded(x: np.ndarray, before: float = 0.5, after: float = 1.0) -> np.ndarray:
    return np.concatenate(
        [np.zeros(int(before * RATE), "<i2"), x, np.zeros(int(after * RATE), "<i2")]
    )


def speech_end(x: np.ndarray) -> int:
    """The last sample of clean speech: where the 10 ms envelope last exceeds -45 dB of peak."""
    f = x[: len(x) // 160 * 160].astype(float).reshape(-1, 160)
    e = np.sqrt(np.mean(f**2, axis=1))
    loud = np.nonzero(e > e.max() * 10 ** (-45 / 20))[0]
    return int((loud[-1] + 1) * 160)


def negative_speech(minutes: float, seed: int = 1, voices: list[str] = VOICES) -> np.ndarray:
    """Ordinary household talk, one sentence after another with short gaps."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    for n in itertools.count():
        s = SENTENCES[n % len(SENTENCES)]
        u = Utterance(
            s,
            voices[int(rng.integers(len(voices)))],
            int(rng.choice(SPEEDS)),
            int(rng.choice(PITCHES)),
        )
        x = say(u)
        gap = np.zeros(int(rng.uniform(0.3, 1.2) * RATE), "<i2")
        parts += [x, gap]
        total += len(x) + len(gap)
        if total >= minutes * 60 * RATE:
            break
    return np.concatenate(parts)


def near_miss_clips(seed: int = 2, voices: list[str] = VOICES) -> list[np.ndarray]:
    """Each near-miss phrase in every voice, at a random speed and pitch."""
    rng = np.random.default_rng(seed)
    return [
        padded(say(Utterance(p, v, int(rng.choice(SPEEDS)), int(rng.choice(PITCHES)))))
        for p in NEAR_MISSES
        for v in voices
    ]
