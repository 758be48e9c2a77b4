"""Site configuration of a ``kubernetes`` / ``kubeedge`` site and the client built from it.

``SiteSpec.config`` (camelCase, unknown keys rejected)::

    config:
      kubeconfig: |              # the kubeconfig itself (uploaded content, YAML) ...
        apiVersion: v1
        kind: Config
        ...
      kubeconfigPath: ~/.kube/continuum.yaml   # ... or a path on the control plane's host
      context: edge-cluster      # a context of that kubeconfig (default: its current-context)
      inCluster: false           # or the service account of the pod the control plane runs in
      namespace: continuum       # where Jobs, Deployments and Services are created
      defaultImage: python:3.12-slim   # image for tasks that give a command/script but no image
      power: {idleWatts: 100, maxWatts: 300, source: "..."}   # nodes without power labels
      requestTimeout: 15         # seconds per API call (connect and read)
      watchTimeout: 60           # seconds a watch request stays open before it is renewed
      resyncInterval: 300        # seconds between full relists (an informer's resync)

Exactly one of ``kubeconfig``, ``kubeconfigPath`` and ``inCluster: true`` is given.
Only this package imports the ``kubernetes`` SDK.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from continuum.errors import PermanentError
from continuum.model import PowerProfile, SiteSpec

DEFAULT_POWER = PowerProfile(
    idle_watts=100.0, max_watts=300.0, gpu_watts=0.0,
    source="assumed 2-socket server (SPECpower_ssj2008 results cluster around 100 W idle, "
           "300 W at full load); set continuum.io/idle-watts and continuum.io/max-watts "
           "node labels or config.power for real figures")
"""Power model of a node that carries no power labels and whose site gives none."""


class KubernetesConfig(BaseModel):
    """``SiteSpec.config`` of a ``kubernetes`` or ``kubeedge`` site (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    kubeconfig: str | dict[str, Any] | None = Field(
        default=None, description="kubeconfig content (YAML text or the parsed mapping)")
    kubeconfig_path: str | None = Field(default=None, description="path to a kubeconfig file")
    context: str | None = Field(default=None, description="kubeconfig context to use")
    in_cluster: bool = Field(default=False, description="use the pod's service account")
    namespace: str = Field(default="continuum", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    default_image: str = Field(
        default="python:3.12-slim",
        description="image for tasks with a command or script but no image")
    power: PowerProfile | None = None
    request_timeout: float = Field(default=15.0, gt=0, description="seconds per API call")
    watch_timeout: int = Field(
        default=60, ge=1, description="seconds before a watch request is renewed "
        "(kube-apiserver's own default is a random 30-60 min; shorter notices a dead "
        "connection sooner)")
    resync_interval: float = Field(
        default=300.0, gt=0, description="seconds between full relists, client-go's "
        "informer resync idea: a missed event is repaired within this period")
    tolerate_edge_taint: bool = Field(
        default=True, description="kubeedge: workloads tolerate the node-role.kubernetes.io"
        "/edge taint (so it is not shown to placement as a taint)")

    @model_validator(mode="after")
    def _one_source(self) -> KubernetesConfig:
        given = [n for n, v in (("kubeconfig", self.kubeconfig),
                                ("kubeconfigPath", self.kubeconfig_path),
                                ("inCluster", self.in_cluster or None)) if v]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of kubeconfig (the file's content), kubeconfigPath (a path "
                "on the control plane's host) or inCluster: true"
                + (f"; got {', '.join(given)}" if given else ""))
        if self.in_cluster and self.context:
            raise ValueError("context applies to a kubeconfig, not to inCluster: true")
        return self


def parse_config(site: SiteSpec) -> KubernetesConfig:
    """Validate ``site.config``.

    Raises:
        PermanentError: naming the first bad field and how to fix it.
    """
    try:
        return KubernetesConfig.model_validate(site.config)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "config"
        raise PermanentError(f"invalid {site.kind.value} config: {where}: {first['msg']}",
                             site=site.name, details={"field": where}) from e


def _kubeconfig_dict(cfg: KubernetesConfig, site: str) -> dict[str, Any]:
    raw = cfg.kubeconfig
    if isinstance(raw, dict):
        return raw
    try:
        data = yaml.safe_load(raw or "")
    except yaml.YAMLError as e:  # its text quotes the line: where only, never the secret
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise PermanentError(f"config.kubeconfig is not valid YAML{at}", site=site,
                             details={"field": "kubeconfig"}) from None
    if not isinstance(data, dict) or "clusters" not in data:
        raise PermanentError("config.kubeconfig is not a kubeconfig (no 'clusters'); upload "
                             "the file made by the steps in docs/kubernetes.md", site=site,
                             details={"field": "kubeconfig"})
    return data


def _read_kubeconfig(path: Path, site: str) -> dict[str, Any]:
    """The kubeconfig file at ``path`` as a mapping.

    Raises:
        PermanentError: (field ``kubeconfigPath``) not a readable file, not UTF-8 YAML,
            or not a kubeconfig (no ``clusters`` mapping).
    """
    field: dict[str, object] = {"field": "kubeconfigPath"}
    if not path.is_file():
        raise PermanentError(f"config.kubeconfigPath {str(path)!r} is not a readable "
                             "file on the control plane's host", site=site, details=field)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PermanentError(f"config.kubeconfigPath {str(path)!r} cannot be read: "
                             f"{e.strerror}", site=site, details=field) from e
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise PermanentError(f"config.kubeconfigPath {str(path)!r} is not a kubeconfig "
                             f"(not YAML text: {e})", site=site, details=field) from e
    if not isinstance(data, dict) or "clusters" not in data:
        raise PermanentError(f"config.kubeconfigPath {str(path)!r} is not a kubeconfig (no "
                             "'clusters'); give the file made by the steps in "
                             "docs/kubernetes.md", site=site, details=field)
    return data


def build_api_client(cfg: KubernetesConfig, site: str) -> tuple[k8s.ApiClient, str]:
    """An ``ApiClient`` for the site and a description of where it points.

    Returns:
        ``(api_client, description)`` where description names the server URL and the
        kubeconfig context (for error messages).

    Raises:
        PermanentError: the kubeconfig cannot be read, is malformed, or lacks the
            requested context (the message lists the contexts it has).
    """
    conf = k8s.Configuration()
    try:
        if cfg.in_cluster:
            k8s_config.load_incluster_config(client_configuration=conf)
            where = "in-cluster service account"
        elif cfg.kubeconfig_path is not None:
            path = Path(os.path.expanduser(cfg.kubeconfig_path))
            context = _check_context(_read_kubeconfig(path, site), cfg.context, site)
            k8s_config.load_kube_config(config_file=str(path), context=context,
                                        client_configuration=conf, persist_config=False)
            where = f"kubeconfig {path}"
        else:
            data = _kubeconfig_dict(cfg, site)
            context = _check_context(data, cfg.context, site)
            k8s_config.load_kube_config_from_dict(data, context=context,
                                                  client_configuration=conf,
                                                  persist_config=False)
            where = "uploaded kubeconfig"
    except PermanentError:
        raise
    except Exception as e:  # ConfigException, OSError, a malformed entry's TypeError, ...
        source = ("inCluster" if cfg.in_cluster else
                  "kubeconfigPath" if cfg.kubeconfig_path is not None else "kubeconfig")
        raise PermanentError(f"cannot load the cluster credentials: {e}", site=site,
                             details={"field": source}) from e
    if cfg.context:
        where += f", context {cfg.context!r}"
    if urlsplit(str(conf.host)).scheme not in ("http", "https"):
        source = "kubeconfigPath" if cfg.kubeconfig_path is not None else "kubeconfig"
        raise PermanentError(f"the kubeconfig's cluster server {conf.host!r} is not an "
                             "http(s) URL", site=site, details={"field": source})
    # connectivity errors surface at once (the reconciler retries), and a redirect is an
    # error ("too many redirects"), never followed
    conf.retries = 0
    return k8s.ApiClient(conf), f"{conf.host} ({where})"


def _check_context(data: dict[str, Any], context: str | None, site: str) -> str | None:
    """The context to load: ``context``, else current-context, else the only one."""
    names = [c.get("name") for c in data.get("contexts") or [] if isinstance(c, dict)]
    if context is not None and context not in names:
        raise PermanentError(f"config.context {context!r} is not in the kubeconfig (it has: "
                             f"{', '.join(map(str, names)) or 'no contexts'})", site=site,
                             details={"field": "context"})
    if context is None and not data.get("current-context") and len(names) != 1:
        raise PermanentError("the kubeconfig has no current-context; set config.context to "
                             f"one of: {', '.join(map(str, names)) or 'none'}", site=site,
                             details={"field": "context"})
    if context is None and not data.get("current-context"):
        return str(names[0])
    return context
