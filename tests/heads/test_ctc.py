import pytest
import torch
from torchaudio.functional import edit_distance

from echo.errors import EchoError
from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory, ctc_greedy_decode, pad_targets
from echo.heads.vq import VQConfig

D = 16
INV = PhoneInventory(("a", "b", "c", "d", "e"))


def _toy(n=8, seed=0):
    """Frame latents = a fixed vector per label (blank or phone) + noise, in CTC-like layout:
    for each phone 1-2 blank frames then 3 phone frames; sequences of different lengths."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(len(INV), D, generator=g) * 2
    seqs, frames, segs = [], [], []
    for _ in range(n):
        ids = torch.randint(1, len(INV), (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist()
        labels, seg = [], []
        for p in ids:
            labels += [0] * int(torch.randint(1, 3, (1,), generator=g))
            seg.append((len(labels), len(labels) + 2))
            labels += [p] * 3
        labels += [0]
        seqs.append(ids), frames.append(labels), segs.append(seg)
    t = max(len(f) for f in frames)
    x = torch.zeros(n, t, D)
    mask = torch.zeros(n, t, dtype=torch.bool)
    for i, f in enumerate(frames):
        x[i, : len(f)] = table[torch.tensor(f)] + 0.3 * torch.randn(len(f), D, generator=g)
        mask[i, : len(f)] = True
    return x, mask, seqs, segs


def _train(head, x, mask, targets, lengths, steps=50):
    torch.manual_seed(0)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        out = head.loss(x, mask, targets, lengths)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(out.ctc.item())
    return losses


def test_ctc_learns_toy_and_greedy_decode_recovers_sequence_and_times():
    x, mask, seqs, segs = _toy()
    targets, lengths = pad_targets(seqs)
    torch.manual_seed(0)
    head = CTCHead(CTCConfig(d_model=D, num_layers=0, dropout=0.0), INV)
    losses = _train(head, x, mask, targets, lengths)
    assert losses[-1] < 0.1 * losses[0]
    head.eval()
    hyps = head.decode(x, mask)
    assert [h.ids for h in hyps] == seqs
    for h, seg in zip(hyps, segs):  # each phone is emitted inside its own frames
        for start, end, (lo, hi) in zip(h.start_frames, h.end_frames, seg):
            assert lo <= start <= end <= hi
        assert h.start_s == pytest.approx([s * 0.04 for s in h.start_frames])


def test_ctc_through_vq_bottleneck_learns_toy():
    x, mask, seqs, _ = _toy(seed=1)
    targets, lengths = pad_targets(seqs)
    torch.manual_seed(0)
    head = CTCHead(CTCConfig(d_model=D, num_layers=1, hidden_dim=32, dropout=0.0), INV,
                   VQConfig(d_model=D, codebook_size=32, code_dim=D, dead_code_steps=5, seed=0))
    losses = _train(head, x, mask, targets, lengths)
    assert losses[-1] < 0.2 * losses[0]
    head.eval()
    out = head(x, mask)
    assert out.vq is not None and out.vq.codes.shape == mask.shape
    assert (out.vq.codes[~mask] == -1).all()
    hyps = head.decode(x, mask)
    errors = sum(edit_distance(h.ids, s) for h, s in zip(hyps, seqs))
    assert errors / sum(len(s) for s in seqs) < 0.1  # PER through the bottleneck on the toy


def test_greedy_decode_collapses_repeats_and_respects_length():
    path = torch.tensor([0, 1, 1, 0, 2, 2, 2, 0, 0, 1, 3, 3])
    lp = torch.nn.functional.one_hot(path, 4).float().log().unsqueeze(0)
    (h,) = ctc_greedy_decode(lp, torch.tensor([10]), frame_shift=0.04)
    assert h.ids == [1, 2, 1]
    assert h.start_frames == [1, 4, 9] and h.end_frames == [2, 6, 9]
    assert h.end_s == pytest.approx([0.12, 0.28, 0.40])
    (h,) = ctc_greedy_decode(lp)
    assert h.ids == [1, 2, 1, 3]


def test_phone_inventory(tmp_path):
    inv = PhoneInventory.from_sequences(["sil h @ l oU sil", "w 3: l d"])
    assert inv.phones == ("3:", "@", "d", "h", "l", "oU", "w")
    assert len(inv) == 8
    ids = inv.encode("sil h @ l oU")
    assert ids == [4, 2, 5, 6] and inv.decode([0] + ids) == ["h", "@", "l", "oU"]
    with pytest.raises(EchoError):
        inv.encode("h x")
    inv.write(tmp_path / "phones.txt")
    assert PhoneInventory.read(tmp_path / "phones.txt") == inv


@pytest.mark.parametrize("with_vq", [False, True])
def test_save_load_bit_identical(tmp_path, with_vq):
    torch.manual_seed(0)
    vq = VQConfig(d_model=D, codebook_size=8, code_dim=4, project=True) if with_vq else None
    head = CTCHead(CTCConfig(d_model=D, hidden_dim=8), INV, vq).eval()
    head.save(tmp_path / "ctc.pt")
    back = CTCHead.load(tmp_path / "ctc.pt")
    assert back.inventory == INV and back.config == head.config and back.vq_config == vq
    x = torch.randn(2, 9, D)
    assert torch.equal(back(x).log_probs, head(x).log_probs)


def test_upsampling_head_emits_two_phones_from_one_token():
    """Two different phones inside each 40 ms token: one output per token must drop one of them,
    two outputs per token (20 ms each) recover the whole sequence, with times at 20 ms."""
    g = torch.Generator().manual_seed(0)
    pairs = [(1, 2), (3, 4), (5, 3), (2, 5)]  # token i holds phones pairs[i]; no repeat across tokens
    table = {p: torch.randn(D, generator=g) for p in set(sum(pairs, ()))}
    seqs, xs = [], []
    for n in range(8):
        order = [pairs[(n + i) % 4] for i in range(3)]
        seqs.append([p for pr in order for p in pr])
        xs.append(torch.stack([table[a] + 0.5 * table[b] for a, b in order]))
    x = torch.stack(xs)
    targets, lengths = pad_targets(seqs)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    for upsample, recovers in ((1, False), (2, True)):
        torch.manual_seed(0)
        head = CTCHead(CTCConfig(d_model=D, num_layers=1, hidden_dim=32, dropout=0.0, upsample=upsample), INV)
        out = head(x, mask)
        assert out.log_probs.shape == (8, 3 * upsample, len(INV)) and out.lengths.tolist() == [3 * upsample] * 8
        _train(head, x, mask, targets, lengths, steps=150)
        hyps = head.eval().decode(x, mask)
        assert ([h.ids for h in hyps] == seqs) is recovers
        assert head.output_frame_shift == pytest.approx(0.04 / upsample)
        assert hyps[0].start_s == pytest.approx([s * 0.04 / upsample for s in hyps[0].start_frames])
