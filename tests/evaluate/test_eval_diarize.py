import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from pyannote.core import Annotation, Segment, Timeline

from eval_fixtures import TOKEN_S, conversation_latents, tiny_parts, training_latents

from echo.diarization.ahc import AHCConfig
from echo.errors import ConfigError, EchoError
from echo.evaluate.diarize import (BackendConfig, Diarizer, DiarizerConfig, SpeechConfig, TuneConfig, backend_from_latents,
                                   encode_long, evaluate_conditions, evaluate_diarization, fit_backend, score_conversations,
                                   speech_activity, tune_on_dev)
from echo.features import FrontEnd
from echo.metrics.der import format_rttm

TURNS = [(0, 6), (None, 1), (1, 6), (2, 6), (0, 5)]
CFG = DiarizerConfig(exclusive=True, ahc=AHCConfig(threshold=0.6))


@pytest.fixture(scope="module")
def backend():
    parts = tiny_parts()
    lats, spks = training_latents(n_speakers=30, n_utts=3)
    return parts, backend_from_latents(parts, lats, spks)


def _score(ref, hyp, uem, k):
    return score_conversations({"conv": ref}, {"conv": hyp}, {"conv": uem}, {"conv": k})


def test_backend_glue_finds_speakers_blind_and_oracle(backend):
    parts, plda = backend
    lat, speech, ref, uem = conversation_latents(TURNS)
    d = Diarizer(parts, plda, CFG)
    prep = d.prepare_latents(lat, "conv", speech=speech)
    # the silent second (6-7 s) is not embedded: no kept window lies inside it
    assert not ((prep.windows[:, 0] >= 6.0) & (prep.windows[:, 1] <= 7.0)).any()
    blind = d.cluster(prep)
    assert blind.num_speakers == 3
    s = _score(ref, blind.annotation, uem, 3)
    assert s["primary"]["der"] < 0.05 and s["secondary"]["der"] <= s["primary"]["der"]
    # no speaker during the pause: speech masking works at token resolution
    assert blind.annotation.crop(Segment(6.0, 7.0)).get_timeline().duration() == 0
    assert s["count"]["accuracy"] == 1.0
    # the bounds re-cluster with K clamped, oracle K is obeyed exactly
    assert d.cluster(prep, max_speakers=2).num_speakers == 2
    assert d.cluster(prep, min_speakers=4).num_speakers == 4
    assert d.cluster(prep, num_speakers=2).num_speakers == 2
    with pytest.raises(ConfigError, match="min_speakers"):
        d.cluster(prep, min_speakers=3, max_speakers=2)


def test_overlap_from_router_adds_second_speaker(backend):
    parts, plda = backend
    lat, speech, ref, uem = conversation_latents(TURNS)
    with torch.no_grad():  # make the router declare every slot active: >= 2 active slots everywhere
        parts.router.exist[1].bias.fill_(20.0)
    try:
        over = Diarizer(parts, plda, dataclasses.replace(CFG, exclusive=False)).prepare_latents(lat, "conv", speech=speech)
        assert over.overlap is not None and over.overlap.all()
        ann = Diarizer(parts, plda, dataclasses.replace(CFG, exclusive=False)).cluster(over).annotation
        excl = Diarizer(parts, plda, CFG).cluster(over).annotation
        # exclusive output never overlaps; the router-driven one does, wherever there is speech
        assert excl.get_overlap().duration() == 0
        assert ann.get_overlap().duration() == pytest.approx(excl.get_timeline().support().duration(), abs=0.05)
        with torch.no_grad():
            parts.router.exist[1].bias.fill_(-20.0)
        none = Diarizer(parts, plda, dataclasses.replace(CFG, exclusive=False)).prepare_latents(lat, "conv", speech=speech)
        assert not none.overlap.any()
    finally:
        with torch.no_grad():
            parts.router.exist[1].bias.zero_()


