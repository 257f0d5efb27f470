import hashlib
import json

import pytest
import torch

from echo.errors import CacheMismatchError, EchoError
from echo.features import FrontEnd
from echo.heads.arcface import ArcFaceLoss
from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory
from echo.heads.router import RouterConfig, SourceRouter
from echo.heads.speaker import SpeakerConfig, SpeakerHead
from echo.heads.vq import VQConfig
from echo.models.bundle import BUNDLE_VERSION, EchoModel
from echo.models.vit import Encoder, EncoderConfig

D = 32


def _model(stage="routing") -> EchoModel:
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(n_mels=16, dim=D, depth=2, heads=2, mlp_dim=64))
    enc.set_normalization(torch.linspace(-5, -3, 16), torch.linspace(1, 2, 16))
    inv = PhoneInventory(("a", "b", "c"))
    ctc = CTCConfig(d_model=D, hidden_dim=16, dropout=0.0)
    heads = dict(speaker=SpeakerHead(SpeakerConfig(d_model=D, emb_dim=8, attention_dim=8)),
                 arcface=ArcFaceLoss(8, 5), ctc=CTCHead(ctc, inv),
                 vq_ctc=CTCHead(ctc, inv, VQConfig(d_model=D, codebook_size=8, code_dim=D)),
                 router=SourceRouter(RouterConfig(d_model=D, k_max=3, width=16, num_layers=1, num_heads=2)))
    # move BN running stats and the VQ counters off their initial values so the round trip has to carry them
    heads["speaker"].train()(torch.randn(4, 7, D))
    heads["vq_ctc"].train()(torch.randn(2, 5, D))
    return EchoModel(enc, FrontEnd(n_mels=16), stage, meta={"stages": {"x": {"dev": {"eer": 0.25}}}}, **heads).eval()


def _digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_round_trip_is_bit_identical(tmp_path):
    model = _model()
    model.save(tmp_path / "a")
    loaded = EchoModel.load(tmp_path / "a")
    loaded.save(tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert sorted(_digest(tmp_path / "a")) == ["arcface.pt", "bundle.json", "ctc.pt", "encoder.pt", "router.pt",
                                               "speaker.pt", "vq_ctc.pt"]
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    assert loaded.frontend == model.frontend and loaded.stage == "routing" and loaded.meta == model.meta
    assert loaded.inventory == model.inventory
    # the encoder file is the encoder's own format
    assert torch.equal(Encoder.load(tmp_path / "a" / "encoder.pt").mel_std, model.encoder.mel_std)

    mels = torch.randn(2, 37, 16) - 4
    lengths = torch.tensor([37, 21])
    za, zb = model.latents(mels, lengths), loaded.latents(mels, lengths)
    assert torch.equal(za.features, zb.features) and za.features.shape == (2, 10, D)
    assert torch.equal(model.embed_speaker(za.features, za.mask), loaded.embed_speaker(zb.features, zb.mask))
    ra, rb = model.route(za.features, za.mask), loaded.route(zb.features, zb.mask)
    assert torch.equal(ra.slots, rb.slots) and torch.equal(ra.exist_prob, rb.exist_prob)
    for vq in (False, True):
        assert model.transcribe(za.features, za.mask, vq=vq) == loaded.transcribe(zb.features, zb.mask, vq=vq)


def test_convenience_methods_shapes_and_times():
    model = _model()
    z = model.latents(torch.randn(3, 40, 16) - 4)
    assert z.features.shape == (3, 10, D) and bool(z.mask.all())
    emb = model.embed_speaker(z.features, z.mask)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    r = model.route(z.features, z.mask, threshold=0.5)
    assert r.slots.shape == (3, 3, 10, D) and r.exist_prob.shape == (3, 3)
    assert ((r.exist_prob >= 0) & (r.exist_prob <= 1)).all()
    assert torch.equal(r.count, (r.exist_prob >= 0.5).sum(1))
    for t in model.transcribe(z.features, z.mask):
        assert len(t.phones) == len(t.ids) == len(t.start_s) == len(t.end_s)
        assert set(t.phones) <= {"a", "b", "c"}
        for s, e in zip(t.start_s, t.end_s):
            assert 0 <= s < e <= 10 * 0.04 + 1e-9
            assert abs(s / 0.04 - round(s / 0.04)) < 1e-6


def test_other_version_raises_one_line(tmp_path):
    _model().save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "bundle.json").read_text())
    meta["version"] = BUNDLE_VERSION + 1
    (tmp_path / "m" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(CacheMismatchError, match="version") as e:
        EchoModel.load(tmp_path / "m")
    assert "\n" not in str(e.value)
    meta["format"] = "something.else"
    (tmp_path / "m" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(CacheMismatchError, match="not an Echo model bundle"):
        EchoModel.load(tmp_path / "m")
    with pytest.raises(EchoError, match="no bundle.json"):
        EchoModel.load(tmp_path / "missing")


def test_pretrain_bundle_has_only_the_encoder(tmp_path):
    m = _model()
    bare = EchoModel(m.encoder, m.frontend, "pretrain")
    bare.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["bundle.json", "encoder.pt"]
    loaded = EchoModel.load(tmp_path / "p")
    assert loaded.components == ["encoder"] and loaded.inventory is None
    z = loaded.latents(torch.randn(1, 8, 16))
    with pytest.raises(EchoError, match="no router head"):
        loaded.route(z.features)
    with pytest.raises(EchoError, match="stage"):
        EchoModel(m.encoder, m.frontend, "finetune")


class _Hostile:
    """Unpickling this would run code (sets a flag): the loader must refuse it, not run it."""

    def __reduce__(self):
        return (exec, ("import builtins; builtins._echo_pwned = True",))


_DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:300]), "truncated or corrupt archive"),
    "random-bytes": (lambda p: p.write_bytes(bytes(_random_bytes())), "not a torch checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "empty file"),
    "raw-pickle": (lambda p: p.write_bytes(__import__("pickle").dumps(_Hostile())),
                   "a plain pickle, not a torch checkpoint"),
    "pickled-object-in-archive": (lambda p: torch.save({"kind": "speaker", "x": _Hostile()}, p),
                                  "holds a pickled Python object"),
}


def _random_bytes(n=4096):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).tolist()


@pytest.mark.parametrize("kind", sorted(_DAMAGE))
def test_damaged_head_file_is_one_line_naming_the_file(tmp_path, kind):
    import builtins
    import warnings

    _model().save(tmp_path / "m")
    damage, reason = _DAMAGE[kind]
    damage(tmp_path / "m" / "speaker.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CacheMismatchError) as e:
            EchoModel.load(tmp_path / "m")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'm' / 'speaker.pt'}: not a readable Echo speaker head ({reason}"), msg
    assert "\n" not in msg and "weights_only" not in msg and "another" not in msg
    assert not caught, [str(w.message) for w in caught]  # no torch warning leaks
    assert not getattr(builtins, "_echo_pwned", False)


def test_damaged_encoder_file_names_the_file(tmp_path):
    _model().save(tmp_path / "m")
    (tmp_path / "m" / "encoder.pt").write_bytes(b"not weights")
    with pytest.raises(CacheMismatchError) as e:
        EchoModel.load(tmp_path / "m")
    assert str(e.value) == f"{tmp_path / 'm' / 'encoder.pt'}: not a readable Echo encoder (not a torch checkpoint)"
