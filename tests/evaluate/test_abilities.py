
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch


from echo.errors import ConfigError
from echo.errors import EchoError
from echo.evaluate.abilities import (AbilityConfig, Views, choose_content_view, content_representations,
                                     content_view_scores, extract_views, measure_abilities)
from echo.features import FrontEnd, build_feature_cache
from echo.metrics.bootstrap import BootstrapConfig
from echo.metrics.probe import ProbeConfig

from tests.evaluate.helpers import tiny_parts

CFG = AbilityConfig(probe=ProbeConfig(max_train_frames=400, max_test_frames=200), max_tokens_per_utt=20,
                    content_layer="hidden", bootstrap=BootstrapConfig(n_boot=200))


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
    cfg = AbilityConfig(probe=CFG.probe, max_tokens_per_utt=100, content_layer="hidden")  # every labelled token
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


def _ctc_reading(dims: int, phones: int, reads: slice):
    """A linear CTC head (hidden view = its input, the latent) whose output layer reads only ``reads``."""
    from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory

    head = CTCHead(CTCConfig(d_model=dims, num_layers=0, dropout=0.0), PhoneInventory(tuple("abcd"[:phones]))).eval()
    with torch.no_grad():
        w = head.classifier[-1].weight
        w.zero_()
        head.classifier[-1].bias.zero_()
        for p in range(phones):  # phone p's logit = 4 x latent[p] (dims reads.start + p)
            w[p + 1, reads.start + p] = 4.0
        head.classifier[-1].bias[0] = 1.0  # the blank
    return head