def test_chunked_encoding_stitches_the_right_tokens():
    parts = tiny_parts(n_mels=80)
    enc = parts.encoder
    rng = np.random.default_rng(0)
    mels = rng.standard_normal((401, 80)).astype(np.float32)  # 101 tokens, the last one partial
    with torch.no_grad():
        full = enc(torch.from_numpy(mels)[None]).features[0].numpy()
    one = encode_long(enc, mels, chunk_tokens=1000, context_tokens=0)
    np.testing.assert_allclose(one, full, atol=1e-5)
    got = encode_long(enc, mels, chunk_tokens=30, context_tokens=5)
    # each kept token equals the encoder run on its chunk plus context, at the right offset
    with torch.no_grad():
        for c0 in range(0, 101, 30):
            c1, a, b = min(101, c0 + 30), max(0, c0 - 5), min(101, c0 + 35)
            ref = enc(torch.from_numpy(mels[a * 4: min(401, b * 4)])[None]).features[0].numpy()
            np.testing.assert_allclose(got[c0:c1], ref[c0 - a: c1 - a], atol=1e-5)
    # with attention switched off tokens do not interact: chunked == full everywhere, seams included
    with torch.no_grad():
        for blk in enc.blocks:
            blk.attn.proj.weight.zero_()
            blk.attn.proj.bias.zero_()
        full = enc(torch.from_numpy(mels)[None]).features[0].numpy()
    np.testing.assert_allclose(encode_long(enc, mels, 7, 0), full, atol=1e-5)


def test_energy_speech_activity_follows_the_bursts():
    fe = FrontEnd()
    rng = np.random.default_rng(0)
    wave = 1e-4 * rng.standard_normal(4 * 16000)
    wave[16000:32000] += 0.3 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    mels = fe.compute(wave.astype(np.float32))
    sp, src = speech_activity(tiny_parts(), None, mels, SpeechConfig(source="energy"), TOKEN_S, 4)
    assert src == "energy" and len(sp) == 101
    assert sp[27:48].all() and not sp[:22].any() and not sp[54:].any()


def _conversation_audio(seed, k):
    rng = np.random.default_rng(seed)
    sr = 16000
    wave = 1e-3 * rng.standard_normal(8 * sr)
    ref = Annotation(uri=f"dev{seed}")
    for i in range(k):
        a, b = 1.0 + 3.0 * i, 3.5 + 3.0 * i
        t = np.arange(int((b - a) * sr)) / sr
        wave[int(a * sr): int(a * sr) + t.size] += 0.2 * np.sin(2 * np.pi * (200 + 150 * i) * t)
        ref[Segment(a, b)] = f"S{i}"
    return wave.astype(np.float32), ref


@dataclasses.dataclass
class Item:
    rec_id: str
    audio: np.ndarray
    annotation: Annotation
    uem: Timeline
    k: int


def test_end_to_end_on_audio_gives_a_valid_annotation_and_scores(backend):
    parts, plda = backend
    d = Diarizer(parts, plda, dataclasses.replace(CFG, exclusive=False, chunk_s=3.0, context_s=1.0))
    wave, ref = _conversation_audio(0, 2)
    hyp = d.diarize(wave, "dev0")
    assert isinstance(hyp, Annotation) and hyp.uri == "dev0"
    assert all(0 <= s.start < s.end <= 8.0 for s in hyp.itersegments())
    assert all(lab.startswith("spk") for lab in hyp.labels())
    assert set(read_rttm_text(format_rttm(hyp))) == set(hyp.labels())  # RTTM round trip of labels
    items = [Item(f"dev{i}", *_conversation_audio(i, k), Timeline([Segment(0, 8)]), k) for i, k in enumerate((1, 2))]
    summary, hyps = evaluate_diarization(d, items)
    assert summary["condition"] == "blind" and set(hyps) == {"dev0", "dev1"}
    assert set(summary["primary"]["by_k"]) == {"1", "2"} and summary["real_time_factor"] > 0
    lo, hi = summary["primary"]["der_ci"]
    assert lo <= summary["primary"]["der"] <= hi
    oracle, ohyps = evaluate_diarization(d, items, oracle=True)
    assert oracle["condition"] == "oracle"
    assert [r["k_hat"] for r in oracle["per_recording"]] == [1, 2]  # oracle K honoured (if speech found)
    # both conditions from one encoding pass give exactly the separate evaluations
    (b2, h2), (o2, oh2) = evaluate_conditions(d, items, (False, True))
    assert b2["condition"] == "blind" and o2["condition"] == "oracle"
    assert b2["primary"] == summary["primary"] and o2["primary"] == oracle["primary"]
    assert all(h2[u] == hyps[u] for u in hyps) and all(oh2[u] == ohyps[u] for u in ohyps)


