"""core.fileio.write_atomic: the project's one crash-safe file write."""

from __future__ import annotations

import os

import pytest

from core import fileio
from core.fileio import write_atomic


def test_write_atomic_round_trips_bytes_and_text(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    write_atomic(str(target), "héllo")  # str is UTF-8, path may be a str
    assert target.read_bytes() == "héllo".encode()
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left behind
    with pytest.raises(TypeError, match="bytes or str"):
        write_atomic(target, {"a": 1})
    assert target.read_text(encoding="utf-8") == "héllo"


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "cache.json"
    target.write_text("old", encoding="utf-8")

    def crash(src, dst):
        raise OSError("disk pulled out")

    monkeypatch.setattr(fileio.os, "replace", crash)
    with pytest.raises(OSError, match="disk pulled out"):
        write_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["cache.json"]


def test_durable_writes_fsync_and_cache_writes_do_not(tmp_path, monkeypatch):
    synced = []
    real_fsync = fileio.os.fsync
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_atomic(tmp_path / "label.json", "kept")
    assert len(synced) == 1
    write_atomic(tmp_path / "diff.png", b"\x89PNG", durable=False)
    assert len(synced) == 1  # no fsync for a cache a new process recomputes
    assert (tmp_path / "diff.png").read_bytes() == b"\x89PNG"
    assert sorted(os.listdir(tmp_path)) == ["diff.png", "label.json"]
