"""Factorisation probe: how much speaker and phonetic information each view of the latent carries.

Two k-NN probes (``sklearn.neighbors.KNeighborsClassifier``, cosine distance, uniform votes),
both on held-out (test) speakers only, never trained on:

- **Speaker identification** (utterance level): for every test speaker with >= 2 utterances, its
  utterances (in input order, then shuffled with ``seed``) are split into enrolment
  (``round(n * enrol_fraction)``, at least 1 and at most n-1) and probe; a probe utterance is
  classified by its ``speaker_k`` nearest enrolment embeddings. Accuracy = correct probes / probes.
  Chance is 1 / (number of test speakers).
- **Frame-level phoneme classification**: test speakers are split (sorted, shuffled with ``seed``)
  into a reference half (``phone_train_speaker_fraction``) and a query half, so phone identity
  must generalise across voices; frames labelled in ``ignore_phones`` (silence) are dropped; at
  most ``max_train_frames`` / ``max_test_frames`` frames are drawn (seeded) from each side; a
  query frame takes the majority phone of its ``phone_k`` nearest reference frames.

The **factorisation gap** is reported in points (percentage points): speaker-ID accuracy from
the speaker view minus from the content view, and phoneme accuracy from the content view minus
from the speaker view. The caller chooses the views (e.g. the ArcFace-projected latent vs the
CTC-branch latent) and the pooling that turns frames into utterance embeddings.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from echo.config import check_fields, need, rule
from echo.errors import EchoError

__all__ = ["ProbeConfig", "speaker_id_split", "knn_accuracy", "speaker_id_accuracy", "phone_accuracy", "factorisation_gap"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    """k-NN probe settings (see the module docstring for the exact protocol).

    Attributes:
        speaker_k: neighbours for speaker identification (>= 1).
        phone_k: neighbours for frame phoneme classification (>= 1).
        enrol_fraction: share of each test speaker's utterances used for enrolment, in (0, 1).
        phone_train_speaker_fraction: share of test speakers whose frames are the k-NN reference
            set for phonemes, in (0, 1).
        max_train_frames: cap on reference frames for the phoneme probe (>= 1).
        max_test_frames: cap on query frames for the phoneme probe (>= 1).
        ignore_phones: phone labels excluded from the phoneme probe.
        seed: seed of every split and subsample.
    """

    speaker_k: int = field(default=1, metadata=rule(ge=1))
    phone_k: int = field(default=5, metadata=rule(ge=1))
    enrol_fraction: float = field(default=0.5, metadata=rule(gt=0, lt=1))
    phone_train_speaker_fraction: float = field(default=0.5, metadata=rule(gt=0, lt=1))
    max_train_frames: int = field(default=20000, metadata=rule(ge=1))
    max_test_frames: int = field(default=5000, metadata=rule(ge=1))
    ignore_phones: tuple[str, ...] = ("sil",)
    seed: int = 0

    def __post_init__(self):
        need(self, not isinstance(self.ignore_phones, str) and all(isinstance(p, str) for p in self.ignore_phones),
             "ignore_phones", "a list of phone labels", self.ignore_phones)
        object.__setattr__(self, "ignore_phones", tuple(self.ignore_phones))  # YAML gives a list
        check_fields(self)


def knn_accuracy(train_x: np.ndarray, train_y: Sequence, test_x: np.ndarray, test_y: Sequence, k: int) -> float:
    """Accuracy of a cosine k-NN classifier fitted on (train_x, train_y) and scored on the test set."""
    k = min(k, len(train_x))
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    clf.fit(np.asarray(train_x), np.asarray(train_y))
    return float((clf.predict(np.asarray(test_x)) == np.asarray(test_y)).mean())


def speaker_id_split(speakers: Sequence[str], enrol_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Enrolment / probe indices: each speaker's utterances split by ``enrol_fraction``.

    Speakers with a single utterance are left out (nothing to probe with). Deterministic for a
    given input order and seed.

    Returns:
        ``(enrol_idx, probe_idx)``, sorted integer arrays into ``speakers``.
    """
    spk = np.asarray(speakers, dtype=object)
    rng = np.random.default_rng(seed)
    enrol, probe = [], []
    for s in sorted(set(spk.tolist())):
        idx = np.flatnonzero(spk == s)
        if len(idx) < 2:
            log.warning("speaker %s has one utterance: left out of the speaker-ID probe", s)
            continue
        idx = rng.permutation(idx)
        n_enrol = int(min(len(idx) - 1, max(1, round(len(idx) * enrol_fraction))))
        enrol.append(idx[:n_enrol])
        probe.append(idx[n_enrol:])
    if not enrol:
        raise EchoError("speaker_id_split: no speaker has two or more utterances")
    return np.sort(np.concatenate(enrol)), np.sort(np.concatenate(probe))


