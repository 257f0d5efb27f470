"""The derived parameter profiles are current and valid."""
import importlib.util

import pytest

from echo.config import ROOT, load_raw, validate_raw

spec = importlib.util.spec_from_file_location("make_profiles", ROOT / "workflow/scripts/make_profiles.py")
make_profiles = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_profiles)


@pytest.mark.parametrize("path", sorted(make_profiles.OUTPUTS))
def test_profile_is_generated_and_valid(path):
    over, what = make_profiles.OUTPUTS[path]
    assert (ROOT / path).read_text() == make_profiles.render(over, what), "run workflow/scripts/make_profiles.py"
    validate_raw(load_raw(ROOT / path), path)


def test_paper_profile_is_the_25m_encoder():
    from echo.config import load_section
    from echo.models.vit import Encoder

    enc = Encoder(load_section(load_raw(ROOT / "params/paper.yaml"), "encoder"))
    n = sum(p.numel() for p in enc.parameters())
    assert abs(n - 25e6) / 25e6 < 0.05 and enc.cfg.dim == 512
