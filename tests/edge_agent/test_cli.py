"""The agent's command line (edge_agent/cli.py, argparse): options and their
``CONTINUUM_AGENT_*`` variables.

Aspects: a variable gives an option's value with its type (lists space-separated, flags
1/0 true/false yes/no on/off, numbers, paths); the command line wins over the variable;
an empty variable counts as unset (the default applies); a bad value, from the variable
or the command line, exits 2 naming the option (and the variable); ``enroll`` needs
``--server`` and ``--token`` from one or the other.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cli import ENROLL_OPTIONS, RUN_OPTIONS, UsageError, _values, build_parser

REPO = Path(__file__).resolve().parents[2]


def run_values(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    _, commands = build_parser()
    return _values(RUN_OPTIONS, commands["run"].parse_args(argv), env)


def test_variables_give_typed_values_and_the_command_line_wins() -> None:
    v = run_values([], {"CONTINUUM_AGENT_LABEL": "room=a12  camera=yes",
                        "CONTINUUM_AGENT_TLS_INSECURE": "yes",
                        "CONTINUUM_AGENT_INSECURE_ACCEPT_UNSIGNED": "off",
                        "CONTINUUM_AGENT_TELEMETRY_INTERVAL": "0.5",
                        "CONTINUUM_AGENT_LIMIT_OPEN_FILES": "64",
                        "CONTINUUM_AGENT_STATE_DIR": "/tmp/agent",
                        "CONTINUUM_AGENT_BROKER": "mqtts://b:8883"})
    assert v["label"] == ["room=a12", "camera=yes"]
    assert v["tls_insecure"] is True and v["insecure_accept_unsigned"] is False
    assert v["telemetry_interval"] == 0.5 and v["limit_open_files"] == 64
    assert v["state_dir"] == Path("/tmp/agent") and v["broker"] == "mqtts://b:8883"
    v = run_values(["--label", "a=1", "--label", "b=2", "--telemetry-interval", "2",
                    "--tls-insecure"],
                   {"CONTINUUM_AGENT_LABEL": "room=a12", "CONTINUUM_AGENT_TELEMETRY_INTERVAL": "x",
                    "CONTINUUM_AGENT_TLS_INSECURE": "no"})
    assert v["label"] == ["a=1", "b=2"] and v["telemetry_interval"] == 2.0
    assert v["tls_insecure"] is True


def test_an_empty_variable_is_unset_and_defaults_apply() -> None:
    v = run_values([], {"CONTINUUM_AGENT_LOCATION": "", "CONTINUUM_AGENT_LABEL": ""})
    assert v["location"] == "unknown" and v["label"] == [] and v["device_id"] is None
    assert v["state_dir"] == Path("/var/lib/continuum-agent") and v["kill_grace"] == 5.0
    assert v["tls_insecure"] is False and v["limit_cpu_seconds"] is None


@pytest.mark.parametrize(("var", "value", "says"), [
    ("CONTINUUM_AGENT_TELEMETRY_INTERVAL", "often", "--telemetry-interval"),
    ("CONTINUUM_AGENT_LIMIT_PROCESSES", "1.5", "--limit-processes"),
    ("CONTINUUM_AGENT_TLS_INSECURE", "maybe", "--tls-insecure"),
])
def test_a_bad_variable_names_the_option_and_the_variable(var: str, value: str,
                                                          says: str) -> None:
    with pytest.raises(UsageError, match=f"{says} \\({var}\\): '{value}'"):
        run_values([], {var: value})


def test_enroll_needs_server_and_token() -> None:
    _, commands = build_parser()
    with pytest.raises(UsageError, match=r"--token \(or CONTINUUM_AGENT_TOKEN\) is required"):
        _values(ENROLL_OPTIONS, commands["enroll"].parse_args(["--server", "http://cp"]), {})
    v = _values(ENROLL_OPTIONS, commands["enroll"].parse_args([]),
                {"CONTINUUM_AGENT_SERVER": "http://cp", "CONTINUUM_AGENT_TOKEN": "t"})
    assert (v["server"], v["token"], v["device_id"]) == ("http://cp", "t", None)


@pytest.mark.parametrize(("args", "env", "says"), [
    ([], {"CONTINUUM_AGENT_MAX_MEMORY": "lots"},
     "--max-memory (CONTINUUM_AGENT_MAX_MEMORY): 'lots' is not a valid integer"),
    (["--max-memory", "lots"], {}, "argument --max-memory: invalid int value: 'lots'"),
    ([], {"CONTINUUM_AGENT_LABEL": "a=1 b"}, "--label: label 'b' must be key=value"),
])
def test_a_bad_value_exits_2_with_the_reason(tmp_path: Path, args: list[str],
                                              env: dict[str, str], says: str) -> None:
    r = subprocess.run([sys.executable, "-m", "edge_agent.cli", "run", "--device-id", "d",
                        "--state-dir", str(tmp_path), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "usage: continuum-agent run [OPTIONS]" in r.stderr
