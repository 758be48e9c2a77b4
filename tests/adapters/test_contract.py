"""The adapter contract (adapters/base.py), checked once against every adapter.

Each case runs against four adapters through a small per-adapter *harness*:

* ``sim`` — the digital twin (in process; it has no wire, so it makes no requests);
* ``devices`` — the real Mosquitto (``mosquitto``) and a real ``continuum-agent``
  subprocess (``agents``);
* ``kubernetes`` — the API-server stand-in (tests/adapters/kubernetes/apiserver.py),
  through the real ``kubernetes`` client;
* ``kubernetes-real`` — the real Kubernetes of the test bed (the session ``kube_cluster``:
  kube-apiserver, controller-manager, scheduler, kwok nodes), with the ServiceAccount
  kubeconfig of deploy/kubernetes/rbac.yaml;
* ``slurm-22.05``, ``slurm-24.11``, ``slurm-26.05`` — the real single-node Slurm of each release
  (the session clusters of ``slurm_beds``), through slurmrestd.

The cases: submit is idempotent by request id (same handle, no second job/pod/process);
a new adapter instance for the same site re-adopts the work (status of the old handle,
and a submit with the same request id returns the existing work); ``status`` of N handles
costs the same backend requests as of one (at most one: the job-table read); cancel is
idempotent and the run ends Cancelled; an unreachable backend raises a typed
:class:`~continuum.errors.TransientError`, raised ``from`` the transport's exception where
the failure surfaces as one.

Backend requests are counted by instrumented clients handed to the adapters through their
constructors (an ``MqttSession`` counting publishes and subscriptions, an ``ApiClient``
counting ``call_api``, the slurmrestd client's own request counter), per calling thread,
so background watch or loop threads do not blur the count.

To add an adapter: write a harness class with the methods of :class:`Harness`, add it to
``HARNESSES`` (with the fixtures it needs) and run this file.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import kubernetes.client as k8s
import pytest

from adapters.base import Adapter, AdapterContext, Handle, TaskRun
from adapters.devices import DevicesAdapter
from adapters.kubernetes import KubernetesAdapter
from adapters.kubernetes import manifests as mf
from adapters.kubernetes.config import build_api_client, parse_config
from adapters.sim import SimAdapter
from adapters.slurm import SlurmAdapter
from adapters.slurm.client import SlurmRestClient, TokenSource
from continuum.errors import TransientError
from continuum.model import Node, RunState, SiteKind, SiteSpec, Task
from edge_agent.protocol.session import MqttSession
from tests.adapters.kubernetes.apiserver import ApiServer
from tests.adapters.kubernetes.cluster import KubeCluster, kwok_env
from tests.adapters.slurm.conftest import SlurmCluster
from tests.conftest import SLURM_RELEASES, AgentFactory, AgentProcess, Mosquitto, free_port
from tests.helpers import TEST_COMMAND_KEY, NoArtifacts, wait_for


class Harness(Protocol):
    """What the contract cases need from one adapter under test."""

    status_requests: int
    """Backend requests one ``status`` call makes, whatever the number of handles."""
    chains_cause: bool
    """An unreachable backend's error is raised from the transport's exception."""

    def make(self) -> Adapter:
        """A new adapter instance for the harness's one site (closed at teardown)."""
        ...

    def node(self, adapter: Adapter) -> Node:
        """A node of ``adapter``'s inventory that contract runs can go to."""
        ...

    def long_run(self) -> TaskRun:
        """A run that lasts until cancelled (a minute or more), with a fresh run id."""
        ...

    def started(self, adapter: Adapter, run: TaskRun, submits: int) -> int:
        """How many jobs/pods/processes the backend started for ``run`` after ``submits``
        submits of it (waits until the backend has handled them all)."""
        ...

    def requests(self) -> int:
        """Backend requests made so far by this harness's adapters from this thread."""
        ...

    def unreachable(self) -> Adapter:
        """An adapter for a site whose backend cannot be reached."""
        ...

    def close(self) -> None: ...


