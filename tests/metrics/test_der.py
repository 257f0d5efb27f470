"""DER/JER against hand-counted seconds, with overlap and collar; RTTM/UEM round trips."""
import pytest
from pyannote.core import Annotation, Segment, Timeline

from echo.errors import ConfigError, EchoError
from echo.metrics.der import (PRIMARY, SECONDARY, DERConfig, format_rttm, read_rttm, read_uem, score_diarization,
                              write_rttm, write_uem)


def _ann(uri, segs):
    a = Annotation(uri=uri)
    for s, e, lab in segs:
        seg = Segment(s, e)
        a[seg, a.new_track(seg)] = lab
    return a


# reference: A 0-4 and 8-10, B 3-7 (A/B overlap 3-4); scored region 0-10
REF = _ann("r1", [(0, 4, "A"), (3, 7, "B"), (8, 10, "A")])
# hypothesis: s1 0-3.5, s2 3.5-7.5 and 8.5-10 (mapping s1->A, s2->B)
HYP = _ann("r1", [(0, 3.5, "s1"), (3.5, 7.5, "s2"), (8.5, 10, "s2")])
UEM = {"r1": Segment(0, 10)}


def test_primary_der_matches_hand_count():
    # miss: one of two overlapping speakers in 3-4 (1.0 s) + A alone 8-8.5 (0.5 s) = 1.5
    # false alarm: s2 in 7-7.5 = 0.5; confusion: s2 (=B) on A in 8.5-10 = 1.5
    # total reference speech: A 6 s + B 4 s = 10 s
    out = score_diarization({"r1": REF}, {"r1": HYP}, UEM, {"r1": 2}, PRIMARY)
    r = out["per_recording"][0]
    assert r["missed"] == pytest.approx(1.5)
    assert r["false_alarm"] == pytest.approx(0.5)
    assert r["confusion"] == pytest.approx(1.5)
    assert r["total"] == pytest.approx(10.0)
    assert out["der"] == pytest.approx(0.35)
    assert out["by_k"][2]["der"] == pytest.approx(0.35)


def test_secondary_collar_is_quarter_second_each_side():
    # collar=0.5 removes +-0.25 s around reference boundaries 0, 3, 4, 7, 8, 10; what remains:
    # 0.25-2.75 (A ok), 3.25-3.75 (overlap, one speaker missed: 0.5 s miss, 1.0 s ref),
    # 4.25-6.75 (B ok), 7.25-7.75 (FA 0.25 in 7.25-7.5), 8.25-9.75 (A: miss 0.25, confusion 1.25)
    out = score_diarization({"r1": REF}, {"r1": HYP}, UEM, {"r1": 2}, SECONDARY)
    r = out["per_recording"][0]
    assert SECONDARY.collar == 0.5
    assert r["total"] == pytest.approx(7.5)
    assert r["missed"] == pytest.approx(0.75)
    assert r["false_alarm"] == pytest.approx(0.25)
    assert r["confusion"] == pytest.approx(1.25)
    assert out["der"] == pytest.approx(2.25 / 7.5)


def test_jer_matches_hand_count():
    # A<->s1: union 6 s, miss 2.5, fa 0 -> 2.5/6; B<->s2: union 6 s, miss 0.5, fa 2.0 -> 2.5/6
    out = score_diarization({"r1": REF}, {"r1": HYP}, UEM, {"r1": 2}, PRIMARY)
    assert out["jer"] == pytest.approx(2.5 / 6)


def test_by_k_ratio_of_sums_and_missing_hypothesis():
    ref2 = _ann("r2", [(0, 2, "A"), (2, 4, "B"), (4, 6, "C")])
    hyp2 = _ann("r2", [(0, 2, "x"), (2, 4, "y"), (4, 6, "z")])
    ref3 = _ann("r3", [(0, 3, "A"), (3, 5, "B")])
    refs = {"r1": REF, "r2": ref2, "r3": ref3}
    out = score_diarization(refs, {"r1": HYP, "r2": hyp2}, {**UEM, "r2": Segment(0, 6), "r3": Segment(0, 5)},
                            {"r1": 2, "r2": 3, "r3": 2})
    assert out["by_k"][3]["der"] == pytest.approx(0.0)
    # r3 has no hypothesis: all 5 s missed; K=2 pools r1 and r3 as a ratio of sums
    assert out["by_k"][2]["der"] == pytest.approx((3.5 + 5.0) / (10.0 + 5.0))
    assert out["der"] == pytest.approx((3.5 + 5.0) / (10.0 + 6.0 + 5.0))
    assert out["n_recordings"] == 3 and out["by_k"][2]["n_recordings"] == 2
    assert [r["uri"] for r in out["per_recording"]] == ["r1", "r2", "r3"]


def test_hypothesis_without_reference_is_an_error():
    with pytest.raises(EchoError, match="r9"):
        score_diarization({"r1": REF}, {"r1": HYP, "r9": HYP}, UEM)


def test_config_validation():
    with pytest.raises(ConfigError, match="der.collar"):
        DERConfig(collar=-0.1)


def test_rttm_round_trip_and_deterministic_bytes(tmp_path):
    p = tmp_path / "h.rttm"
    write_rttm(p, {"r1": REF, "r2": _ann("r2", [(1.5, 2.25, "X")])})
    got = read_rttm(p)
    assert set(got) == {"r1", "r2"}
    assert sorted((s.start, s.end, l) for s, _, l in got["r1"].itertracks(yield_label=True)) == \
        [(0.0, 4.0, "A"), (3.0, 7.0, "B"), (8.0, 10.0, "A")]
    first = p.read_bytes()
    write_rttm(p, got)
    assert p.read_bytes() == first
    assert first.decode().splitlines()[0] == "SPEAKER r1 1 0.000 4.000 <NA> <NA> A <NA> <NA>"
    # scoring the re-read files gives the same DER
    assert score_diarization(got, read_rttm(p))["der"] == 0.0


def test_rttm_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.rttm"
    p.write_text(";; comment\nSPEAKER r1 1 0.0 1.0 <NA> <NA> A <NA> <NA>\nSPEAKER r1 1 zero\n")
    with pytest.raises(EchoError, match=r"bad.rttm:3"):
        read_rttm(p)


def test_uem_round_trip(tmp_path):
    p = tmp_path / "all.uem"
    write_uem(p, {"b": Segment(0, 5), "a": Timeline([Segment(0, 1), Segment(2, 3)])})
    got = read_uem(p)
    assert list(got["a"]) == [Segment(0, 1), Segment(2, 3)] and list(got["b"]) == [Segment(0, 5)]
    assert format_rttm(Annotation(uri="e")) == ""
    with pytest.raises(EchoError, match="whitespace"):
        format_rttm(_ann("r 1", [(0, 1, "A")]))
