"""Synthetic speaker identities: distinct, deterministic, installed, in range."""
import numpy as np
import pytest

from echo.corpus import speakers as S
from echo.corpus.espeak import espeak_available, list_voices
from echo.corpus.speakers import ACCENTS, VARIANTS, sample_identities
from echo.errors import ConfigError


def _key(i):
    return (i.accent, i.variant, i.pitch, i.pitch_range, i.rate, i.warp_rate)


def test_identities_are_distinct_and_deterministic():
    a = sample_identities(240, seed=0)
    assert len(a) == 240
    assert len({_key(i) for i in a}) == 240
    assert len({i.speaker for i in a}) == 240
    assert a == sample_identities(240, seed=0)
    b = sample_identities(240, seed=1)
    assert [_key(i) for i in a] != [_key(i) for i in b]
    # a prefix of a larger draw is not required, but the first n must not depend on later ones
    assert sample_identities(10, seed=0) == a[:10]


def test_identities_spread_over_voices_and_ranges():
    ids = sample_identities(240, seed=0)
    assert {i.accent for i in ids} == set(ACCENTS)
    assert {i.variant for i in ids} == set(VARIANTS)  # balanced rounds use every variant
    for i in ids:
        assert S.PITCH_RANGE[0] <= i.pitch <= S.PITCH_RANGE[1]
        assert S.PITCH_SPAN_RANGE[0] <= i.pitch_range <= S.PITCH_SPAN_RANGE[1]
        assert S.RATE_RANGE[0] <= i.rate <= S.RATE_RANGE[1]
        assert S.WARP_RANGE[0] <= i.warp <= S.WARP_RANGE[1] and i.warp_rate % S.WARP_STEP_HZ == 0
        assert S.HIGHPASS_RANGE[0] <= i.channel.highpass_hz <= S.HIGHPASS_RANGE[1]
        assert S.LOWPASS_RANGE[0] <= i.channel.lowpass_hz <= S.LOWPASS_RANGE[1]
        assert max(abs(g) for g in i.channel.eq_db) <= S.EQ_MAX_DB
        assert i.voice == f"{i.accent}+{i.variant}"
    # continuous parameters really vary (not a handful of presets)
    assert len({i.pitch for i in ids}) > 30 and len({i.warp_rate for i in ids}) > 40
    assert np.std([i.channel.eq_db[2] for i in ids]) > 1.0


def test_no_parameter_alone_identifies_a_speaker():
    ids = sample_identities(240, seed=0)
    for attr in ("accent", "variant", "pitch", "pitch_range", "rate", "warp_rate"):
        values = [getattr(i, attr) for i in ids]
        assert len(set(values)) < len(values), attr


@pytest.mark.skipif(not espeak_available(), reason="libespeak-ng not installed")
def test_every_accent_and_variant_is_installed():
    variants = {ident.split("/", 1)[1] for ident, _ in list_voices("variant")}
    assert set(VARIANTS) <= variants, sorted(set(VARIANTS) - variants)
    languages = {ident.split("/", 1)[1].lower() for ident, _ in list_voices("en")}
    assert set(ACCENTS) <= languages, sorted(set(ACCENTS) - languages)


def test_bad_n_raises():
    with pytest.raises(ConfigError):
        sample_identities(0, seed=0)


def test_session_colours_keep_the_identity_colour_first_and_draw_the_rest_in_range():
    ident = sample_identities(3, seed=0)[2]
    cols = S.session_colours(ident, 5, seed=0, speaker_index=2)
    assert len(cols) == 5 and cols[0] == ident.channel
    assert len({c.lowpass_hz for c in cols}) == 5  # continuous draws: distinct
    assert cols == S.session_colours(ident, 5, seed=0, speaker_index=2)
    assert cols[1:] != S.session_colours(ident, 5, seed=0, speaker_index=3)[1:]
    assert S.session_colours(ident, 1, seed=0, speaker_index=2) == [ident.channel]
    for c in cols:
        assert S.HIGHPASS_RANGE[0] <= c.highpass_hz <= S.HIGHPASS_RANGE[1]
        assert S.LOWPASS_RANGE[0] <= c.lowpass_hz <= S.LOWPASS_RANGE[1]
        assert S.LEVEL_RANGE_DB[0] <= c.level_db <= S.LEVEL_RANGE_DB[1]
        assert max(abs(g) for g in c.eq_db) <= S.EQ_MAX_DB
    with pytest.raises(ConfigError, match="n_sessions"):
        S.session_colours(ident, 0, seed=0, speaker_index=2)
