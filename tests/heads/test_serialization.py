"""Every head saves and loads itself (echo.heads.Checkpointed): ``load(save(x))`` has the same
state, the same outputs and writes the same bytes again (asteroid's serialisation round trip)."""
import pytest
import torch

from echo.errors import CacheMismatchError
from echo.heads.arcface import ArcFaceConfig, ArcFaceLoss
from echo.heads.ctc import CTCConfig, CTCHead, PhoneInventory
from echo.heads.router import RouterConfig, SourceRouter
from echo.heads.segmentation import SegmentationConfig, SegmentationHead
from echo.heads.separator import SeparatorConfig, SpeakerSeparator
from echo.heads.speaker import SpeakerConfig, SpeakerHead
from echo.heads.vq import VectorQuantizer, VQConfig

D = 16
INV = PhoneInventory(("a", "b", "c"))

# name -> (build a tiny head, its output on latents x and mask m as one tensor)
HEADS = {
    "speaker": (lambda: SpeakerHead(SpeakerConfig(d_model=D, emb_dim=8, attention_dim=8)),
                lambda h, x, m: h(x, m)),
    "arcface": (lambda: ArcFaceLoss(D, 5, ArcFaceConfig(margin=0.3)),
                lambda h, x, m: h(x[:, 0], torch.tensor([0, 3])).logits),
    "ctc": (lambda: CTCHead(CTCConfig(d_model=D, hidden_dim=8), INV), lambda h, x, m: h(x, m).log_probs),
    "vq_ctc": (lambda: CTCHead(CTCConfig(d_model=D, hidden_dim=8), INV,
                               VQConfig(d_model=D, codebook_size=8, code_dim=4, project=True)),
               lambda h, x, m: h(x, m).log_probs),
    "vq": (lambda: VectorQuantizer(VQConfig(d_model=D, codebook_size=8, code_dim=4, project=True)),
           lambda h, x, m: h(x, m).quantized),
    "router": (lambda: SourceRouter(RouterConfig(d_model=D, k_max=3, width=16, num_layers=1, num_heads=2)),
               lambda h, x, m: h(x, m).slots),
    "segmentation": (lambda: SegmentationHead(SegmentationConfig(d_model=D, width=8)), lambda h, x, m: h(x, m)),
    "separator": (lambda: SpeakerSeparator(SeparatorConfig(d_model=D, identity_dim=D, width=8, hidden=8, num_blocks=2,
                                                           num_heads=2, slot_attention_every=1)),
                  lambda h, x, m: h(torch.sin(0.01 * torch.arange(x.shape[1] * 640.0)).repeat(x.shape[0], 1),
                                    torch.stack([x.mean(1), -x.mean(1)], 1), x, torch.ones(x.shape[0], 2, dtype=torch.bool))),
}


def _trained(name):
    """A head whose weights and buffers (batch-norm statistics, VQ EMA counts) are not the
    initial ones, so a load that kept any initial value would show."""
    torch.manual_seed(0)
    head = HEADS[name][0]()
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    head.train()
    HEADS[name][1](head, torch.randn(2, 7, D), torch.ones(2, 7, dtype=torch.bool))  # updates running buffers
    return head.eval()


@pytest.mark.parametrize("name", sorted(HEADS))
def test_load_of_save_is_identical(tmp_path, name):
    head = _trained(name)
    head.save(tmp_path / "a.pt")
    back = type(head).load(tmp_path / "a.pt")
    assert not back.training
    assert back.config == head.config
    want, got = head.state_dict(), back.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    x = torch.randn(2, 7, D)
    m = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    forward = HEADS[name][1]
    assert torch.equal(forward(back, x, m), forward(head, x, m))
    back.save(tmp_path / "b.pt")
    assert (tmp_path / "b.pt").read_bytes() == (tmp_path / "a.pt").read_bytes()


def test_a_checkpoint_of_another_head_is_refused(tmp_path):
    _trained("router").save(tmp_path / "router.pt")
    with pytest.raises(CacheMismatchError, match="expected a 'segmentation' head checkpoint, got 'router'"):
        SegmentationHead.load(tmp_path / "router.pt")


def test_weights_of_another_architecture_are_one_line(tmp_path):
    """A checkpoint whose weights do not fit the head (an older version's layout) is refused by name."""
    from echo.heads import save_checkpoint

    head = SpeakerSeparator(SeparatorConfig(d_model=D, identity_dim=D, width=8, hidden=8, num_blocks=2, num_heads=2,
                                            slot_attention_every=1))
    state = {k: v for k, v in head.state_dict().items() if not k.startswith("identity_in.")}
    state["slot_in.weight"] = torch.zeros(8, D)
    save_checkpoint(tmp_path / "old.pt", "separator", head.config, state, {})
    with pytest.raises(CacheMismatchError, match=r"old\.pt: separator weights do not fit this version's SpeakerSeparator "
                                                 r"\(missing: identity_in\.weight, identity_in\.bias; unexpected: "
                                                 r"slot_in\.weight\)"):
        SpeakerSeparator.load(tmp_path / "old.pt")
    state = dict(head.state_dict(), **{"out.bias": torch.zeros(3)})
    save_checkpoint(tmp_path / "shape.pt", "separator", head.config, state, {})
    with pytest.raises(CacheMismatchError, match="tensor shapes"):
        SpeakerSeparator.load(tmp_path / "shape.pt")
