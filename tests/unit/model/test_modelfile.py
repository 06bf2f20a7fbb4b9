"""ModelFile: the forwarding sidecar's pin on the model file an upstream serves."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mlwitness.model.modelfile import ModelFile


class Store:
    """What the sidecar's model store saw (a real list; `fail` makes the next store raise)."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []
        self.fail = 0

    def __call__(self, onnx: bytes) -> None:
        if self.fail:
            self.fail -= 1
            raise TimeoutError("the ledger writer did not answer in 30 s")
        self.stored.append(onnx)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_change_is_pinned_once_the_file_has_stayed_put_for_a_poll(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"v1" * 100)
    store = Store()
    pinned = ModelFile(path, store)
    assert (pinned.sha256, store.stored) == (sha(b"v1" * 100), [b"v1" * 100])
    path.write_bytes(b"v2-half")  # a copy in progress
    assert pinned.refresh() is False and pinned.sha256 == sha(b"v1" * 100)
    path.write_bytes(b"v2" * 100)  # it went on: still not settled
    assert pinned.refresh() is False and pinned.sha256 == sha(b"v1" * 100)
    assert pinned.refresh() is True and pinned.sha256 == sha(b"v2" * 100)  # settled
    assert store.stored == [b"v1" * 100, b"v2" * 100]  # never the half-written bytes
    assert pinned.refresh() is False


def test_a_store_that_fails_is_tried_again_at_the_next_poll(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"v1")
    store = Store()
    pinned = ModelFile(path, store)
    path.write_bytes(b"v2-new")
    assert pinned.refresh() is False  # seen
    store.fail = 1
    with pytest.raises(TimeoutError):
        pinned.refresh()
    assert pinned.sha256 == sha(b"v1")  # records keep naming bytes that are stored
    assert pinned.refresh() is True and pinned.sha256 == sha(b"v2-new")
    assert store.stored == [b"v1", b"v2-new"]