def read_rttm_text(text):
    labels = []
    for line in text.splitlines():
        labels.append(line.split()[7])
    return labels


def test_tune_on_dev_picks_the_lowest_der_point(backend):
    parts, plda = backend
    d = Diarizer(parts, plda, dataclasses.replace(CFG, exclusive=False))
    items = [Item(f"dev{i}", *_conversation_audio(i, k), Timeline([Segment(0, 8)]), k) for i, k in enumerate((1, 2))]
    grid = TuneConfig(Fa=(0.1, 0.5), Fb=(5.0,), loopP=(0.99,), ahc_threshold=(0.0, 0.9), exclusive=(False, True),
                      dilation_s=(0.0, 0.4))
    best, rows = tune_on_dev(d, items, grid)
    assert len(rows) == 16 and {r["dilation_s"] for r in rows} == {0.0, 0.4}
    ders = [r["der"] for r in rows]
    i = int(np.argmin(ders))
    assert (best.vbx.Fa, best.ahc.threshold, best.exclusive, best.speech.dilation_s) == (
        rows[i]["Fa"], rows[i]["ahc_threshold"], rows[i]["exclusive"], rows[i]["dilation_s"])
    assert best.windows == CFG.windows and best.speech.ctc_threshold == CFG.speech.ctc_threshold  # the rest untouched
    assert d.config.speech.dilation_s == CFG.speech.dilation_s  # the caller's diarizer is not modified
    # each row's DER is what the diarizer with that config gives on the dev items
    again, _ = evaluate_diarization(Diarizer(parts, plda, best), items)
    assert again["primary"]["der"] == pytest.approx(ders[i])

    class TestSet(list):
        table = pd.DataFrame({"split": ["test"]})
    with pytest.raises(EchoError, match="dev split"):
        tune_on_dev(d, TestSet(items), grid)


def test_der_through_the_evaluation_path_matches_a_hand_count():
    ref = Annotation(uri="r")
    ref[Segment(0, 10)] = "A"
    ref[Segment(8, 20)] = "B"  # 2 s overlap
    hyp = Annotation(uri="r")
    hyp[Segment(0, 9)] = "x"     # A: 1 s missed at 9-10
    hyp[Segment(9, 16)] = "y"    # B from 9; 8-9 B missed; 16-20 B missed
    hyp[Segment(20, 22)] = "y"   # 2 s false alarm inside the UEM
    uem = Timeline([Segment(0, 22)])
    s = score_conversations({"r": ref}, {"r": hyp}, {"r": uem}, {"r": 2})
    # reference speech 22 s (10 + 12); missed: A 9-10 (1) + B 8-9 (1) + B 16-20 (4) = 6; FA 2; confusion 0
    assert s["primary"]["total"] == pytest.approx(22.0)
    assert s["primary"]["missed"] == pytest.approx(6.0)
    assert s["primary"]["false_alarm"] == pytest.approx(2.0)
    assert s["primary"]["der"] == pytest.approx(8.0 / 22.0)
    assert s["primary"]["by_k"]["2"]["der"] == pytest.approx(8.0 / 22.0)
    # secondary: 0.25 s each side of every reference boundary (0, 8, 10, 20) is not scored:
    # reference 20 s, missed 0.75 + 0.75 + 3.75, false alarm 1.75 (20.25-22)
    assert s["secondary"]["total"] == pytest.approx(20.0)
    assert s["secondary"]["der"] == pytest.approx(7.0 / 20.0)
    assert s["count"]["accuracy"] == 1.0 and s["per_recording"][0]["k_hat"] == 2


