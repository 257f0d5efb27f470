import os

import pytest

from echo.io import atomic_dir, atomic_path, read_json, write_json


def test_atomic_path_leaves_nothing_on_crash(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_dir(tmp_path):
    d = tmp_path / "cache"
    with pytest.raises(ValueError):
        with atomic_dir(d) as tmp:
            (tmp / "a").write_text("x")
            raise ValueError
    assert not d.exists() and os.listdir(tmp_path) == []
    with atomic_dir(d) as tmp:
        (tmp / "a").write_text("x")
    with atomic_dir(d) as tmp:
        (tmp / "b").write_text("y")
    assert sorted(os.listdir(d)) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_write_json_stable(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1.5]})
    first = (tmp_path / "a.json").read_bytes()
    write_json(tmp_path / "a.json", {"a": [1.5], "b": 1})
    assert (tmp_path / "a.json").read_bytes() == first
    assert read_json(tmp_path / "a.json") == {"a": [1.5], "b": 1}
