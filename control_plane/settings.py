"""Control-plane settings, from flags, environment (``CONTINUUM_*``) or defaults.

The fields are grouped by concern, one model per group — :class:`ApiSettings`,
:class:`StoreSettings`, :class:`ReconcilerSettings`, :class:`FederationSettings`,
:class:`PlacementSettings`, :class:`MigrationSettings`, :class:`MonitoringSettings`,
:class:`DeviceSettings`, :class:`AuthSettings`, :class:`LimitSettings`,
:class:`SecretsSettings` — and
:class:`Settings` is all of them at once. A collaborator that needs one concern declares
that group as its parameter type (a :class:`Settings` is an instance of each group), so what
it may read is visible in its signature. Names stay flat, so every field is read from the environment as
``CONTINUUM_<FIELD>`` exactly as before the grouping.

Each field's docstring (also its ``description`` in the schema and in
docs/configuration.md) gives its unit and why the default is what it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from placement.plugins.fragmentation import DEFAULT_WEIGHT as FRAGMENTATION_WEIGHT

_GROUP = ConfigDict(use_attribute_docstrings=True)


class ApiSettings(BaseModel):
    """Where the REST API listens and how agents reach it."""

    model_config = _GROUP

    host: str = "127.0.0.1"
    """Address the API listens on. Loopback by default: nothing is exposed until an
    operator chooses an interface."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port the API listens on (0 = any free port). 8080, the usual unprivileged
    HTTP port."""
    public_url: str | None = None
    """URL agents and Slurm jobs use to reach this API (artifact fetch and upload);
    default ``http(s)://<host>:<port>``. Set it when the API listens on 0.0.0.0 or behind
    a proxy."""
    tls_cert_file: Path | None = None
    """PEM certificate (chain) the API serves HTTPS with; with ``tls_key_file``. None:
    plain HTTP, for loopback and the demo — anything reachable from a network should
    have one (``continuum pki init`` makes a CA and a certificate)."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``; given together with it."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: give both or neither")
        return self

    @property
    def api_url(self) -> str:
        scheme = "https" if self.tls_cert_file is not None else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")


class StoreSettings(BaseModel):
    """Where state lives: the database and the kept artifacts."""

    model_config = _GROUP

    state_dir: Path = Path("./state")
    """Directory of the SQLite database (``continuum.db``) and the kept artifacts
    (``artifacts/``). Relative to the working directory, so a first run needs no setup."""
    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<state_dir>/continuum.db`` (embedded, one
    process). PostgreSQL: ``postgresql+psycopg://user:pass@host/db``."""

    workflow_retention_s: float = Field(default=7 * 86400.0, ge=0)
    """How long a finished workflow (Succeeded, Failed, Cancelled) is kept with its tasks,
    runs, events and artifacts after it finished (s); then the leader deletes it
    (:mod:`control_plane.retention`). 0 keeps every workflow forever. A week: the
    lifetime of the artifact capabilities a run gets, long enough to look back at last
    week's runs; a store kept longer grows by ~6 KB per finished task (the live bench's
    100,000 tasks: 602 MB)."""
    audit_retention_s: float = Field(default=365 * 86400.0, ge=0)
    """How long an audit row is kept (s); 0 keeps it forever. A year: what common audit
    regimes ask for (e.g. PCI DSS 10.5.1 keeps audit trails at least twelve months)."""

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'continuum.db').resolve()}"

    @property
    def artifact_dir(self) -> Path:
        return self.state_dir / "artifacts"


