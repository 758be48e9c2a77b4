"""The ``slurm`` adapter: Slurm clusters through slurmrestd (OpenAPI data_parser v0.0.45 ..
v0.0.40 of Slurm 23.11-26.05, and v0.0.38, 37, 36 of Slurm 20.11-22.05).

What belongs here: the slurmrestd client (:mod:`adapters.slurm.client`: version
negotiation, JWT, typed errors), the two schema families' paths, bodies and answers
(:mod:`adapters.slurm.dialects`, the only place that knows them), the site's config,
per-tenant settings and user map
(:mod:`adapters.slurm.config`), the batch scripts runs become
(:mod:`adapters.slurm.script`), and the adapter (:mod:`adapters.slurm.adapter`:
partitions as nodes, the job-state table, queue waits). What does not: placement
decisions, the store, the HTTP API. See docs/slurm.md.
"""

from adapters.slurm.adapter import JOB_STATE_TABLE, PartitionStats, SlurmAdapter, SlurmConfig

__all__ = ["JOB_STATE_TABLE", "PartitionStats", "SlurmAdapter", "SlurmConfig"]
