"""``continuum cluster`` — register Kubernetes / KubeEdge clusters and list their devices.

``continuum cluster add NAME KUBECONFIG`` uploads the kubeconfig's content as the site's
``config.kubeconfig`` (sealed at rest by the control plane; a path on its host is
accepted only from the operator's federation file); see docs/kubernetes.md.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from control_plane import render
from control_plane.client import ApiError, Client, ConnectionFailed

cluster_app = typer.Typer(help="Register Kubernetes / KubeEdge clusters; list their devices.",
                          no_args_is_help=True)
console = render.make_console()
err = render.make_console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="CONTINUUM_URL",
                                     help="control-plane API URL")]


class ClusterKind(StrEnum):
    kubernetes = "kubernetes"
    kubeedge = "kubeedge"


def _call(fn: Any) -> Any:
    try:
        return fn()
    except (ApiError, ConnectionFailed) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None


@cluster_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="site name (DNS-1123 label)")],
    kubeconfig: Annotated[Path, typer.Argument(help="kubeconfig file (see docs/kubernetes.md)")],
    kind: Annotated[ClusterKind, typer.Option(help="kubernetes or kubeedge")] = ClusterKind.kubernetes,
    context: Annotated[str | None, typer.Option(help="kubeconfig context (default: current)")] = None,
    location: Annotated[str | None, typer.Option(help="a location of the topology")] = None,
    tier: Annotated[str | None, typer.Option(help="default tier of nodes without a tier label")] = None,
    namespace: Annotated[str | None, typer.Option(help="namespace of the workloads")] = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
) -> None:
    """Register a cluster: the control plane checks it (reachable, credentials, RBAC,
    version) before it answers, and says what is wrong if it cannot use it."""
    config: dict[str, Any] = {}
    try:
        config["kubeconfig"] = kubeconfig.read_text()
    except OSError as e:
        err.print(f"[red]error:[/red] cannot read the kubeconfig {kubeconfig}: {e}")
        raise typer.Exit(1) from None
    for key, value in (("context", context), ("namespace", namespace)):
        if value:
            config[key] = value
    spec: dict[str, Any] = {"name": name, "kind": kind.value, "config": config}
    if location:
        spec["location"] = location
    if tier:
        spec["tier"] = tier
    with Client(url) as client:
        site = _call(lambda: client.register_site(spec))
    if output == "json":
        console.print_json(json.dumps(site))
    else:
        console.print(render.sites_table([site]))


@cluster_app.command("data-sources")
def data_sources(url: UrlOpt = "http://127.0.0.1:8080",
                 site: Annotated[str | None, typer.Option(help="only this site")] = None) -> None:
    """KubeEdge devices of every kubeedge site, with the node each is bound to."""
    with Client(url) as client:
        params = {"site": site} if site else {}
        data = _call(lambda: client._call("GET", "/v1/data-sources", params=params))
    console.print(render.data_sources_table(data["items"]), crop=False)  # never cut an ID
