"""The control-plane bench in one command: live work vs the reconcile cycle
(``live.py``), REST submits/s at 1/8/32 clients (``submit.py``), and a simulated device
fleet against Mosquitto (``fleet.py``); each prints its markdown table.

``--quick`` (136 s on the shared 2-core machine, under 5 minutes) runs small sizes: live work at
100 and 1,000 tasks; submits on SQLite, one replica, 5 s per client count; a fleet of 200
devices at 500 and 2,000 telemetry msgs/s. The full run: live work at 100, 1,000, 10,000
and 100,000 tasks (each size cut short after ``--timeout`` s); submits on PostgreSQL
with 1 and 2 replicas and on SQLite, 10 s each; fleets of 1,000 and 5,000 devices at 1,000,
5,000 and 20,000 msgs/s with 10,000 live tasks keeping the reconciler busy. ``--only``
picks parts; the sizes can be overridden.

Reproduce::

    python -m bench.control_plane --quick
    python -m bench.control_plane --only live --sizes 100 1000 10000
"""

from __future__ import annotations

import argparse
import time

from bench.control_plane import fleet, live, submit

PARTS = ("live", "submit", "fleet")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.control_plane",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (about 5 minutes)")
    ap.add_argument("--only", choices=PARTS, nargs="+", default=list(PARTS),
                    help="parts to run (default: all three)")
    live.add_arguments(ap)
    fleet.add_arguments(ap)
    ap.set_defaults(sizes=None, devices=None, rates=None, fleet_seconds=None, busy_tasks=None)
    args = ap.parse_args(argv)
    q = args.quick
    sizes = args.sizes or ([100, 1000] if q else [100, 1000, 10000, 100000])
    devices = args.devices or ([200] if q else [1000, 5000])
    rates = args.rates or ([500, 2000] if q else [1000, 5000, 20000])
    fleet_seconds = args.fleet_seconds or (10.0 if q else 20.0)
    busy = args.busy_tasks if args.busy_tasks is not None else (0 if q else 10000)
    out: list[str] = []
    failed = False
    t0 = time.monotonic()
    if "live" in args.only:
        print("## Live work\n", flush=True)
        results = live.run(sizes, nodes=args.nodes, sites=args.sites, clients=args.clients,
                           timeout=args.timeout, scrape=args.scrape)
        failed |= any(r.problems for r in results)
        out += [f"## Live work ({args.nodes} sim nodes on {args.sites} sites, SQLite, "
                f"{args.clients} submitters)", "", live.table(results), "",
                "Against the previous design (issue 16):", "", live.comparison(results), ""]
    if "submit" in args.only:
        print("\n## Submits\n", flush=True)
        if q:
            runs = [["--database", "sqlite", "--replicas", "1", "--seconds", "5"]]
        else:
            runs = [["--database", "postgresql", "--replicas", "1", "2"],
                    ["--database", "sqlite", "--replicas", "1"]]
        for argv_ in runs:
            failed |= submit.main(argv_) != 0
    if "fleet" in args.only:
        print("\n## Fleet\n", flush=True)
        results_f = [fleet.run(n, rates, seconds=fleet_seconds,
                               surge_timeout=args.surge_timeout, busy_tasks=busy)
                     for n in devices]
        failed |= any(f.missing_after_surge for f in results_f)
        out += ["## Fleet (simulated devices, private Mosquitto with its default settings)",
                "", fleet.table(results_f, busy), ""]
    print(f"\n# Control plane bench ({'quick' if q else 'full'}, "
          f"{time.monotonic() - t0:.0f} s; submit tables above)\n")
    print("\n".join(out))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
