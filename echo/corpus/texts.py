"""English sentences for the synthetic corpus, generated offline from an embedded vocabulary.

A small phrase-structure grammar (statements in past and present tense, questions, commands,
compound and subordinate clauses, numbers spelled out) is expanded with words drawn from
``echo/data/*.txt``: ~900 nouns, ~500 adjectives, ~500 verbs, ~170 adverbs, ~180 given names and
~90 places, about 2,300 distinct words. That gives many thousands of distinct grammatical
sentences with broad phonetic coverage and no download. Inflection (plural, third person) is
rule-based with the irregular forms listed in the data files; no maintained offline library
generates such text without pulling large corpora, hence this module.
"""
from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass

import numpy as np

from echo.errors import ConfigError, EchoError

__all__ = ["Vocabulary", "load_vocabulary", "generate_sentences"]

_DETERMINERS = ("the", "a", "this", "that", "my", "your", "his", "her", "our", "their", "every", "one")
_PLURAL_DETERMINERS = ("the", "these", "those", "some", "many", "all the", "two", "three", "four", "five",
                       "six", "seven", "eight", "nine", "ten", "twelve", "twenty", "a few")
_PREPOSITIONS = ("in", "on", "under", "behind", "beside", "near", "over", "across", "through", "into",
                 "towards", "along", "around", "past", "inside", "beneath", "above", "without", "with")
_TIMES = ("in the morning", "at night", "after lunch", "before dawn", "last week", "on Monday", "on Tuesday",
          "on Wednesday", "on Thursday", "on Friday", "on Saturday", "on Sunday", "in January", "in February",
          "in March", "in April", "in May", "in June", "in July", "in August", "in September", "in October",
          "in November", "in December", "at noon", "at midnight", "every evening", "during the summer",
          "all year", "at six o'clock", "at half past nine", "in the afternoon")
_SUBORDINATORS = ("when", "because", "although", "while", "after", "before", "until", "as soon as")
_CONJUNCTIONS = ("and", "but", "so", "yet")
_MODALS = ("can", "could", "should", "would", "might", "must", "will")
_WH = ("why", "where", "when", "how")
_NUMBERS = ("thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "thirty", "forty",
            "fifty", "sixty", "seventy", "eighty", "ninety", "a hundred", "a thousand", "eleven", "twenty one",
            "thirty two", "forty three", "fifty four", "sixty five", "seventy six", "eighty seven", "ninety eight")


@dataclass(frozen=True)
class Vocabulary:
    """Word lists by part of speech, loaded from the package's ``echo/data`` files."""

    nouns: tuple[str, ...]
    plurals: dict  # noun -> plural ("" when uncountable)
    adjectives: tuple[str, ...]
    transitive: tuple[tuple[str, str], ...]  # (base, past)
    intransitive: tuple[tuple[str, str], ...]
    adverbs: tuple[str, ...]
    names: tuple[str, ...]
    places: tuple[str, ...]

    def words(self) -> set[str]:
        """All distinct words of the vocabulary (lower-cased, inflected forms excluded)."""
        out = set(self.nouns) | set(self.adjectives) | set(self.adverbs)
        out |= {b for b, _ in self.transitive + self.intransitive}
        out |= {w.lower() for w in self.names + self.places}
        return out


