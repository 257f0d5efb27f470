import dataclasses

import pytest
import torch

from echo.errors import CacheMismatchError, ConfigError
from echo.models.vit import ENCODER_FORMAT_VERSION, Encoder, EncoderConfig

TINY = EncoderConfig(n_mels=16, patch_frames=4, dim=32, depth=2, heads=2, mlp_dim=64)


def _tiny(seed=0, cfg=TINY):
    torch.manual_seed(seed)
    return Encoder(cfg).eval()


def test_paper_profile_has_25m_parameters():
    with torch.device("meta"):  # no memory, no init cost
        enc = Encoder(EncoderConfig())
    n = sum(p.numel() for p in enc.parameters())
    assert abs(n - 25e6) / 25e6 < 0.05, n
    assert enc.cfg.dim == 512 and enc.cfg.patch_dim == 4 * 80


def test_any_length_positions():
    enc = _tiny()
    for n_tokens in (7, 333):
        x = torch.randn(2, 4 * n_tokens, 16)
        out = enc(x)
        assert out.features.shape == (2, n_tokens, 32)
        assert torch.isfinite(out.features).all() and out.mask.all()
    # a trailing partial patch is one more (valid) token
    assert enc(torch.randn(1, 29, 16)).features.shape == (1, 8, 32)


def test_positions_are_relative_and_matter():
    enc = _tiny()
    with torch.no_grad():  # sharpen attention so position effects are large, as after training
        for blk in enc.blocks:
            blk.attn.qkv.weight.mul_(30)
    x = torch.randn(1, 40, 16)
    y = enc(x).features
    # RoPE: only relative positions count, so shifting every position changes nothing...
    tokens, _ = enc.embed(x)
    shifted, _ = enc.encode(tokens, positions=torch.arange(10) + 1000)
    torch.testing.assert_close(shifted, y, atol=1e-4, rtol=1e-4)
    # ...but order does: reversing the tokens must not just reverse the output
    xr = x.reshape(1, 10, 4, 16).flip(1).reshape(1, 40, 16)
    yr = enc(xr).features.flip(1)
    assert (y - yr).abs().max() > 0.1


def test_padding_invariance():
    enc = _tiny()
    lengths = [37, 64, 13]
    items = [torch.randn(L, 16) * 3 - 4 for L in lengths]
    batch = torch.full((3, 64, 16), 99.0)  # garbage in the padding must not leak
    for i, it in enumerate(items):
        batch[i, :len(it)] = it
    out = enc(batch, torch.tensor(lengths))
    for i, it in enumerate(items):
        alone = enc(it.unsqueeze(0))
        n = alone.features.shape[1]
        assert n == -(-lengths[i] // 4) == int(out.mask[i].sum())
        torch.testing.assert_close(out.features[i, :n], alone.features[0], atol=2e-5, rtol=1e-4)
        assert (out.features[i, n:] == 0).all()


def test_return_layers():
    enc = _tiny()
    x = torch.randn(2, 24, 16)
    out = enc(x, return_layers=(0, -1))
    assert len(out.layers) == 2 and all(h.shape == (2, 6, 32) for h in out.layers)
    # the last block's output, final-normed, is the features
    torch.testing.assert_close(enc.norm(out.layers[1]), out.features)
    assert not torch.allclose(out.layers[0], out.layers[1])
    with pytest.raises(ConfigError, match="return_layers"):
        enc(x, return_layers=(5,))


def test_normalisation_is_owned_by_the_encoder():
    enc = _tiny()
    mean, std = torch.linspace(-8, -2, 16), torch.linspace(1, 3, 16)
    x = torch.randn(1, 20, 16)
    ref = enc(x).features
    enc.set_normalization(mean, std)
    torch.testing.assert_close(enc(x * std + mean).features, ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="16 means"):
        enc.set_normalization(torch.zeros(3), torch.ones(3))


def test_save_load_roundtrip_is_bit_identical(tmp_path):
    enc = _tiny(seed=3)
    enc.set_normalization(torch.randn(16), torch.rand(16) + 0.5)
    path = enc.save(tmp_path / "enc.pt")
    back = Encoder.load(path)
    assert back.cfg == enc.cfg
    x = torch.randn(2, 30, 16)
    lengths = torch.tensor([30, 17])
    a, b = enc(x, lengths, return_layers=(0,)), back(x, lengths, return_layers=(0,))
    assert torch.equal(a.features, b.features) and torch.equal(a.layers[0], b.layers[0])
    assert torch.equal(back.mel_mean, enc.mel_mean) and torch.equal(back.mel_std, enc.mel_std)
    assert not list(tmp_path.glob(".*"))  # atomic write left no temporary behind


def test_load_rejects_other_versions(tmp_path):
    enc = _tiny()
    path = enc.save(tmp_path / "enc.pt")
    payload = torch.load(path, weights_only=True)
    payload["version"] = ENCODER_FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CacheMismatchError, match="version") as e:
        Encoder.load(tmp_path / "future.pt")
    assert "\n" not in str(e.value)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CacheMismatchError, match="not an Echo encoder"):
        Encoder.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CacheMismatchError):
        Encoder.load(tmp_path / "junk.pt")


@pytest.mark.parametrize("change, key", [(dict(heads=3), "heads"), (dict(dim=0), "dim"), (dict(dropout=1.0), "dropout")])
def test_config_validation(change, key):
    with pytest.raises(ConfigError, match=f"EncoderConfig.{key}"):
        dataclasses.replace(TINY, **change)


def test_rotary_table_matches_on_the_fly_angles_and_extends_beyond_its_size():
    from echo.models.vit import RotaryTable, rope_angles

    table = RotaryTable(head_dim=8, base=10_000.0, size=16)
    pos = torch.tensor([[0, 3, 15], [2, 9, 40]])  # 40 is beyond the table: computed on the fly
    cos, sin = table(pos, 3)
    ref_cos, ref_sin = rope_angles(pos, 8, 10_000.0)
    torch.testing.assert_close(cos, ref_cos) and torch.testing.assert_close(sin, ref_sin)
    for n in (5, 33):
        c, s = table(None, n)
        rc, rs = rope_angles(torch.arange(n), 8, 10_000.0)
        assert c.shape == (1, 1, n, 4)
        torch.testing.assert_close(c, rc) and torch.testing.assert_close(s, rs)
    assert "rope.cos" not in Encoder(TINY).state_dict()  # derived from the config, not saved


def test_rotary_table_with_a_known_bound_skips_the_check():
    from echo.models.vit import RotaryTable, rope_angles

    table = RotaryTable(head_dim=8, base=10_000.0, size=16)
    pos = torch.tensor([[1, 7, 12]])
    torch.testing.assert_close(table(pos, 3, num_positions=13)[0], rope_angles(pos, 8, 1e4)[0])
    far = torch.tensor([[20, 30]])  # a bound beyond the table computes the angles
    torch.testing.assert_close(table(far, 2, num_positions=31)[1], rope_angles(far, 8, 1e4)[1])
