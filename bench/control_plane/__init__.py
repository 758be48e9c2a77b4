"""Control-plane benchmarks: submit throughput over the REST API (``submit``)."""
