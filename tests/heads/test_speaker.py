import numpy as np
import pytest
import torch

from echo.errors import ConfigError
from echo.heads.speaker import SpeakerConfig, SpeakerHead


@pytest.mark.parametrize("pooling", ["okabe", "ecapa"])
def test_embedding_shape_unit_norm_and_mask(pooling):
    torch.manual_seed(0)
    head = SpeakerHead(SpeakerConfig(d_model=32, emb_dim=16, pooling=pooling, attention_dim=8))
    x = torch.randn(4, 12, 32)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[0, 7:] = False
    emb = head(x, mask)  # training mode, batch norm on batch statistics
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
    head.eval()
    x2 = x.clone()
    x2[0, 7:] = 123.0
    assert torch.equal(head(x, mask), head(x2, mask))


def test_save_load_bit_identical(tmp_path):
    torch.manual_seed(0)
    head = SpeakerHead(SpeakerConfig(d_model=32, emb_dim=16, attention_dim=8))
    x = torch.randn(4, 12, 32)
    head(x)  # move the batch-norm running statistics off their init
    head.eval()
    head.save(tmp_path / "spk.pt")
    back = SpeakerHead.load(tmp_path / "spk.pt")
    assert back.config == head.config
    for (k, a), (k2, b) in zip(head.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(back(x), head(x))
    # Saving the same weights again gives the same bytes.
    back.save(tmp_path / "spk2.pt")
    assert (tmp_path / "spk.pt").read_bytes() == (tmp_path / "spk2.pt").read_bytes()


def test_config_validation():
    with pytest.raises(ConfigError):
        SpeakerConfig(emb_dim=0)
    with pytest.raises(ConfigError):
        SpeakerConfig(pooling="mean")


def test_embed_windows_equals_embedding_each_window_alone():
    torch.manual_seed(0)
    head = SpeakerHead(SpeakerConfig(d_model=8, emb_dim=4, attention_dim=4)).eval()
    lat = torch.randn(20, 8).numpy()
    starts, length = np.array([0, 5, 16]), 6  # the last window is cut at the end (4 tokens)
    masks = np.ones((3, length), bool)
    masks[1, :2] = False  # pooled over tokens 7..10 only
    got = head.embed_windows(lat, starts, length, masks, batch_size=2)
    with torch.no_grad():
        want = [head(torch.from_numpy(lat[a:b])[None])[0].numpy() for a, b in ((0, 6), (7, 11), (16, 20))]
    np.testing.assert_allclose(got, np.stack(want), atol=1e-6)
    assert head.embed_windows(lat, [], length).shape == (0, 4)
