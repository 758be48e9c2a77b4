"""Control-plane benchmarks: submit throughput over the REST API (``submit``), takeover
time of a follower after SIGKILL of the leader (``takeover``)."""
