"""The ``slurm`` adapter: Slurm clusters through slurmrestd (OpenAPI v0.0.38, 37, 36).

What belongs here: the slurmrestd client (:mod:`adapters.slurm.client`: version
negotiation, JWT, typed errors), the site's config and user map
(:mod:`adapters.slurm.config`), the batch scripts runs become
(:mod:`adapters.slurm.script`), and the adapter (:mod:`adapters.slurm.adapter`:
partitions as nodes, the job-state table, queue waits). What does not: placement
decisions, the store, the HTTP API. See docs/slurm.md.
"""

from adapters.slurm.adapter import JOB_STATE_TABLE, PartitionStats, SlurmAdapter, SlurmConfig

__all__ = ["JOB_STATE_TABLE", "PartitionStats", "SlurmAdapter", "SlurmConfig"]
