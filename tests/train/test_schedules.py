import math

import pytest

from echo.errors import ConfigError
from echo.train.schedules import Cosine, Linear, WarmupCosine


def test_warmup_cosine_values():
    s = WarmupCosine(start=0.0, peak=1.0, final=0.1, warmup=10, total=110)
    assert s.value_at(0) == 0.0
    assert s.value_at(5) == pytest.approx(0.5)
    assert s.value_at(10) == pytest.approx(1.0)
    assert s.value_at(60) == pytest.approx(0.55)       # half way down the cosine
    assert s.value_at(110) == pytest.approx(0.1)
    assert s.value_at(500) == pytest.approx(0.1)       # stays at the final value
    vals = [s.value_at(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # monotone decay after warmup


def test_weight_decay_cosine_increases_and_momentum_is_linear():
    wd = Cosine(0.04, 0.4, total=100)
    assert wd.value_at(0) == pytest.approx(0.04) and wd.value_at(100) == pytest.approx(0.4)
    assert wd.value_at(50) == pytest.approx(0.22)
    ema = Linear(0.996, 1.0, total=100)
    assert ema.value_at(0) == 0.996 and ema.value_at(25) == pytest.approx(0.997) and ema.value_at(100) == 1.0
    assert ema.value_at(1000) == 1.0


def test_step_and_fast_forward_agree():
    a = WarmupCosine(1e-5, 1e-3, 1e-6, warmup=7, total=50)
    stepped = [a.step() for _ in range(30)]
    assert stepped == [a.value_at(i) for i in range(30)]
    b = WarmupCosine(1e-5, 1e-3, 1e-6, warmup=7, total=50).fast_forward(20)
    assert [b.step() for _ in range(10)] == stepped[20:30]
    c = Cosine(0.1, 0.2, 40)
    c.load_state_dict(b.state_dict())
    assert c.iteration == 30 and math.isclose(c.step(), c.value_at(30))


def test_invalid_schedule():
    with pytest.raises(ConfigError):
        WarmupCosine(0, 1, 0, warmup=20, total=10)
    for ramp in (Cosine, Linear):
        with pytest.raises(ConfigError, match="total >= 1"):
            ramp(0.0, 1.0, total=0)
