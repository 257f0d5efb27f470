"""The shared training core: precision, dropout seeding, parameter groups, the optimizer step,
the NaN guard, checkpoint + resume and curves, on a tiny real module."""
import dataclasses
from typing import ClassVar

import pandas as pd
import pytest
import torch
from torch import nn

from echo.errors import CacheMismatchError, EchoError
from echo.train.trainer import (amp_dtype, autocast, check_finite, optimizer_step, param_groups, restore_state,
                                rows_until, save_state, seed_dropout, trajectory, write_rows)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Dropout(0.5), nn.Linear(8, 1))


def test_precision_auto_is_fp32_on_cpu_and_bf16_is_honoured():
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu, "pretrain.precision") is None
    assert amp_dtype("fp32", cpu, "pretrain.precision") is None
    assert amp_dtype("bf16", cpu, "pretrain.precision") is torch.bfloat16
    with autocast(cpu, torch.bfloat16):
        assert nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.bfloat16
    with autocast(cpu, None):
        assert nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.float32


def test_dropout_masks_are_a_function_of_seed_step_and_stream():
    def mask(*key):
        seed_dropout(*key)
        return torch.rand(16)

    assert torch.equal(mask(0, 5), mask(0, 5))
    assert not torch.equal(mask(0, 5), mask(0, 6))
    assert not torch.equal(mask(0, 5), mask(1, 5))
    assert not torch.equal(mask(0, 5, 0), mask(0, 5, 1))  # e.g. two ranks


def test_param_groups_never_decay_biases_or_1d_parameters():
    net = _net()
    groups = param_groups(net.named_parameters(), 0.1, base_lr=3e-4)
    decay, flat = groups
    assert [p.shape for p in decay["params"]] == [(8, 4), (1, 8)]
    assert decay["weight_decay"] == 0.1 and decay["decays"] and decay["base_lr"] == 3e-4
    assert len(flat["params"]) == 4 and flat["weight_decay"] == 0.0 and not flat["decays"]
    net[0].requires_grad_(False)
    net[1].requires_grad_(False)
    net[3].bias.requires_grad_(False)
    assert [len(g["params"]) for g in param_groups(net.named_parameters(), 0.1)] == [1]  # empty group dropped


def test_optimizer_step_clips_steps_and_clears_gradients():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    before = [p.detach().clone() for p in net.parameters()]
    (net(torch.ones(3, 4)) * 100).sum().backward()
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]))
    got = optimizer_step(opt, net.parameters(), grad_clip=1.0)
    assert float(got) == pytest.approx(norm) and norm > 1.0  # the norm before clipping
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(net.parameters(), before)))
    assert float(moved) == pytest.approx(1.0, rel=1e-4)  # lr 1 x a gradient clipped to norm 1
    assert all(p.grad is None for p in net.parameters())
    # grad_clip 0: the full gradient is applied
    (net(torch.ones(3, 4)) * 100).sum().backward()
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]))
    before = [p.detach().clone() for p in net.parameters()]
    optimizer_step(opt, net.parameters(), grad_clip=0.0)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(net.parameters(), before)))
    assert float(moved) == pytest.approx(norm, rel=1e-4)


def test_a_non_finite_loss_stops_the_run_after_flushing():
    flushed = []
    check_finite(0.5, 3, "pretrain", "lower pretrain.lr", lambda: flushed.append(1))
    assert flushed == []
    with pytest.raises(EchoError, match=r"^stages.speaker: loss is nan at step 7; lower stages.speaker.lr$"):
        check_finite(float("nan"), 7, "stages.speaker", "lower stages.speaker.lr", lambda: flushed.append(1))
    assert flushed == [1]
    with pytest.raises(EchoError, match="loss is inf"):
        check_finite(float("inf"), 1, "pretrain", "x")


@dataclasses.dataclass(frozen=True)
class _Cfg:
    lr: float = 1e-3
    log_every: int = 10
    NON_TRAJECTORY: ClassVar[tuple[str, ...]] = ("log_every",)


def test_trajectory_leaves_out_what_a_resume_may_change():
    assert trajectory(_Cfg(log_every=3)) == {"lr": 1e-3}


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        seed_dropout(0, step)
        x = torch.linspace(-1, 1, 12).reshape(3, 4) * (step + 1)
        net(x).pow(2).mean().backward()
        optimizer_step(opt, net.parameters(), 1.0)


def test_a_restored_run_continues_on_the_uninterrupted_trajectory(tmp_path):
    fp = trajectory(_Cfg())
    full = _net()
    full_opt = torch.optim.AdamW(param_groups(full.named_parameters(), 0.1), lr=1e-2)
    _train(full, full_opt, range(6))

    cut = _net()
    cut_opt = torch.optim.AdamW(param_groups(cut.named_parameters(), 0.1), lr=1e-2)
    _train(cut, cut_opt, range(3))
    path = tmp_path / "checkpoints" / "last.pt"
    save_state(path, fp, 3, {"net": cut}, cut_opt, curves=[{"step": s} for s in (1, 2, 3)])

    again = _net(seed=1)  # another initialisation: everything must come from the checkpoint
    again_opt = torch.optim.AdamW(param_groups(again.named_parameters(), 0.1), lr=1e-2)
    state = restore_state(path, fp, {"net": again}, again_opt, torch.device("cpu"))
    assert state["step"] == 3 and rows_until(state["curves"], 2) == [{"step": 1}, {"step": 2}]
    _train(again, again_opt, range(3, 6))
    for a, b in zip(full.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CacheMismatchError, match="different lr"):
        restore_state(path, trajectory(_Cfg(lr=2e-3)), {"net": again}, again_opt, torch.device("cpu"))


def test_rows_are_written_as_a_table_and_nothing_when_empty(tmp_path):
    write_rows([], tmp_path / "curves.parquet")
    assert not (tmp_path / "curves.parquet").exists()
    write_rows([{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}], tmp_path / "curves.parquet")
    assert pd.read_parquet(tmp_path / "curves.parquet").to_dict("list") == {"step": [1, 2], "loss": [0.5, 0.25]}
