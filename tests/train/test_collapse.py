import pytest
import torch

from echo.train.collapse import CollapseError, check_collapse, collapse_stats, effective_rank, feature_std


def test_detector_fires_on_constant_features():
    feats = torch.randn(64).expand(4, 50, 64)  # every token the same vector
    stats = {k: float(v) for k, v in collapse_stats(feats).items()}
    assert stats["feat_std"] == pytest.approx(0.0, abs=1e-6)
    assert stats["eff_rank"] == 0.0
    with pytest.raises(CollapseError, match="step 12") as e:
        check_collapse(stats, 12, min_std=0.01, min_rank=2.0)
    assert "\n" not in str(e.value)


def test_detector_fires_on_rank_one_features():
    torch.manual_seed(0)
    feats = torch.randn(500, 1) * torch.randn(1, 64) * 3  # large std, one direction
    stats = {k: float(v) for k, v in collapse_stats(feats).items()}
    assert stats["feat_std"] > 0.5
    assert stats["eff_rank"] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(CollapseError, match="effective rank"):
        check_collapse(stats, 3, min_std=0.01, min_rank=2.0)


def test_healthy_features_pass():
    torch.manual_seed(0)
    feats = torch.randn(2, 1000, 64)
    stats = {k: float(v) for k, v in collapse_stats(feats).items()}
    assert stats["feat_std"] == pytest.approx(1.0, abs=0.05)
    assert stats["eff_rank"] > 50  # near 64 for isotropic noise
    check_collapse(stats, 100, min_std=0.01, min_rank=4.0)


def test_effective_rank_counts_directions():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 32))[0][:, :5]  # 5 orthonormal directions, equal energy
    feats = torch.randn(5000, 5) @ basis.T
    assert float(effective_rank(feats)) == pytest.approx(5.0, rel=0.05)
    assert float(feature_std(feats, max_tokens=100)) > 0  # subsampling path
