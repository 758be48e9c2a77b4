"""The ``slurm`` site's ``config``: :class:`SlurmConfig` (camelCase, unknown fields
rejected) and its ``userMap`` entries (:class:`UserMapping`: which Slurm user, account,
QoS and reservation a tenant's jobs run with). The fields and their meaning are in
docs/slurm.md; the rules on who may set which (server paths only from the federation
file, ``root`` and ``SlurmUser`` refused) in docs/security.md "Sites and secrets".
"""

from __future__ import annotations

import base64
import binascii
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from continuum.model import PowerProfile

_SLURM_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$"


class UserMapping(BaseModel):
    """One entry of ``userMap``: the tenant's jobs run as ``user`` with ``account``,
    ``qos`` and ``reservation`` (each optional but ``user``). Tenant ``"*"``: any tenant
    no other entry names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    tenant: str = Field(min_length=1, description="tenant (project) name, or * for any other")
    user: str = Field(pattern=_SLURM_NAME, description="Slurm user name the jobs run as")
    account: str | None = Field(default=None, description="Slurm account charged")
    qos: str | None = Field(default=None, description="Slurm QoS")
    reservation: str | None = Field(default=None, description="Slurm reservation")


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
    account: str | None = None
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
        if not self.user_map:
            self.user_map = [UserMapping(tenant="*", user=self.user, account=self.account)]
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

    def mapping(self, tenant: str) -> UserMapping | None:
        """The ``userMap`` entry of ``tenant`` (or the ``*`` entry), or None."""
        by = {m.tenant: m for m in self.user_map}
        return by.get(tenant) or by.get("*")
