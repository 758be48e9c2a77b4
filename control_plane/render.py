"""Rich renderings shared by the CLI and the demo: tables of workflows, runs, nodes,
sites and devices, and the placement explanation of a run.

Tables never cut an ID: ID columns (workflow, run, node, site and device ids), states and
figures do not wrap and are as wide as their longest cell; names and free text wrap. Each list table keeps the
columns that matter at 80 terminal columns; ``wide=True`` adds the rest.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from continuum.units import format_bytes, format_duration

STATE_STYLE = {
    "Succeeded": "green", "Failed": "red", "Cancelled": "yellow", "Cancelling": "yellow",
    "Running": "cyan", "Dispatched": "blue", "Placed": "blue", "Pending": "white",
    "Ready": "white", "Waiting": "dim", "Migrated": "magenta",
}


PIPE_WIDTH = 200
"""Width (columns) tables are drawn at when stdout is not a terminal and COLUMNS is unset."""


def make_console(stderr: bool = False, min_width: int = 0) -> Console:
    """The CLI's console: the terminal's width on a terminal; with no terminal (a pipe, a
    file) ``$COLUMNS`` if set, else :data:`PIPE_WIDTH`, so piped output is never cut to
    some inherited terminal's width. ``min_width``: at least this wide (a table that does
    not fit then wraps in the terminal instead of being cut)."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        width = Console(stderr=stderr).width
    else:
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() else PIPE_WIDTH
    return Console(stderr=stderr, width=max(width, min_width))


def _table(title: str, rows: list[list[Any]], columns: list[tuple[str, bool]],
           wide_only: frozenset[str] = frozenset(), wide: bool = False) -> Table:
    """A table of ``columns`` — ``(header, whole)`` pairs — holding ``rows`` (one cell per
    column). A ``whole`` column (IDs, states, figures) never wraps and is as wide as its
    longest cell; the others (names, free text) wrap, and headers wrap at spaces. Columns
    named in ``wide_only`` are left out unless ``wide``. Column rules only (no vertical
    lines), so more fits into 80 columns."""
    keep = [i for i, (h, _) in enumerate(columns) if wide or h not in wide_only]
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
              collapse_padding=True)
    for i in keep:
        header, whole = columns[i]
        head = Text(header, no_wrap=False, overflow="fold")
        if whole:  # exactly as wide as its longest cell or header: never squeezed
            head_width = len(header) if len(header) <= 10 else max(map(len, header.split()))
            width = max([head_width, *(len(str(r[i])) for r in rows)])
            t.add_column(head, no_wrap=True, min_width=width, max_width=width)
        else:  # never narrower than its header's words
            t.add_column(head, overflow="fold", min_width=max(len(w) for w in header.split()))
    for r in rows:
        t.add_row(*(r[i] for i in keep))
    return t


def state(s: str) -> Text:
    return Text(s, style=STATE_STYLE.get(s, ""))


def _num(x: float | None, unit: str = "", digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}{unit}"


def _dur(x: float | None) -> str:
    return "-" if x is None else format_duration(x)


def workflows_table(items: list[dict[str, Any]], wide: bool = False) -> Table:
    """Workflows: ID, NAME, STATE, TASKS, REASON (wide: + CREATED)."""
    rows = []
    for w in items:
        tasks = ", ".join(f"{k} {v}" for k, v in sorted(w.get("tasks", {}).items()))
        rows.append([w["id"], w["name"], state(w["state"]), tasks,
                     (w.get("createdAt") or "")[:19], w.get("reason", "")])
    return _table("Workflows", rows, [("ID", True), ("NAME", False), ("STATE", True),
                                      ("TASKS", False), ("CREATED", True), ("REASON", False)],
                  frozenset({"CREATED"}), wide)


def progress_table(workflows: list[dict[str, Any]]) -> Table:
    """One row per task of each workflow, with its current run's node."""
    rows = []
    for wf in workflows:
        runs = {r["id"]: r for r in wf.get("runs", [])}
        for task in wf.get("tasks", []):
            last = runs.get(task["runs"][-1]) if task.get("runs") else None
            tier = (last or {}).get("placement", {}) or {}
            rows.append([wf["name"], task["name"], state(task["state"]),
                         (last or {}).get("node") or "", tier.get("tier", ""),
                         str(task.get("attempts", 0))])
    return _table("Progress", rows, [("WORKFLOW", False), ("TASK", False), ("STATE", True),
                                     ("NODE", True), ("TIER", True), ("ATTEMPT", True)])


