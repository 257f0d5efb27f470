"""The workflow's progress hook writes throttled lines to the node's log."""
import logging

from echo.pipeline.progress import NodeProgress


def test_node_progress_throttles_but_keeps_first_and_last(caplog):
    now = [0.0]
    hook = NodeProgress(interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="echo.progress"):
        for i in range(101):
            now[0] = i * 0.5  # 50 s in all: first, one every 10 s, last
            hook("features train", completed=i, total=100)
        hook("scan", completed=7)  # unknown total: a count
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "progress: features train 0/100 (0%)"
    assert lines[-2] == "progress: features train 100/100 (100%)"
    assert lines[-1] == "progress: scan 7"
    assert 6 <= len(lines) <= 8
