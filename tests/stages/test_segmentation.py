import numpy as np
import pytest

from echo.errors import ConfigError
from echo.stages.segmentation import SegmentationStageConfig, local_targets, segmentation_errors


def test_local_targets_keep_the_most_active_speakers_first():
    act = np.zeros((10, 4), np.float32)
    act[:2, 0] = 1      # 2 tokens
    act[:, 2] = 1       # 10 tokens
    act[3:8, 3] = 1     # 5 tokens; speaker 1 silent
    t = local_targets(act, 3)
    assert t.shape == (10, 3)
    np.testing.assert_array_equal(t[:, 0], act[:, 2])
    np.testing.assert_array_equal(t[:, 1], act[:, 3])
    np.testing.assert_array_equal(t[:, 2], act[:, 0])
    assert local_targets(np.zeros((5, 2)), 3).sum() == 0


def test_segmentation_errors_count_by_hand_under_the_best_permutation():
    ref = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]], np.float32)
    hyp = np.array([[0, 1], [0, 1], [1, 0], [1, 0], [0, 0]], np.float32)  # speakers swapped
    e = segmentation_errors(hyp, ref)
    # best permutation maps hyp 1 -> ref 0, hyp 0 -> ref 1; ref speech 5 speaker-tokens
    # t0 right; t1 one missed; t2 right; t3 one false alarm; t4 one missed
    assert e["speech"] == 5 and e["missed"] == 2 and e["false_alarm"] == 1 and e["confusion"] == 0
    assert e["count_correct"] == 2 and e["frames"] == 5
    e = segmentation_errors(np.array([[1, 0]], np.float32), np.array([[0, 1]], np.float32))
    assert e["confusion"] == 0  # a lone speaker is matched to whichever output speaks
    e = segmentation_errors(np.array([[1, 0], [1, 0]], np.float32), np.array([[1, 0], [0, 1]], np.float32))
    assert e["confusion"] == 1 and e["missed"] == 0


def test_config_errors():
    with pytest.raises(ConfigError, match="warmup_steps"):
        SegmentationStageConfig(steps=10, warmup_steps=20)
    with pytest.raises(ConfigError, match="chunk_s"):
        SegmentationStageConfig(chunk_s=float("inf"))


def test_chunk_length_must_match_the_diarizers_segments_before_any_job():
    from echo.config import load_raw, validate_raw

    raw = load_raw("params.yaml")
    raw["stages"]["segmentation"]["chunk_s"] = 2.0
    with pytest.raises(ConfigError) as e:
        validate_raw(raw)
    assert str(e.value) == ("params.yaml: stages.segmentation.chunk_s: expected evaluation.diarizer.segment_s (1.5), "
                            "got 2.0")