def test_fit_backend_from_a_feature_cache(tmp_path):
    import soundfile as sf

    from echo.features import build_feature_cache

    rng = np.random.default_rng(0)
    rows = []
    for s in range(4):
        for u in range(2):
            x = (0.1 * rng.standard_normal(16000 * 2) * (1 + s)).astype(np.float32)
            p = tmp_path / f"s{s}u{u}.flac"
            sf.write(p, x, 16000, subtype="PCM_16")
            rows.append(dict(utt_id=f"s{s}u{u}", speaker=f"s{s}", abs_path=str(p), start=0, num_samples=len(x),
                             align_phone=["a"], align_start=[0], align_end=[len(x)]))
    cache = build_feature_cache(pd.DataFrame(rows), FrontEnd(), tmp_path / "cache", ["a", "sil"])
    plda = fit_backend(tiny_parts(), cache, speech=SpeechConfig(source="none"))
    assert plda.input_dim == 16 and plda.dim == 3  # 4 speakers -> LDA capped at 3
    # augmented: the same utterances embedded once more from the noisy copy
    noisy = build_feature_cache(pd.DataFrame(rows), FrontEnd(), tmp_path / "noisy", ["a", "sil"],
                                transform=lambda w, r: w + np.float32(0.05) * rng.standard_normal(w.size).astype(np.float32))
    with pytest.raises(ConfigError, match="diarize.backend.augmented: true needs the augmented training cache"):
        fit_backend(tiny_parts(), cache, config=BackendConfig(augmented=True), speech=SpeechConfig(source="none"))
    both = fit_backend(tiny_parts(), cache, config=BackendConfig(augmented=True), speech=SpeechConfig(source="none"),
                       noisy_cache=noisy)
    assert both.dim == 3 and not np.allclose(both.mean, plda.mean)
    assert np.allclose(fit_backend(tiny_parts(), cache, speech=SpeechConfig(source="none"), noisy_cache=noisy).mean,
                       plda.mean)  # not asked for: the copy is ignored


def test_config_validation():
    with pytest.raises(ConfigError, match="diarize.chunk_s"):
        DiarizerConfig(chunk_s=0)
    with pytest.raises(ConfigError, match="diarize.speech.source"):
        SpeechConfig(source="vad")
    with pytest.raises(ConfigError, match="vbx.loopP"):
        TuneConfig(loopP=(1.5,))
    with pytest.raises(ConfigError, match="diarize.tune.dilation_s"):
        TuneConfig(dilation_s=(-0.1,))
    with pytest.raises(ConfigError, match="diarize.backend.augmented: expected true or false"):
        BackendConfig(augmented="yes")
    with pytest.raises(EchoError, match="speaker head"):
        Diarizer(tiny_parts().encoder, None)


def test_diarizer_reads_an_echo_bundle(backend, tmp_path):
    from echo.models.bundle import EchoModel

    parts, plda = backend
    model = EchoModel(parts.encoder, FrontEnd(), "routing", speaker=parts.speaker, ctc=parts.ctc, router=parts.router)
    model = EchoModel.load(model.save(tmp_path / "bundle"))
    d = Diarizer(model, plda, CFG)
    assert d.parts.router is not None and d.frontend == model.frontend
    wave, _ = _conversation_audio(3, 2)
    a = d.diarize(wave, "b")
    b = Diarizer(parts, plda, CFG).diarize(wave, "b")
    assert a.labels() and format_rttm(a) == format_rttm(b)  # the saved bundle diarizes exactly like its parts


def test_config_round_trips_through_json_for_the_cli():
    import json

    from echo.config import build

    cfg = dataclasses.replace(CFG, exclusive=False, speech=SpeechConfig(source="energy"))
    back = build(DiarizerConfig, json.loads(json.dumps(dataclasses.asdict(cfg))), "diarizer.json")
    assert back == cfg


# --- long recordings: chunked log-mel, streamed windows, router blocks ---------------------------


def test_chunk_log_mel_equals_the_whole_recordings_frames():
    from echo.evaluate.diarize import chunk_log_mel

    fe = FrontEnd()
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(16000 * 3 + 123)).astype(np.float32)  # not a whole number of hops
    whole = fe.compute(wave)
    t = len(whole)
    for f0, f1 in [(0, 37), (5, 120), (100, t), (t - 3, t + 10), (0, t), (1, 2), (150, 151)]:
        got = chunk_log_mel(fe, wave, f0, f1)
        assert got.shape == (min(f1, t) - f0, 80)
        np.testing.assert_allclose(got, whole[f0:min(f1, t)], rtol=0, atol=1e-5)  # both edges' padding included


