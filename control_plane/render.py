"""Rich renderings shared by the CLI and the demo: tables of workflows, runs, nodes,
sites and devices, and the placement explanation of a run."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from continuum.units import format_bytes, format_duration

STATE_STYLE = {
    "Succeeded": "green", "Failed": "red", "Cancelled": "yellow", "Cancelling": "yellow",
    "Running": "cyan", "Dispatched": "blue", "Placed": "blue", "Pending": "white",
    "Ready": "white", "Waiting": "dim", "Migrated": "magenta",
}


def state(s: str) -> Text:
    return Text(s, style=STATE_STYLE.get(s, ""))


def _num(x: float | None, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}{unit}"


def _dur(x: float | None) -> str:
    return "-" if x is None else format_duration(x)


def workflows_table(items: list[dict[str, Any]]) -> Table:
    t = Table(title="Workflows")
    for c in ("ID", "NAME", "STATE", "TASKS", "CREATED", "REASON"):
        t.add_column(c)
    for w in items:
        tasks = ", ".join(f"{k} {v}" for k, v in sorted(w.get("tasks", {}).items()))
        t.add_row(w["id"], w["name"], state(w["state"]), tasks, (w.get("createdAt") or "")[:19],
                  w.get("reason", ""))
    return t


def progress_table(workflows: list[dict[str, Any]]) -> Table:
    """One row per task of each workflow, with its current run's node."""
    t = Table(title="Progress", expand=False)
    for c in ("WORKFLOW", "TASK", "STATE", "NODE", "TIER", "ATTEMPT"):
        t.add_column(c)
    for wf in workflows:
        runs = {r["id"]: r for r in wf.get("runs", [])}
        for task in wf.get("tasks", []):
            last = runs.get(task["runs"][-1]) if task.get("runs") else None
            tier = (last or {}).get("placement", {}) or {}
            t.add_row(wf["name"], task["name"], state(task["state"]),
                      (last or {}).get("node") or "", tier.get("tier", ""),
                      str(task.get("attempts", 0)))
    return t


def runs_table(items: list[dict[str, Any]]) -> Table:
    t = Table(title="Runs")
    for c in ("ID", "WORKFLOW", "TASK", "STATE", "NODE", "ATTEMPT", "EXIT", "REASON"):
        t.add_column(c)
    for r in items:
        t.add_row(r["id"], r["workflowId"], r["task"], state(r["state"]), r.get("node") or "",
                  str(r["attempt"]), "" if r.get("exitCode") is None else str(r["exitCode"]),
                  (r.get("reason") or "")[:60])
    return t


def nodes_table(items: list[dict[str, Any]]) -> Table:
    t = Table(title="Nodes")
    t.add_column("ID", no_wrap=True, min_width=24)
    for c in ("TIER", "ARCH", "CPU free/alloc", "MEMORY free/alloc", "GPU", "POWER W",
              "UTIL", "READY", "SIM"):
        t.add_column(c)
    for n in items:
        alloc, free = n["allocatable"], n.get("free") or n["allocatable"]
        p = n["power"]
        util = n.get("utilisation")
        t.add_row(n["id"], n["tier"], n["arch"], f"{free['cpu']:g}/{alloc['cpu']:g}",
                  f"{format_bytes(free['memory'])}/{format_bytes(alloc['memory'])}",
                  str(alloc.get("gpu", 0)), f"{p['idleWatts']:g}→{p['maxWatts']:g}",
                  "-" if util is None else f"{util:.0%}", "yes" if n.get("ready") else "no",
                  "yes" if n.get("simulated") else "")
    return t


def sites_table(items: list[dict[str, Any]]) -> Table:
    t = Table(title="Sites")
    for c in ("NAME", "KIND", "TIER", "LOCATION", "HEALTH", "NODES", "MESSAGE"):
        t.add_column(c)
    for s in items:
        t.add_row(s["name"], s["kind"], s.get("tier") or "", s.get("location") or "",
                  state(s["health"]) if s["health"] != "Ready" else Text("Ready", "green"),
                  str(s["nodes"]), s.get("message", ""))
    return t


