"""Wake word engines: pymicro-wakeword (default) and pyopen-wakeword (optional extra).

An engine runs several wake words at once: the audio front end (features, or openWakeWord's
mel spectrogram and embeddings) is computed once per frame and shared by every model.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..core.audio import FRAME_MS, MIC_RATE, SAMPLE_BYTES, ms_to_samples, pitch_hz

log = logging.getLogger(__name__)

MICRO_MODELS = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")
OPENWAKEWORD_MODELS = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft", "hey_rhasspy")
ENGINES = ("micro", "openwakeword")


class WakeModelError(Exception):
    """The configured wake word model cannot be loaded; the message says which and why."""


MAX_MODEL_BYTES = 64 << 20
MIN_MODEL_BYTES = 64
PROBE_TIMEOUT_S = 30


def check_model_file(name: str, path: Path) -> None:
    """A TFLite model file that is there, plausibly sized and has the TFLite header.

    The TFLite runtime does not check what it maps: a missing, empty or truncated file
    crashes the whole process (SIGSEGV), at start or on a reload."""
    try:
        info = path.stat()
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise WakeModelError(f"wake word model {name!r}: {path}: {e.strerror or e}") from e
    if not MIN_MODEL_BYTES <= info.st_size <= MAX_MODEL_BYTES:
        raise WakeModelError(
            f"wake word model {name!r}: {path} is {info.st_size} bytes, not a model"
        )
    if head[4:8] != b"TFL3":
        raise WakeModelError(f"wake word model {name!r}: {path} is not a TFLite model")


def micro_model_file(name: str, config: Path) -> Path:
    """The .tflite file a microWakeWord .json names, checked."""
    try:
        if config.stat().st_size > 1 << 16:
            raise ValueError("too large for a model description")
        data = json.loads(config.read_text(encoding="utf-8"))
        model = data["model"]
        if not isinstance(model, str) or not isinstance(data.get("micro"), dict):
            raise ValueError("no 'model' file and 'micro' section")
    except (OSError, ValueError, KeyError, RecursionError) as e:
        raise WakeModelError(f"cannot load wake word model {name!r}: {e}") from e
    path = config.parent / model
    check_model_file(name, path)
    return path


PROBE = """
import sys
from pathlib import Path
from device.adapters.wakeword import load_engine
engine = load_engine(sys.argv[1], sys.argv[2:], role="probe")
engine.process(bytes(3200))
"""


def probe(engine: str, models: Sequence[str]) -> None:
    """Load the model files in a process of their own first: one the header check passes
    but the runtime cannot take (truncated inside) kills that process, not the daemon."""
    import subprocess
    import sys

    files = [m for m in models if m not in MICRO_MODELS + OPENWAKEWORD_MODELS]
    if not files:
        return
    try:
        r = subprocess.run(
            [sys.executable, "-c", PROBE, engine, *files],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WakeModelError(f"wake word models {files} could not be tried: {e}") from e
    if r.returncode != 0:
        how = f"signal {-r.returncode}" if r.returncode < 0 else f"status {r.returncode}"
        last = r.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise WakeModelError(
            f"wake word model {', '.join(files)} does not load ({how}: {last[0][:200]}): "
            "the file is corrupt or truncated"
        )


@dataclass
class WakeWord:
    model: str
    """What the configuration names: a built-in model or a path."""
    phrase: str
    """The phrase, as the model's author wrote it ("Okay Nabu")."""
    threshold: float


class WakeEngine(Protocol):
    words: list[WakeWord]
    late: int
    """Samples by which the scores `process` just returned come after the end of the audio
    they judged: 0 but for a second look (`SecondLook`)."""

    def process(self, pcm: bytes) -> list[float]:
        """Feed 16 kHz mono int16; per word, the highest score of the windows completed."""
        ...


def _best(scores: Iterable[float | None]) -> float:
    return max((s for s in scores if s is not None), default=0.0)


FEATURE_BYTES = 320
"""The audio the microWakeWord front end turns into one feature frame: 10 ms."""
FEATURES = 40
"""Values in a feature frame (the front end's filterbank channels)."""


