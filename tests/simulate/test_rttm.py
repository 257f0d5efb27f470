import numpy as np
import pytest
from pyannote.core import Segment

from echo.errors import EchoError
from echo.simulate.rttm import annotation_from_intervals, read_rttm, read_uem, rttm_text, uem_text


def test_rttm_and_uem_round_trip_many_recordings(tmp_path):
    a = annotation_from_intervals("rec_a", {"spk1": np.array([[0, 16000], [16000, 20000], [40000, 48000]]),
                                            "spk2": np.array([[8000, 24000]])})
    b = annotation_from_intervals("rec_b", {"x": np.array([[1234, 5678]])})
    # touching intervals of one speaker merge into one segment
    assert list(a.label_timeline("spk1")) == [Segment(0.0, 1.25), Segment(2.5, 3.0)]
    path = tmp_path / "all.rttm"
    path.write_text(rttm_text([a, b]))
    back = read_rttm(path)
    assert set(back) == {"rec_a", "rec_b"}
    for ref in (a, b):
        got = back[ref.uri]
        assert sorted(got.labels()) == sorted(ref.labels())
        for label in ref.labels():
            assert list(got.label_timeline(label)) == list(ref.label_timeline(label))
    assert back["rec_b"].get_timeline()[0] == Segment(0.077, 0.355)  # 1234/16000, 5678/16000 to the ms
    assert back["rec_a"].get_overlap().duration() == pytest.approx(0.75)
    (tmp_path / "all.uem").write_text(uem_text({"rec_a": 3.0, "rec_b": 0.5}))
    uem = read_uem(tmp_path / "all.uem")
    assert uem["rec_a"].extent() == Segment(0.0, 3.0) and uem["rec_b"].extent() == Segment(0.0, 0.5)


def test_bad_rttm_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.rttm"
    p.write_text("SPEAKER r 1 0.0 1.0 <NA> <NA> s <NA> <NA>\nSPEAKER r 1 zero 1.0 <NA> <NA> s <NA> <NA>\n")
    with pytest.raises(EchoError, match=r"bad.rttm:2: expected 'SPEAKER"):
        read_rttm(p)
