"""The Separator: whole recordings into one waveform per diarized speaker (echo/separation.py)."""
import numpy as np
import pytest
import torch
from pyannote.core import Annotation, Segment

from echo.diarization.diarizer import BlockReader, Diarizer, DiarizeOutput
from echo.errors import EchoError
from echo.metrics.separation import si_sdr
from echo.separation import Separator, chunk_speech
from tests.helpers import talk, tiny_diarizer

SR = 16000


def test_chunk_speech_splits_segments_at_chunk_bounds():
    ann = Annotation()
    ann[Segment(0.5, 2.5)] = "spk0"
    ann[Segment(2.0, 2.2)] = "spk1"
    bounds = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])
    assert np.allclose(chunk_speech(ann, ["spk0", "spk1"], bounds), [[0.5, 0], [1.0, 0], [0.5, 0.2]])


@pytest.fixture(scope="module")
def diarizer():
    return tiny_diarizer()


def test_each_chunk_renders_the_speakers_heard_in_it(diarizer, monkeypatch):
    """A constructed case: the model part is replaced by known masks keyed by the identity it is
    given, the diarization by a known one; what is left is the code under test: the chunking, who
    is rendered where, the identities passed, the cropping and the sum."""
    e = diarizer.parts.speaker.config.emb_dim
    voices = np.eye(e, dtype=np.float32)[:3]  # spk0, spk1, spk2
    ann = Annotation(uri="c")
    ann[Segment(0.0, 1.7)] = "spk0"  # chunks of 1 s: spk0 + spk1 in chunk 0, spk0 alone in chunk 1,
    ann[Segment(0.2, 0.9)] = "spk1"  # nobody in chunk 2 (half of it padding), spk2 never heard there
    ann[Segment(3.0, 3.5)] = "spk2"
    dia = DiarizeOutput(ann, ann, voices, ["spk0", "spk1", "spk2"])
    monkeypatch.setattr(Diarizer, "__call__", lambda self, wave, *a, **k: dia)
    n = int(2.5 * SR)
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    share = np.array([0.6, 0.3, 0.1], np.float32)  # each identity's share of what is rendered
    calls = []

    def separate(mixture, identities, active):
        calls.append((mixture.shape, active.tolist()))
        assert torch.equal(identities[0], torch.from_numpy(voices))  # the diarization's, every chunk
        w = torch.from_numpy(share)[None] * active.float()
        w = w / w.sum(1, keepdim=True)
        return mixture[:, None] * w[:, :, None]

    sep = Separator(diarizer, chunk_s=1.0, batch_chunks=1)
    monkeypatch.setattr(sep.model, "separate", separate)
    steps = []
    out = sep(x, hook=lambda step, completed=None, total=None: steps.append((step, completed, total)))
    # chunk 1 (one speaker) never reaches the model; chunk 2 (nobody) renders everyone
    assert calls == [((1, SR), [[True, True, False]]), ((1, SR), [[True, True, True]])]
    assert steps[-1] == ("separate", 3, 3)
    assert out.sources.shape == (3, n) and out.labels == ["spk0", "spk1", "spk2"] and out.sample_rate == SR
    expected = np.zeros((3, n), np.float32)
    c0, c1, c2 = slice(0, SR), slice(SR, 2 * SR), slice(2 * SR, n)
    expected[0, c0], expected[1, c0] = 2 / 3 * x[c0], 1 / 3 * x[c0]
    expected[0, c1] = x[c1]
    expected[:, c2] = share[:, None] * x[c2]
    assert np.allclose(out.sources, expected, atol=1e-6)
    assert np.allclose(out.sources.sum(0), x, atol=1e-6)


def test_sources_sum_to_the_input_and_streamed_input_gives_the_same(diarizer, monkeypatch):
    x = talk(9.0)
    sep = Separator(diarizer, chunk_s=4.0)
    model_calls = []
    real = sep.model.separate
    monkeypatch.setattr(sep.model, "separate", lambda m, i, a: model_calls.append(m.shape) or real(m, i, a))
    out = sep(x, num_speakers=2, uri="talk")
    assert model_calls, "no chunk with two speakers: the model never ran"
    assert out.labels == out.diarization.labels == ["spk0", "spk1"]
    assert out.sources.shape == (len(out.labels), len(x)) and out.sources.dtype == np.float32
    assert si_sdr(out.sources.sum(0), x) > 30.0
    blocks = BlockReader(lambda: (x[i:i + 7000] for i in range(0, len(x), 7000)), len(x))
    streamed = sep(blocks, num_speakers=2, uri="talk")
    assert streamed.labels == out.labels and np.allclose(streamed.sources, out.sources, atol=1e-5)


def test_a_model_without_separator_is_one_line(diarizer, tmp_path):
    d = tiny_diarizer()
    d.model.separator = None
    d.save(tmp_path / "m")
    with pytest.raises(EchoError) as e:
        Separator.from_pretrained(tmp_path / "m")
    assert str(e.value) == f"{tmp_path / 'm'}: no separator; expected a model from the separation stage (models/echo)"
    with pytest.raises(EchoError, match="chunk_s: expected finite seconds > 0, got inf"):
        Separator(diarizer, chunk_s=float("inf"))
    with pytest.raises(EchoError, match="batch_chunks: expected an integer >= 1, got 0"):
        Separator(diarizer, batch_chunks=0)
    with pytest.raises(EchoError, match="has no separator; expected a model from the separation stage"):
        Separator(d)