class ReplicaSettings(BaseModel):
    """Several replicas on one database: who leads, how fast a follower takes over
    (control_plane/leader.py, docs/architecture.md "Replicas and the leader")."""

    model_config = _GROUP

    leader_election: Literal["database", "kubernetes"] = "database"
    """How the leader is elected: ``database`` (a PostgreSQL advisory lock plus the lease
    row; on SQLite the one replica always leads) or ``kubernetes`` (a
    coordination.k8s.io/v1 Lease, in a cluster). The database by default: it needs
    nothing but the database every replica already has."""
    leader_lease_s: float = Field(default=6.0, gt=0)
    """Lease TTL (s), renewed every third of it. A follower takes over within a third of
    it after the leader process dies (PostgreSQL), and within 4/3 of it after the leader
    froze. 6 s: a takeover in seconds while a renewal may miss twice."""
    leader_lease_namespace: str | None = None
    """Namespace of the Lease (``leader_election=kubernetes``). None: the pod's own
    namespace (its service account's), else ``default``."""
    federation_resync_s: float = Field(default=3.0, gt=0)
    """How often every replica re-reads the sites table to add and remove adapters (s),
    so a site registered or removed through another replica is seen here. 3 s: a new site
    is usable everywhere within seconds at one small query per period."""


class ReconcilerSettings(BaseModel):
    """Pace of the reconcile loop, retries and dispatch."""

    model_config = _GROUP

    reconcile_interval_s: float = Field(default=1.0, gt=0)
    """Longest pause between reconcile cycles (s); submissions, cancels and device
    messages wake it sooner. 1 s keeps an idle control plane cheap while a missed wake-up
    costs at most a second."""
    inventory_interval_s: float = Field(default=2.0, ge=0)
    """How often each site's inventory is refreshed (s). 2 s: twice the reconcile
    interval, so a lost node is seen within a few seconds without listing every backend
    every cycle."""
    retry_backoff_s: float = Field(default=2.0, ge=0)
    """First retry delay of a failed task (s); doubles per attempt
    (``retry_backoff_s · 2^(attempt−1)``). 2 s rides out a brief backend hiccup without
    hammering it."""
    retry_backoff_max_s: float = Field(default=60.0, ge=0)
    """Cap of the retry delay (s): a task never waits more than a minute between
    attempts."""
    dispatch_deadline_s: float = Field(default=60.0, ge=0)
    """A placed run whose backend keeps refusing it transiently for this long is failed
    and its task retried (s). 60 s covers a slurmrestd or broker restart."""
    full_resync_s: float = Field(default=60.0, ge=0)
    """Period of the reconciler's full resync (s): every live workflow is re-read and
    decided again, whatever changed. Between resyncs a cycle reads only the workflows
    something happened to (see :mod:`control_plane.reconciler`), so this is the safety
    net for a change no edge reported. 60 s bounds how long such a change can wait at one
    scan of the live rows a minute; 0 makes every cycle a full one (the level-triggered
    loop before issue 16)."""
    cycle_max_workflows: int = Field(default=200, ge=1)
    """Most workflows one reconcile cycle reads and decides; the rest of what changed
    waits for the next cycle (which a busy cycle starts at once), submissions oldest
    first, so a cancel or a finished run is acted on promptly even under a burst of
    submissions. 200 (with ``cycle_max_placements``) kept the mean cycle at 0.8 s and the
    longest at 1.6 s with 10,000 live tasks on a loaded 2-core machine, at the same
    tasks/s as 500 (bench/RESULTS.md, "Live work vs the reconcile cycle")."""
    cycle_max_placements: int = Field(default=200, ge=1)
    """Most tasks one reconcile cycle places (the rest are placed by the next cycles):
    a placement costs 1–3 ms with its writes and the dispatch that follows, so 200 bounds
    that part of a cycle to well under a second (see ``cycle_max_workflows``)."""
    gauges_interval_s: float = Field(default=5.0, ge=0)
    """How often the reconciler re-counts runs, workflows and queues for the Prometheus
    gauges (s): those counts scan every row, so they are not taken every cycle. 5 s is
    a third of Prometheus' default 15 s scrape interval."""


class FederationSettings(BaseModel):
    """Which sites exist at start and where the control plane stands among them."""

    model_config = _GROUP

    broker_url: str = "mqtt://127.0.0.1:1883"
    """MQTT broker for ``devices`` sites whose config names none: a broker on this
    machine at the standard MQTT port."""
    federation: Path | None = None
    """Federation YAML whose sites are registered at start (none: the sites already in
    the store)."""
    control_plane_location: str = "control-plane"
    """Location of this control plane, where artifacts are kept (for transfer estimates).
    Replaced by ``spec.controlPlane.location`` when a federation file is given."""


