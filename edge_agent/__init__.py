"""The device daemon, ``continuum-agent``.

What belongs here: the MQTT session (paho-mqtt 2.x), the wire protocol
(:mod:`edge_agent.protocol`: topics and versioned payload models), the task runtime
(subprocesses with working directory, environment, timeout, artifact fetch/upload),
telemetry (psutil) and the persistent outbox. It installs on a device with the base
distribution only, so it imports nothing of ours but :mod:`continuum`, and no server
dependency (no FastAPI, SQLAlchemy, numpy).
"""

__version__ = "0.1.0"