def devices_table(items: list[dict[str, Any]]) -> Table:
    t = Table(title="Devices")
    for c in ("DEVICE", "SITE", "ONLINE", "ARCH", "CPUS", "MEMORY", "LOCATION", "CPU %",
              "POWER W", "LAST SEEN"):
        t.add_column(c)
    for d in items:
        hello = d.get("hello") or {}
        tel = d.get("telemetry") or {}
        t.add_row(str(d.get("deviceId") or d.get("device_id") or hello.get("device_id", "?")),
                  d.get("site", ""), "yes" if d.get("online") else "no",
                  str(hello.get("arch", "")), str(hello.get("cpus", "")),
                  format_bytes(hello["memory"]) if hello.get("memory") else "",
                  str(hello.get("location", "")),
                  _num(tel.get("cpu_percent"), digits=3), _num(tel.get("power_watts")),
                  str(d.get("lastSeen") or d.get("last_seen") or "")[:19])
    return t


def explain_run(run: dict[str, Any]) -> Group:
    """The placement explanation of one run: scores, predictions vs observations."""
    p = run.get("placement") or {}
    head = Text.assemble(
        ("run ", "bold"), (run["id"], "bold cyan"), f"  task {run['task']}  attempt {run['attempt']}  ",
        state(run["state"]),
        f"\nnode {run.get('node')}  site {run.get('site')}  tier {p.get('tier', '-')}"
        + ("  [simulated]" if run.get("simulated") else ""))
    parts: list[Any] = [head]
    if p:
        scores = Table(title=f"Placement scores (0..100, higher is better; model {p.get('modelVersion')})")
        scores.add_column("plugin")
        scores.add_column("score", justify="right")
        scores.add_column("weight", justify="right")
        for name, val in p.get("scores", {}).items():
            scores.add_row(name, f"{val:.1f}", f"{p.get('weights', {}).get(name, ''):}")
        scores.add_row(Text("total", "bold"), f"{p.get('total', 0):.1f}", "")
        parts.append(scores)
        pred, obs = p.get("predicted", {}), run.get("observed", {})
        cmp = Table(title="Predicted vs observed")
        for c in ("figure", "predicted", "observed"):
            cmp.add_column(c)
        cmp.add_row("runtime", _dur(pred.get("runtimeS")), _dur(obs.get("runtimeS")))
        cmp.add_row("completion (queue + transfer + runtime)", _dur(pred.get("completionS")), "")
        cmp.add_row("energy", _num(pred.get("energyJ"), " J"), _num(obs.get("energyJ"), " J"))
        cmp.add_row("bytes in", format_bytes(pred.get("bytesMoved", 0)),
                    format_bytes(obs.get("bytesIn", 0)))
        cmp.add_row("bytes out (outputs kept)", "", format_bytes(obs.get("bytesOut", 0)))
        if pred.get("latencyMs") is not None:
            cmp.add_row("RTT to SLO target", _num(pred.get("latencyMs"), " ms"), "")
        parts.append(cmp)
        parts.append(Text("why: " + "; ".join(p.get("reasons", [])), style="italic"))
        if p.get("filtered"):
            parts.append(Text("filtered out: " + ", ".join(
                f"{n} {k}" for k, n in p["filtered"].items()), style="dim"))
        if p.get("alternatives"):
            parts.append(Text("runners-up: " + ", ".join(
                f"{a.get('node')} ({a.get('total', 0):.1f})" for a in p["alternatives"]),
                style="dim"))
    if run.get("reason"):
        parts.append(Text(f"reason: {run['reason']}"))
    if run.get("outputTail"):
        parts.append(Text("output (tail):\n" + run["outputTail"], style="dim"))
    return Group(*parts)