@pytest.mark.parametrize("source", ["ctc", "energy", "none"])
def test_streamed_prepare_equals_the_whole_recording_pass(backend, source):
    # the one-pass diarizer (chunked log-mel, windows embedded as chunks arrive, router blocks)
    # gives what the whole-recording log-mel + encode_long + prepare_latents gives
    parts, plda = backend
    # thresholds where the random router's overlap flags are mixed (neither all nor none)
    cfg = dataclasses.replace(CFG, exclusive=False, chunk_s=1.0, context_s=0.4, batch_windows=5,
                              overlap_threshold=0.01, activity_threshold=0.9, speech=SpeechConfig(source=source))
    d = Diarizer(parts, plda, cfg)
    wave, _ = _conversation_audio(4, 2)
    got = d.prepare(wave, "s")
    mels = d.frontend.compute(wave)
    lat = encode_long(parts.encoder, mels, 25, 10)
    speech, used = speech_activity(parts, lat, mels, cfg.speech, TOKEN_S, 4)
    want = d.prepare_latents(lat, "s", len(wave) / 16000, speech)
    assert got.speech_source == used == source
    np.testing.assert_array_equal(got.speech, want.speech)
    np.testing.assert_array_equal(got.windows, want.windows)
    assert len(got.windows) > 10
    np.testing.assert_allclose(got.embeddings, want.embeddings, atol=1e-4)
    np.testing.assert_array_equal(got.overlap, want.overlap)
    assert 0 < got.overlap.mean() < 1


def test_window_stream_holds_about_one_chunk_of_latents(backend):
    from echo.evaluate.diarize import _WindowStream

    parts, plda = backend
    d = Diarizer(parts, plda, dataclasses.replace(CFG, exclusive=False, batch_windows=8))
    lat, speech, _, _ = conversation_latents([(0, 20), (1, 20), (2, 20)])
    emit = speech.copy()
    emit[::3] = False  # CTC-like spikes: the stream must dilate them exactly as the whole-array path
    whole = _WindowStream(d, len(lat), len(lat) * TOKEN_S, None, 2)
    whole.push(lat, emit)
    want = whole.finish("w")
    s = _WindowStream(d, len(lat), len(lat) * TOKEN_S, None, 2)
    held = 0
    for a in range(0, len(lat), 50):
        s.push(lat[a:a + 50], emit[a:a + 50])
        held = max(held, len(s.buf))
    got = s.finish("w")
    np.testing.assert_array_equal(got.speech, want.speech)
    np.testing.assert_array_equal(got.windows, want.windows)
    np.testing.assert_allclose(got.embeddings, want.embeddings, atol=1e-5)
    np.testing.assert_array_equal(got.overlap, want.overlap)
    # 1500 tokens went through; never more than a block + the pending windows (8 x 0.25 s + 1.5 s) + a router block
    assert len(lat) == 1500 and held <= 50 + 8 * 7 + 38 + 100


