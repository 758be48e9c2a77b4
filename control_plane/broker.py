"""The embedded MQTT broker (amqtt) for the one-command default.

Production deployments use Mosquitto or any MQTT 3.1.1/5 broker; this one exists so
``continuum demo`` needs nothing installed. It runs its own asyncio loop in a daemon
thread and listens on loopback only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)


class ProbeConnectionFilter(logging.Filter):
    """Demotes amqtt's ERROR + WARNING for a TCP connection that closes before sending a
    byte — what every agent's broker RTT probe (TCP connect time) does — to DEBUG; such a
    record is dropped unless this module's logger is enabled for DEBUG."""

    MARK = "No data to decode MQTT packet fixed header"

    def filter(self, record: logging.LogRecord) -> bool:
        if self.MARK not in record.getMessage():
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return log.isEnabledFor(logging.DEBUG)


PROBE_FILTER = ProbeConnectionFilter()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """amqtt listening on ``host:port`` (anonymous, loopback), in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self._loop = asyncio.new_event_loop()
        self._broker: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="mqtt-broker",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; raises RuntimeError if the broker does not come up in time."""
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            if logging.getLogger(name).level == logging.NOTSET:  # the CLI may have set it
                logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("amqtt.broker").addFilter(PROBE_FILTER)  # a set: added once
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._thread.start()

        async def _start() -> None:
            self._broker = Broker(config)
            await self._broker.start()

        fut = asyncio.run_coroutine_threadsafe(_start(), self._loop)
        try:
            fut.result(timeout)
        except Exception as e:
            raise RuntimeError(f"embedded MQTT broker did not start on {self.url}: {e}") from e
        log.info("embedded MQTT broker listening on %s", self.url)

    def stop(self, timeout: float = 10.0) -> None:
        if self._broker is not None:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                fut.result(timeout)
            except Exception:
                log.warning("embedded MQTT broker did not shut down cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