def long_task_run(command: list[str], **task: Any) -> TaskRun:
    return TaskRun(run_id=f"run-{uuid.uuid4().hex[:10]}", workflow_id="wf-contract",
                   workflow_name="contract",
                   task=Task.model_validate({"name": "long", "command": command,
                                             "resources": {"cpu": 1, "memory": 2**26},
                                             **task}))


class ThreadCounter:
    """Counts calls per thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_thread: Counter[int] = Counter()

    def hit(self) -> None:
        with self._lock:
            self._by_thread[threading.get_ident()] += 1

    def here(self) -> int:
        with self._lock:
            return self._by_thread[threading.get_ident()]


class _Base:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.made: list[Adapter] = []
        self.counter = ThreadCounter()

    def ctx(self) -> AdapterContext:
        return AdapterContext(artifacts=NoArtifacts(), state_dir=self.tmp / "state",
                              sign=TEST_COMMAND_KEY.sign)

    def _keep(self, a: Any) -> Any:
        self.made.append(a)
        return a

    def requests(self) -> int:
        return self.counter.here()

    def close(self) -> None:
        for a in self.made:
            a.close()


# ---------------------------------------------------------------- sim


class SimHarness(_Base):
    """The twin keeps its runs in memory and journals them to ``ctx.state_dir``."""

    status_requests = 0
    chains_cause = False
    site = SiteSpec(name="sim-contract", kind=SiteKind.sim, config={
        "timeScale": 1, "nodes": [{"name": "c", "cpu": 8, "memory": "16Gi", "power": {
            "idleWatts": 100, "maxWatts": 300, "source": "test figures"}}]})

    def make(self) -> Adapter:
        return self._keep(SimAdapter(self.site, self.ctx()))  # type: ignore[no-any-return]

    def node(self, adapter: Adapter) -> Node:
        return next(n for n in adapter.inventory() if n.name == "c")

    def long_run(self) -> TaskRun:
        return long_task_run(["sleep", "3600"], work=10**9)

    def started(self, adapter: Adapter, run: TaskRun, submits: int) -> int:
        n = self.node(adapter)  # the twin counts a run's cores once per run it holds
        assert n.free is not None
        return int((n.allocatable.cpu - n.free.cpu) / run.task.resources.cpu)

    def unreachable(self) -> Adapter:
        raise AssertionError("the twin has no backend to be unreachable")


# ---------------------------------------------------------------- devices


class CountingSession(MqttSession):
    """An MQTT session that counts what it sends (publishes and subscriptions)."""

    counter: ThreadCounter

    def publish(self, topic: str, payload: bytes, qos: int = 1,
                retain: bool = False) -> Any:
        self.counter.hit()
        return super().publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic: str, qos: int = 1, share: str | None = None) -> None:
        self.counter.hit()
        super().subscribe(topic, qos=qos, share=share)


class DevicesHarness(_Base):
    """A devices site on the real broker with one real agent (pi4 profile)."""

    status_requests = 0  # push-fed: status answers from what the agents published
    chains_cause = False  # paho reports connection failures on its loop thread, not raised

    def __init__(self, tmp: Path, broker: Mosquitto, agents: AgentFactory) -> None:
        super().__init__(tmp)
        self.broker = broker
        self.agent: AgentProcess = agents.spawn(None, "--profile", "pi4")

    def _adapter(self, url: str) -> DevicesAdapter:
        site = SiteSpec(name="fleet-contract", kind=SiteKind.devices,
                        config={"broker": url, "offlineAfter": 10})
        session = CountingSession(url, client_id=f"contract-{uuid.uuid4().hex[:8]}",
                                  label=f"site {site.name}")
        session.counter = self.counter
        return self._keep(DevicesAdapter(site, self.ctx(), session=session))  # type: ignore[no-any-return]

    def make(self) -> Adapter:
        a = self._adapter(self.broker.url)
        wait_for(lambda: a.connected, 10, message="adapter connected to the broker")
        return a

    def node(self, adapter: Adapter) -> Node:
        return wait_for(lambda: next((n for n in adapter.inventory()
                                      if n.name == self.agent.device_id and n.ready), None),
                        15, message=lambda: f"device ready; agent log:\n{self.agent.logs()}")

    def long_run(self) -> TaskRun:
        return long_task_run(["sleep", "60"])

    def started(self, adapter: Adapter, run: TaskRun, submits: int) -> int:
        # the agent logs each duplicate RunCommand it answers without starting anything
        wait_for(lambda: self.agent.logs().count(f"run {run.run_id}: duplicate RunCommand")
                 >= submits - 1, 10, message=lambda: f"the agent handled {submits} submits; "
                 f"log:\n{self.agent.logs()}")
        return self.agent.logs().count(f"run {run.run_id}: Accepted")

    def unreachable(self) -> Adapter:
        return self._adapter(f"mqtt://127.0.0.1:{free_port()}")


# ---------------------------------------------------------------- kubernetes


class CountingApiClient(k8s.ApiClient):  # type: ignore[misc]
    """A ``kubernetes`` ApiClient that counts the HTTP requests it makes, per thread."""

    counter: ThreadCounter

    def call_api(self, *args: Any, **kw: Any) -> Any:
        self.counter.hit()
        return super().call_api(*args, **kw)


class KubernetesHarness(_Base):
    """A kubernetes site on the API-server stand-in (real client, real HTTP)."""

    status_requests = 0  # watch-fed cache
    chains_cause = True

    def __init__(self, tmp: Path, server: ApiServer) -> None:
        super().__init__(tmp)
        self.server = server

    def _adapter(self, kubeconfig: dict[str, Any]) -> KubernetesAdapter:
        site = SiteSpec(name="k8s-contract", kind=SiteKind.kubernetes,
                        config={"kubeconfig": kubeconfig, "watchTimeout": 2})
        built, _ = build_api_client(parse_config(site), site.name)
        client = CountingApiClient(configuration=built.configuration)
        built.close()
        client.counter = self.counter
        return self._keep(KubernetesAdapter(site, self.ctx(), api_client=client))  # type: ignore[no-any-return]

    def make(self) -> Adapter:
        return self._adapter(self.server.kubeconfig())

    def node(self, adapter: Adapter) -> Node:
        # inventory() is what the reconciler calls first; it also starts the watch
        return next(n for n in adapter.inventory() if n.name == "cloud-1")

    def long_run(self) -> TaskRun:
        return long_task_run(["sleep", "3600"])  # the stand-in runs no pod by itself

    def started(self, adapter: Adapter, run: TaskRun, submits: int) -> int:
        return sum(1 for job in self.server.objects["jobs"].values()
                   if job["metadata"]["labels"].get(mf.LABEL_RUN) == run.run_id)

    def unreachable(self) -> Adapter:
        kc = self.server.kubeconfig()
        kc["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{free_port()}"
        return self._adapter(kc)


class RealKubernetesHarness(KubernetesHarness):
    """A kubernetes site on the test bed's real cluster (ServiceAccount kubeconfig)."""

    def __init__(self, tmp: Path, cluster: KubeCluster) -> None:
        _Base.__init__(self, tmp)
        self.cluster = cluster

    def make(self) -> Adapter:
        return self._adapter(self.cluster.sa_kubeconfig())

    def node(self, adapter: Adapter) -> Node:
        return next(n for n in adapter.inventory() if n.name == "kwok-node-1")

    def long_run(self) -> TaskRun:
        return long_task_run(["sleep", "3600"], env=kwok_env("1h"))

    def started(self, adapter: Adapter, run: TaskRun, submits: int) -> int:
        return len(self.cluster.objects("jobs", f"{mf.LABEL_RUN}={run.run_id}"))

    def unreachable(self) -> Adapter:
        kc = self.cluster.sa_kubeconfig()
        kc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
        return self._adapter(kc)


