"""``POST /v1/sites`` with a bad file or URL in the site spec is a 422 naming the field.

Aspects: a kubeconfigPath that is missing, a directory, binary, a YAML list or YAML
without clusters; a devices tlsCa that is missing, a directory or not PEM; a Slurm
jwtKey that is missing; a prometheusUrl that is not an http(s) URL. None is a 500, and
each names ``config.<key>`` (or the spec field) in ``loc``.
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
             "list": d / "list.yaml", "noclusters": d / "noclusters.yaml", "text": d / "ca.txt"}
    files["binary"].write_bytes(b"\xff\xfe\x00\x81 not text")
    files["list"].write_text("- a\n- b\n")
    files["noclusters"].write_text("apiVersion: v1\nkind: Config\n")
    files["text"].write_text("this is not a certificate\n")
    return files


CASES: list[tuple[str, str, str, list[str], str]] = [
    # (site kind, config key, bad file, expected loc, words in the message)
    ("kubernetes", "kubeconfigPath", "missing", ["config", "kubeconfigPath"], "not a readable"),
    ("kubernetes", "kubeconfigPath", "directory", ["config", "kubeconfigPath"], "not a readable"),
    ("kubernetes", "kubeconfigPath", "binary", ["config", "kubeconfigPath"], "not a kubeconfig"),
    ("kubernetes", "kubeconfigPath", "list", ["config", "kubeconfigPath"], "not a kubeconfig"),
    ("kubernetes", "kubeconfigPath", "noclusters", ["config", "kubeconfigPath"],
     "not a kubeconfig"),
    ("devices", "tlsCa", "missing", ["config", "tlsCa"], "not a readable PEM"),
    ("devices", "tlsCa", "directory", ["config", "tlsCa"], "not a readable PEM"),
    ("devices", "tlsCa", "text", ["config", "tlsCa"], "not a readable PEM"),
    ("slurm", "jwtKey", "missing", ["config", "jwtKey"], "cannot read the JWT key"),
]


def site(kind: str, key: str, path: Path) -> dict[str, Any]:
    config: dict[str, Any] = {key: str(path)}
    if kind == "devices":
        config["broker"] = "mqtts://127.0.0.1:8883"
    if kind == "slurm":
        config.update(url="http://127.0.0.1:6820", user="u", workdir="/tmp")
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
