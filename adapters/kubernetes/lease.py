"""A ``coordination.k8s.io/v1`` Lease used as a leader lock (the control plane's
``leader_election=kubernetes``, control_plane/leader.py). Only this package imports the
``kubernetes`` SDK, so the control plane gets the Lease through :class:`LeaseLock`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""Where a pod reads its own namespace."""


class LeaseLock:
    """Lease ``name`` in ``namespace`` through ``api`` (a ``CoordinationV1Api``):
    ``holderIdentity``, ``leaseDurationSeconds``, ``renewTime``, and
    ``leaseTransitions`` counting the changes of holder."""

    def __init__(self, api: Any, namespace: str, name: str = "continuum-leader") -> None:
        self.api = api
        self.namespace = namespace
        self.name = name

    @classmethod
    def in_cluster(cls, namespace: str | None = None,
                   name: str = "continuum-leader") -> LeaseLock:
        """The pod's service account; ``namespace`` None: the pod's own (else
        ``default``).

        Raises:
            kubernetes.config.ConfigException: not running in a pod.
        """
        k8s_config.load_incluster_config()
        if namespace is None:
            namespace = (SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.exists()
                         else "default")
        return cls(k8s.CoordinationV1Api(), namespace, name)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: dict[str, Any], namespace: str,
                        name: str = "continuum-leader") -> LeaseLock:
        """From a parsed kubeconfig (tests, a control plane outside the cluster)."""
        return cls(k8s.CoordinationV1Api(k8s_config.new_client_from_config_dict(kubeconfig)),
                   namespace, name)

    def acquire(self, identity: str, ttl_s: float) -> int | None:
        """Take or renew the Lease for ``identity``: its ``leaseTransitions`` when held
        now (created with 1), None when another holder's Lease has not expired or a
        concurrent writer won (HTTP 409 on the resourceVersion).

        Raises:
            kubernetes.client.exceptions.ApiException: any other apiserver answer.
        """
        now = datetime.now(UTC)
        duration = max(1, round(ttl_s))
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=self.name), spec=k8s.V1LeaseSpec(
                holder_identity=identity, lease_duration_seconds=duration, acquire_time=now,
                renew_time=now, lease_transitions=1))
            try:
                self.api.create_namespaced_lease(self.namespace, body)
            except ApiException as e2:
                if e2.status == 409:
                    return None  # another replica created it first
                raise
            return 1
        spec = lease.spec
        renewed = spec.renew_time or spec.acquire_time
        expired = renewed is None or renewed + timedelta(
            seconds=spec.lease_duration_seconds or duration) <= now
        mine = spec.holder_identity == identity
        if not mine and not expired and spec.holder_identity:
            return None
        transitions = int(spec.lease_transitions or 0)
        if not mine:
            transitions += 1
            spec.holder_identity, spec.acquire_time = identity, now
        spec.renew_time, spec.lease_duration_seconds = now, duration
        spec.lease_transitions = transitions
        try:  # the read resourceVersion travels along: a concurrent writer makes this a 409
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as e:
            if e.status == 409:
                return None
            raise
        return transitions

    def read(self) -> tuple[str | None, int]:
        """(holderIdentity, leaseTransitions) as stored."""
        spec = self.api.read_namespaced_lease(self.name, self.namespace).spec
        return spec.holder_identity, int(spec.lease_transitions or 0)

    def delete(self) -> None:
        self.api.delete_namespaced_lease(self.name, self.namespace)


__all__ = ["LeaseLock", "SA_NAMESPACE"]
