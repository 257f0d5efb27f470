"""The word decoder: word lists, espeak-ng spellings and the lexicon-constrained CTC search on
emissions whose phone frames are known."""
import numpy as np
import pytest
import torch

from echo.errors import EchoError
from echo.heads.ctc import PhoneInventory
from echo.lexicon import Lexicon, WordDecoder, read_word_list

INV = PhoneInventory(("a", "b", "c"))
LEX = Lexicon({"ab": ("a", "b"), "ca": ("c", "a"), "bb": ("b", "b")})


def _emissions(frames):
    """Log-probabilities where the given id wins each frame by a wide margin (0 = blank)."""
    em = torch.full((len(frames), len(INV)), -10.0)
    em[torch.arange(len(frames)), torch.tensor(frames)] = 0.0
    return em.log_softmax(-1)


def test_words_and_times_follow_the_phone_frames():
    dec = WordDecoder(LEX, INV)
    # a . b c c a . b . b  ->  ab (a@0, b@2), ca (c@3, a@5), bb (b@7, b@9)
    words = dec.decode(_emissions([1, 0, 2, 3, 3, 1, 0, 2, 0, 2]), frame_shift=1.0)
    assert [w.word for w in words] == ["ab", "ca", "bb"]
    # start = the first phone's onset frame; end = one frame after the last phone's onset
    assert [(w.start_s, w.end_s) for w in words] == [(0.0, 3.0), (3.0, 6.0), (7.0, 10.0)]
    assert words[1].phones == ("c", "a")
    # leading blanks shift every time; frame_shift scales them
    words = dec.decode(_emissions([0, 0, 0, 3, 1, 1, 0, 2, 0, 2]), frame_shift=0.04)
    assert [w.word for w in words] == ["ca", "bb"]
    assert [w.start_s for w in words] == pytest.approx([0.12, 0.28]) and words[-1].end_s == pytest.approx(0.40)
    assert dec.decode(torch.zeros(0, len(INV))) == []
    with pytest.raises(EchoError, match="expected \\(frames, vocabulary\\)"):
        dec.decode(torch.zeros(1, 3, len(INV)))


def test_only_lexicon_words_come_out():
    # 'a c' is no word: the search must say one of the three words (or nothing), never invent 'ac'
    words = WordDecoder(LEX, INV).decode(_emissions([1, 0, 3, 0, 0]))
    assert all(w.word in LEX.spellings for w in words)


def test_word_list_file(tmp_path):
    p = tmp_path / "w.txt"
    p.write_text("# names\nHello\n\nworld\nhello\n")
    assert read_word_list(p) == ["hello", "world"]
    p.write_text("two words\n")
    with pytest.raises(EchoError, match="one word per line"):
        read_word_list(p)
    p.write_text("\n# only comments\n")
    with pytest.raises(EchoError, match="empty"):
        read_word_list(p)
    with pytest.raises(EchoError, match="cannot read"):
        read_word_list(tmp_path / "missing.txt")


def test_lexicon_spells_with_espeak_and_keeps_what_the_inventory_can_emit():
    from echo.corpus.g2p import available_backend

    if available_backend("auto") == "none":
        pytest.skip("espeak-ng not installed")
    inv = PhoneInventory(("b", "k", "æ", "ɑː"))
    lex = Lexicon.from_words(["cab", "back", "bob", "echo"], inv)
    assert lex.spellings == {"cab": ("k", "æ", "b"), "back": ("b", "æ", "k"), "bob": ("b", "ɑː", "b")}
    assert lex.dropped == ("echo",)  # ɛ k oʊ: ɛ and oʊ are not in the inventory
    with pytest.raises(EchoError, match="none of the 1 words"):
        Lexicon.from_words(["echo"], inv)


def test_bundle_transcribe_gives_words_per_row_of_a_padded_batch():
    from tests.helpers import D, tiny_diarizer

    model = tiny_diarizer(phones=INV.phones).model
    dec = WordDecoder(LEX, INV)
    torch.manual_seed(0)
    z = torch.randn(2, 30, D)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 20:] = False  # the second row is 20 tokens long
    batch = model.transcribe(z, mask, words=dec)
    alone = model.transcribe(z[1:, :20], words=dec)[0]
    assert batch[1].words and batch[1].words == alone.words and batch[1].phones == alone.phones
    assert all(w.end_s <= 20 * 0.04 + 1e-9 for w in batch[1].words)
    assert model.transcribe(z, mask)[0].words == ()  # no decoder, no words


def test_lexicon_without_espeak_is_one_clear_error():
    with pytest.raises(EchoError, match="espeak-ng is needed"):
        Lexicon.from_words(["cab"], INV, backend="none")
