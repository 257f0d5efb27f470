"""A tiny real-layout world for the stage tests: FLAC audio, a manifest, feature caches, mixtures.

Each utterance is ``sil | word [sil word] | sil``; a word is a run of phones. A phone is a pair of
phone-specific tones (its "formants") riding on the speaker's harmonic voice (speaker-specific
f0), so the log-mel carries both who speaks and what is said. Speakers are split train / dev.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from echo.corpus import manifest
from echo.features import FeatureCache, FrontEnd, build_feature_cache, phone_inventory
from echo.heads.arcface import ArcFaceLoss
from echo.heads.ctc import CTCConfig, CTCHead
from echo.heads.speaker import SpeakerConfig, SpeakerHead
from echo.heads.vq import VQConfig
from echo.models.bundle import EchoModel
from echo.models.vit import Encoder, EncoderConfig
from echo.simulate.augment import AugmentConfig, Augmenter
from echo.simulate.room import RoomConfig
from echo.stages.batches import phone_lookup

SR = 16_000
PHONES = {"a": (500.0, 1500.0), "b": (800.0, 2500.0), "c": (300.0, 3200.0), "d": (1200.0, 2000.0)}
ENC = EncoderConfig(n_mels=80, dim=32, depth=2, heads=2, mlp_dim=64)


def _utterance(rng: np.random.Generator, f0: float) -> tuple[np.ndarray, list[str], list[int], list[int]]:
    x, phones, starts, ends, t = [], [], [], [], 0

    def add(sig: np.ndarray, label: str) -> None:
        nonlocal t
        x.append(sig.astype(np.float32))
        phones.append(label), starts.append(t), ends.append(t + len(sig))
        t += len(sig)

    add(0.001 * rng.standard_normal(int(rng.uniform(0.1, 0.2) * SR)), "sil")
    for w in range(int(rng.integers(1, 3))):
        if w:
            add(0.001 * rng.standard_normal(int(rng.uniform(0.1, 0.2) * SR)), "sil")
        for p in rng.choice(list(PHONES), size=int(rng.integers(4, 8))):
            n = int(rng.uniform(0.08, 0.16) * SR)
            tt = np.arange(n) / SR
            voice = sum(np.sin(2 * np.pi * f0 * h * tt) / h for h in range(1, 5))
            f1, f2 = PHONES[p]
            add(0.08 * voice + 0.12 * np.sin(2 * np.pi * f1 * tt) + 0.08 * np.sin(2 * np.pi * f2 * tt)
                + 0.005 * rng.standard_normal(n), str(p))
    add(0.001 * rng.standard_normal(int(rng.uniform(0.1, 0.2) * SR)), "sil")
    return np.concatenate(x), phones, starts, ends


def build_world(root: Path, train_speakers: int = 4, dev_speakers: int = 3, utts: int = 5, seed: int = 0) -> dict:
    """Write audio + manifest + train/dev feature caches (and the augmented copy of train) under
    ``root``; return paths and caches."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    rows = []
    for split, n_spk in (("train", train_speakers), ("dev", dev_speakers)):
        for s in range(n_spk):
            spk = f"{split}{s}"
            f0 = 90.0 + 37.0 * s + (0.0 if split == "train" else 19.0)
            chunks, pos = [], 0
            for u in range(utts):
                x, ph, st, en = _utterance(rng, f0)
                chunks.append(x)
                speech = [i for i, p in enumerate(ph) if p != "sil"]
                rows.append({"utt_id": f"{spk}-{u}", "speaker": spk, "split": split, "source": "embedded",
                             "path": f"audio/{spk}.flac", "start": pos, "num_samples": len(x), "sample_rate": SR,
                             "duration": len(x) / SR, "text": "", "phonemes": " ".join(p for p in ph if p != "sil"),
                             "align_phone": ph, "align_start": st, "align_end": en,
                             "speech_start": st[speech[0]], "speech_end": en[speech[-1]]})
                pos += len(x)
            sf.write(root / "audio" / f"{spk}.flac", np.concatenate(chunks), SR, subtype="PCM_16")
    df = pd.DataFrame(rows)
    for c in ("start", "num_samples", "sample_rate", "speech_start", "speech_end"):
        df[c] = df[c].astype("int64")
    path = root / "manifest.parquet"
    manifest.validate(df).to_parquet(path, index=False)
    full = manifest.read(path)
    inventory = phone_inventory(full)
    fe = FrontEnd()
    caches = {split: build_feature_cache(full[full["split"] == split].reset_index(drop=True), fe,
                                         root / "features" / split, inventory) for split in ("train", "dev")}
    aug = Augmenter(AugmentConfig(snr_db=(5.0, 20.0), reverb_prob=0.5, room=RoomConfig(max_order=4)), SR)
    noisy = build_feature_cache(full[full["split"] == "train"].reset_index(drop=True), fe, root / "features" / "train_noisy",
                                inventory, transform=lambda wave, row: aug(wave, row.utt_id)[0])
    return {"manifest": path, "train": caches["train"], "dev": caches["dev"], "train_noisy": noisy, "root": root}


