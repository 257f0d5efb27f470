"""PIT accuracy, SI-SDR and speaker-count accuracy on constructed latents with known answers."""
import numpy as np
import pytest

from echo.metrics.separation import (MAX_SI_SDR_DB, evaluate_separation, evaluate_waveforms, pit_accuracy, pit_match,
                                     si_sdr, si_sdri,
                                     speaker_count_accuracy)

RNG = np.random.default_rng(0)


def _zero_mean(x):
    return x - x.mean()


def test_si_sdr_identical_is_capped():
    s = RNG.normal(size=(50, 8))
    assert si_sdr(s, s) == MAX_SI_SDR_DB
    assert si_sdr(s, s, max_db=60.0) == 60.0


def test_si_sdr_known_value_and_scale_invariance():
    s = _zero_mean(RNG.normal(size=4000))
    n = _zero_mean(RNG.normal(size=4000))
    n -= (n @ s) / (s @ s) * s  # orthogonal to s (and still zero-mean)
    n *= np.sqrt(0.4 * (s @ s) / (n @ n))  # ||n||^2 = 0.4 ||s||^2
    x = 2.0 * s + n  # target energy 4 ||s||^2 -> SI-SDR = 10 log10(4 / 0.4) = 10 dB
    assert si_sdr(x, s) == pytest.approx(10.0, abs=1e-9)
    assert si_sdr(3.7 * x, s) == pytest.approx(10.0, abs=1e-9)
    # latent sequences are flattened over time x dims: same value for a (T, D) view
    assert si_sdr(x.reshape(400, 10), s.reshape(400, 10)) == pytest.approx(10.0, abs=1e-9)
    # a constant offset is removed by the zero-mean step
    assert si_sdr(x + 5.0, s) == pytest.approx(10.0, abs=1e-9)
    assert si_sdr(x + 5.0, s, zero_mean=False) < 0.0


def test_si_sdri_against_mixture():
    s = _zero_mean(RNG.normal(size=2000))
    other = _zero_mean(RNG.normal(size=2000))
    other -= (other @ s) / (s @ s) * s
    other *= np.sqrt((s @ s) / (other @ other))  # mixture at 0 dB
    mix = s + other
    est = s + 0.1 * other  # 20 dB
    assert si_sdr(mix, s) == pytest.approx(0.0, abs=1e-9)
    assert si_sdri(est, s, mix) == pytest.approx(20.0, abs=1e-9)


def _refs(k, t=30, d=16):
    return RNG.normal(size=(k, t, d))


def test_pit_swapped_order_still_matches():
    refs = _refs(3)
    perm = np.array([2, 0, 1])
    slots = np.concatenate([refs[perm] + 0.05 * RNG.normal(size=refs.shape), RNG.normal(size=(1, 30, 16))])
    active = np.array([True, True, True, False])
    r = pit_match(slots, active, refs)
    # slot i holds reference perm[i], so reference j sits in slot argsort(perm)[j]
    assert r.slot_of.tolist() == np.argsort(perm).tolist()
    assert r.correct.all() and r.accuracy == 1.0 and r.n_active == 3 and r.n_extra == 0


def test_pit_missing_slot_costs_accuracy():
    refs = _refs(3)
    slots = refs + 0.05 * RNG.normal(size=refs.shape)
    r = pit_match(slots, np.array([True, False, True]), refs)  # under-count: 2 of 3
    assert r.correct.tolist() == [True, False, True]
    assert r.slot_of[1] == -1
    assert r.accuracy == pytest.approx(2 / 3)


def test_pit_slot_nearest_to_another_source_is_wrong():
    refs = _refs(3)
    # two active slots both resemble source 0; the Hungarian forces one onto source 1,
    # but that slot's nearest reference is 0, so source 1 is not counted as separated
    slots = np.stack([refs[0], refs[0] + 0.1 * RNG.normal(size=refs[0].shape), refs[2]])
    r = pit_match(slots, np.ones(3, bool), refs)
    assert r.correct.sum() == 2 and not r.correct[1]


def test_pit_over_count_reports_extra_slot():
    refs = _refs(2)
    slots = np.concatenate([refs, RNG.normal(size=(1, 30, 16))])
    r = pit_match(slots, np.ones(3, bool), refs)
    assert r.accuracy == 1.0 and r.n_extra == 1 and r.n_active == 3


def test_corpus_accuracy_and_evaluate_separation():
    refs = _refs(2)
    mix = refs.sum(0)
    good = evaluate_separation(refs.copy(), np.ones(2, bool), refs, mix)
    bad = evaluate_separation(refs.copy(), np.array([True, False]), refs, mix)
    assert good["n_correct"] == 2 and bad["n_correct"] == 1 and bad["n_unmatched"] == 1
    assert pit_accuracy([good["pit"], bad["pit"]]) == pytest.approx(3 / 4)
    assert good["si_sdr"] == [MAX_SI_SDR_DB, MAX_SI_SDR_DB]
    assert len(bad["si_sdr"]) == 1
    assert good["si_sdri"][0] == pytest.approx(MAX_SI_SDR_DB - si_sdr(mix, refs[0]))


def test_speaker_count_accuracy_and_confusion():
    out = speaker_count_accuracy([2, 3, 3, 5], [2, 3, 4, 5])
    assert out["accuracy"] == 0.75
    assert out["labels"] == [2, 3, 4, 5]
    assert out["confusion"].tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


def _orthogonal(n: int = 1600) -> np.ndarray:
    """Three equal-energy sources, exactly orthogonal and zero-mean (whole periods of distinct sines)."""
    t = np.arange(n)
    return np.stack([np.sin(2 * np.pi * f * t / n) for f in (5, 11, 23)])


def test_waveform_matching_and_si_sdr_by_hand():
    s = _orthogonal()
    mix = s[:2].sum(0)
    # slot 2 is mostly source 0 (leak 0.1 of source 1), slot 0 is mostly source 1 (leak 0.5 of source 0),
    # slot 1 is active but only source 2 (no such reference: an extra), slot 3 inactive
    est = np.stack([s[1] + 0.5 * s[0], s[2], s[0] + 0.1 * s[1], s[0]])
    r = evaluate_waveforms(est, np.array([True, True, True, False]), s[:2], mix)
    np.testing.assert_array_equal(r["slot_of"], [2, 0])
    assert r["k"] == 2 and r["n_active"] == 3 and r["n_extra"] == 1 and r["n_unmatched"] == 0
    # equal energies: SI-SDR of s_a + c s_b against s_a is -20 log10(c); the mixture is c = 1 (0 dB)
    np.testing.assert_allclose(r["si_sdr"], [20.0, 20 * np.log10(2)], atol=1e-9)
    np.testing.assert_allclose(r["si_sdri"], r["si_sdr"], atol=1e-9)


def test_waveform_under_count_leaves_sources_missed():
    s = _orthogonal()
    mix = s.sum(0)
    r = evaluate_waveforms(np.stack([s[1], mix]), np.array([True, False]), s, mix)
    np.testing.assert_array_equal(r["slot_of"], [-1, 0, -1])
    assert r["n_unmatched"] == 2 and r["n_extra"] == 0 and len(r["si_sdr"]) == 1
    assert r["si_sdr"][0] == MAX_SI_SDR_DB
    with pytest.raises(ValueError, match="do not match"):
        evaluate_waveforms(np.stack([s[1]]), np.array([True]), s[:, :10], mix)