def _lines(name: str) -> list[list[str]]:
    try:
        text = importlib.resources.files("echo").joinpath("data", name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EchoError(f"echo/data/{name}: vocabulary file missing from the package") from None
    rows = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not rows:
        raise EchoError(f"echo/data/{name}: no words")
    return rows


@functools.lru_cache(maxsize=1)
def load_vocabulary() -> Vocabulary:
    """Read the embedded vocabulary (cached)."""
    plurals = {}
    for row in _lines("nouns.txt"):
        plurals[row[0]] = "" if row[1:] == ["-"] else (row[1] if len(row) > 1 else _regular_plural(row[0]))

    def verbs(name):
        rows = _lines(name)
        bad = [r for r in rows if len(r) != 2]
        if bad:
            raise EchoError(f"echo/data/{name}: expected 'base past' per line, got {' '.join(bad[0])!r}")
        return tuple((r[0], r[1]) for r in rows)

    return Vocabulary(
        nouns=tuple(plurals), plurals=plurals,
        adjectives=tuple(r[0] for r in _lines("adjectives.txt")),
        transitive=verbs("verbs_transitive.txt"), intransitive=verbs("verbs_intransitive.txt"),
        adverbs=tuple(r[0] for r in _lines("adverbs.txt")),
        names=tuple(r[0] for r in _lines("names.txt")), places=tuple(r[0] for r in _lines("places.txt")),
    )


def _regular_plural(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith("fe"):
        return noun[:-2] + "ves"
    return noun + "s"


def _third_person(verb: str) -> str:
    irregular = {"have": "has", "do": "does", "go": "goes", "be": "is"}
    if verb in irregular:
        return irregular[verb]
    if verb.endswith(("s", "x", "z", "ch", "sh", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


class _Grammar:
    """Expands one random sentence; every choice comes from the generator ``rng``."""

    def __init__(self, vocab: Vocabulary, rng: np.random.Generator):
        self.v, self.rng = vocab, rng
        self.countable = tuple(n for n in vocab.nouns if vocab.plurals[n])

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    # noun phrases: (words, is_plural)
    def noun_phrase(self, allow_name: bool = True) -> tuple[str, bool]:
        r = self.rng.random()
        if allow_name and r < 0.18:
            return self.pick(self.v.names), False
        adj = (self.pick(self.v.adjectives) + " ") if self.chance(0.5) else ""
        if r < 0.45:
            noun = self.pick(self.countable)
            det = self.pick(_PLURAL_DETERMINERS)
            return f"{det} {adj}{self.v.plurals[noun]}", True
        if r < 0.5:
            return f"{self.pick(_NUMBERS)} {adj}{self.v.plurals[self.pick(self.countable)]}", True
        noun = self.pick(self.v.nouns)
        det = self.pick(_DETERMINERS)
        if det == "a" and (adj or noun)[0] in "aeiou":
            det = "an"
        np_ = f"{det} {adj}{noun}"
        if self.chance(0.12):
            np_ += f" of {self.pick(self.v.names)}" if self.chance(0.5) else f" from {self.pick(self.v.places)}"
        return np_, False

    def adjunct(self) -> str:
        r = self.rng.random()
        if r < 0.45:
            return f"{self.pick(_PREPOSITIONS)} {self.noun_phrase(allow_name=False)[0]}"
        if r < 0.75:
            return self.pick(self.v.adverbs)
        if r < 0.9:
            return self.pick(_TIMES)
        return f"in {self.pick(self.v.places)}"

    def predicate(self, tense: str, plural: bool) -> str:
        if self.chance(0.6):
            base, past = self.pick(self.v.transitive)
            obj = " " + self.noun_phrase()[0]
        else:
            base, past = self.pick(self.v.intransitive)
            obj = ""
        if tense == "past":
            verb = past
        elif tense == "present":
            verb = base if plural else _third_person(base)
        else:  # modal
            verb = f"{self.pick(_MODALS)} {base}"
        tail = "".join(" " + self.adjunct() for _ in range(int(self.rng.integers(0, 3))))
        return f"{verb}{obj}{tail}"

    def clause(self) -> str:
        subj, plural = self.noun_phrase()
        tense = self.pick(("past", "past", "present", "modal"))
        if self.chance(0.1):
            copula = ("were" if plural else "was") if tense == "past" else ("are" if plural else "is")
            return f"{subj} {copula} {self.pick(self.v.adjectives)}"
        return f"{subj} {self.predicate(tense, plural)}"

    def sentence(self) -> str:
        r = self.rng.random()
        if r < 0.45:
            s, end = self.clause(), "."
        elif r < 0.6:
            s, end = f"{self.clause()}, {self.pick(_CONJUNCTIONS)} {self.clause()}", "."
        elif r < 0.72:
            s, end = f"{self.pick(_SUBORDINATORS)} {self.clause()}, {self.clause()}", "."
        elif r < 0.82:
            subj, plural = self.noun_phrase()
            aux = "did" if self.chance(0.5) else ("do" if plural else "does")
            base, _ = self.pick(self.v.transitive)
            wh = (self.pick(_WH) + " ") if self.chance(0.5) else ""
            s, end = f"{wh}{aux} {subj} {base} {self.noun_phrase()[0]}", "?"
        elif r < 0.9:
            base, _ = self.pick(self.v.transitive)
            please = "please " if self.chance(0.4) else ""
            s, end = f"{please}{base} {self.noun_phrase()[0]} {self.adjunct()}", "."
            if self.chance(0.3):
                end = "!"
        else:
            adj = (self.pick(self.v.adjectives) + " ") if self.chance(0.5) else ""
            things = f"{self.pick(_PLURAL_DETERMINERS[3:])} {adj}{self.v.plurals[self.pick(self.countable)]}"
            s, end = f"there {'were' if self.chance(0.5) else 'are'} {things} " \
                     f"{self.pick(_PREPOSITIONS)} {self.noun_phrase(allow_name=False)[0]}", "."
        return s[0].upper() + s[1:] + end


def generate_sentences(n: int, seed: int, min_words: int = 5, max_words: int = 14) -> list[str]:
    """Generate ``n`` distinct sentences of ``min_words..max_words`` words, deterministically.

    Args:
        n: number of sentences.
        seed: random seed; the same seed gives the same list.
        min_words: fewest words per sentence (>= 3).
        max_words: most words per sentence (>= min_words).

    Returns:
        Sentences with capital initial and final punctuation, in generation order.

    Raises:
        ConfigError: bad bounds. EchoError: the grammar cannot produce ``n`` distinct sentences.
    """
    if not 3 <= min_words <= max_words:
        raise ConfigError(f"texts.min_words/max_words: expected 3 <= min_words <= max_words, got {min_words}, {max_words}")
    grammar = _Grammar(load_vocabulary(), np.random.default_rng(np.random.SeedSequence([seed, 0x7E475])))
    out: list[str] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise EchoError(f"texts: produced only {len(out)} of {n} distinct sentences with "
                            f"{min_words}..{max_words} words; widen the word range")
        s = grammar.sentence()
        if min_words <= len(s.split()) <= max_words and s not in seen:
            seen.add(s)
            out.append(s)
    return out
