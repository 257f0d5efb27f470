"""Sliding windows -> owned regions -> merged Annotation segments; end to end with DER."""
import numpy as np
import pytest
from pyannote.core import Annotation, Segment

from echo.diarization.segments import (WindowConfig, activity_to_annotation, annotation_to_frames, labels_to_annotation,
                                       posteriors_to_annotation, sliding_windows, window_regions)
from echo.errors import ConfigError, EchoError
from echo.metrics.der import score_diarization


def _segs(ann):
    return sorted((round(s.start, 6), round(s.end, 6), l) for s, _, l in ann.itertracks(yield_label=True))


def test_sliding_windows_cover_the_recording():
    w = sliding_windows(10.0, WindowConfig(window=1.5, step=0.25))
    assert len(w) == 35 and w[0].tolist() == [0.0, 1.5] and w[-1].tolist() == [8.5, 10.0]
    w = sliding_windows(10.1, WindowConfig(window=1.5, step=0.25))
    assert w[-1].tolist() == pytest.approx([8.75, 10.1])  # last window truncated, tail covered
    assert sliding_windows(0.7, WindowConfig()).tolist() == [[0.0, 0.7]]
    assert sliding_windows(0.0, WindowConfig()).shape == (0, 2)
    with pytest.raises(ConfigError, match="windows.step"):
        WindowConfig(window=1.0, step=2.0)


def test_window_regions_split_overlaps_at_midpoints():
    w = np.array([[0.0, 1.5], [0.25, 1.75], [0.5, 2.0], [5.0, 6.0]])
    r = window_regions(w)
    # centres 0.75, 1.0, 1.25 -> boundaries 0.875, 1.125; the distant last window keeps its edges
    assert r.tolist() == [[0.0, 0.875], [0.875, 1.125], [1.125, 2.0], [5.0, 6.0]]


def test_exclusive_and_overlapping_annotation():
    w = np.array([[i * 1.0, i * 1.0 + 1.0] for i in range(4)])  # touching 1 s windows
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    ex = posteriors_to_annotation(p, w, "u")
    assert _segs(ex) == [(0.0, 2.0, "spk0"), (2.0, 4.0, "spk1")]
    ov = posteriors_to_annotation(p, w, "u", exclusive=False, second=np.array([False, True, False, False]))
    assert _segs(ov) == [(0.0, 2.0, "spk0"), (1.0, 4.0, "spk1")]
    sp = posteriors_to_annotation(p, w, "u", speech=np.array([True, True, False, True]))
    assert _segs(sp) == [(0.0, 2.0, "spk0"), (3.0, 4.0, "spk1")]
    with pytest.raises(EchoError, match="second"):
        posteriors_to_annotation(p, w, "u", exclusive=False)


def test_labels_to_annotation_scores_zero_der_against_matching_reference():
    w = sliding_windows(6.0, WindowConfig(window=0.5, step=0.5))
    labels = np.repeat([0, 1, 0, 2], 3)
    hyp = labels_to_annotation(labels, w, "rec")
    ref = Annotation(uri="rec")
    for s, e, lab in [(0, 1.5, "A"), (1.5, 3, "B"), (3, 4.5, "A"), (4.5, 6, "C")]:
        ref[Segment(s, e)] = lab
    out = score_diarization({"rec": ref}, {"rec": hyp}, {"rec": Segment(0, 6)})
    assert out["der"] == 0.0
    act, names = annotation_to_frames(ref, w.mean(1))
    assert names == ["A", "B", "C"] and (act.argmax(1) == np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 2, 2, 2])).all()


def test_activity_shape_errors():
    with pytest.raises(EchoError, match="windows"):
        activity_to_annotation(np.ones((3, 2), bool), np.zeros((4, 2)), "u")
