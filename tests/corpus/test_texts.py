"""Sentence generator: many distinct sentences, deterministic, within bounds, phonetically broad."""
import re

import pytest

from echo.corpus.espeak import espeak_available, synthesize
from echo.corpus.texts import generate_sentences, load_vocabulary
from echo.errors import ConfigError

# General American English phonemes as espeak-ng reports them in IPA (consonants, vowels, diphthongs)
CORE_PHONES = {
    "p", "b", "t", "d", "k", "ɡ", "f", "v", "θ", "ð", "s", "z", "ʃ", "ʒ", "h", "tʃ", "dʒ", "m", "n", "ŋ", "l", "ɹ",
    "w", "j", "ɪ", "ɛ", "æ", "ʌ", "ʊ", "i", "uː", "ɑː", "ɔː", "ə", "ɚ", "ɜː", "eɪ", "aɪ", "ɔɪ", "aʊ", "oʊ",
}


def test_vocabulary_is_large_and_covers_parts_of_speech():
    v = load_vocabulary()
    assert len(v.words()) >= 2000
    assert len(v.nouns) > 800 and len(v.adjectives) > 400 and len(v.adverbs) > 100
    assert len(v.transitive) + len(v.intransitive) > 400
    assert v.plurals["child"] == "children" and v.plurals["box"] == "boxes" and v.plurals["milk"] == ""


def test_thousands_of_distinct_sentences_deterministic():
    a = generate_sentences(5000, seed=0)
    assert len(a) == len(set(a)) == 5000
    assert a == generate_sentences(5000, seed=0)
    b = generate_sentences(5000, seed=1)
    assert len(set(a) & set(b)) < 50
    words = {w for s in a for w in re.findall(r"[a-z']+", s.lower())}
    assert len(words) > 1500  # the vocabulary is really used, not a handful of words


def test_word_bounds_and_form():
    for s in generate_sentences(1000, seed=2, min_words=6, max_words=9):
        assert 6 <= len(s.split()) <= 9
        assert s[0].isupper() and s[-1] in ".?!"
    with pytest.raises(ConfigError):
        generate_sentences(10, seed=0, min_words=8, max_words=4)


@pytest.mark.skipif(not espeak_available(), reason="libespeak-ng not installed")
def test_phonetic_coverage():
    text = " ".join(generate_sentences(150, seed=0))
    phones = {p for _, p in synthesize(text, "en-us", rate=400).events if p}
    missing = CORE_PHONES - phones
    assert not missing, f"phones never produced: {sorted(missing)}"