class MicroStream:
    """One microWakeWord model fed feature frames: the same arithmetic as pymicro-wakeword's
    `process_streaming_prob` (quantize `stride` frames, invoke, dequantize, mean over the
    model's sliding window: equal scores, `tests/test_audio.py`), without its per-call
    allocations, copies through the C API and exact-fraction `statistics.mean`, which
    together cost half as much again as the model's own features and inference (`bench
    perf`): the quantized frames are written straight into the interpreter's input tensor and
    the score read from its output. On the model object's public interpreter handles; a model
    without them is run by the library itself. The views into the interpreter's tensors live
    as long as this stream, which keeps the model (never `reset()`: that makes a new
    interpreter)."""

    def __init__(self, model: Any) -> None:
        import ctypes

        import numpy as np

        self._np = np
        self.model = model
        self._window: deque[float] = deque(maxlen=int(model.sliding_window_size))
        self._input: Any = None
        self._output: Any = None
        try:
            lib = model.lib
            data = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(("TfLiteTensorData", lib))
            tensors = []
            for tensor, dtype in (
                (model.input_tensor, model.input_dtype),
                (model.output_tensor, model.output_dtype),
            ):
                size, address = lib.TfLiteTensorByteSize(tensor), data(tensor)
                if not address or size <= 0:
                    raise ValueError("no tensor buffer")
                buffer = (ctypes.c_byte * size).from_address(address)
                tensors.append(np.frombuffer(buffer, dtype))
        except (AttributeError, ValueError, TypeError):
            return  # (an older or other library: `feed` asks it)
        self._stride = int(model.stride)
        if tensors[0].size != self._stride * FEATURES or tensors[1].size < 1:
            return  # (not the shapes the library's streaming assumes either)
        self._input, self._output = tensors
        self._invoke = lib.TfLiteInterpreterInvoke
        self._interpreter = model.interpreter
        self._staged = np.empty(self._input.size)
        """The window's feature frames as they come (float, as the library quantizes)."""
        self._staged_frames = 0

    def feed(self, features: list[float]) -> float | None:
        """One feature frame; the model's score when this frame completed a window."""
        m = self.model
        if self._input is None:
            return m.process_streaming_prob(  # type: ignore[no-any-return]
                self._np.asarray(features).reshape((1, 1, len(features)))
            )
        at, staged = self._staged_frames, self._staged
        staged[at * FEATURES : (at + 1) * FEATURES] = features
        self._staged_frames = at = at + 1
        if at < self._stride:
            return 0.0
        self._staged_frames = 0
        np = self._np
        np.divide(staged, m.input_scale, out=staged)
        np.add(staged, m.input_zero_point, out=staged)
        self._input[:] = np.rint(staged, out=staged)  # (`np.round`'s rounding; cast as `astype`)
        self._invoke(self._interpreter)
        window = self._window
        window.append((float(self._output[0]) - m.output_zero_point) * m.output_scale)
        if len(window) < window.maxlen:  # type: ignore[operator]
            return 0.0
        return sum(window) / len(window)


class MicroWakeWordEngine:
    """microWakeWord models through pymicro-wakeword's bundled TFLite runtime; the features,
    computed once per 10 ms, are shared by every model."""

    late = 0

    def __init__(self, models: Sequence[str], thresholds: dict[str, float] | None = None) -> None:
        from micro_features_cpp import create_frontend, process_samples
        from pymicro_wakeword import MicroWakeWord, Model

        self._models: list[Any] = []
        self.words: list[WakeWord] = []
        for name in models:
            try:
                if name in MICRO_MODELS:
                    m = MicroWakeWord.from_builtin(Model(name))
                else:
                    path = Path(name)
                    if path.suffix != ".json" or not path.is_file():
                        raise WakeModelError(
                            f"wake word model {name!r} is neither a built-in microWakeWord model "
                            f"({', '.join(MICRO_MODELS)}) nor a microWakeWord .json file"
                        )
                    micro_model_file(name, path)
                    m = MicroWakeWord.from_config(path)
            except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
                raise WakeModelError(f"cannot load wake word model {name!r}: {e}") from e
            threshold = (thresholds or {}).get(name, float(m.probability_cutoff))
            self._models.append(m)
            self.words.append(WakeWord(name, str(m.wake_word), threshold))
        self._streams = [MicroStream(m) for m in self._models]
        self._frontend = create_frontend()
        self._features = process_samples
        """pymicro-features' C front end, called as its `MicroFrontend` calls it (without
        the result object it makes each 10 ms)."""
        self._pending = b""

    def process(self, pcm: bytes) -> list[float]:
        best = [0.0] * len(self._streams)
        audio = self._pending + pcm if self._pending else pcm
        at, end = 0, len(audio) - FEATURE_BYTES
        while at <= end:
            features, read = self._features(self._frontend, audio[at : at + FEATURE_BYTES])
            at += read * 2
            if not features:
                continue
            for i, stream in enumerate(self._streams):
                score = stream.feed(features)
                if score is not None and score > best[i]:
                    best[i] = score
        self._pending = audio[at:]
        return best


