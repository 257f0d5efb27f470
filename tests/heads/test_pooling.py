import pytest
import torch

from echo.errors import ConfigError, EchoError
from echo.heads.pooling import AttentiveStatsPooling, PoolingConfig


@pytest.mark.parametrize("variant", ["okabe", "ecapa"])
def test_shape_and_padding_does_not_change_result(variant):
    torch.manual_seed(0)
    pool = AttentiveStatsPooling(PoolingConfig(d_model=16, attention_dim=8, variant=variant))
    x = torch.randn(3, 10, 16)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    out = pool(x, mask)
    assert out.shape == (3, 32)
    # Garbage (even non-finite values) in padded frames must not move the result.
    x2 = x.clone()
    x2[1, 6:] = 1e6
    x2[2, 3:] = float("nan")
    out2 = pool(x2, mask)
    assert torch.equal(out, out2)
    # And it equals pooling the unpadded sequence on its own.
    alone = pool(x[1:2, :6], None)
    torch.testing.assert_close(out[1:2], alone, rtol=1e-5, atol=1e-6)
    # Sanity: the mask matters (pooling all 10 frames of row 1 gives something else).
    assert not torch.allclose(pool(x[1:2], None), alone)


def test_weights_follow_scores_mean_of_constant_sequence():
    pool = AttentiveStatsPooling(PoolingConfig(d_model=4, attention_dim=3))
    x = torch.full((1, 5, 4), 2.5)
    out = pool(x)
    torch.testing.assert_close(out[0, :4], torch.full((4,), 2.5))
    assert out[0, 4:].max() < 1e-2  # std of a constant ~ sqrt(eps)


def test_all_padding_row_and_bad_config_raise():
    pool = AttentiveStatsPooling(PoolingConfig(d_model=4, attention_dim=3))
    with pytest.raises(EchoError):
        pool(torch.randn(2, 3, 4), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ConfigError):
        PoolingConfig(variant="xvector")
