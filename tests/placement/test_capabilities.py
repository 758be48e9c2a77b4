"""Optional plugin and predictor methods are declared protocols (placement.framework,
placement.predict), resolved by capability rather than by name or by class."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from continuum.model import Objective
from placement import default_framework
from placement.batch import BatchAssigner, ClassCachedPredictor
from placement.framework import CachedDelta, DynamicScore, ObservesBatch, Weighted
from placement.learned import LearnedPredictor
from placement.plugins.fragmentation import GpuFragmentation
from placement.predict import (
    AnalyticPredictor,
    ExplainsFallback,
    PredictsQueueWait,
    Prefetches,
    provides,
)
from tests.placement.test_fragmentation import _random_instance


def test_default_framework_capabilities() -> None:
    fw = default_framework()
    frag = next(p for p in fw.scores if isinstance(p, GpuFragmentation))
    caps = fw.capabilities()
    assert caps.dynamic == (frag,)
    assert caps.observers == (frag,)
    assert [w for w in caps.weighted if w is not None] == [frag]
    assert isinstance(frag, DynamicScore) and isinstance(frag, CachedDelta)
    assert isinstance(frag, ObservesBatch) and isinstance(frag, Weighted)
    assert fw.capabilities() is caps  # resolved once per plugin list
    other = replace(fw, scores=[p for p in fw.scores if p is not frag])
    assert other.capabilities().dynamic == ()
    assert "GpuFragmentation" not in other.weights(Objective())
    frag.weight = 0.25
    for obj in (Objective(), Objective(time=0.0, energy=3.0)):
        assert {p.name: fw.weight_of(p, obj) for p in fw.scores} == fw.weights(obj)


def test_predictor_capabilities() -> None:
    for cap in (PredictsQueueWait, Prefetches, ExplainsFallback):
        assert provides(LearnedPredictor(), cap)
        assert provides(ClassCachedPredictor(AnalyticPredictor()), cap)
        assert not provides(AnalyticPredictor(), cap)


class Delegating:
    """GPU fragmentation through the declared protocols only: a dynamic, observing,
    weighted plugin that is not a GpuFragmentation and offers no delta memo."""

    def __init__(self, inner: GpuFragmentation) -> None:
        self.inner = inner
        self.name, self.term = inner.name, inner.term
        self.lower_is_better, self.floor, self.weight = True, inner.floor, inner.weight
        self.score, self.describe = inner.score, inner.describe
        self.delta, self.pressure, self.observe = inner.delta, inner.pressure, inner.observe


def test_any_dynamic_plugin_is_used_without_a_class_check() -> None:
    """A plugin declaring DynamicScore (but not CachedDelta) places exactly as GPU
    fragmentation without its memo: the assigner asks for capabilities, not a class."""
    for seed in range(10):
        snap, reqs = _random_instance(seed, 1000)
        plain = default_framework()
        wrapped = replace(plain, scores=[Delegating(p) if isinstance(p, GpuFragmentation)
                                         else p for p in default_framework().scores])
        assert not isinstance(wrapped.capabilities().dynamic[0], CachedDelta)
        got = [BatchAssigner(snap.copy(), plain, cache_dynamic=False).assign(reqs),
               BatchAssigner(snap.copy(), wrapped).assign(reqs)]
        assert np.array_equal(got[0], got[1]), f"seed {seed}"
