"""The real Kubernetes of the test bed (``deploy/dev/kube.sh``), as the tests drive it.

:class:`KubeCluster` wraps one cluster started by ``kube.sh start DIR``: etcd,
kube-apiserver (TLS, RBAC, service-account tokens), kube-controller-manager,
kube-scheduler and kwok (simulated nodes and pods). The session fixture ``kube_cluster``
(tests/conftest.py) starts one per test session with three nodes ``kwok-node-1..3`` (8
cores, 32 GiB; ``kwok-node-2`` also has one ``nvidia.com/gpu``).

A Job's pod runs for the Go duration in its first container's env ``KWOK_DURATION``
(default 1s) and ends Succeeded, or Failed with the exit code in env ``KWOK_EXIT_CODE``
(``kwok_env``); the kwok Stages are deploy/dev/kube/kwok-stages.yaml.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO
from tests.helpers import wait_for

KUBE_SH = REPO / "deploy" / "dev" / "kube.sh"
NODES = 3
"""Nodes ``start`` makes: kwok-node-1..3."""


def kwok_env(duration: str = "1s", exit_code: int = 0) -> dict[str, str]:
    """Task env that makes kwok end a Job's pod after ``duration`` (Go syntax, e.g. "2s",
    "1h") with ``exit_code`` (0: Succeeded, else Failed with that container exit code)."""
    return {"KWOK_DURATION": duration, "KWOK_EXIT_CODE": str(exit_code)}


@dataclass
class KubeCluster:
    """A running test-bed cluster; ``env`` is what ``kube.sh start`` wrote to DIR/env."""

    dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def sh(self, *args: str, timeout: float = 180) -> str:
        """Runs ``kube.sh ARGS`` and returns its stdout.

        Raises:
            RuntimeError: it exited non-zero (with its stderr).
        """
        r = subprocess.run([str(KUBE_SH), *args], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"kube.sh {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def start(self) -> None:
        """Starts the cluster (about 10 s); the binaries must be built already (``make
        test-deps`` or ``kube.sh build``: the first build takes minutes).

        Raises:
            RuntimeError: not built, or a component did not come up (kube.sh's reason).
        """
        self.sh("built")
        self.sh("start", str(self.dir), "--nodes", str(NODES))
        self.env = dict(line.split("=", 1) for line in (self.dir / "env").read_text().split())

    def stop(self) -> None:
        self.sh("stop", str(self.dir))

    @property
    def url(self) -> str:
        return self.env["KUBE_APISERVER_URL"]

    @property
    def version(self) -> str:
        return self.env["KUBE_VERSION"]

    def sa_kubeconfig(self) -> dict[str, Any]:
        """The ServiceAccount continuum/continuum-adapter's kubeconfig (token, CA), parsed:
        what docs/kubernetes.md tells a user to give Continuum."""
        return dict(yaml.safe_load(Path(self.env["KUBE_SA_KUBECONFIG"]).read_text()))

    def admin_kubeconfig(self) -> dict[str, Any]:
        """The cluster admin's kubeconfig (system:masters client certificate), parsed."""
        return dict(yaml.safe_load(Path(self.env["KUBECONFIG"]).read_text()))

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """``kubectl ARGS`` as the cluster admin; its stdout.

        Raises:
            RuntimeError: kubectl exited non-zero (with its stderr).
        """
        r = subprocess.run(["kubectl", "--kubeconfig", self.env["KUBECONFIG"], *args],
                           input=stdin, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout

    def objects(self, kind: str, selector: str, namespace: str = "continuum"
                ) -> list[dict[str, Any]]:
        """The ``kind`` objects (e.g. ``jobs``, ``pods``) matching label ``selector``."""
        out = self.kubectl("-n", namespace, "get", kind, "-l", selector, "-o", "yaml")
        return list(yaml.safe_load(out)["items"])

    def add_node(self, name: str, *spec: str) -> None:
        """A kwok node, Ready on return and without the ``node.kubernetes.io/not-ready``
        taint a new node carries until the node lifecycle controller has seen it Ready:
        ``spec`` as ``kube.sh add-node`` takes it, e.g. ``cpu=2 memory=4Gi arch=arm64
        label:KEY=VALUE taint:KEY=VALUE:NoSchedule``."""
        self.sh("add-node", str(self.dir), name, *spec)

        def taints() -> str:
            return self.kubectl("get", "node", name, "-o", "jsonpath={.spec.taints[*].key}")
        wait_for(lambda: "node.kubernetes.io/not-ready" not in taints(), 60,
                 message=lambda: f"node {name} without the not-ready taint: {taints()}")

    def delete_node(self, name: str) -> None:
        self.kubectl("delete", "node", name, "--wait=false")

    def offline(self, name: str) -> None:
        """kwok stops acting as ``name``'s kubelet; NotReady on return."""
        self.sh("node-offline", str(self.dir), name)

    def online(self, name: str) -> None:
        """``name`` is Ready again on return."""
        self.sh("node-online", str(self.dir), name)

    def restart_control_plane(self) -> None:
        """Stops kube-apiserver, controller-manager, scheduler and kwok, then starts them
        again on the same ports (etcd keeps the state); healthy on return."""
        self.sh("stop-control-plane", str(self.dir))
        self.sh("start-control-plane", str(self.dir))
