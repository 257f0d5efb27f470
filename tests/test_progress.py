"""The library's progress protocol (echo.progress.track)."""
from echo.progress import track


def test_track_reports_each_item_after_it_is_consumed():
    calls, seen = [], []

    def hook(step, completed=None, total=None):
        calls.append((step, completed, total, len(seen)))

    for x in track(["a", "b", "c"], hook, "work", 3):
        seen.append(x)
    assert seen == ["a", "b", "c"]
    # 0 before the first item; i once the consumer has taken item i and asks for the next
    assert calls == [("work", 0, 3, 0), ("work", 1, 3, 1), ("work", 2, 3, 2), ("work", 3, 3, 3)]


def test_track_without_a_hook_is_the_items():
    assert list(track(iter(range(4)), None, "work")) == [0, 1, 2, 3]