def pretrained_encoder(train: FeatureCache, path: Path, seed: int = 0) -> Path:
    """A randomly initialised encoder with the train split's input normalisation, as pretraining writes it."""
    import torch

    torch.manual_seed(seed)
    enc = Encoder(ENC)
    enc.set_normalization(train.stats["mean"], train.stats["std"])
    return enc.save(path)


def stage_bundle(train: FeatureCache, enc_path: Path, out: Path, heads: str = "speaker", seed: int = 0) -> Path:
    """A hand-built bundle with the heads an earlier stage would leave (``speaker`` or ``phonetic``)."""
    import torch

    torch.manual_seed(seed)
    speakers = sorted(train.index["speaker"].unique())
    enc = Encoder.load(enc_path)
    kw = {"speaker": SpeakerHead(SpeakerConfig(d_model=ENC.dim, emb_dim=16, attention_dim=8)).eval(),
          "arcface": ArcFaceLoss(16, len(speakers))}
    stage = "speaker"
    if heads == "phonetic":
        inv, _ = phone_lookup(train.inventory)
        ctc = CTCConfig(d_model=ENC.dim, hidden_dim=16, num_layers=1, dropout=0.0)
        kw.update(ctc=CTCHead(ctc, inv), vq_ctc=CTCHead(ctc, inv, VQConfig(d_model=ENC.dim, codebook_size=8, code_dim=ENC.dim)))
        stage = "phonetic"
    return EchoModel(enc, train.frontend, stage, meta={"train_speakers": speakers}, **kw).save(out)


def speaker_config(**changes):
    """A tiny stage-1 config (24 steps of 8 crops, top block trainable, distillation guard)."""
    import dataclasses

    from echo.heads.arcface import ArcFaceConfig
    from echo.stages.common import StageGuardConfig
    from echo.stages.speaker import SpeakerStageConfig

    base = SpeakerStageConfig(steps=24, batch_size=8, crop_s=1.0, lr=1e-2, encoder_lr=1e-3, warmup_steps=0,
                              eval_every=8, checkpoint_every=8, log_every=1, emb_dim=16, attention_dim=8,
                              arcface=ArcFaceConfig(scale=10.0, margin=0.1), trainable="top1",
                              guard=StageGuardConfig(kind="distill", weight=0.5))
    return dataclasses.replace(base, **changes)


def build_mixtures(world: dict, split: str, k_max: int = 3, n_per_k: int = 3) -> Path:
    from echo.simulate.mixtures import MixtureConfig, simulate_mixtures

    cfg = MixtureConfig(k_max=k_max, n_per_k=n_per_k, duration_s=1.0, snr_db=None, min_active_s=0.4, seed=1)
    return simulate_mixtures(manifest.read(world["manifest"], split), cfg, world["root"] / "mixtures" / split)
