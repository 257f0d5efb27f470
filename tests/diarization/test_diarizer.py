import dataclasses

import numpy as np
import pytest
import torch
from pyannote.core import Segment


from echo.diarization.ahc import AHCConfig
from echo.diarization.diarizer import (BlockReader, Diarizer, DiarizerConfig, activity_annotation,
                                       constrained_assignment, reference_activity)
from echo.errors import ConfigError, EchoError
from echo.evaluate.diarize import score_conversations
from echo.features import FrontEnd
from echo.inference import chunk_log_mel, iter_latents

from tests.diarization.helpers import TOKEN_S, conversation, fit_plda, latents, parts, speaker_vectors

# three speakers, turn-taking with a 2 s overlap of speakers 0 and 1 and a pause
TURNS = [((0,), 6), ((0, 1), 2), ((1,), 5), ((), 1), ((2,), 6), ((0,), 5)]
CFG = DiarizerConfig(segment_s=5.0, segment_step_s=1.0, ahc=AHCConfig(threshold=0.5))


@pytest.fixture(scope="module")
def setup():
    p = parts()
    return p, fit_plda(p)


def _diarizer(setup, **kw):
    p, plda = setup
    d = Diarizer(p, plda, dataclasses.replace(CFG, **kw))
    d.frontend = FrontEnd()
    return d


def test_finds_three_speakers_and_the_overlap(setup):
    vecs = speaker_vectors(3, 7)
    act, ref, uem = conversation(TURNS, vecs)
    d = _diarizer(setup)
    out = d.cluster(d.prepare_latents(latents(act, vecs), "conv"))
    assert out.num_speakers == 3 and out.labels == ["spk0", "spk1", "spk2"]
    s = score_conversations({"conv": ref}, {"conv": out.speaker_diarization}, {"conv": uem}, {"conv": 3})
    assert s["primary"]["der"] < 0.03, s["primary"]
    # the overlap is output: two speakers during 6-8 s
    ov = out.speaker_diarization.crop(Segment(6.2, 7.8))
    assert len(ov.labels()) == 2
    # the exclusive variant: one speaker everywhere, same speech extent
    ex = out.exclusive_speaker_diarization
    assert ex.get_overlap().duration() == 0
    assert ex.get_timeline().support().duration() == pytest.approx(
        out.speaker_diarization.get_timeline().support().duration(), abs=1e-6)
    assert out.speaker_diarization.crop(Segment(13.1, 13.9)).get_timeline().duration() == 0  # the pause
    assert out.speaker_embeddings.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(out.speaker_embeddings, axis=1), 1.0, rtol=1e-5)


def test_speaker_count_options_are_honoured_or_refused(setup):
    vecs = speaker_vectors(3, 7)
    act, _, _ = conversation(TURNS, vecs)
    d = _diarizer(setup)
    prep = d.prepare_latents(latents(act, vecs), "conv")
    assert d.cluster(prep, num_speakers=2).num_speakers == 2
    assert d.cluster(prep, max_speakers=2).num_speakers == 2
    out = d.cluster(prep, min_speakers=4)
    assert out.num_speakers == 4 or (out.num_speakers < 4 and out.warnings and "4 speakers requested" in out.warnings[0])
    with pytest.raises(ConfigError, match="1000 speakers requested but only"):
        d.cluster(prep, num_speakers=1000)
    with pytest.raises(ConfigError, match="min_speakers"):
        d.cluster(prep, min_speakers=3, max_speakers=2)
    with pytest.raises(ConfigError, match="num_speakers: expected an integer >= 1"):
        d.cluster(prep, num_speakers=0)


def test_cannot_link_gives_two_local_speakers_of_one_chunk_different_speakers():
    # chunk 0: two local speakers both closest to global speaker 0; chunk 1: one local speaker
    score = np.array([[0.9, 0.1], [0.8, 0.6], [0.95, 0.2]])
    out = constrained_assignment(score, np.array([0, 0, 1]))
    assert out[0] != out[1] and sorted(out[:2]) == [0, 1] and out[2] == 0
    # the total similarity is maximised: (0.9 + 0.6) > (0.1 + 0.8)
    assert list(out[:2]) == [0, 1]
    # more local speakers than global ones: the extra one takes its best match
    out = constrained_assignment(np.array([[0.9], [0.7]]), np.array([0, 0]))
    assert list(out) == [0, 0]


