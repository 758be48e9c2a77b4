"""The snapshot's declared, keyed memo (Snapshot.memo)."""

from __future__ import annotations

import pytest

from placement.batch import node_classes
from tests.placement.placement_factories import node, snapshot


def test_memo_builds_once_per_key_and_copies_share_it() -> None:
    snap = snapshot([node("s/a"), node("s/b")])
    calls: list[int] = []

    def build() -> float:
        calls.append(1)
        return 4.0

    assert snap.memo("gpu_capacity_units", build) == 4.0
    assert snap.memo("gpu_capacity_units", build) == 4.0
    assert snap.copy().memo("gpu_capacity_units", build) == 4.0
    assert len(calls) == 1
    assert node_classes(snap) is node_classes(snap.copy())


def test_memo_is_emptied_by_a_new_node_list() -> None:
    snap = snapshot([node("s/a")])
    first = node_classes(snap)
    other = snap.copy()
    other.nodes = [node("s/a"), node("s/b", cpu=2)]
    assert node_classes(other) is not first


def test_undeclared_memo_key_is_refused() -> None:
    with pytest.raises(KeyError, match="'mine' is not declared in MEMO_KEYS"):
        snapshot([node()]).memo("mine", lambda: 1)
