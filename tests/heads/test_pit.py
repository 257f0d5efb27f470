import itertools

import numpy as np
import pytest
import torch

from echo.errors import ConfigError, EchoError
from echo.heads.pit import (KSetConfig, KSetLoss, exist_targets, kset_loss, pairwise_mse, pairwise_neg_cosine,
                            pairwise_smooth_l1, pit_assign)


def _brute(cost: np.ndarray, refs: list[int]) -> float:
    s = cost.shape[0]
    return min(sum(cost[p[j], r] for j, r in enumerate(refs)) for p in itertools.permutations(range(s), len(refs)))


def test_pit_assign_equals_brute_force():
    rng = np.random.default_rng(0)
    for s in range(1, 6):
        for r in range(1, min(s, 4) + 1):
            cost = rng.random((6, s, r))
            a = pit_assign(torch.from_numpy(cost)).numpy()
            for b in range(6):
                assert len(set(a[b])) == r and a[b].min() >= 0  # distinct slots
                got = sum(cost[b, a[b, j], j] for j in range(r))
                assert got == pytest.approx(_brute(cost[b], list(range(r))))


def test_pit_assign_with_absent_references():
    rng = np.random.default_rng(1)
    cost = rng.random((5, 4, 3))
    mask = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=bool)
    a = pit_assign(cost, mask).numpy()
    assert ((a == -1) == ~mask).all()
    for b in range(5):
        refs = list(np.flatnonzero(mask[b]))
        got = sum(cost[b, a[b, r], r] for r in refs)
        assert got == pytest.approx(_brute(cost[b], refs) if refs else 0.0)
    with pytest.raises(EchoError):
        pit_assign(np.zeros((1, 2, 3)))


def test_null_slot_existence_target_is_zero():
    a = torch.tensor([[2, 0], [1, -1], [-1, -1]])
    t = exist_targets(a, 3)
    assert torch.equal(t, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))


def _pairwise_reference(slots, targets, mask, fn):
    b, s, t, d = slots.shape
    out = torch.zeros(b, s, targets.shape[1])
    for i in range(b):
        for j in range(s):
            for r in range(targets.shape[1]):
                out[i, j, r] = fn(slots[i, j][mask[i]], targets[i, r][mask[i]])
    return out


def test_pairwise_losses_match_direct_computation_over_valid_frames():
    g = torch.Generator().manual_seed(0)
    slots, targets = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    mse = lambda a, b: ((a - b) ** 2).mean()
    cos = lambda a, b: (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean()
    sl1 = lambda a, b: torch.nn.functional.smooth_l1_loss(a, b)
    torch.testing.assert_close(pairwise_mse(slots, targets, mask), _pairwise_reference(slots, targets, mask, mse))
    torch.testing.assert_close(pairwise_neg_cosine(slots, targets, mask), _pairwise_reference(slots, targets, mask, cos))
    torch.testing.assert_close(pairwise_smooth_l1(slots, targets, mask), _pairwise_reference(slots, targets, mask, sl1))


@pytest.mark.parametrize("regression", ["mse", "neg_cosine", "smooth_l1"])
def test_kset_loss_finds_permutation_and_null_slot(regression):
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(2, 2, 6, 4, generator=g)
    target_mask = torch.tensor([[True, True], [True, False]])
    slots = torch.randn(2, 3, 6, 4, generator=g)
    slots[0, 2], slots[0, 0] = targets[0, 0], targets[0, 1]  # slot 1 is the null slot
    slots[1, 1] = targets[1, 0]
    logits = torch.zeros(2, 3, requires_grad=True)
    slots.requires_grad_(True)
    res = kset_loss(slots, logits, targets, target_mask, config=KSetConfig(regression=regression))
    assert res.assignment.tolist() == [[2, 0], [1, -1]]
    assert torch.equal(res.exist_targets, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert res.regression.item() == pytest.approx(0.0, abs=1e-5)
    assert res.existence.item() == pytest.approx(np.log(2.0), rel=1e-5)  # all logits 0
    res.loss.backward()
    # The existence gradient pushes null slots down and matched slots up.
    assert logits.grad[0, 1] > 0 and logits.grad[0, 0] < 0 and logits.grad[1, 0] > 0


def test_kset_config_validation():
    with pytest.raises(ConfigError):
        KSetConfig(regression="l2")
    with pytest.raises(ConfigError):
        KSetConfig(exist_weight=-1)
    assert isinstance(KSetLoss("neg_cosine"), KSetLoss)