LOOK_CHUNK = 640
"""20 ms: what the device hands the detectors at a time."""


class SecondLook:
    """A wake word the model nearly took from a high voice, heard again lower.

    Small wake word models are weakest on high voices (women's, children's: peers' users
    report it, and `bench accuracy`'s eight high voices are accepted 39 % of the time in
    quiet against 93 % for its main corpus's mostly low ones). Shifted down, as vocal tract length
    normalisation does for speech recognisers, the model hears them better. When a word's
    score reaches `CANDIDATE` but not its threshold, `WAIT_MS` later (the word over) the
    last `HEARD_MS` the detectors heard are looked at again: if the voice is a high one
    (median pitch at least `HIGH_VOICE_HZ`), it is resampled as if recorded at 14.4 and at
    13.6 kHz (`WARPS`: pitch and formants 10 and 15 % lower, as much slower), each through a
    fresh copy of the models, and each word gets the best of its scores. Nothing of it runs
    while no score comes near a wake word (a quiet room, most talk); the audio is held in RAM
    only, for as long as a look needs it. A low voice is never looked at again: shifted down
    it is only taken for more near misses."""

    CANDIDATE = 0.5
    WAIT_MS = 200
    HEARD_MS = 2000
    WARPS = (0.9, 0.85)
    HIGH_VOICE_HZ = 160.0
    """Above most men's voices (85 to 155 Hz), below most women's (165 to 255 Hz)."""

    def __init__(self, engine: WakeEngine, again: Callable[[], WakeEngine]) -> None:
        self.engine = engine
        self.words = engine.words
        self._again = again
        """A fresh copy of the models for each look (a few ms to load): what the last look
        heard must not carry into this one."""
        self._heard: deque[bytes] = deque(maxlen=self.HEARD_MS // FRAME_MS)
        """The last `HEARD_MS` of what the detectors heard, in the device's 20 ms frames."""
        self._pos = 0
        self._wait = ms_to_samples(self.WAIT_MS, MIC_RATE)
        self._candidate: int | None = None
        """Where a score first came near a threshold, while a look at it waits."""
        self.late = 0
        self.looks = 0
        """Looks taken (candidates from a high voice): what it costs, for `bench`."""

    def process(self, pcm: bytes) -> list[float]:
        scores = self.engine.process(pcm)
        self._heard.append(pcm)
        self._pos += len(pcm) >> 1
        self.late = 0
        if self._candidate is None:
            if max(scores, default=0.0) >= self.CANDIDATE and any(
                self.CANDIDATE <= s < w.threshold for s, w in zip(scores, self.words, strict=True)
            ):
                self._candidate = self._pos
            return scores  # (nearly every frame: nothing near a wake word)
        if any(s >= w.threshold for s, w in zip(scores, self.words, strict=True)):
            self._candidate = None  # (taken at the first look)
        elif self._pos - self._candidate >= self._wait:
            again = self._look_again()
            scores = [max(a, b) for a, b in zip(scores, again, strict=True)]
            self.late = self._pos - self._candidate  # (the word as the model first heard it)
            self._candidate = None
        return scores

    def _look_again(self) -> list[float]:
        import numpy as np
        import soxr

        keep = ms_to_samples(self.HEARD_MS, MIC_RATE) * SAMPLE_BYTES
        x = np.frombuffer(b"".join(self._heard)[-keep:], "<i2")
        if pitch_hz(x) < self.HIGH_VOICE_HZ:
            return [0.0] * len(self.words)
        self.looks += 1
        best = [0.0] * len(self.words)
        for warp in self.WARPS:
            lower = soxr.resample(x.astype(np.float32), int(MIC_RATE * warp), MIC_RATE)
            pcm = np.clip(np.rint(lower), -32768, 32767).astype("<i2").tobytes()
            engine = self._again()
            for at in range(0, len(pcm), LOOK_CHUNK):
                scores = engine.process(pcm[at : at + LOOK_CHUNK])
                best = [max(a, b) for a, b in zip(best, scores, strict=True)]
        return best


class OpenWakeWordEngine:
    """openWakeWord models through pyopen-wakeword (pip install 'voice-device[openwakeword]')."""

    DEFAULT_THRESHOLD = 0.5
    late = 0

    def __init__(self, models: Sequence[str], thresholds: dict[str, float] | None = None) -> None:
        try:
            from pyopen_wakeword import Model, OpenWakeWord, OpenWakeWordFeatures
        except ImportError:
            raise WakeModelError(
                "wake.engine = 'openwakeword' needs pyopen-wakeword: "
                "pip install 'voice-device[openwakeword]'"
            ) from None
        self._models: list[Any] = []
        self.words: list[WakeWord] = []
        for name in models:
            try:
                if name in OPENWAKEWORD_MODELS:
                    m = OpenWakeWord.from_builtin(Model(name))
                elif Path(name).suffix == ".tflite" and Path(name).is_file():
                    check_model_file(name, Path(name))
                    m = OpenWakeWord.from_model(Path(name))
                else:
                    raise WakeModelError(
                        f"wake word model {name!r} is neither a built-in openWakeWord model "
                        f"({', '.join(OPENWAKEWORD_MODELS)}) nor an openWakeWord .tflite file"
                    )
            except (OSError, ValueError) as e:
                raise WakeModelError(f"cannot load wake word model {name!r}: {e}") from e
            phrase = Path(name).stem.replace("_", " ").title()
            threshold = (thresholds or {}).get(name, self.DEFAULT_THRESHOLD)
            self._models.append(m)
            self.words.append(WakeWord(name, phrase, threshold))
        self._features = OpenWakeWordFeatures.from_builtin()

    def process(self, pcm: bytes) -> list[float]:
        best = [0.0] * len(self._models)
        for embeddings in self._features.process_streaming(pcm):
            for i, m in enumerate(self._models):
                best[i] = max(best[i], _best(m.process_streaming(embeddings)))
        return best


def _engine(
    engine: str, models: Sequence[str], thresholds: dict[str, float] | None = None
) -> WakeEngine:
    if engine == "openwakeword":
        return OpenWakeWordEngine(models, thresholds)
    return MicroWakeWordEngine(models, thresholds)


def load_engine(
    engine: str,
    models: Sequence[str],
    thresholds: dict[str, float] | None = None,
    role: str = "",
    second_look: bool = False,
) -> WakeEngine:
    """`role`: what a second copy of the models is for (logged at debug level, not info).
    `second_look`: a near miss from a high voice is heard again lower (`SecondLook`).
    Model files of the user's own are checked, then tried in a process of their own, before
    this process loads them."""
    if not role:
        for name in models:
            if name in MICRO_MODELS + OPENWAKEWORD_MODELS:
                continue
            path = Path(name)
            if engine == "micro" and path.suffix == ".json" and path.is_file():
                micro_model_file(name, path)
            elif engine == "openwakeword" and path.suffix == ".tflite" and path.is_file():
                check_model_file(name, path)
        probe(engine, models)
    e = _engine(engine, models, thresholds)
    if second_look:
        e = SecondLook(e, lambda: _engine(engine, models))
    if role:
        log.debug("%s: %s", role, ", ".join(w.phrase for w in e.words))
        return e
    for w in e.words:
        log.info("wake word '%s' (%s, threshold %.2f)", w.phrase, engine, w.threshold)
    return e
