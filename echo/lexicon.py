"""Words from phone posteriors: a lexicon-constrained CTC decoder over a user's word list.

The CTC head emits phones (espeak-ng's IPA); a user who knows which words can occur (a list of
names, commands, a domain's vocabulary) gets words with times by constraining the search to
those words' pronunciations:

- :class:`Lexicon` spells each word with espeak-ng's G2P (:func:`echo.corpus.g2p.phonemize`, the
  same phone symbols the embedded corpus is aligned with) and keeps the spellings that the
  model's phone inventory can emit;
- :class:`WordDecoder` runs torchaudio's lexicon-constrained CTC beam search
  (``torchaudio.models.decoder.ctc_decoder``, flashlight-text's decoder, no language model) on the
  head's log-probabilities and returns each word with its start and end time.

Run::

    lex = Lexicon.from_words(["hello", "world"], inventory, voice="en-us")
    words = WordDecoder(lex, inventory).decode(log_probs, frame_shift=0.04)
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from echo.errors import EchoError
from echo.heads.ctc import BLANK_SYMBOL, PhoneInventory

__all__ = ["Lexicon", "Word", "WordDecoder", "read_word_list"]

log = logging.getLogger(__name__)

# flashlight's decoder needs a word-boundary token in its token set; the CTC head has none, so it is
# added with probability 0 (a column of -inf): words then follow each other directly.
_BOUNDARY = "|"


class Word(NamedTuple):
    word: str
    start_s: float  # onset of the word's first phone
    end_s: float  # one output frame after the onset of the word's last phone
    phones: tuple[str, ...]  # the lexicon spelling the decoder chose


def read_word_list(path: str | os.PathLike) -> list[str]:
    """One word per line (blank lines and ``#`` comments skipped), lower-cased, duplicates dropped.

    Raises:
        EchoError: the file is missing, unreadable or holds no word.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EchoError(f"{path}: cannot read the word list ({e.__class__.__name__}: {e})") from None
    words = list(dict.fromkeys(w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#")))
    bad = [w for w in words if any(c.isspace() for c in w)]
    if bad:
        raise EchoError(f"{path}: expected one word per line, got {bad[0]!r}")
    if not words:
        raise EchoError(f"{path}: the word list is empty (expected one word per line)")
    return words


@dataclass(frozen=True)
class Lexicon:
    """Word -> phone spelling, every phone in the decoding head's inventory.

    Attributes:
        spellings: word -> tuple of phone symbols (one spelling per word).
        dropped: words whose G2P spelling uses a phone the inventory lacks (or is empty).
    """

    spellings: dict[str, tuple[str, ...]]
    dropped: tuple[str, ...] = ()

    @classmethod
    def from_words(cls, words: Sequence[str], inventory: PhoneInventory, voice: str = "en-us",
                   backend: str = "auto") -> "Lexicon":
        """Spell ``words`` with espeak-ng (``voice``) and keep those the inventory can emit.

        Raises:
            EchoError: espeak-ng is unavailable, or no word can be spelled in the inventory.
        """
        from echo.corpus.g2p import available_backend, phonemize

        if available_backend(backend) == "none":
            raise EchoError("words: espeak-ng is needed to spell the word list (apt package espeak-ng; "
                            "workflow/install.sh installs it)")
        known = set(inventory.phones)
        spellings, dropped = {}, []
        for w, ipa in zip(words, phonemize(list(words), voice=voice, backend=backend)):
            ph = tuple(ipa.split())
            if ph and all(p in known for p in ph):
                spellings[w] = ph
            else:
                dropped.append(w)
        if dropped:
            log.warning("words: %d of %d words have phones outside the model's inventory and are skipped: %s",
                        len(dropped), len(words), ", ".join(dropped[:10]))
        if not spellings:
            raise EchoError(f"words: none of the {len(words)} words can be spelled with the model's "
                            f"{len(inventory.phones)} phones (voice {voice!r})")
        return cls(spellings, tuple(dropped))


class WordDecoder:
    """Lexicon-constrained CTC beam search (torchaudio / flashlight-text), no language model.

    Args:
        lexicon: the words and their spellings.
        inventory: the CTC head's phones (id 0 = blank, phone i = id i + 1).
        beam_size: hypotheses kept per frame.
        word_score: score added per emitted word (negative = fewer, longer words).
    """

    def __init__(self, lexicon: Lexicon, inventory: PhoneInventory, beam_size: int = 50,
                 word_score: float = 0.0) -> None:
        try:
            from torchaudio.models.decoder import ctc_decoder
            tokens = list(inventory.symbols) + [_BOUNDARY]
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "lexicon.txt")
                with open(path, "w", encoding="utf-8") as fh:
                    fh.writelines(f"{w} {' '.join(ph)}\n" for w, ph in lexicon.spellings.items())
                self._decoder = ctc_decoder(lexicon=path, tokens=tokens, lm=None, nbest=1, beam_size=beam_size,
                                                blank_token=BLANK_SYMBOL, sil_token=_BOUNDARY, word_score=word_score,
                                                sil_score=0.0, log_add=False)
        except RuntimeError as e:
            if "flashlight" in str(e):
                raise EchoError("words: the lexicon decoder needs the Python package flashlight-text "
                                "(workflow/install.sh installs it)") from None
            raise
        self.lexicon = lexicon
        self._boundary_id = len(tokens) - 1

    def decode(self, log_probs: torch.Tensor, frame_shift: float = 0.04) -> list[Word]:
        """Words of one sequence.

        Args:
            log_probs: ``(T, V)`` CTC log-probabilities (blank first, as :class:`~echo.heads.ctc.CTCHead` gives).
            frame_shift: seconds per frame.

        Returns:
            The decoded words in order, each spanning the frames of its phones.
        """
        if log_probs.ndim != 2:
            raise EchoError(f"words: expected (frames, vocabulary) log-probabilities, got shape {tuple(log_probs.shape)}")
        if log_probs.shape[0] == 0:
            return []
        em = torch.cat([log_probs.float().cpu(), torch.full((log_probs.shape[0], 1), -1e9)], dim=1)
        (best,) = self._decoder(em[None].contiguous())[0:1]
        if not best:
            return []
        hyp = best[0]
        # the hypothesis's tokens: the boundary at both ends (and between words), then one entry per
        # emitted phone; flashlight's timesteps count the leading boundary as frame 0, so a phone's
        # frame is its timestep - 1 (checked against known emission frames in the tests)
        frames = [int(t) - 1 for tok, t in zip(hyp.tokens.tolist(), hyp.timesteps.tolist()) if tok != self._boundary_id]
        out, i = [], 0
        for w in hyp.words:
            ph = self.lexicon.spellings[w]
            span = frames[i:i + len(ph)]
            i += len(ph)
            if not span:
                break
            out.append(Word(w, max(span[0], 0) * frame_shift, (max(span[-1], 0) + 1) * frame_shift, ph))
        return out
