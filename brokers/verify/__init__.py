"""``tidelog verify``: a Jepsen-style workload, its recorded history, and a checker for Kafka's anomalies.

history.py is the format (JSON lines), checker.py the pure analysis, workload.py the clients that record.
"""
