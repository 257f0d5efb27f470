"""Derive the other parameter profiles from params.yaml (same keys, other sizes), so they never drift:

- tests/data/params-tiny.yaml: the end-to-end test's profile (every node, a few minutes on 2 cores);
- params/paper.yaml: the paper profile (25.4M-parameter encoder, real corpus, GPU-sized training).

    python workflow/scripts/make_profiles.py
"""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "profile": "tiny",
    "corpus.embedded": dict(n_train_speakers=12, n_dev_speakers=4, n_test_speakers=6, utts_per_speaker=4,
                            min_words=4, max_words=8),
    "simulation.conversations": dict(min_duration_s=8.0, max_duration_s=15.0, reverb_prob=0.3),
    "simulation.conversations.room": dict(max_order=8),
    "simulation.augmentation.room": dict(max_order=8),
    "simulation.sets": {"conversations_train": {"k": [1, 2, 3], "n_per_k": 3, "channel_prob": 0.5},
                        "conversations_dev": {"k": [1, 2, 3], "n_per_k": 1},
                        "conversations_test": {"k": [1, 2, 3, 4, 5], "n_per_k": 1},
                        "mixtures_train": {"k": [1, 2, 3, 4], "n_per_k": 12},
                        "mixtures_dev": {"k": [1, 2, 3, 4], "n_per_k": 2},
                        "mixtures_test": {"k": [1, 2, 3, 4], "n_per_k": 3},
                        "real_dev": {"k": [1, 2], "n_per_k": 1}, "real_test": {"k": [1, 2, 3], "n_per_k": 1}},
    "encoder": dict(depth=2, mlp_dim=512),
    "pretrain": dict(steps=12, batch_size=8, crop_frames=100, warmup_steps=4, checkpoint_every=6, log_every=4),
    "pretrain.predictor": dict(depth=1, mlp_dim=256),
    "stages.speaker": dict(steps=6, batch_size=4, warmup_steps=2, eval_every=3, checkpoint_every=3, log_every=2,
                           dev_max_utts=8),
    "stages.phonetic": dict(steps=6, batch_size=4, warmup_steps=2, eval_every=3, checkpoint_every=3, log_every=2,
                            dev_max_utts=8),
    "stages.routing": dict(steps=6, batch_size=4, clean_batch_size=2, warmup_steps=2, eval_every=3,
                           checkpoint_every=3, log_every=2, dev_max_utts=8),
    "stages.segmentation": dict(steps=6, batch_size=4, warmup_steps=2, eval_every=3, log_every=2),
    "stages.separation": dict(steps=4, batch_size=2, warmup_steps=1, eval_every=2, log_every=2),
    "stages.separation.separator": dict(width=32, hidden=64, num_blocks=2, slot_attention_every=1),
    "evaluation.abilities": dict(max_utts_per_speaker=4),
    "evaluation.abilities.trials": dict(n_target=100, n_nontarget=100),
    "evaluation.abilities.bootstrap": dict(n_boot=100),
    "evaluation.backend": dict(max_per_speaker=20),
    "evaluation.tune": dict(Fa=[0.3], Fb=[5.0, 17.0], loopP=[0.0], ahc_threshold=[0.3, 0.5]),
    "evaluation.separation.bootstrap": dict(n_boot=100),
    "evaluation.bootstrap": dict(n_boot=100),
    "evaluation.channels": dict(conditions=["clean", "gsm", "mp3_24k", "clipped"]),
    "evaluation.real_voices": dict(max_utts_per_voice=8),
    "seeds": dict(diarization=[0, 1]),  # one extra seed: the seed-runs node's whole path, cheaply
}


PAPER = {
    "profile": "paper",
    "corpus": {"source": "voxceleb2"},
    "corpus.real": dict(root="/data/voxceleb2", workers=16),
    "simulation.conversations": dict(min_duration_s=30.0, max_duration_s=120.0),
    "simulation.sets": {"conversations_train": {"k": [1, 2, 3, 4, 5], "n_per_k": 2000, "channel_prob": 0.5},
                        "conversations_dev": {"k": [1, 2, 3, 4, 5], "n_per_k": 25},
                        "conversations_test": {"k": [1, 2, 3, 4, 5], "n_per_k": 100},
                        "mixtures_train": {"k": [1, 2, 3, 4], "n_per_k": 25000},
                        "mixtures_dev": {"k": [1, 2, 3, 4], "n_per_k": 250},
                        "mixtures_test": {"k": [1, 2, 3, 4], "n_per_k": 1000}},
    "encoder": dict(depth=8, mlp_dim=2048),
    "pretrain": dict(steps=100000, batch_size=256, crop_frames=400, warmup_steps=5000, checkpoint_every=1000,
                     log_every=50, compile=True),
    "stages.speaker": dict(steps=20000, batch_size=128, crop_s=3.0, eval_every=1000, checkpoint_every=1000,
                           log_every=50, dev_max_utts=2000),
    "stages.phonetic": dict(steps=20000, batch_size=64, crop_s=3.0, eval_every=1000, checkpoint_every=1000,
                            log_every=50, dev_max_utts=2000),
    "stages.routing": dict(steps=20000, batch_size=64, clean_batch_size=32, eval_every=1000,
                           checkpoint_every=1000, log_every=50, dev_max_utts=2000),
    "stages.segmentation": dict(steps=20000, batch_size=128, eval_every=1000, log_every=50),
    "stages.separation": dict(steps=20000, batch_size=32, eval_every=1000, log_every=50),
    "evaluation.backend": dict(max_per_speaker=50),
}


def derive(overrides: dict) -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, val in overrides.items():
        if not isinstance(val, dict):
            p[key] = val
            continue
        cur = p
        for part in key.split("."):
            cur = cur[part]
        if key == "simulation.sets":
            cur.clear()
        cur.update(val)
    return p


def render(overrides: dict, what: str) -> str:
    head = f"# {what} (generated by workflow/scripts/make_profiles.py from params.yaml; do not edit).\n"
    return head + yaml.safe_dump(derive(overrides), sort_keys=False, width=100)


OUTPUTS = {"tests/data/params-tiny.yaml": (TINY, "Tiny profile for the end-to-end workflow test"),
           "params/paper.yaml": (PAPER, "Paper profile: cp params/paper.yaml params.yaml, set corpus.real.root")}


def main() -> None:
    for path, (over, what) in OUTPUTS.items():
        (ROOT / path).write_text(render(over, what))


if __name__ == "__main__":
    main()
