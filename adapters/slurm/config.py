"""The ``slurm`` site's ``config``: :class:`SlurmConfig` (camelCase, unknown fields
rejected) and its ``userMap`` entries (:class:`UserMapping`: which Slurm user a tenant's
jobs run as, and the tenant's own account, QoS, reservation, partitions, constraint and
default time limit where they differ from the site's). :meth:`SlurmConfig.settings`
merges the two into the :class:`JobSettings` a job is submitted with, each value with the
config field it came from (so a rejection by Slurm names the setting). The fields and
their meaning are in docs/slurm.md; the rules on who may set which (server paths only
from the federation file, ``root`` and ``SlurmUser`` refused) in docs/security.md "Sites
and secrets".
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from continuum.model import PowerProfile

_SLURM_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$"
_CONSTRAINT = r"^[A-Za-z0-9_.&|*:,()\[\]!-]{1,256}$"
"""A ``--constraint`` expression: features joined by & | , with counts, brackets."""
_FEATURE = re.compile(r"[A-Za-z0-9_.-]+")


def constraint_features(expr: str) -> list[str]:
    """The feature names in a ``--constraint`` expression (counts ``*N`` left out)."""
    out: list[str] = []
    for m in _FEATURE.finditer(expr):
        start = m.start()
        if start > 0 and expr[start - 1] == "*":  # the count of `feature*N`
            continue
        if m.group() not in out:
            out.append(m.group())
    return out


@dataclass(frozen=True)
class JobSettings:
    """What a tenant's jobs are submitted with on a site: ``user`` (JWT ``sun``),
    ``account``, ``qos``, ``reservation``, ``constraint``, ``partitions`` (allowed; empty:
    all), ``time_limit_s`` (default when a task gives no timeout). ``source`` maps each
    setting to the config field it came from (``userMap.0.account``, ``account``)."""

    user: str
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None
    partitions: tuple[str, ...] = ()
    time_limit_s: float | None = None
    source: dict[str, str] = field(default_factory=dict)

    def field_of(self, setting: str) -> str:
        """The config field ``setting`` came from (e.g. ``userMap.0.qos``)."""
        return self.source.get(setting, setting)


class UserMapping(BaseModel):
    """One entry of ``userMap``: the tenant's jobs run as ``user``; every other field is
    optional and, when given, overrides the site's setting of the same name for this
    tenant. Tenant ``"*"``: any tenant no other entry names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    tenant: str = Field(min_length=1, description="tenant (project) name, or * for any other")
    user: str = Field(pattern=_SLURM_NAME, description="Slurm user name the jobs run as")
    account: str | None = Field(default=None, pattern=_SLURM_NAME,
                                description="Slurm account charged (else the site's)")
    qos: str | None = Field(default=None, pattern=_SLURM_NAME,
                            description="Slurm QoS (else the site's)")
    reservation: str | None = Field(default=None, pattern=_SLURM_NAME,
                                    description="Slurm reservation (else the site's)")
    partitions: list[str] | None = Field(
        default=None, description="partitions this tenant may use (within the site's)")
    constraint: str | None = Field(default=None, pattern=_CONSTRAINT,
                                   description="--constraint node features (else the site's)")
    default_time_limit: float | None = Field(
        default=None, gt=0, description="s, for tasks without a timeout (else the site's)")


def jwt_key_bytes(value: str) -> bytes:
    """The cluster's JWT key from its uploaded form: PEM text (used as is) or base64
    (standard alphabet, padded) of the key file's bytes.

    Raises:
        ValueError: neither (the message never repeats the value).
    """
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text.encode()
    try:  # strict: the standard alphabet, padded (what `base64 -w0` writes)
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw or len(text) % 4:
        raise ValueError("jwtKey must be the content of the cluster's jwt_key (base64, e.g. "
                         "`base64 -w0 jwt.key`, or PEM text), not a path; a path on the "
                         "control plane's host is given as jwtKeyFile, in the operator's "
                         "federation file only")
    if len(raw) < 16:
        raise ValueError(f"jwtKey decodes to {len(raw)} bytes; a Slurm jwt_key has at least "
                         "16 (usually 32 random bytes)")
    return raw


