"""Synthetic speech with known transcripts, for the audio lesson (phase 7) and its capstone: pure Python and NumPy,
no TTS engine, no download (Colab has no system TTS either).

Each symbol of a small alphabet (digits and "+", "-") is a "syllable": a voiced sound (harmonics of a pitch f0 under
two formant resonances, as a vowel has) whose two formants glide from one pair of frequencies to another, different
for each symbol. An utterance is its symbols in sequence with short pauses; every utterance has its own speaker
(pitch, formant scale, speaking rate) and optional background noise at a given signal-to-noise ratio. The transcript
is known exactly, so character error rates are exact, and noise and speed are knobs for robustness plots.

    speech = SyntheticSpeech(sample_rate=16_000)
    wave, text = speech.utterance("12+7", np.random.default_rng(0), snr_db=20)
"""

from __future__ import annotations

import numpy as np

ALPHABET = "0123456789+-"


def _formant_table(alphabet: str) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """For each symbol, (start F1, F2) -> (end F1, F2) in Hz. Starts are distinct points of a 3 x 4 grid (as vowels
    differ by their first two formants); each glide ends at another symbol's start."""
    grid = [(f1, f2) for f1 in (300.0, 550.0, 800.0) for f2 in (1000.0, 1450.0, 1900.0, 2350.0)]
    if len(alphabet) > len(grid):
        raise ValueError(f"at most {len(grid)} symbols")
    return {s: (grid[k], grid[(5 * k + 7) % len(grid)]) for k, s in enumerate(alphabet)}


class SyntheticSpeech:
    """Utterances of symbols of `alphabet` as formant-gliding voiced syllables, with speakers, speed and noise."""

    def __init__(self, sample_rate: int = 16_000, alphabet: str = ALPHABET, syllable_s: float = 0.16,
                 pause_s: float = 0.05):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError("the alphabet must be non-empty, without repeated symbols")
        self.sample_rate, self.alphabet = sample_rate, alphabet
        self.syllable_s, self.pause_s = syllable_s, pause_s
        self.formants = _formant_table(alphabet)

    def _syllable(self, symbol: str, f0: float, formant_scale: float, duration: float) -> np.ndarray:
        sr = self.sample_rate
        n = max(1, int(duration * sr))
        t = np.arange(n) / sr
        (a1, a2), (b1, b2) = self.formants[symbol]
        glide = np.linspace(0.0, 1.0, n)
        f1 = formant_scale * (a1 + (b1 - a1) * glide)
        f2 = formant_scale * (a2 + (b2 - a2) * glide)
        wave = np.zeros(n)
        for h in range(1, int(4000 / f0)):  # harmonics of the pitch up to 4 kHz, shaped by two resonances
            freq = h * f0
            gain = np.exp(-((freq - f1) / 90.0) ** 2) + 0.7 * np.exp(-((freq - f2) / 120.0) ** 2)
            wave += gain * np.sin(2 * np.pi * freq * t)
        envelope = np.sin(np.pi * np.linspace(0, 1, n)) ** 0.5  # smooth onset and decay
        return wave * envelope

    def utterance(self, text: str, rng: np.random.Generator, snr_db: float | None = None, speed: float | None = None,
                  ) -> tuple[np.ndarray, str]:
        """The waveform (float32, peak 0.9 before noise) of `text` spoken by a random speaker, and the text.
        speed: rate factor (None: random in 0.85..1.15); snr_db: white noise at that signal-to-noise ratio (None:
        clean)."""
        unknown = sorted(set(text) - set(self.alphabet))
        if unknown or not text:
            raise ValueError(f"text must be non-empty and use only {self.alphabet!r}; got {text!r}")
        speed = float(rng.uniform(0.85, 1.15)) if speed is None else speed
        f0 = float(rng.uniform(95, 220))
        formant_scale = float(rng.uniform(0.92, 1.08))
        pause = np.zeros(int(self.pause_s / speed * self.sample_rate))
        pieces = [pause]
        for symbol in text:
            duration = self.syllable_s / speed * float(rng.uniform(0.9, 1.1))
            pieces += [self._syllable(symbol, f0, formant_scale, duration), pause]
        wave = np.concatenate(pieces)
        wave = 0.9 * wave / np.abs(wave).max()
        if snr_db is not None:
            noise = rng.standard_normal(len(wave))
            noise *= np.sqrt(np.mean(wave**2) / (10 ** (snr_db / 10)) / np.mean(noise**2))
            wave = wave + noise
        return wave.astype(np.float32), text

    def sample(self, n: int, rng: np.random.Generator, min_symbols: int = 1, max_symbols: int = 5,
               snr_db: float | None = None) -> list[tuple[np.ndarray, str]]:
        """n (waveform, transcript) pairs with random texts of min..max symbols."""
        out = []
        for _ in range(n):
            length = int(rng.integers(min_symbols, max_symbols + 1))
            text = "".join(self.alphabet[i] for i in rng.integers(len(self.alphabet), size=length))
            out.append(self.utterance(text, rng, snr_db=snr_db))
        return out