def test_router_runs_on_4s_blocks_and_marks_tokens_where_two_slots_are_active(backend):
    parts, plda = backend
    d = Diarizer(parts, plda, dataclasses.replace(CFG, exclusive=False))
    rt = parts.router
    lengths = []
    hook = rt.register_forward_hook(lambda m, args, out: lengths.append(tuple(args[0].shape)))
    saved = {k: v.clone() for k, v in rt.state_dict().items()}
    try:
        with torch.no_grad():  # every slot exists and outputs the mixture latent itself (residual path)
            rt.out_proj.weight.zero_()
            rt.out_proj.bias.zero_()
            rt.exist[1].weight.zero_()
            rt.exist[1].bias.fill_(20.0)
        sil = d._silence()
        lat, speech, _, _ = conversation_latents([(0, 3), (None, 2.2), (1, 4)])  # 230 tokens
        quiet = ~speech
        lat[quiet] = 5.0 * sil  # silent tokens carry the encoder's silence latent
        prep = d.prepare_latents(lat, "r", speech=np.ones(len(lat), bool))
        # non-overlapping blocks of 100 tokens (4 s), the last one shorter, in as few calls as possible
        assert sum(b * t for b, t, _ in lengths) == 230 and {t for _, t, _ in lengths} == {100, 30}
        # every slot active exactly where the mixture is not silence
        np.testing.assert_array_equal(prep.overlap, speech)
        # a block without speech tokens is not routed (its overlap could not show in the output)
        lengths.clear()
        gap = np.ones(len(lat), bool)
        gap[100:200] = False
        skip = d.prepare_latents(lat, "r", speech=gap)
        assert sum(b * t for b, t, _ in lengths) == 130 and not skip.overlap[100:200].any()
        np.testing.assert_array_equal(skip.overlap[:100], speech[:100])
        # exclusive: the router never runs
        lengths.clear()
        ex = Diarizer(parts, plda, CFG).prepare_latents(lat, "r", speech=speech)
        assert ex.overlap is None and lengths == []
    finally:
        hook.remove()
        rt.load_state_dict(saved)


def test_slot_overlap_marks_where_two_constructed_sources_are_active():
    from echo.evaluate.diarize import slot_overlap

    rng = np.random.default_rng(0)
    sil, a, b, c = rng.standard_normal((4, 32))
    slots = np.tile(sil, (1, 3, 100, 1))  # one block, 3 slots, 100 tokens, all silent
    slots[0, 0, 10:60] = a + 0.1 * rng.standard_normal((50, 32))   # source A: tokens 10-59
    slots[0, 1, 40:90] = b + 0.1 * rng.standard_normal((50, 32))   # source B: tokens 40-89
    slots[0, 2, 0:100] = c                                         # a slot that does not exist
    logits = np.array([[5.0, 5.0, -5.0]])
    want = np.zeros(100, bool)
    want[40:60] = True
    np.testing.assert_array_equal(slot_overlap(slots, logits, sil)[0], want)
    # the third slot counts once it exists: overlap wherever A or B speaks
    both = slot_overlap(slots, np.array([[5.0, 5.0, 5.0]]), sil)[0]
    assert both[10:90].all() and not both[:10].any() and not both[90:].any()


def test_block_reader_slices_like_the_array_and_restarts_for_a_new_pass():
    from echo.evaluate.diarize import BlockReader

    x = np.arange(1000, dtype=np.float32)
    blocks = lambda: (x[i:i + 64] for i in range(0, 1000, 64))  # noqa: E731
    r = BlockReader(blocks, 1000)
    for lo, hi in [(0, 10), (5, 300), (290, 291), (400, 1200), (999, 1000)]:
        np.testing.assert_array_equal(r[lo:hi], x[lo:min(hi, 1000)])
    assert r.passes == 1 and len(r._buf) <= 64 + 1  # only the block under the last read is held
    np.testing.assert_array_equal(r[0:3], x[:3])  # going back: a new pass over the blocks
    assert r.passes == 2
    with pytest.raises(EchoError, match="blocks end at sample 1000"):
        BlockReader(blocks, 1001)[900:1001]


@pytest.mark.parametrize("source,passes", [("energy", 2), ("ctc", 1)])
def test_streamed_audio_diarizes_like_the_array(backend, source, passes):
    from echo.evaluate.diarize import BlockReader

    parts, plda = backend
    d = Diarizer(parts, plda, dataclasses.replace(CFG, exclusive=False, chunk_s=1.0, context_s=0.4,
                                                  speech=SpeechConfig(source=source)))
    wave, _ = _conversation_audio(5, 2)
    reader = BlockReader(lambda: (wave[i:i + 7000] for i in range(0, len(wave), 7000)), len(wave))
    got, want = d.prepare(reader, "a"), d.prepare(wave, "a")
    assert reader.passes == passes
    np.testing.assert_array_equal(got.speech, want.speech)
    np.testing.assert_array_equal(got.windows, want.windows)
    np.testing.assert_array_equal(got.embeddings, want.embeddings)
    np.testing.assert_array_equal(got.overlap, want.overlap)