def test_posterior_views_drop_the_voice_that_the_hidden_view_keeps():
    """Constructed case: latent = one-hot phone part (dims 0-3) + a per-speaker voice part (dims 4-11);
    the head reads only the phone part. Two voices saying the same phones give the same phone
    posteriorgram, and speaker ID from it falls to chance, while the hidden view (the latent)
    identifies every speaker."""
    rng = np.random.default_rng(0)
    n_spk, n_utt, t = 6, 6, 12
    voices = rng.normal(size=(n_spk, 8)) * 3
    head = _ctc_reading(12, 4, slice(0, 4))
    utt_lat, spk = [], []
    for s in range(n_spk):
        for u in range(n_utt):
            ph = rng.integers(0, 4, t)  # every utterance its own phone sequence
            z = np.concatenate([np.eye(4)[ph], np.repeat(voices[s][None], t, 0)], axis=1)
            utt_lat.append(z)
            spk.append(f"s{s}")
    lat = torch.tensor(np.stack(utt_lat), dtype=torch.float32)
    mask = torch.ones(lat.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        reps = content_representations(head, None, lat, mask)
    assert set(reps) == {"hidden", "posterior", "phones"}  # no VQ head: no codes
    torch.testing.assert_close(reps["hidden"], lat)  # a linear head's hidden view is the latent
    torch.testing.assert_close(reps["posterior"].sum(-1), torch.ones(lat.shape[:2]))
    torch.testing.assert_close(reps["phones"], reps["posterior"][..., 1:] / reps["posterior"][..., 1:].sum(-1, keepdim=True))
    # same phones, two voices -> the same posteriorgram; the hidden view differs by the voice
    same = torch.cat([torch.eye(4)[[0, 1, 2]], torch.tensor(np.repeat(voices[[0]], 3, 0), dtype=torch.float32)], 1)
    other = same.clone()
    other[:, 4:] = torch.tensor(voices[1], dtype=torch.float32)
    with torch.no_grad():
        a = content_representations(head, None, same[None], torch.ones(1, 3, dtype=torch.bool))
        b = content_representations(head, None, other[None], torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(a["phones"], b["phones"])
    assert (a["hidden"] - b["hidden"]).abs().max() > 1.0
    # the probes: speaker ID on utterance means (chance 1/6) and frame phones across speakers
    utt = {k: x.mean(1).numpy() for k, x in reps.items()}
    frames = {k: x.reshape(-1, x.shape[-1]).numpy() for k, x in reps.items()}
    phones = np.array(["abcd"[i] for i in lat[..., :4].argmax(-1).reshape(-1).tolist()], dtype=object)
    views = Views(utt_ids=[f"u{i}" for i in range(len(spk))], utt_speakers=np.array(spk, dtype=object),
                  latent_utts=utt["hidden"], speaker_utts=utt["hidden"], frame_phones=phones,
                  frame_speakers=np.repeat(np.array(spk, dtype=object), t), latent_frames=frames["hidden"],
                  speaker_frames=frames["hidden"], content={k: (utt[k], frames[k]) for k in reps}, hyps={})
    scores = content_view_scores(views, CFG)
    assert scores["hidden"]["speaker_id_acc"] == 1.0 and scores["hidden"]["gap_speaker_points"] == 0.0
    for name in ("posterior", "phones"):
        assert scores[name]["speaker_id_acc"] <= 0.5, name  # chance is 1/6; voices are gone
        assert scores[name]["gap_speaker_points"] >= 50.0
        assert scores[name]["phone_acc"] == 1.0  # the phones survive
    assert choose_content_view(scores) == "posterior"  # equal gaps: the earlier view


def test_codes_view_is_the_vq_heads_quantised_latent(cache):
    from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory
    from echo.heads.vq import VQConfig

    parts = tiny_parts()
    vq = CTCHead(CTCConfig(d_model=32, hidden_dim=16), PhoneInventory(("a", "b", "c")),
                 VQConfig(d_model=32, codebook_size=8, code_dim=32)).eval()
    lat = torch.randn(2, 5, 32)
    mask = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        reps = content_representations(parts.ctc, vq, lat, mask)
        torch.testing.assert_close(reps["codes"], vq.vq(lat, mask).quantized)
        only_vq = content_representations(None, vq, lat, mask)  # the VQ head stands in for the CTC head
        torch.testing.assert_close(only_vq["hidden"], vq.classifier[:-1](vq.vq(lat, mask).quantized))
    assert content_representations(None, None, lat, mask) == {}


def test_choose_content_view_keeps_the_phones():
    def sc(gap, phone):
        return {"speaker_id_acc": 1 - gap / 100, "phone_acc": phone, "gap_speaker_points": gap, "gap_phone_points": 0.0}

    # 'codes' drops the most voice but loses phones: not eligible; 'phones' beats 'posterior'
    dev = {"hidden": sc(3, 0.40), "posterior": sc(50, 0.40), "phones": sc(60, 0.41), "codes": sc(90, 0.30)}
    assert choose_content_view(dev) == "phones"
    assert choose_content_view({"hidden": sc(3, 0.4), "posterior": sc(50, 0.39)}) == "hidden"
    assert choose_content_view({}) == "latent"


def test_auto_content_view_is_chosen_on_dev_not_test(cache):
    parts = tiny_parts()
    auto = AbilityConfig(probe=CFG.probe, max_tokens_per_utt=20, bootstrap=CFG.bootstrap)
    with pytest.raises(EchoError, match="dev_views"):
        measure_abilities(parts, cache, auto)
    test_views = extract_views(parts, cache, auto)
    dev_views = extract_views(parts, cache, auto)
    dev_views.content = {"hidden": dev_views.content["hidden"], "phones": dev_views.content["phones"]}
    dev_views.content["phones"] = dev_views.content["hidden"]  # dev says: phones is as good as hidden
    out = measure_abilities(parts, cache, auto, views=test_views, dev_views=dev_views)
    assert out["content_view"] == "hidden"  # equal dev scores: the earlier view
    assert set(out["content_views"]) == {"hidden", "posterior", "phones"}
    assert set(out["content_views_dev"]) == {"hidden", "phones"}
    for key, name in (("speaker_id_acc_content_view", "speaker_id_acc"), ("phone_acc_content_view", "phone_acc"),
                      ("gap_speaker_points", "gap_speaker_points")):
        assert out[key] == pytest.approx(out["content_views"]["hidden"][name])
    with pytest.raises(EchoError, match="content view 'codes' is not available"):
        test_views.with_content_view("codes")  # no VQ head here
    # a bare encoder has no content view to choose: the latent, no dev views needed
    assert measure_abilities(parts.encoder, cache, auto)["content_view"] == "latent"
