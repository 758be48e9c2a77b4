"""A devices site registered over the API gives its broker's CA as PEM text (the API
refuses a path on the control plane's host): the adapter connects over TLS with it to
the real Mosquitto of tests/adapters/test_devices_trust.py, and the wrong CA fails."""

from __future__ import annotations

from pathlib import Path

from control_plane.pki import init_pki
from tests.adapters.test_devices_trust import CONTROL_USER, SecuredBroker, secured  # noqa: F401
from tests.control_plane.harness import control_plane
from tests.helpers import wait_for


def test_a_pem_ca_uploaded_over_the_api_connects_over_tls(secured: SecuredBroker,  # noqa: F811
                                                          tmp_path: Path) -> None:
    other_ca = init_pki(tmp_path / "other", ["localhost"]).ca_cert.read_text()
    with control_plane(tmp_path / "cp") as (cp, api):
        for name, ca in (("fleet", secured.ca.read_text()), ("wrong-ca", other_ca)):
            r = api.post("/v1/sites", json={"name": name, "kind": "devices", "config": {
                "broker": secured.url, "username": CONTROL_USER,
                "password": secured.control_password, "tlsCa": ca}})
            assert r.status_code == 201, r.text
        wait_for(lambda: cp.federation.get_adapter("fleet").connected,  # type: ignore[union-attr]
                 timeout=20, message="the devices adapter to connect over TLS with the PEM CA")
        assert not cp.federation.get_adapter("wrong-ca").connected  # type: ignore[union-attr]
