"""The server process's garbage-collector settings (:func:`control_plane.server.tune_gc`):
what startup made is frozen out of later collections, and the youngest generation is
collected less often; the older generations keep their factors."""

from __future__ import annotations

import gc

from control_plane.server import GC_THRESHOLD0, run_server, tune_gc


def test_tune_gc_freezes_startup_objects_and_raises_the_first_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_THRESHOLD0, before[1], before[2])
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_run_server_tunes_the_collector_before_serving(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import control_plane.server as server

    calls: list[str] = []
    monkeypatch.setattr(server, "tune_gc", lambda: calls.append("tune_gc"))
    monkeypatch.setattr(server.listen, "bind", lambda host, port: _Sock())
    monkeypatch.setattr(server, "ControlPlane", lambda settings: _Plane(calls))
    run_server(_Settings())  # type: ignore[arg-type]
    assert calls == ["tune_gc", "serve"]


class _Sock:
    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 1)

    def close(self) -> None:
        pass


class _Plane:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def serve(self, sock: object) -> None:
        self.calls.append("serve")


class _Settings:
    host, port, tls_cert_file, state_dir = "127.0.0.1", 0, None, "."
