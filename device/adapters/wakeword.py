"""Wake word engines: pymicro-wakeword (default) and, optionally, pyopen-wakeword."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

BUILTIN_MODELS = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")


class WakeModelError(Exception):
    """The configured wake word model cannot be loaded; the message says which and why."""


class WakeEngine(Protocol):
    word: str
    """The phrase, as the model's author wrote it ("Okay Nabu")."""
    threshold: float

    def process(self, pcm: bytes) -> float:
        """Feed 16 kHz mono int16 audio; the highest score of the windows it completed."""
        ...


class MicroWakeWordEngine:
    """microWakeWord models through pymicro-wakeword's bundled TFLite runtime."""

    def __init__(self, model: str, threshold: float | None = None) -> None:
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

        try:
            if model in BUILTIN_MODELS:
                self._model = MicroWakeWord.from_builtin(Model(model))
            else:
                path = Path(model)
                if path.suffix != ".json" or not path.is_file():
                    raise WakeModelError(
                        f"wake.model {model!r} is neither a built-in model "
                        f"({', '.join(BUILTIN_MODELS)}) nor a microWakeWord .json file"
                    )
                self._model = MicroWakeWord.from_config(path)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            raise WakeModelError(f"cannot load wake word model {model!r}: {e}") from e
        self._features = MicroWakeWordFeatures()
        self.word = str(self._model.wake_word)
        self.threshold = (
            threshold if threshold is not None else float(self._model.probability_cutoff)
        )
        log.info("wake word '%s' loaded (threshold %.2f)", self.word, self.threshold)

    def process(self, pcm: bytes) -> float:
        best = 0.0
        for features in self._features.process_streaming(pcm):
            p = self._model.process_streaming_prob(features)
            if p is not None and p > best:
                best = p
        return best


def load_engine(model: str, threshold: float | None) -> WakeEngine:
    return MicroWakeWordEngine(model, threshold)
