"""The registry of adapter kinds: which factory builds the adapter of a site kind.

Each adapter module registers its factory when imported (``register(SiteKind.sim,
factory)`` at its end); :func:`create` imports the built-in ones on first use, so
importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable

from adapters.base import Adapter, AdapterContext
from continuum.errors import UnsupportedError
from continuum.model import SiteKind, SiteSpec

AdapterFactory = Callable[[SiteSpec, AdapterContext], Adapter]
"""Builds the adapter of one site: ``(site spec, context) -> Adapter``."""
_REGISTRY: dict[SiteKind, AdapterFactory] = {}


def register(kind: SiteKind, factory: AdapterFactory) -> None:
    """Make ``kind`` available to :func:`create` (a later call for a kind replaces it)."""
    _REGISTRY[kind] = factory


def create(site: SiteSpec, ctx: AdapterContext) -> Adapter:
    """Build the adapter for ``site``.

    Raises:
        UnsupportedError: no adapter is registered for the site's kind.
    """
    _load_builtin()
    try:
        factory = _REGISTRY[site.kind]
    except KeyError:
        known = ", ".join(sorted(k.value for k in _REGISTRY))
        raise UnsupportedError(
            f"no adapter for site kind {site.kind.value!r} in this build (available: {known})",
            site=site.name,
        ) from None
    return factory(site, ctx)


def available_kinds() -> list[SiteKind]:
    """The registered site kinds, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    # Importing registers them; done lazily so `adapters.registry` stays import-light.
    import adapters.devices  # noqa: F401
    import adapters.kubernetes  # noqa: F401
    import adapters.sim  # noqa: F401
    import adapters.slurm  # noqa: F401