class PlacementSettings(BaseModel):
    """How tasks are placed and how the learned predictors are kept."""

    model_config = _GROUP

    placement_mode: Literal["fast", "quality"] = "fast"
    """``fast``: greedy batch placement; ``quality``: batches of ≤ 20,000 (request, node)
    pairs solved exactly (MILP, HiGHS). Fast by default: it keeps a cycle short at any
    scale, and its median optimality gap is 0 % on bench scenario A (bench/RESULTS.md)."""
    placement_fragmentation_weight: float = Field(default=FRAGMENTATION_WEIGHT, ge=0)
    """Weight of the GPU-fragmentation score (after FGD, Weng et al., ATC'23); 0 switches
    it off: more decisions/s, worse GPU packing. The default, 1, packs the Alibaba GPU trace
    (trace order, both pod lists) better than kube-scheduler; 5 packs it better still, for a
    GPU-sharing cluster, at more time and energy where no GPU work follows
    (bench/RESULTS.md)."""
    model_retrain_interval_s: float = Field(default=3600.0, ge=0)
    """Retrain the learned predictors this often (s); 0 = only on demand. Hourly: runs
    accumulate slowly and a retrain costs seconds of CPU."""
    model_bootstrap_samples: int = Field(default=2000, ge=0)
    """Digital-twin runs generated to bootstrap the predictors before real runs exist.
    2,000 trains in about a second and gives a stable hold-out error."""


class MigrationSettings(BaseModel):
    """When running services and queued jobs are moved (control_plane/migration.py)."""

    model_config = _GROUP

    migration_interval_s: float = Field(default=30.0, ge=0)
    """How often running services and queued jobs are re-evaluated (s); lost work is
    checked every half ``inventory_interval_s`` regardless. 30 s: moves are rare and each
    costs a restart."""
    migration_horizon_s: float = Field(default=600.0, gt=0)
    """Horizon over which a migration's expected gain is counted (s): ten minutes, the
    order of a service's rescheduling period."""
    migration_hysteresis: float = Field(default=0.2, ge=0)
    """A move's gain must exceed its cost by this fraction (0.2 = 20 %), so small noisy
    gains never make work oscillate."""
    migration_min_dwell_s: float = Field(default=120.0, ge=0)
    """A run is not moved again sooner than this after placement (s), another guard
    against oscillation."""
    migration_max_per_cycle: int = Field(default=2, ge=0)
    """Most migrations started per evaluation: limits the disruption of one bad
    estimate."""
    migration_lost_grace_s: float = Field(default=6.0, ge=0)
    """A run's node must be gone or not ready this long before its work is re-placed (s);
    covers a restarted control plane relearning its inventory (three inventory
    intervals)."""
    migration_bandwidth_bps: float = Field(default=100e6, gt=0)
    """Bandwidth assumed for copying a service's state when moving it (bit/s); 100 Mbit/s,
    a conservative WAN figure."""


class MonitoringSettings(BaseModel):
    """How often sites' Prometheus servers are read."""

    model_config = _GROUP

    metrics_interval_s: float = Field(default=5.0, gt=0)
    """How often each site's Prometheus is queried (s), on the collector's own thread.
    5 s: a third of Prometheus's usual 15 s scrape interval, so a new sample is seen
    promptly."""
    device_series_limit: int = Field(default=10_000, ge=0)
    """Largest fleet (devices with telemetry, all sites) whose per-device series
    ``/metrics`` exports (about 11 samples a device); a larger fleet gets only the
    fleet-wide families (``continuum_devices``, telemetry age quantiles). 10,000: one
    scrape of that many changed devices renders in ~0.3 s on this project's 2-core
    machine (bench/RESULTS.md, fleet section)."""


