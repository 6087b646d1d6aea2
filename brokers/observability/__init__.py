"""The broker's Prometheus series, on prometheus_client's default registry (one registry per process).

Each module is one role: ``requests`` (per-API rate, errors, the total/queue/local/remote latency split),
``traffic`` (per-topic bytes and messages, purgatory waits, connections), ``cluster_metrics`` (partition
ownership hooks called by brokers/cluster/), ``process`` (GC pauses; CPU and RSS come from prometheus_client's
ProcessCollector), ``groups`` (consumer-group lag), ``health`` (``/readyz``). Storage figures live in
storage/metrics.py (storage must not import brokers). brokers/metrics.py adds the snapshot series of one broker
(offload, partitions) as a custom collector; brokers/admin_http.py serves them all at ``/metrics``.
Labels are bounded: API names (unknown keys bucketed), error names, topic names and partitions, group ids —
never client ids or peers.
"""
