"""The Federation document: the sites, places and links a control plane starts with.

Like a Workflow it looks like a Kubernetes object (camelCase, unknown fields rejected)::

    apiVersion: continuum/v1
    kind: Federation
    metadata: {name: demo-continuum}
    spec:
      controlPlane: {location: munich-edge}
      locations:
        - {name: munich-factory-floor, lat: 48.177, lon: 11.556}
      links:
        - {a: munich-factory-floor, b: munich-edge, rttMs: 2, bandwidthBps: 1e9}
      sites:
        - {name: factory-devices, kind: devices, tier: device, location: munich-factory-floor}

``sites`` are :class:`~continuum.model.SiteSpec`; each kind validates its own
``config`` when its adapter is created. See ``examples/federation.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from continuum.model import Link, Location, Metadata, Model, SiteSpec


class ControlPlaneSpec(Model):
    """Where the control plane runs (a location name), for its RTT to every site."""

    location: str


class FederationSpec(Model):
    control_plane: ControlPlaneSpec
    locations: list[Location] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)
    sites: list[SiteSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> FederationSpec:
        names = [loc.name for loc in self.locations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"locations: {', '.join(dup)} declared more than once")
        known = set(names)
        if self.control_plane.location not in known:
            raise ValueError(
                f"controlPlane.location {self.control_plane.location!r} is not one of "
                f"spec.locations ({', '.join(sorted(known)) or 'none declared'})")
        for i, link in enumerate(self.links):
            for end in ("a", "b"):
                if getattr(link, end) not in known:
                    raise ValueError(f"links.{i}.{end}: {getattr(link, end)!r} is not one of "
                                     f"spec.locations ({', '.join(sorted(known))})")
        site_names = [s.name for s in self.sites]
        dup = sorted({n for n in site_names if site_names.count(n) > 1})
        if dup:
            raise ValueError(f"sites: {', '.join(dup)} declared more than once")
        for i, s in enumerate(self.sites):
            if s.location is not None and s.location not in known:
                raise ValueError(f"sites.{i}.location: {s.location!r} is not one of "
                                 f"spec.locations ({', '.join(sorted(known))})")
        return self


class FederationDocument(Model):
    """``apiVersion: continuum/v1``, ``kind: Federation``."""

    api_version: Literal["continuum/v1"] = Field(alias="apiVersion")
    kind: Literal["Federation"]
    metadata: Metadata
    spec: FederationSpec


def load_federation(path: str | Path) -> FederationDocument:
    """Read and validate a Federation document (YAML or JSON).

    Raises:
        ValueError: naming the file and each bad field, e.g.
            ``examples/federation.yaml: spec.sites.1.kind: Input should be 'sim', ...``.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ValueError(f"{p}: cannot read federation file: {e}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping with apiVersion, kind, metadata and spec")
    try:
        return FederationDocument.model_validate(raw)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(document)"
            msgs.append(f"{loc}: {err['msg']}")
        raise ValueError(f"{p}: " + "; ".join(msgs)) from e