class DeviceSettings(BaseModel):
    """Device enrolment and the Mosquitto files the control plane maintains for it
    (control_plane/enrollment.py, docs/security.md "Devices and the broker")."""

    model_config = _GROUP

    broker_password_file: Path | None = None
    """Mosquitto ``password_file`` the control plane maintains: one ``$7$`` (PBKDF2-SHA512)
    line per enrolled device; lines of other users (the control plane's own, added with
    ``mosquitto_passwd``) are kept. None: devices still enrol, but no broker checks their
    credentials (a development broker)."""
    broker_acl_file: Path | None = None
    """Mosquitto ``acl_file`` the control plane writes: each device publishes only under
    ``continuum/v1/devices/<its id>/`` and reads only its own ``commands``;
    ``broker_control_user`` reads and writes every device topic. None: not written."""
    broker_pid_file: Path | None = None
    """Pid file of the Mosquitto that reads those files; it is sent SIGHUP after every
    change (enrol, revoke), which also disconnects a revoked device at once. None: the
    operator reloads the broker."""
    broker_control_user: str = Field(default="continuum", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Broker user of the control plane itself (the devices sites' ``username``): full
    access to ``continuum/v1/#`` in the ACL. "continuum", the name the docs use."""
    enrollment_token_ttl_s: float = Field(default=3600.0, gt=0, le=30 * 86400)
    """Default lifetime of an enrolment token (s), when the request names no ``ttlS``.
    One hour: long enough to set a device up, short enough that a leaked token soon
    expires."""


class AuthSettings(BaseModel):
    """API identity: the bearer tokens the control plane issues and, optionally, an
    external OIDC issuer's (control_plane/auth.py, docs/security.md "API identity and
    tenants")."""

    model_config = _GROUP

    auth_issuer: str = Field(default="continuum", min_length=1)
    """``iss`` of the tokens this control plane issues, checked on every request.
    "continuum": one name per deployment is enough unless several share a key."""
    auth_audience: str = Field(default="continuum-api", min_length=1)
    """``aud`` of the tokens it issues, checked on every request; a token made for another
    audience is refused. "continuum-api", the API itself."""
    auth_key_file: Path | None = None
    """File holding the HS256 signing key of the tokens (at least 32 bytes). None:
    ``<state_dir>/auth/jwt.key``, generated (0600) on first start."""
    auth_token_ttl_s: float = Field(default=30 * 86400.0, gt=0, le=3650 * 86400.0)
    """Default lifetime of a token made with ``POST /v1/tokens`` (s) when the request names
    no ``ttlS``. 30 days: a person renews monthly; service accounts name a longer one."""
    auth_bootstrap_token_ttl_s: float = Field(default=365 * 86400.0, gt=0,
                                              le=3650 * 86400.0)
    """Lifetime of the bootstrap admin token written to ``<state_dir>/admin.token`` on
    first start (s). One year: long enough to set up real tokens, then revoke it."""
    auth_default_tenant: str = Field(default="default", pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    """Tenant of a workflow an admin (who belongs to no tenant) submits without
    ``metadata.tenant``. "default", the tenant of a single-team installation."""
    oidc_jwks_url: str | None = None
    """JWKS URL of an external OIDC issuer whose tokens the API also accepts (e.g.
    ``https://keycloak.example.org/realms/hpc/protocol/openid-connect/certs``). None:
    only this control plane's tokens."""
    oidc_issuer: str | None = None
    """``iss`` of the external issuer's tokens; required with ``oidc_jwks_url``."""
    oidc_audience: str | None = None
    """``aud`` the external issuer's tokens must carry (the client id registered for
    Continuum); required with ``oidc_jwks_url``."""
    oidc_roles_claim: str = "roles"
    """Claim (dotted path for nested ones, e.g. ``realm_access.roles``) holding the
    Continuum roles of an external token. "roles", the common flat claim."""
    oidc_tenants_claim: str = "tenants"
    """Claim (dotted path) holding the tenants of an external token, e.g. ``groups``.
    "tenants", named like this control plane's own claim."""
    auth_revocation_cache_s: float = Field(default=2.0, ge=0, le=60)
    """How long a replica trusts its last look-up that a token is known and not revoked
    (s), instead of reading the ``tokens`` table on every request. A revocation takes
    effect at once on the replica that carried it out and within this bound on the
    others. 2 s: a busy client sends hundreds of requests in that time (one read each
    saved), while a stolen token outlives its revocation by no more than a retry. 0:
    read the table on every request."""


def _rate(value: str) -> str:
    from limits import parse

    try:
        parse(value)
    except ValueError as e:
        raise ValueError(f"{value!r} is not a rate such as '10/minute' or '5 per second'") from e
    return value


class LimitSettings(BaseModel):
    """Artifact access and sizes, request sizes and rates (docs/security.md "Artifacts and
    input limits")."""

    model_config = _GROUP

    artifact_capability_ttl_s: float = Field(default=7 * 86400.0, gt=0)
    """Lifetime of the per-run artifact capabilities handed to a run at dispatch (s). A
    week: a batch job may queue for days before it fetches its inputs; a write capability
    is useless anyway once its run has ended."""
    artifact_max_bytes: int = Field(default=16 << 30, gt=0)
    """Largest single artifact upload (bytes), counted while the body streams in (413
    beyond). 16 GiB: a model checkpoint or a day of sensor data, not a disk image."""
    tenant_artifact_quota_bytes: int = Field(default=256 << 30, gt=0)
    """Most artifact bytes one tenant may keep in the control plane's store (bytes; 413
    beyond), the sum over its workflows. 256 GiB: sixteen of the largest artifacts."""
    max_body_bytes: int = Field(default=1 << 20, gt=0)
    """Largest request body of every route but artifact uploads (bytes), counted while it
    streams in, chunked bodies too (413 beyond). 1 MiB: a workflow of thousands of tasks."""
    auth_rate_limit: str = "60/minute"
    """Requests per client address to each credential endpoint (enrolment, enrolment
    tokens, API tokens), as ``N/second|minute|hour``; 429 with ``Retry-After`` beyond.
    60 a minute: a fleet behind one NAT address still enrols a device a second, while a
    flood of password hashing (each enrolment derives one) stays cheap."""

    submit_max_backlog_tasks: int = Field(default=20_000, ge=1)
    """Most tasks waiting to be placed (``Waiting`` or ``Ready``, of every tenant) before
    ``POST /v1/workflows`` answers 429 with ``Retry-After`` instead of queueing more.
    20,000: about 100 s of the reconciler's work at the ~200 tasks completed/s it
    sustains at 10,000 live tasks (bench/RESULTS.md), so an accepted workflow still starts
    within a couple of minutes; raise it with a faster reconciler."""
    submit_backlog_retry_after_s: int = Field(default=2, ge=1, le=300)
    """``Retry-After`` (s) of a submit refused because of the backlog: about the time the
    reconciler needs to place a few hundred tasks."""

    @field_validator("auth_rate_limit")
    @classmethod
    def _check_rate(cls, v: str) -> str:
        return _rate(v)


class SecretsSettings(BaseModel):
    """How site credentials are sealed at rest (control_plane/sealing.py,
    docs/security.md "Sites and secrets")."""

    model_config = _GROUP

    sealing_keys: SecretStr | None = None
    """Comma-separated Fernet keys that seal site secrets (kubeconfigs, Slurm JWT keys and
    tokens, broker passwords) in the database; the first seals, all open (rotation).
    None: ``<state_dir>/sealing.key``, generated (0600) on first start, so a first run
    needs no setup; in production keep the key apart from the database."""


class Settings(ApiSettings, StoreSettings, ReplicaSettings, ReconcilerSettings, FederationSettings,
               PlacementSettings, MigrationSettings, MonitoringSettings, DeviceSettings,
               AuthSettings, LimitSettings, SecretsSettings, BaseSettings):
    """All groups; every field is also read from the environment as ``CONTINUUM_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="CONTINUUM_", extra="ignore",
                                      use_attribute_docstrings=True)


GROUPS: tuple[type[BaseModel], ...] = (
    ApiSettings, StoreSettings, ReplicaSettings, ReconcilerSettings, FederationSettings, PlacementSettings,
    MigrationSettings, MonitoringSettings, DeviceSettings, AuthSettings, LimitSettings,
    SecretsSettings)
"""Every settings group, in the order docs/configuration.md lists them."""