# ---------------------------------------------------------------- slurm


class CountingSlurmClient(SlurmRestClient):
    """The slurmrestd client, counting its HTTP requests per thread."""

    counter: ThreadCounter

    def request(self, *args: Any, **kw: Any) -> Any:
        self.counter.hit()
        return super().request(*args, **kw)


class SlurmHarness(_Base):
    """A slurm site on the real single-node Slurm (partition ``debug``)."""

    status_requests = 1  # one job-table read (pollInterval 0: every status call reads)
    chains_cause = True

    def __init__(self, tmp: Path, cluster: SlurmCluster) -> None:
        super().__init__(tmp)
        self.cluster = cluster

    def _adapter(self, url: str) -> SlurmAdapter:
        site = SiteSpec.model_validate({"name": "hpc-contract", "kind": "slurm",
                                        "config": self.cluster.config(url=url, pollInterval=0)})
        tokens = TokenSource(self.cluster.user, key=Path(self.cluster.key).read_bytes())
        client = CountingSlurmClient(url=url, socket=None, tokens=tokens, site=site.name)
        client.counter = self.counter
        return self._keep(SlurmAdapter(site, self.ctx(), client=client))  # type: ignore[no-any-return]

    def make(self) -> Adapter:
        return self._adapter(self.cluster.url)

    def node(self, adapter: Adapter) -> Node:
        return adapter.inventory()[0]

    def long_run(self) -> TaskRun:
        return long_task_run(["sleep", "300"])

    def started(self, adapter: Adapter, run: TaskRun, submits: int) -> int:
        return len(self.cluster.jobs_named(f"continuum-{run.run_id}"))

    def unreachable(self) -> Adapter:
        return self._adapter(f"http://127.0.0.1:{free_port()}")


