"""The Separator: whole recordings into one waveform per diarized speaker (echo/separation.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pyannote.core import Annotation, Segment

from echo.diarization.diarizer import BlockReader, Diarizer, DiarizeOutput
from echo.errors import EchoError
from echo.metrics.separation import si_sdr
from echo.models.bundle import Routing
from echo.separation import Separator, assign_slots, chunk_speech
from tests.helpers import talk, tiny_diarizer

SR = 16000


def _unit(*rows):
    v = np.array(rows, np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_assign_slots_one_to_one_among_active_speakers():
    spk = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    slots = _unit([0.1, 0.9, 0], [0.9, 0.2, 0])  # B-like, A-like
    assert assign_slots(slots, spk, np.array([True, True, False])).tolist() == [1, 0]
    # both slots resemble A, but B is active too: one-to-one, the less A-like one goes to B
    slots = _unit([1, 0.1, 0], [1, 0.5, 0])
    assert assign_slots(slots, spk, np.array([True, True, False])).tolist() == [0, 1]
    # over-count: only C is active, so every slot is C's, however similar to A or B
    assert assign_slots(slots, spk, np.array([False, False, True])).tolist() == [2, 2]
    # three slots, two active speakers: the extra slot joins its most similar active speaker
    slots = _unit([1, 0, 0.1], [0, 1, 0.1], [0.2, 0.8, 0.9])
    assert assign_slots(slots, spk, np.array([True, True, False])).tolist() == [0, 1, 1]
    # nobody active: each slot to its most similar speaker overall
    assert assign_slots(slots, spk, np.zeros(3, bool)).tolist() == [0, 1, 2]


def test_chunk_speech_splits_segments_at_chunk_bounds():
    ann = Annotation()
    ann[Segment(0.5, 2.5)] = "spk0"
    ann[Segment(2.0, 2.2)] = "spk1"
    bounds = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])
    assert np.allclose(chunk_speech(ann, ["spk0", "spk1"], bounds), [[0.5, 0], [1.0, 0], [0.5, 0.2]])


@pytest.fixture(scope="module")
def diarizer():
    return tiny_diarizer()


def test_chunks_are_stitched_to_the_right_speakers(diarizer, monkeypatch):
    """A constructed case: the model part is replaced by known waves and slot latents carrying a
    speaker's vector (the speaker head by mean pooling), the diarization by a known one; what is
    left is the code under test, the chunking, the slot-to-speaker linking and the cropping."""
    e = diarizer.parts.speaker.config.emb_dim
    voices = np.eye(e, dtype=np.float32)[:2]  # spk0, spk1
    ann = Annotation(uri="c")
    ann[Segment(0.0, 1.7)] = "spk0"  # chunks of 1 s: both in chunk 0, spk0 alone in chunk 1, nobody in chunk 2
    ann[Segment(0.2, 0.9)] = "spk1"
    dia = DiarizeOutput(ann, ann, voices, ["spk0", "spk1"])
    monkeypatch.setattr(Diarizer, "__call__", lambda self, wave, *a, **k: dia)
    n = int(2.5 * SR)  # three chunks, the last one half padding
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    # per model call: the voice of each of the k_max = 3 slots (None: inactive). Chunk 0: spk1's
    # voice first, and an extra slot (over-count) with spk1's voice; chunk 1 never reaches the
    # model (one speaker); chunk 2 has nobody active, so its slot goes to its most similar speaker
    plan = [[1, 0, 1], [None, 1, None]]
    weights = np.array([0.1, 0.6, 0.3], np.float32)
    calls = []

    def separate(mixture):
        c = len(calls)
        calls.append(mixture.shape)
        m = mixture[0].numpy()
        waves = torch.zeros(1, 3, m.size)
        slots = torch.zeros(1, 3, 25, e)
        active = torch.tensor([[v is not None for v in plan[c]]])
        for k, v in enumerate(plan[c]):
            if v is not None:
                waves[0, k] = torch.from_numpy(m * weights[k] / weights[active[0].numpy()].sum())
                slots[0, k] = torch.from_numpy(voices[v])
        return waves, Routing(slots, active.float(), active, active.sum(1))

    def embed(latents, mask):
        return F.normalize((latents * mask[..., None]).sum(1), dim=-1)

    sep = Separator(diarizer, chunk_s=1.0, batch_chunks=1)
    monkeypatch.setattr(sep.model, "separate", separate)
    monkeypatch.setattr(sep.model, "embed_speaker", embed)
    steps = []
    out = sep(x, hook=lambda step, completed=None, total=None: steps.append((step, completed, total)))
    assert calls == [(1, SR)] * 2 and steps[-1] == ("separate", 3, 3)
    assert out.sources.shape == (2, n) and out.labels == ["spk0", "spk1"] and out.sample_rate == SR
    expected = np.zeros((2, n), np.float32)
    c0, c1, c2 = slice(0, SR), slice(SR, 2 * SR), slice(2 * SR, n)
    expected[1, c0], expected[0, c0] = 0.4 * x[c0], 0.6 * x[c0]  # slots 0 and 2 are spk1's, slot 1 spk0's
    expected[0, c1] = x[c1]
    expected[1, c2] = x[c2]
    assert np.allclose(out.sources, expected, atol=1e-6)
    assert np.allclose(out.sources.sum(0), x, atol=1e-6)


def test_sources_sum_to_the_input_and_streamed_input_gives_the_same(diarizer, monkeypatch):
    x = talk(9.0)
    sep = Separator(diarizer, chunk_s=4.0)
    model_calls = []
    real = sep.model.separate
    monkeypatch.setattr(sep.model, "separate", lambda m: model_calls.append(m.shape) or real(m))
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
