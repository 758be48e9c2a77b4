"""Control-plane settings, from flags, environment (``CONTINUUM_*``) or defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from placement.plugins.fragmentation import DEFAULT_WEIGHT as FRAGMENTATION_WEIGHT


class Settings(BaseSettings):
    """Every field is also read from the environment as ``CONTINUUM_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="CONTINUUM_", extra="ignore")

    state_dir: Path = Field(
        default=Path("./state"),
        description="where the SQLite database and the kept artifacts live",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<state_dir>/continuum.db. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    host: str = Field(default="127.0.0.1", description="address the API listens on")
    port: int = Field(default=8080, description="port the API listens on")
    public_url: str | None = Field(
        default=None,
        description="URL agents use to reach this API (artifact fetch/upload); "
        "default http://<host>:<port>",
    )
    broker_url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="MQTT broker for device sites that do not name their own",
    )
    federation: Path | None = Field(
        default=None, description="federation YAML whose sites are registered at start"
    )
    reconcile_interval_s: float = Field(
        default=1.0, description="longest pause between reconcile cycles (s); events wake it sooner"
    )
    inventory_interval_s: float = Field(
        default=2.0, description="how often each site's inventory is refreshed (s)"
    )
    retry_backoff_s: float = Field(
        default=2.0, description="first retry delay of a failed task (s); doubles per attempt"
    )
    retry_backoff_max_s: float = Field(default=60.0, description="cap of the retry delay (s)")
    dispatch_deadline_s: float = Field(
        default=60.0,
        description="a placed run its backend keeps refusing for this long is failed and re-placed (s)",
    )
    metrics_interval_s: float = Field(
        default=5.0, description="how often each site's Prometheus is queried (s)"
    )
    control_plane_location: str = Field(
        default="control-plane",
        description="location name of this control plane (where artifacts are kept)",
    )

    # -- learned placement and migration (issue 6)
    placement_mode: Literal["fast", "quality"] = Field(
        default="fast",
        description="fast: greedy batch placement; quality: small batches solved exactly (MILP)")
    placement_fragmentation_weight: float = Field(
        default=FRAGMENTATION_WEIGHT, ge=0,
        description="weight of the GPU-fragmentation score (after FGD, Weng et al. ATC'23); "
        "0 switches it off: more decisions/s, worse GPU packing (bench/RESULTS.md)")
    model_retrain_interval_s: float = Field(
        default=3600.0,
        description="retrain the learned predictors this often (s); 0 = only on demand")
    model_bootstrap_samples: int = Field(
        default=2000, description="digital-twin runs generated to bootstrap the predictors")
    migration_interval_s: float = Field(
        default=30.0, description="how often running services and queued jobs are re-evaluated (s)")
    migration_horizon_s: float = Field(
        default=600.0, description="horizon over which a migration's expected gain is counted (s)")
    migration_hysteresis: float = Field(
        default=0.2, description="gain must exceed the migration cost by this fraction")
    migration_min_dwell_s: float = Field(
        default=120.0, description="a run is not moved again sooner than this after placement (s)")
    migration_max_per_cycle: int = Field(default=2, description="most migrations per cycle")
    migration_lost_grace_s: float = Field(
        default=6.0,
        description="a run's node must be gone or not ready this long before its work is "
        "re-placed (s); covers a restarted control plane relearning its inventory")
    migration_bandwidth_bps: float = Field(
        default=100e6, description="bandwidth assumed for moving a service's state (bit/s)")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'continuum.db').resolve()}"

    @property
    def artifact_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def api_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