# ---------------------------------------------------------------- fixtures

HarnessFactory = Callable[[pytest.FixtureRequest, Path], _Base]

HARNESSES: dict[str, HarnessFactory] = {
    "sim": lambda req, tmp: SimHarness(tmp),
    "devices": lambda req, tmp: DevicesHarness(tmp, req.getfixturevalue("mosquitto"),
                                               req.getfixturevalue("agents")),
    "kubernetes": lambda req, tmp: KubernetesHarness(tmp, req.getfixturevalue("apiserver")),
    "kubernetes-real": lambda req, tmp: RealKubernetesHarness(
        tmp, req.getfixturevalue("kube_cluster")),
    **{f"slurm-{release}": (lambda req, tmp, release=release: SlurmHarness(
        tmp, req.getfixturevalue("slurm_beds").get(release))) for release in SLURM_RELEASES},
}
"""Adapter name → harness factory (fixtures are requested only by the cases that use them)."""

MARKS = {"devices": pytest.mark.mosquitto, "kubernetes-real": pytest.mark.kube,
         **{f"slurm-{release}": pytest.mark.slurm for release in SLURM_RELEASES}}
WITH_A_WIRE = ["devices", "kubernetes", "kubernetes-real",
               *(f"slurm-{release}" for release in SLURM_RELEASES)]
"""The adapters with a backend that can be unreachable (the twin has none)."""


def _params(names: list[str]) -> list[Any]:
    return [pytest.param(n, marks=[MARKS[n]] if n in MARKS else [], id=n) for n in names]


@pytest.fixture
def apiserver() -> Iterator[ApiServer]:
    """The API-server stand-in, as in tests/adapters/kubernetes/conftest.py."""
    server = ApiServer().start()
    server.add_node("cloud-1", cpu="8", memory="32Gi", gpu=1)
    yield server
    server.stop()
    assert not server.rejected, f"the stand-in rejected invalid objects: {server.rejected}"


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = HARNESSES[request.param](request, tmp_path)
    yield h  # type: ignore[misc]
    h.close()