def test_two_similar_voices_talking_together_stay_apart(setup):
    # speakers 0 and 1 have nearly the same voice and always talk together: clustering alone would
    # merge them; the cannot-link constraint keeps them apart
    vecs = speaker_vectors(2, 3)
    vecs[1] = vecs[0] + 0.05 * vecs[1]
    act, ref, uem = conversation([((0, 1), 12)], vecs)
    d = _diarizer(setup)
    out = d.cluster(d.prepare_latents(latents(act, vecs), "conv"), num_speakers=2)
    assert out.num_speakers == 2
    assert len(out.speaker_diarization.crop(Segment(1, 11)).labels()) == 2


def test_streamed_encoding_covers_every_token_once():
    from echo.models.vit import Encoder, EncoderConfig

    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(n_mels=80, dim=16, depth=1, heads=2, mlp_dim=32)).eval()
    fe = FrontEnd()
    wave = (0.1 * np.random.default_rng(0).standard_normal(16000 * 7 + 77)).astype(np.float32)
    blocks = list(iter_latents(enc, fe, wave, 50, 0))
    n = -(-fe.num_frames(len(wave)) // 4)
    assert [b0 for b0, _ in blocks] == list(range(0, n, 50)) and sum(len(x) for _, x in blocks) == n
    # one block = the whole input at once
    whole = np.concatenate([x for _, x in iter_latents(enc, fe, wave, 10_000, 0, level=False)])
    with torch.no_grad():
        ref = enc(torch.from_numpy(fe.compute(wave))[None]).features[0].numpy()
    np.testing.assert_allclose(whole, ref, atol=1e-5)


def test_prepare_from_audio_is_the_same_through_a_block_reader(setup):
    p, plda = setup
    d = Diarizer(p, plda, dataclasses.replace(CFG, chunk_s=3.0, context_s=1.0))
    wave = (0.1 * np.random.default_rng(1).standard_normal(16000 * 9)).astype(np.float32)
    a = d.prepare(wave, "w")
    reader = BlockReader(lambda: (wave[i:i + 7000] for i in range(0, len(wave), 7000)), len(wave))
    b = d.prepare(reader, "w")
    assert reader.passes == 1
    np.testing.assert_array_equal(a.hard, b.hard)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    calls = []
    d(wave, hook=lambda step, completed, total: calls.append((completed, total)))
    assert calls[-1] == (4, 4)  # 901 frames = 226 tokens in blocks of 75


def test_prepare_latents_from_the_encoders_blocks_equals_prepare(setup):
    """Cached encodings (several segmentation heads on one encoding pass, echo.evaluate.seeds) give
    prepare's numbers exactly when handed as the blocks iter_latents yields."""
    p, plda = setup
    d = Diarizer(p, plda, dataclasses.replace(CFG, chunk_s=3.0, context_s=1.0))
    wave = (0.1 * np.random.default_rng(2).standard_normal(16000 * 9)).astype(np.float32)
    blocks = [lat for _, lat in iter_latents(p.encoder, d.frontend, wave, round(3.0 / d.token_s), round(1.0 / d.token_s))]
    assert len(blocks) > 1
    a, b = d.prepare(wave, "w"), d.prepare_latents(blocks, "w", len(wave) / 16000)
    for field in ("starts", "activity", "hard", "embeddings", "valid", "clean"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert (a.n_tokens, a.duration) == (b.n_tokens, b.duration)
    with pytest.raises(EchoError, match="empty recording"):
        d.prepare_latents([], "w")


def test_input_forms_and_errors(setup):
    d = _diarizer(setup)
    wave = (0.1 * np.random.default_rng(2).standard_normal(32000)).astype(np.float32)
    a = d({"waveform": wave, "sample_rate": 16000, "uri": "x"})
    b = d({"waveform": np.stack([wave, wave]), "sample_rate": 16000}, uri="x")
    assert a.speaker_diarization == b.speaker_diarization and a.speaker_diarization.uri == "x"
    with pytest.raises(EchoError, match="empty recording"):
        d(np.zeros(0, np.float32))
    with pytest.raises(EchoError, match="expected"):
        d({"waveform": wave})


def test_config_errors_name_the_params_key():
    with pytest.raises(ConfigError, match="DiarizerConfig.chunk_s: expected finite seconds > 0, got inf"):
        DiarizerConfig(chunk_s=float("inf"))
    with pytest.raises(ConfigError, match="segment_step_s"):
        DiarizerConfig(segment_s=2.0, segment_step_s=3.0)
    from echo.config import build

    with pytest.raises(ConfigError, match=r"params.yaml: evaluation.diarizer.min_embed_s: expected"):
        build(DiarizerConfig, {"min_embed_s": -1.0}, "params.yaml: evaluation.diarizer")


def test_activity_round_trips_through_the_reference():
    from pyannote.core import Annotation

    ann = Annotation(uri="r")
    ann[Segment(0.0, 1.0)] = "A"
    ann[Segment(0.6, 2.0)] = "B"
    act, labels = reference_activity(ann, 60, TOKEN_S)
    assert labels == ["A", "B"] and act[:, 0].sum() == 25 and act[:, 1].sum() == 35
    back = activity_annotation(act.astype(bool), TOKEN_S, "r", labels=labels)
    assert back.label_timeline("A").duration() == pytest.approx(1.0)
    assert back.label_timeline("B").duration() == pytest.approx(1.4)


def test_chunk_log_mel_equals_the_whole_recordings_frames():
    fe = FrontEnd()
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000 * 3 + 123)).astype(np.float32)  # not a whole number of hops
    whole = fe.compute(wave)
    t = len(whole)
    for f0, f1 in [(0, 37), (5, 120), (100, t), (t - 3, t + 10), (0, t), (1, 2), (150, 151)]:
        got = chunk_log_mel(fe, wave, f0, f1)
        assert got.shape == (min(f1, t) - f0, 80)
        np.testing.assert_allclose(got, whole[f0:min(f1, t)], rtol=0, atol=1e-5)


