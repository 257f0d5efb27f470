"""Evaluation metrics: DER/JER (pyannote.metrics), separation (PIT accuracy, SI-SDR), speaker
verification (EER), factorisation probe (k-NN), PER, and bootstrap error bars.

Exact definitions are in each module's docstring and in docs/anchors.md.
"""
