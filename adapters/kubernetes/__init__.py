"""Kubernetes and KubeEdge clusters as sites, through the official ``kubernetes`` client.

What belongs here: the site config and client construction (:mod:`.config`), the
manifests a run becomes (:mod:`.manifests`), the one pod-state table (:mod:`.states`),
the ``kubernetes`` adapter (:mod:`.adapter`) and the ``kubeedge`` adapter with its edge
semantics (:mod:`.kubeedge`). This package is the only one that imports the
``kubernetes`` SDK. What does not belong: placement, the store, the HTTP API.

Importing the package registers both site kinds.
"""

from adapters.base import AdapterContext
from adapters.capabilities import DataSourceCatalog, SupportsCheck, conforms
from adapters.kubernetes.adapter import KubernetesAdapter
from adapters.kubernetes.kubeedge import KubeEdgeAdapter
from adapters.registry import register
from continuum.model import SiteKind, SiteSpec


def _kubernetes(site: SiteSpec, ctx: AdapterContext) -> KubernetesAdapter:
    return KubernetesAdapter(site, ctx)


def _kubeedge(site: SiteSpec, ctx: AdapterContext) -> KubeEdgeAdapter:
    return KubeEdgeAdapter(site, ctx)


register(SiteKind.kubernetes, _kubernetes)
register(SiteKind.kubeedge, _kubeedge)

# Declared capabilities (adapters.capabilities): mypy checks the signatures, conforms the names.
_DECLARED: tuple[type[SupportsCheck], type[SupportsCheck], type[DataSourceCatalog]] = (
    KubernetesAdapter, KubeEdgeAdapter, KubeEdgeAdapter)
conforms(KubernetesAdapter, SupportsCheck)
conforms(KubeEdgeAdapter, SupportsCheck, DataSourceCatalog)

__all__ = ["KubeEdgeAdapter", "KubernetesAdapter"]