def test_block_reader_slices_like_the_array_and_restarts_for_a_new_pass():
    x = np.arange(1000, dtype=np.float32)
    blocks = lambda: (x[i:i + 64] for i in range(0, 1000, 64))  # noqa: E731
    r = BlockReader(blocks, 1000)
    for lo, hi in [(0, 10), (5, 300), (290, 291), (400, 1200), (999, 1000)]:
        np.testing.assert_array_equal(r[lo:hi], x[lo:min(hi, 1000)])
    assert r.passes == 1 and len(r._buf) <= 64 + 1
    np.testing.assert_array_equal(r[0:3], x[:3])
    assert r.passes == 2
    with pytest.raises(EchoError, match="blocks end at sample 1000"):
        BlockReader(blocks, 1001)[900:1001]


def test_save_and_from_pretrained_give_identical_output(tmp_path):
    from echo.diarization.plda import PLDA, PLDAConfig
    from echo.heads.segmentation import SegmentationConfig, SegmentationHead
    from echo.heads.speaker import SpeakerConfig, SpeakerHead
    from echo.models.bundle import EchoModel
    from echo.models.vit import Encoder, EncoderConfig

    torch.manual_seed(0)
    model = EchoModel(Encoder(EncoderConfig(n_mels=80, dim=16, depth=1, heads=2, mlp_dim=32)), FrontEnd(), "segmentation",
                      speaker=SpeakerHead(SpeakerConfig(d_model=16, emb_dim=8, attention_dim=4)),
                      segmentation=SegmentationHead(SegmentationConfig(d_model=16, width=8, num_layers=1))).eval()
    rng = np.random.default_rng(0)
    plda = PLDA.fit(rng.standard_normal((60, 8)), np.repeat(np.arange(6), 10), PLDAConfig(lda_dim=5))
    d = Diarizer(model, plda, DiarizerConfig(segment_s=2.5, segment_step_s=2.5, ahc=AHCConfig(threshold=0.9)))
    wave = (0.1 * rng.standard_normal(16000 * 12)).astype(np.float32)
    d.save(tmp_path / "dz")
    d2 = Diarizer.from_pretrained(tmp_path / "dz")
    assert d2.config == d.config
    a, b = d(wave, uri="w"), d2(wave, uri="w")
    assert a.speaker_diarization == b.speaker_diarization
    assert a.exclusive_speaker_diarization == b.exclusive_speaker_diarization
    np.testing.assert_array_equal(a.speaker_embeddings, b.speaker_embeddings)
    with pytest.raises(EchoError, match="no diarizer.json"):
        (tmp_path / "dz" / "diarizer.json").unlink()
        Diarizer.from_pretrained(tmp_path / "dz")
