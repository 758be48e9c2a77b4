"""``POST /v1/sites`` with a bad file or URL in the site spec is a 422 naming the field.

Aspects: a path on the server (kubeconfigPath, a devices tlsCa that is a path, a Slurm
jwtKey that is a path) — refused over the API whatever the file is, so no answer says
whether a file exists; uploaded content that is not a kubeconfig or not a PEM
certificate; a prometheusUrl that is not an http(s) URL. None is a 500, and each names
``config.<key>`` (or the spec field) in ``loc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.control_plane.harness import control_plane

SIM = {"nodes": [{"name": "vm", "count": 1, "cpu": 8, "memory": "32Gi",
                  "power": {"idleWatts": 50, "maxWatts": 200, "source": "test figure"}}]}


def bad_files(d: Path) -> dict[str, Path]:
    d.mkdir()
    files = {"missing": d / "missing", "directory": d, "binary": d / "binary",
             "list": d / "list.yaml", "noclusters": d / "noclusters.yaml", "text": d / "ca.txt",
             "pem": d / "pem"}
    files["binary"].write_bytes(b"\xff\xfe\x00\x81 not text")
    files["list"].write_text("- a\n- b\n")
    files["noclusters"].write_text("apiVersion: v1\nkind: Config\n")
    files["text"].write_text("this is not a certificate\n")
    return files


SERVER_FILE = "only the operator's federation file"
CASES: list[tuple[str, str, str, list[str], str]] = [
    # (site kind, config key, bad file, expected loc, words in the message)
    ("kubernetes", "kubeconfigPath", "missing", ["config", "kubeconfigPath"], SERVER_FILE),
    ("kubernetes", "kubeconfigPath", "directory", ["config", "kubeconfigPath"], SERVER_FILE),
    ("kubernetes", "kubeconfigPath", "list", ["config", "kubeconfigPath"], SERVER_FILE),
    ("kubernetes", "kubeconfig", "list", ["config", "kubeconfig"], "not a kubeconfig"),
    ("kubernetes", "kubeconfig", "noclusters", ["config", "kubeconfig"], "not a kubeconfig"),
    ("devices", "tlsCa", "missing", ["config", "tlsCa"], "federation file only"),
    ("devices", "tlsCa", "directory", ["config", "tlsCa"], "federation file only"),
    ("devices", "tlsCa", "pem", ["config", "tlsCa"], "not a PEM CA certificate"),
    ("slurm", "jwtKey", "missing", ["config", "jwtKey"], "not a path"),
    ("slurm", "jwtKeyFile", "missing", ["config", "jwtKeyFile"], SERVER_FILE),
]


def site(kind: str, key: str, path: Path) -> dict[str, Any]:
    value: str = str(path)
    if key == "kubeconfig":
        value = path.read_text()
    if key == "tlsCa" and path.name == "pem":
        value = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    config: dict[str, Any] = {key: value}
    if kind == "devices":
        config["broker"] = "mqtts://127.0.0.1:8883"
    if kind == "slurm":
        config.update(url="http://127.0.0.1:6820", user="u", workdir="/tmp")
        if key == "jwtKeyFile":
            config["token"] = None
    return {"name": f"bad-{kind}", "kind": kind, "config": config}


def test_bad_files_in_site_specs_are_422s_naming_the_field(tmp_path: Path) -> None:
    files = bad_files(tmp_path / "files")
    with control_plane(tmp_path / "state") as (_, api):
        for kind, key, which, loc, words in CASES:
            r = api.post("/v1/sites", json=site(kind, key, files[which]))
            assert r.status_code == 422, (kind, which, r.text)
            problem = r.json()["detail"][0]
            assert problem["loc"] == loc, (kind, which, problem)
            assert words in problem["msg"], (kind, which, problem)
        assert api.get("/v1/sites").json()["items"][0]["name"] == "cloud"  # nothing added


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with control_plane(tmp_path_factory.mktemp("state")) as (_, api):
        yield api


@pytest.mark.parametrize("url", ["not a url", "ftp://prometheus:9090", "http://[::1",
                                 "http://prometheus:port"])
def test_a_bad_prometheus_url_is_a_422(plane, url: str) -> None:  # type: ignore[no-untyped-def]
    r = plane.post("/v1/sites", json={"name": "monitored", "kind": "sim", "config": SIM,
                                      "prometheusUrl": url})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["prometheusUrl"]
