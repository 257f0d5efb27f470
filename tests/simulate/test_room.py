import numpy as np
import pytest

from echo.errors import ConfigError
from echo.simulate.room import RoomConfig, apply_rir, coloured_noise, simulate_rirs


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_coloured_noise_has_the_requested_spectral_slope(exponent):
    x = coloured_noise(2 ** 16, exponent, np.random.default_rng(0))
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)
    f = np.fft.rfftfreq(x.size)
    p = np.abs(np.fft.rfft(x)) ** 2
    band = (f > 0.002) & (f < 0.4)
    slope = np.polyfit(np.log(f[band]), np.log(p[band] + 1e-20), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.1)
    np.testing.assert_array_equal(x, coloured_noise(2 ** 16, exponent, np.random.default_rng(0)))


def test_rirs_start_at_the_direct_path_and_keep_alignment():
    rirs, info = simulate_rirs(3, RoomConfig(rt60_s=(0.3, 0.4), max_order=10), np.random.default_rng(0))
    assert len(rirs) == 3 and 0.3 <= info["rt60"] <= 0.4
    for h in rirs:
        assert h[0] == pytest.approx(1.0) and np.abs(h).argmax() == 0 and h.size > 1000
    x = np.zeros(8000, np.float32)
    x[1000] = 1.0
    y = apply_rir(x, rirs[0])
    assert y.shape == x.shape and np.abs(y).argmax() == 1000 and np.abs(y[:1000]).max() < 1e-6
    assert np.abs(y[1001:]).sum() > 0  # reflections follow the direct path


def test_room_config_errors():
    with pytest.raises(ConfigError, match="RoomConfig.rt60_s"):
        RoomConfig(rt60_s=(0.5, 0.2))
    with pytest.raises(ConfigError, match="RoomConfig.max_order"):
        RoomConfig(max_order=1.5)