def speaker_id_accuracy(embeddings: np.ndarray, speakers: Sequence[str], config: ProbeConfig = ProbeConfig()) -> float:
    """k-NN speaker identification accuracy among held-out speakers.

    Args:
        embeddings: (N, D) one embedding per test utterance.
        speakers: (N,) speaker of each utterance (test speakers only).
        config: ``speaker_k``, ``enrol_fraction``, ``seed``.
    """
    x = np.asarray(embeddings)
    y = np.asarray(speakers, dtype=object)
    if len(x) != len(y):
        raise EchoError(f"speaker_id_accuracy: {len(x)} embeddings vs {len(y)} speaker labels")
    enrol, probe = speaker_id_split(y, config.enrol_fraction, config.seed)
    return knn_accuracy(x[enrol], y[enrol].astype(str), x[probe], y[probe].astype(str), config.speaker_k)


def _phone_split(phones, frame_speakers, config: ProbeConfig) -> tuple[np.ndarray, np.ndarray]:
    ph = np.asarray(phones, dtype=object)
    spk = np.asarray(frame_speakers, dtype=object)
    if ph.shape != spk.shape:
        raise EchoError(f"phone_accuracy: {ph.size} phone labels vs {spk.size} frame speakers")
    rng = np.random.default_rng(config.seed)
    speakers = rng.permutation(sorted(set(spk.tolist())))
    if len(speakers) < 2:
        raise EchoError("phone_accuracy: needs at least two test speakers (reference and query halves)")
    n_ref = int(min(len(speakers) - 1, max(1, round(len(speakers) * config.phone_train_speaker_fraction))))
    keep = ~np.isin(ph, list(config.ignore_phones))
    in_ref = np.isin(spk, speakers[:n_ref])
    train = np.flatnonzero(keep & in_ref)
    test = np.flatnonzero(keep & ~in_ref)
    if len(train) > config.max_train_frames:
        train = np.sort(rng.choice(train, config.max_train_frames, replace=False))
    if len(test) > config.max_test_frames:
        test = np.sort(rng.choice(test, config.max_test_frames, replace=False))
    return train, test


def phone_accuracy(frames: np.ndarray, phones: Sequence[str], frame_speakers: Sequence[str], config: ProbeConfig = ProbeConfig()) -> float:
    """k-NN frame-level phoneme accuracy across held-out speakers (speaker-disjoint halves).

    Args:
        frames: (M, D) one latent per frame.
        phones: (M,) phone label of each frame.
        frame_speakers: (M,) speaker of each frame (test speakers only).
        config: ``phone_k``, ``phone_train_speaker_fraction``, frame caps, ``ignore_phones``, ``seed``.
    """
    x = np.asarray(frames)
    y = np.asarray(phones, dtype=object).astype(str)
    train, test = _phone_split(y, frame_speakers, config)
    if len(train) == 0 or len(test) == 0:
        raise EchoError("phone_accuracy: no labelled frames on one side of the speaker split")
    return knn_accuracy(x[train], y[train], x[test], y[test], config.phone_k)


def factorisation_gap(
    speaker_view_utts: np.ndarray,
    content_views: Mapping[str, tuple[np.ndarray, np.ndarray]],
    utt_speakers: Sequence[str],
    speaker_view_frames: np.ndarray,
    frame_phones: Sequence[str],
    frame_speakers: Sequence[str],
    config: ProbeConfig = ProbeConfig(),
) -> dict[str, dict]:
    """Both probes on the speaker view and on each content view, with the gaps in points.

    Each probe runs once: the speaker view's once for all content views, and a content view given
    as the very speaker-view array (a view falling back to the same representation) reuses it.

    Args:
        speaker_view_utts / speaker_view_frames: the speaker view.
        content_views: name -> ``(utterance array, frame array)`` of each content view.

    Returns:
        name -> ``{"speaker_id": {"speaker_view", "content_view", "gap_points"},
        "phone": {"content_view", "speaker_view", "gap_points"}}``; accuracies are fractions,
        ``speaker_id.gap_points = 100 * (speaker_view - content_view)`` and
        ``phone.gap_points = 100 * (content_view - speaker_view)``.
    """
    sa = speaker_id_accuracy(speaker_view_utts, utt_speakers, config)
    pa = phone_accuracy(speaker_view_frames, frame_phones, frame_speakers, config)
    out = {}
    for name, (utts, frames) in content_views.items():
        sb = sa if utts is speaker_view_utts else speaker_id_accuracy(utts, utt_speakers, config)
        pb = pa if frames is speaker_view_frames else phone_accuracy(frames, frame_phones, frame_speakers, config)
        out[name] = {
            "speaker_id": {"speaker_view": sa, "content_view": sb, "gap_points": 100.0 * (sa - sb)},
            "phone": {"content_view": pb, "speaker_view": pa, "gap_points": 100.0 * (pb - pa)},
        }
    return out