def runs_table(items: list[dict[str, Any]], wide: bool = False) -> Table:
    """Runs: ID, TASK, STATE, NODE, EXIT (wide: + WORKFLOW, ATTEMPT, REASON)."""
    rows = [[r["id"], r["workflowId"], r["task"], state(r["state"]), r.get("node") or "",
             str(r["attempt"]), "" if r.get("exitCode") is None else str(r["exitCode"]),
             r.get("reason") or ""] for r in items]
    return _table("Runs", rows, [("ID", True), ("WORKFLOW", True), ("TASK", False),
                                 ("STATE", True), ("NODE", True), ("ATTEMPT", True),
                                 ("EXIT", True), ("REASON", False)],
                  frozenset({"WORKFLOW", "ATTEMPT", "REASON"}), wide)


def nodes_table(items: list[dict[str, Any]], wide: bool = False) -> Table:
    """Nodes: ID, TIER, CPU free/alloc, MEMORY free/alloc, GPU, READY (wide: + ARCH,
    POWER W idle→max, UTIL, SIM)."""
    rows = []
    for n in items:
        alloc, free = n["allocatable"], n.get("free") or n["allocatable"]
        p = n["power"]
        util = n.get("utilisation")
        rows.append([n["id"], n["tier"], n["arch"], f"{free['cpu']:g}/{alloc['cpu']:g}",
                     f"{format_bytes(free['memory'])}/{format_bytes(alloc['memory'])}",
                     str(alloc.get("gpu", 0)), f"{p['idleWatts']:g}→{p['maxWatts']:g}",
                     "-" if util is None else f"{util:.0%}", "yes" if n.get("ready") else "no",
                     "yes" if n.get("simulated") else ""])
    return _table("Nodes", rows, [("ID", True), ("TIER", True), ("ARCH", True),
                                  ("CPU free/alloc", True), ("MEMORY free/alloc", True),
                                  ("GPU", True), ("POWER W", True), ("UTIL", True),
                                  ("READY", True), ("SIM", True)],
                  frozenset({"ARCH", "POWER W", "UTIL", "SIM"}), wide)


def sites_table(items: list[dict[str, Any]], wide: bool = False) -> Table:
    """Sites: NAME, KIND, TIER, HEALTH, NODES, MESSAGE (wide: + LOCATION)."""
    rows = [[s["name"], s["kind"], s.get("tier") or "", s.get("location") or "",
             state(s["health"]) if s["health"] != "Ready" else Text("Ready", "green"),
             str(s["nodes"]), s.get("message", "")] for s in items]
    return _table("Sites", rows, [("NAME", True), ("KIND", True), ("TIER", True),
                                  ("LOCATION", False), ("HEALTH", True), ("NODES", True),
                                  ("MESSAGE", False)], frozenset({"LOCATION"}), wide)


def devices_table(items: list[dict[str, Any]], wide: bool = False) -> Table:
    """Devices: DEVICE, SITE, ONLINE, CPU %, POWER W, LAST SEEN (wide: + ARCH, CPUS,
    MEMORY, LOCATION)."""
    rows = []
    for d in items:
        hello = d.get("hello") or {}
        tel = d.get("telemetry") or {}
        rows.append([str(d.get("deviceId") or d.get("device_id") or hello.get("device_id", "?")),
                     d.get("site", ""), "yes" if d.get("online") else "no",
                     str(hello.get("arch", "")), str(hello.get("cpus", "")),
                     format_bytes(hello["memory"]) if hello.get("memory") else "",
                     str(hello.get("location", "")),
                     _num(tel.get("cpu_percent"), digits=3), _num(tel.get("power_watts")),
                     str(d.get("lastSeen") or d.get("last_seen") or "")[:19]])
    return _table("Devices", rows, [("DEVICE", True), ("SITE", True), ("ONLINE", True),
                                    ("ARCH", True), ("CPUS", True), ("MEMORY", True),
                                    ("LOCATION", False), ("CPU %", True), ("POWER W", True),
                                    ("LAST SEEN", True)],
                  frozenset({"ARCH", "CPUS", "MEMORY", "LOCATION"}), wide)


def data_sources_table(items: list[dict[str, Any]]) -> Table:
    """KubeEdge devices (``GET /v1/data-sources``): SITE, DEVICE, MODEL, PROTOCOL, NODE,
    LOCATION, ONLINE."""
    rows = [[d["site"], d["name"], d.get("model") or "", d.get("protocol") or "",
             d.get("node") or "", d.get("location") or "", "yes" if d.get("online") else "no"]
            for d in items]
    return _table("Data sources (KubeEdge devices)", rows, [
        ("SITE", True), ("DEVICE", True), ("MODEL", False), ("PROTOCOL", False), ("NODE", True),
        ("LOCATION", False), ("ONLINE", True)])


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
        if obs.get("cpuTimeS") is not None:  # the backend's accounting (Slurm: slurmdbd)
            cmp.add_row("CPU time (accounted)", "", _dur(obs["cpuTimeS"]))
        if obs.get("maxRssBytes") is not None:
            cmp.add_row("max RSS (accounted)", "", format_bytes(obs["maxRssBytes"]))
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
