"""Wake word engines: pymicro-wakeword (default) and pyopen-wakeword (optional extra).

An engine runs several wake words at once: the audio front end (features, or openWakeWord's
mel spectrogram and embeddings) is computed once per frame and shared by every model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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

    def process(self, pcm: bytes) -> list[float]:
        """Feed 16 kHz mono int16; per word, the highest score of the windows completed."""
        ...


def _best(scores: Iterable[float | None]) -> float:
    return max((s for s in scores if s is not None), default=0.0)


class MicroWakeWordEngine:
    """microWakeWord models through pymicro-wakeword's bundled TFLite runtime."""

    def __init__(self, models: Sequence[str], thresholds: dict[str, float] | None = None) -> None:
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

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
        self._features = MicroWakeWordFeatures()

    def process(self, pcm: bytes) -> list[float]:
        best = [0.0] * len(self._models)
        for features in self._features.process_streaming(pcm):
            for i, m in enumerate(self._models):
                best[i] = max(best[i], _best([m.process_streaming_prob(features)]))
        return best


class OpenWakeWordEngine:
    """openWakeWord models through pyopen-wakeword (pip install 'voice-device[openwakeword]')."""

    DEFAULT_THRESHOLD = 0.5

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


def load_engine(
    engine: str,
    models: Sequence[str],
    thresholds: dict[str, float] | None = None,
    role: str = "",
) -> WakeEngine:
    """`role`: what a second copy of the models is for (logged at debug level, not info).
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
    if engine == "openwakeword":
        e: WakeEngine = OpenWakeWordEngine(models, thresholds)
    else:
        e = MicroWakeWordEngine(models, thresholds)
    if role:
        log.debug("%s: %s", role, ", ".join(w.phrase for w in e.words))
        return e
    for w in e.words:
        log.info("wake word '%s' (%s, threshold %.2f)", w.phrase, engine, w.threshold)
    return e
