
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch


from echo.errors import ConfigError
from echo.evaluate.abilities import AbilityConfig, extract_views, measure_abilities
from echo.features import FrontEnd, build_feature_cache
from echo.metrics.bootstrap import BootstrapConfig
from echo.metrics.probe import ProbeConfig

from tests.evaluate.helpers import tiny_parts

CFG = AbilityConfig(probe=ProbeConfig(max_train_frames=400, max_test_frames=200), max_tokens_per_utt=20,
                    bootstrap=BootstrapConfig(n_boot=200))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """4 speakers (own pitch and level) x 3 utterances of 1.2 s; phones a/b/sil by alignment."""
    tmp = tmp_path_factory.mktemp("abil")
    rng = np.random.default_rng(0)
    rows = []
    n = 19200
    t = np.arange(n) / 16000
    for s in range(4):
        for u in range(3):
            x = 0.2 * np.sin(2 * np.pi * (150 + 120 * s) * t) * (1 + 0.5 * s) + 0.01 * rng.standard_normal(n)
            x[:3200] *= 0.01  # leading silence
            p = tmp / f"s{s}u{u}.flac"
            sf.write(p, x.astype(np.float32), 16000, subtype="PCM_16")
            rows.append(dict(utt_id=f"s{s}u{u}", speaker=f"s{s}", abs_path=str(p), start=0, num_samples=n,
                             align_phone=["sil", "a", "b", "a"], align_start=[0, 3200, 8000, 13600],
                             align_end=[3200, 8000, 13600, n]))
    return build_feature_cache(pd.DataFrame(rows), FrontEnd(), tmp / "cache", ["a", "b", "sil"])


def test_bare_encoder_gap_is_zero_and_probes_run(cache):
    enc = tiny_parts().encoder
    out = measure_abilities(enc, cache, CFG)
    assert out["gap_speaker_points"] == 0.0 and out["gap_phone_points"] == 0.0 and out["factorisation_gap"] == 0.0
    assert out["latent_speaker_id_acc"] == out["speaker_id_acc_speaker_view"]
    assert 0.0 <= out["latent_phone_acc"] <= 1.0 and 0.0 <= out["eer"] <= 1.0
    assert np.isnan(out["per"]) and np.isnan(out["per_vq"]) and out["has_speaker_head"] == 0
    assert out["n_speakers"] == 4 and out["n_utterances"] == 12
    # 1.2 s = 30 tokens; the 5 tokens of the first 0.2 s are silence, ignored by the phone probe
    assert out["n_frames"] == 12 * 20


def test_views_come_from_the_heads(cache):
    parts = tiny_parts()
    cfg = AbilityConfig(probe=CFG.probe, max_tokens_per_utt=100)  # keep every labelled token
    v = extract_views(parts, cache, cfg)
    assert v.speaker_utts.shape == (12, 16) and v.speaker_frames.shape == (12 * 30, 16)
    np.testing.assert_allclose(np.linalg.norm(v.speaker_utts, axis=1), 1.0, atol=1e-5)
    # a token's phone is the alignment's label at the token's centre frame (0.2 s of silence first)
    assert v.frame_phones[:30].tolist() == ["sil"] * 5 + ["a"] * 7 + ["b"] * 9 + ["a"] * 9
    with torch.no_grad():
        lat = parts.encoder(torch.from_numpy(cache.get(v.utt_ids[0]))[None]).features
        # utterance speaker view = the head on the utterance; frame view = the head on one token
        np.testing.assert_allclose(v.speaker_utts[0], parts.speaker(lat)[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(v.speaker_frames[:30], parts.speaker(lat[0][:30, None]).numpy(), atol=1e-5)
        # content view = the CTC head's last hidden layer (input of its output projection)
        hidden = parts.ctc.classifier[:-1](lat)[0].numpy()  # 31 tokens; the last has no label
    np.testing.assert_allclose(v.content_frames[:30], hidden[:30], atol=1e-5)
    np.testing.assert_allclose(v.content_utts[0], hidden.mean(0), atol=1e-5)
    np.testing.assert_allclose(v.latent_utts[0], lat[0].numpy().mean(0), atol=1e-5)


def test_per_matches_hand_values_with_a_silent_ctc_head(cache):
    parts = tiny_parts()
    with torch.no_grad():  # blank always wins: every reference phone is a deletion
        parts.ctc.classifier[-1].bias.fill_(-50.0)
        parts.ctc.classifier[-1].bias[0] = 50.0
    refs = {f"s{s}u{u}": "sil a b a" for s in range(4) for u in range(3)}
    out = measure_abilities(parts, cache, CFG, references=refs)
    assert out["per"] == pytest.approx(1.0) and out["per_ci_low"] == pytest.approx(1.0)
    assert out["has_ctc_head"] == 1 and out["has_speaker_head"] == 1 and np.isnan(out["per_vq"])
    # without references the alignment runs give the same 3 phones (a b a): same PER
    assert measure_abilities(parts, cache, CFG)["per"] == pytest.approx(1.0)
    with torch.no_grad():  # phone "a" (id 1) always wins: hypothesis "a" vs "a b a" -> 2 errors / 3
        parts.ctc.classifier[-1].bias[0] = -50.0
        parts.ctc.classifier[-1].bias[1] = 50.0
    assert measure_abilities(parts, cache, CFG, references=refs)["per"] == pytest.approx(2 / 3)


def test_speaker_view_separates_distinct_voices(cache):
    # pitch and level differ a lot between the 4 speakers: even a random encoder's mean latent
    # identifies them (a sanity check of the enrol/probe wiring, chance = 0.25)
    out = measure_abilities(tiny_parts().encoder, cache, CFG)
    assert out["latent_speaker_id_acc"] >= 0.75


def test_config_validation():
    with pytest.raises(ConfigError, match="content_layer"):
        AbilityConfig(content_layer="logits")
    with pytest.raises(ConfigError, match="max_utts_per_speaker"):
        AbilityConfig(max_utts_per_speaker=1)


def test_bundle_with_vq_head_reports_both_pers(cache):
    from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory
    from echo.heads.vq import VQConfig
    from echo.models.bundle import EchoModel

    parts = tiny_parts(phones=("a", "b"))
    vq = CTCHead(CTCConfig(d_model=32, hidden_dim=16), PhoneInventory(("a", "b")), VQConfig(d_model=32, codebook_size=8, code_dim=32))
    model = EchoModel(parts.encoder, FrontEnd(), "routing", speaker=parts.speaker, ctc=parts.ctc, vq_ctc=vq,
                      router=parts.router).eval()
    out = measure_abilities(model, cache, CFG)
    assert out["has_vq_head"] == 1 and out["has_router"] == 1
    assert 0.0 <= out["per"] and 0.0 <= out["per_vq"]  # both decoded (insertions can exceed 1)
    assert np.isfinite(out["factorisation_gap"])


def test_precomputed_views_give_the_same_numbers(cache):
    parts = tiny_parts()
    refs = {f"s{s}u{u}": "sil a b a" for s in range(4) for u in range(3)}
    fresh = measure_abilities(parts, cache, CFG, references=refs)
    given = measure_abilities(parts, cache, CFG, references=refs, views=extract_views(parts, cache, CFG))
    fresh.pop("wall_s"), given.pop("wall_s")
    assert given.keys() == fresh.keys()
    for k, v in fresh.items():
        assert given[k] == v or (np.isnan(v) and np.isnan(given[k])), k
