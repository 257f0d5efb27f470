"""Sliding embedding windows cover the recording."""
import pytest

from echo.diarization.segments import WindowConfig, sliding_windows
from echo.errors import ConfigError


def test_sliding_windows_cover_the_recording():
    w = sliding_windows(10.0, WindowConfig(window=1.5, step=0.25))
    assert len(w) == 35 and w[0].tolist() == [0.0, 1.5] and w[-1].tolist() == [8.5, 10.0]
    w = sliding_windows(10.1, WindowConfig(window=1.5, step=0.25))
    assert w[-1].tolist() == pytest.approx([8.75, 10.1])  # last window truncated, tail covered
    assert sliding_windows(0.7, WindowConfig()).tolist() == [[0.0, 0.7]]
    assert sliding_windows(0.0, WindowConfig()).shape == (0, 2)
    with pytest.raises(ConfigError, match="windows.step"):
        WindowConfig(window=1.0, step=2.0)
