"""libespeak-ng through ctypes: determinism, phone events, and their conversion to segments."""
import numpy as np
import pytest

from echo.corpus.espeak import ESPEAK_SAMPLE_RATE, espeak_available, list_voices, phone_segments, synthesize
from echo.corpus.manifest import SILENCE
from echo.errors import EchoError

pytestmark = pytest.mark.skipif(not espeak_available(), reason="libespeak-ng not installed")

TEXT = "The quick brown fox, jumps over the lazy dog."


def test_same_settings_give_identical_samples_regardless_of_history():
    a = synthesize(TEXT, "en-us+f3", rate=160, pitch=40, pitch_range=60, seed=3)
    other = synthesize("Something else entirely, spoken first.", "en-gb-scotland+m2", seed=9)
    b = synthesize(TEXT, "en-us+f3", rate=160, pitch=40, pitch_range=60, seed=3)
    assert a.sample_rate == ESPEAK_SAMPLE_RATE
    assert a.audio.dtype == np.int16 and a.audio.size > ESPEAK_SAMPLE_RATE  # > 1 s of speech
    assert a.audio.tobytes() == b.audio.tobytes()
    assert a.events == b.events
    assert other.audio.size != a.audio.size or other.audio.tobytes() != a.audio.tobytes()


def test_parameters_change_the_audio():
    base = synthesize(TEXT, "en-us", rate=175, seed=0)
    slow = synthesize(TEXT, "en-us", rate=120, seed=0)
    high = synthesize(TEXT, "en-us", pitch=90, seed=0)
    assert slow.audio.size > base.audio.size * 1.2  # slower speech is longer
    assert high.audio.tobytes() != base.audio.tobytes()


def test_phone_events_are_ipa_ordered_and_inside_the_audio():
    s = synthesize(TEXT, "en-us", seed=0)
    samples = [p for p, _ in s.events]
    phones = [ph for _, ph in s.events if ph]
    assert samples == sorted(samples) and samples[-1] <= s.audio.size
    assert "ð" in phones and "k" in phones and "z" in phones  # IPA, not espeak's ASCII "D"
    assert all(ph.strip() == ph and " " not in ph for ph in phones)
    # the comma makes a pause between "fox" and "jumps"
    names = [ph for _, ph in s.events]
    i_fox_s, i_jumps = names.index("s"), names.index("dʒ")
    assert "" in names[i_fox_s:i_jumps]
    assert any(m.startswith("_") for _, m in s.mnemonics)


def test_linking_phoneme_without_ipa_is_not_called_a_pause():
    # West Midlands English drops the h of "behind" into a linking phoneme with no IPA name:
    # it must not become a silence inside the word.
    s = synthesize("behind the house", "en-gb-x-gbcwmd", seed=0)
    segs = phone_segments(s.events, s.audio.size)
    inner = [p for p, _, _ in segs[1:-1]]
    assert SILENCE not in inner


def test_phone_segments_tile_and_rescale():
    events = [(100, "h"), (300, "ə"), (500, ""), (520, ""), (700, "l")]
    segs = phone_segments(events, 1000)
    assert segs == [(SILENCE, 0, 100), ("h", 100, 300), ("ə", 300, 500), (SILENCE, 500, 700), ("l", 700, 1000)]
    # 22.05 kHz -> 16 kHz plus 50 samples of leading and 30 of trailing padding
    scale = 16000 / 22050
    total = round(1000 * scale) + 80
    segs = phone_segments(events, 1000, scale=scale, offset=50, total=total)
    assert segs[0] == (SILENCE, 0, 50 + round(100 * scale))
    assert segs[-1] == (SILENCE, 50 + round(1000 * scale), total)
    assert all(a[2] == b[1] for a, b in zip(segs, segs[1:]))


def test_bad_input_fails_loudly():
    with pytest.raises(EchoError, match="not found"):
        synthesize("hello", "xx-nonexistent+nobody")
    with pytest.raises(EchoError, match="rate"):
        synthesize("hello", "en-us", rate=20)
    with pytest.raises(EchoError, match="out of order"):
        phone_segments([(200, "a"), (100, "b")], 1000)
    with pytest.raises(EchoError, match="beyond"):
        phone_segments([(2000, "a")], 1000)


def test_list_voices_has_english_accents_and_variants():
    english = {ident for ident, _ in list_voices("en")}
    assert "gmw/en-US" in english
    variants = {ident for ident, _ in list_voices("variant")}
    assert "!v/m3" in variants and "!v/f2" in variants


def test_pauses_are_quiet_and_phones_are_clean_symbols():
    text = "One, two, three. Four; five: six, at night."
    for voice in ("en-us", "en-gb-scotland", "en-029", "en-gb-x-gbcwmd"):
        s = synthesize(text, voice, seed=0)
        x = s.audio.astype(np.float64)
        segs = phone_segments(s.events, s.audio.size)
        speech = np.concatenate([x[a:b] for p, a, b in segs if p != SILENCE])
        level = np.mean(speech ** 2)
        inner_pauses = [(a, b) for p, a, b in segs[1:-1] if p == SILENCE and b - a >= 0.1 * ESPEAK_SAMPLE_RATE]
        assert len(inner_pauses) >= 3, voice  # the commas and full stops
        for a, b in inner_pauses:
            assert np.mean(x[a:b] ** 2) < level / 10, (voice, a, b)  # >= 10 dB below the speech
        for p, _, _ in segs:
            assert ":" not in p and p != "ʲ", (voice, p)
