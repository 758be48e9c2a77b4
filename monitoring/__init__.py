"""Monitoring: what the control plane knows about the continuum's live state.

What belongs here: Prometheus ingestion (a PromQL catalog per exporter, one query per
metric per site per refresh, every value timestamped and stale past a bound), the
control plane's own ``/metrics`` exposition, and the latency :mod:`topology` (RTT and
bandwidth between locations, measured where possible, modelled otherwise) that
placement reads through its ``Network`` protocol. Monitoring imports only ``continuum``
(plus numpy/scipy); it satisfies placement's protocols structurally (duck typing) and
never imports placement, the control plane, adapters or the edge agent.
"""