def contract(names: list[str]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("harness", _params(names), indirect=True)


ALL = list(HARNESSES)


def wait_state(adapter: Adapter, h: Handle, states: set[RunState],
               timeout: float = 30) -> RunState:
    def seen() -> RunState | None:
        st = adapter.status([h]).get(h.run_id)
        return st.state if st is not None and st.state in states else None
    return wait_for(seen, timeout, interval=0.1,
                    message=lambda: f"run {h.run_id} in {states}: {adapter.status([h])}")


# ---------------------------------------------------------------- the contract


@contract(ALL)
def test_submit_is_idempotent_by_request_id(harness: Harness) -> None:
    a = harness.make()
    node = harness.node(a)
    run = harness.long_run()
    h1 = a.submit(run, node, run.run_id)
    h2 = a.submit(run, node, run.run_id)
    assert (h2.site, h2.run_id, h2.backend_id, h2.node) == (h1.site, h1.run_id,
                                                             h1.backend_id, h1.node)
    assert harness.started(a, run, submits=2) == 1
    a.cancel(h1)


@contract(ALL)
def test_a_new_instance_readopts_the_work(harness: Harness) -> None:
    a = harness.make()
    run = harness.long_run()
    h = a.submit(run, harness.node(a), run.run_id)
    wait_state(a, h, {RunState.Dispatched, RunState.Running})
    a.close()

    b = harness.make()  # a restarted control plane: same site, the handle from the store
    node = harness.node(b)  # its first cycle reads the inventory first
    restored = Handle.from_json(h.to_json())
    wait_state(b, restored, {RunState.Dispatched, RunState.Running})
    again = b.submit(run, node, run.run_id)
    assert again.backend_id == h.backend_id
    assert harness.started(b, run, submits=2) == 1
    b.cancel(restored)


@contract(ALL)
def test_status_is_one_backend_call_per_site(harness: Harness) -> None:
    a = harness.make()
    node = harness.node(a)
    handles = []
    for _ in range(3):
        run = harness.long_run()
        handles.append(a.submit(run, node, run.run_id))
    wait_for(lambda: len(a.status(handles)) == 3, 30,
             message=lambda: f"status of all three runs: {a.status(handles)}")
    costs = []
    for some in (handles[:1], handles):
        before = harness.requests()
        got = a.status(some)
        costs.append(harness.requests() - before)
        assert set(got) == {h.run_id for h in some}
    assert costs == [harness.status_requests] * 2, (
        f"backend requests of status() for 1 and 3 handles: {costs}")
    for h in handles:
        a.cancel(h)


@contract(ALL)
def test_cancel_is_idempotent_and_the_run_ends_cancelled(harness: Harness) -> None:
    a = harness.make()
    run = harness.long_run()
    h = a.submit(run, harness.node(a), run.run_id)
    wait_state(a, h, {RunState.Dispatched, RunState.Running})
    a.cancel(h)
    a.cancel(h)
    assert wait_state(a, h, {RunState.Cancelled, RunState.Failed,
                             RunState.Succeeded}) == RunState.Cancelled
    a.cancel(h)  # once more after the end: still fine
    assert a.status([h])[h.run_id].state == RunState.Cancelled


@contract(WITH_A_WIRE)
def test_an_unreachable_backend_raises_a_typed_error(harness: Harness) -> None:
    a = harness.unreachable()
    h = Handle(site=a.site.name, run_id="run-unreachable", backend_id="4242",
               node=f"{a.site.name}/n1", data={"device": "n1", "name": "long-run-unreachable"})
    with pytest.raises(TransientError) as e:
        a.cancel(h)
    err = e.value
    assert err.site == a.site.name and err.retry_after > 0
    if harness.chains_cause:
        assert err.__cause__ is not None, "raised without `from` the transport's exception"

