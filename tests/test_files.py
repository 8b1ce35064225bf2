"""files.py: the one atomic-write helper."""

import json
import os
import stat

import pytest

from evounlearn.files import atomic_write_bytes, atomic_write_json, atomic_write_text


def test_writes_create_the_folder_and_replace_the_file(tmp_path):
    p = tmp_path / "a" / "b" / "x.json"
    atomic_write_json(p, {"k": [1, 2]})
    assert json.loads(p.read_text()) == {"k": [1, 2]}
    assert p.read_text() == json.dumps({"k": [1, 2]}, indent=1)
    atomic_write_text(p, "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
    assert sorted(os.listdir(p.parent)) == ["x.json"]  # no temp file left behind


def test_json_default_and_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"path": tmp_path}, default=str)
    assert json.loads(p.read_text()) == {"path": str(tmp_path)}
    with pytest.raises(TypeError):
        atomic_write_json(p, {"bad": object()})
    assert json.loads(p.read_text()) == {"path": str(tmp_path)}
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_interrupted_replace_leaves_no_temp_file(tmp_path, monkeypatch):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["x.txt"]
