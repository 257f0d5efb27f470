"""Speech corpora: the embedded espeak-ng corpus and adapters for VoxCeleb1/2 and LibriSpeech."""