class SlurmConfig(BaseModel):
    """``SiteSpec.config`` of a ``slurm`` site (camelCase keys, unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    url: str | None = Field(default=None, description="http(s)://host:port of slurmrestd")
    socket: str | None = Field(default=None, description="path of slurmrestd's unix socket")
    user: str = Field(pattern=_SLURM_NAME,
                      description="Slurm user that reads the cluster (partitions, nodes, jobs) "
                      "and, without userMap, runs every tenant's jobs (JWT claim sun)")
    token: str | None = Field(default=None, description="a JWT from `scontrol token`")
    jwt_key: str | None = Field(
        default=None, description="the cluster's jwt_key itself: base64 of the file, or PEM")
    jwt_key_file: str | None = Field(
        default=None, description="path of the cluster's jwt_key on the control plane's host "
        "(federation file only; the API refuses paths)")
    slurm_user: str = Field(
        default="slurm", pattern=_SLURM_NAME,
        description="the cluster's SlurmUser (slurm.conf): never minted a token for, like root")
    user_map: list[UserMapping] = Field(
        default_factory=list, description="tenant -> Slurm user, account, qos, reservation; "
        "empty: every tenant runs as 'user' with 'account'")
    token_lifetime: float = Field(default=3600.0, ge=10, description="s, of minted tokens")
    partitions: list[str] = Field(default_factory=list, description="allowed partitions; empty: all")
    workdir: str = Field(min_length=1, description="shared directory on the cluster for runs")
    environment: dict[str, str] = Field(
        default_factory=lambda: {"PATH": "/usr/local/bin:/usr/bin:/bin"})
    account: str | None = Field(default=None, pattern=_SLURM_NAME,
                                description="Slurm account every job is charged to")
    qos: str | None = Field(default=None, pattern=_SLURM_NAME, description="Slurm QoS")
    reservation: str | None = Field(default=None, pattern=_SLURM_NAME,
                                    description="Slurm reservation the jobs run in")
    constraint: str | None = Field(
        default=None, pattern=_CONSTRAINT,
        description="node features the jobs need (sbatch --constraint), e.g. 'avx512&ib'")
    default_time_limit: float | None = Field(
        default=None, gt=0, description="s, time limit of tasks that give no timeout "
        "(else the partition's default)")
    apptainer: bool = False
    apptainer_binary: str = "apptainer"
    power: PowerProfile | None = None
    speed: float = Field(default=1.0, gt=0)
    queue_factor: float = Field(default=4.0, ge=0)
    queue_wait_window: float = Field(default=3600.0, gt=0)
    poll_interval: float = Field(default=1.0, ge=0)
    timeout: float = Field(default=10.0, gt=0, description="s, per slurmrestd request")
    labels: dict[str, str] = Field(default_factory=dict)
    accounting: bool = Field(
        default=True, description="read finished jobs back from slurmdbd (slurmdb endpoints, "
        "data_parser v0.0.40+) where the cluster runs it")
    accounting_wait: float = Field(
        default=30.0, ge=0, description="s a finished job may wait for its slurmdbd record")
    shared_workdir: bool = Field(
        default=True, description="the control plane can read 'workdir' (exit and status "
        "files, job output); false: it never tries")
    _implicit_map: bool = PrivateAttr(default=False)
    """True when ``userMap`` was not given (its one entry stands for the site's fields)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/]+", v):
            raise ValueError("url must be http://host:port or https://host:port of "
                             "slurmrestd (or give 'socket', a unix socket)")
        return v.rstrip("/") if v else v

    @field_validator("jwt_key")
    @classmethod
    def _jwt_key(cls, v: str | None) -> str | None:
        if v is not None:
            jwt_key_bytes(v)
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"workdir {v!r} must be an absolute path on the cluster")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> SlurmConfig:
        if (self.url is None) == (self.socket is None):
            raise ValueError("give exactly one of 'url' (http://host:port) or 'socket' "
                             "(path of slurmrestd's unix socket)")
        given = [n for n, v in (("token", self.token), ("jwtKey", self.jwt_key),
                                ("jwtKeyFile", self.jwt_key_file)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of 'token' and 'jwtKey' (got {', '.join(given)})")
        if self.url is not None and not given:
            raise ValueError("slurmrestd over TCP needs credentials: give 'token' (from "
                             "`scontrol token username=USER`) or 'jwtKey' (the cluster's jwt_key)")
        if not self.user_map:  # every tenant as `user`, with the site's settings
            self.user_map = [UserMapping(tenant="*", user=self.user, account=self.account)]
            self._implicit_map = True
        tenants = [m.tenant for m in self.user_map]
        dup = sorted({t for t in tenants if tenants.count(t) > 1})
        if dup:
            raise ValueError(f"userMap names tenant(s) {', '.join(dup)} more than once")
        if self.token is not None and any(m.user != self.user for m in self.user_map):
            raise ValueError("a fixed 'token' acts as 'user' only; to map tenants to other "
                             "Slurm users give 'jwtKey' so Continuum mints their tokens")
        return self

    def refused_users(self) -> set[str]:
        """User names no token is minted for: root and the cluster's SlurmUser."""
        return {"root", self.slurm_user}

    def user_problem(self) -> tuple[str, str] | None:
        """(field, message) when ``user`` or a ``userMap`` user is refused, else None."""
        refused = self.refused_users()
        if self.user in refused:
            return "user", (f"user {self.user!r} is refused: Continuum never acts as root or "
                            f"the cluster's SlurmUser ({self.slurm_user!r}, config.slurmUser); "
                            "give an unprivileged Slurm user")
        for i, m in enumerate(self.user_map):
            if m.user in refused:
                return f"userMap.{i}.user", (
                    f"userMap.{i}.user {m.user!r} is refused: jobs never run as root or the "
                    f"cluster's SlurmUser ({self.slurm_user!r}); map tenant {m.tenant!r} to an "
                    "unprivileged user")
        return None

    def settings_problem(self) -> tuple[str, str] | None:
        """(field, message) when a tenant's ``partitions`` leave the site's, else None."""
        for i, m in enumerate(self.user_map):
            outside = [p for p in m.partitions or [] if self.partitions and p not in self.partitions]
            if outside:
                return f"userMap.{i}.partitions", (
                    f"userMap.{i}.partitions: {', '.join(outside)} not among the site's "
                    f"partitions ({', '.join(self.partitions)})")
        return None

    def mapping(self, tenant: str) -> UserMapping | None:
        """The ``userMap`` entry of ``tenant`` (or the ``*`` entry), or None."""
        by = {m.tenant: m for m in self.user_map}
        return by.get(tenant) or by.get("*")

    def settings(self, tenant: str) -> JobSettings | None:
        """What ``tenant``'s jobs are submitted with: its ``userMap`` entry's settings,
        else the site's; None when no entry maps the tenant."""
        m = self.mapping(tenant)
        if m is None:
            return None
        i = self.user_map.index(m)
        own_field = "{key}" if self._implicit_map else f"userMap.{i}.{{key}}"
        values: dict[str, object] = {}
        source: dict[str, str] = {"user": own_field.format(key="user")}
        for name, key in (("account", "account"), ("qos", "qos"),
                          ("reservation", "reservation"), ("constraint", "constraint"),
                          ("partitions", "partitions"),
                          ("default_time_limit", "defaultTimeLimit")):
            own = getattr(m, name)
            values[name] = own if own is not None else getattr(self, name)
            source[name] = own_field.format(key=key) if own is not None else key
        source["time_limit_s"] = source.pop("default_time_limit")
        parts = values["partitions"]
        limit = values["default_time_limit"]
        return JobSettings(
            user=m.user, account=values["account"],  # type: ignore[arg-type]
            qos=values["qos"], reservation=values["reservation"],  # type: ignore[arg-type]
            constraint=values["constraint"],  # type: ignore[arg-type]
            partitions=tuple(parts) if isinstance(parts, list) else (),
            time_limit_s=float(limit) if isinstance(limit, int | float) else None,
            source=source)
