import itertools

import numpy as np
import pytest
import torch

from echo.errors import ConfigError
from echo.heads.segmentation import (Powerset, SegmentationConfig, SegmentationHead, best_permutation,
                                     powerset_pit_loss)


def test_powerset_classes_and_round_trip():
    ps = Powerset(3, 2)
    assert ps.num_classes == 7 and ps.sets[0] == () and ps.sets[4] == (0, 1)
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1], [1, 1, 1]])
    cls = ps.to_powerset(y)
    assert cls.tolist() == [1, 4, 0, 6, 4]  # 3 active: the two lowest-numbered (most active) kept
    np.testing.assert_array_equal(ps.hard_multilabel(torch.nn.functional.one_hot(cls, 7).float()),
                                  [[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1], [1, 1, 0]])
    probs = torch.full((1, 7), 1 / 7)
    np.testing.assert_allclose(ps.to_multilabel(probs).numpy(), [[3 / 7] * 3], rtol=1e-6)


def test_loss_is_invariant_to_the_order_of_the_reference_speakers():
    torch.manual_seed(0)
    ps = Powerset(3, 2)
    logits = torch.randn(2, 20, 7)
    y = (torch.rand(2, 20, 3) > 0.6).float()
    base = powerset_pit_loss(logits, y, ps)
    for perm in itertools.permutations(range(3)):
        assert float(powerset_pit_loss(logits, y[:, :, list(perm)], ps)) == pytest.approx(float(base), rel=1e-6)
    # best_permutation finds the order that was applied
    act = torch.tensor([[[0.9, 0.1, 0.1], [0.9, 0.9, 0.1], [0.1, 0.9, 0.1]]])
    ref = torch.tensor([[[0.0, 1, 0], [1, 1, 0], [1, 0, 0]]])
    perm = best_permutation(act, ref)[0].tolist()
    assert ref[0][:, perm].tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 0]]


def test_head_learns_a_constructed_two_speaker_overlap():
    """Latents = the active speakers' voice vectors (drawn from a small pool) + noise; after
    training, the head recovers who talks when, the overlap included (up to speaker order)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    d, length = 16, 50
    head = SegmentationHead(SegmentationConfig(d_model=d, max_speakers=2, max_per_frame=2, width=32, num_layers=1,
                                               dropout=0.0))
    opt = torch.optim.Adam(head.parameters(), lr=5e-3)
    pool = rng.standard_normal((4, d)).astype(np.float32)

    def batch(b):
        x = np.zeros((b, length, d), np.float32)
        y = np.zeros((b, length, 2), np.float32)
        for i in range(b):
            v = pool[rng.choice(4, 2, replace=False)]
            a0, a1 = sorted(rng.integers(0, length, 2))
            b0, b1 = sorted(rng.integers(0, length, 2))
            y[i, a0:a1 + 1, 0] = 1
            y[i, b0:b1 + 1, 1] = 1
            x[i] = y[i] @ v + 0.1 * rng.standard_normal((length, d))
        return torch.from_numpy(x), torch.from_numpy(y)

    for _ in range(250):
        x, y = batch(16)
        loss = powerset_pit_loss(head(x), y, head.powerset)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    # the constructed case: A alone 0-19, A and B together 20-29, B alone 30-44, silence after
    v = pool[[3, 1]]
    y = np.zeros((length, 2), np.float32)
    y[:30, 0] = 1
    y[20:45, 1] = 1
    x = torch.from_numpy((y @ v + 0.1 * rng.standard_normal((length, d))).astype(np.float32))[None]
    with torch.no_grad():
        hard = head.powerset.hard_multilabel(head(x))[0]
    acc = max((hard == y).all(1).mean(), (hard[:, ::-1] == y).all(1).mean())
    assert acc >= 0.9, acc
    assert hard[22:28].sum(1).min() == 2  # the overlap is two speakers


def test_save_load_round_trip(tmp_path):
    head = SegmentationHead(SegmentationConfig(d_model=8, width=4, num_layers=1)).eval()
    head.save(tmp_path / "segmentation.pt")
    back = SegmentationHead.load(tmp_path / "segmentation.pt")
    x = torch.randn(1, 10, 8)
    torch.testing.assert_close(head(x), back(x))
    assert back.config == head.config


def test_config_errors():
    with pytest.raises(ConfigError, match="max_per_frame"):
        SegmentationConfig(max_speakers=2, max_per_frame=3)
    with pytest.raises(ConfigError, match="width"):
        SegmentationConfig(width=0)
