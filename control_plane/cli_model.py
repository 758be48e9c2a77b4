"""``continuum model train|eval``: the learned placement predictors, over the REST API."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from control_plane import render
from control_plane.client import ApiError, Client, ConnectionFailed

app = typer.Typer(help="Train and evaluate the learned placement predictors.",
                  no_args_is_help=True)
console = render.make_console()
err = render.make_console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="CONTINUUM_URL",
                                     help="control-plane API URL")]
DEFAULT_URL = "http://127.0.0.1:8080"
JsonOpt = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]


def _request(url: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
    try:
        with Client(url, timeout=300.0) as c:
            return c._call(method, path, **kw)  # type: ignore[no-any-return]
    except (ApiError, ConnectionFailed) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from e


def _error(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"MAPE {value:.1f} %" if metric == "mape_percent" else f"MAE {value:.1f} s"


def models_table(view: dict[str, Any]) -> Table:
    """Targets with version, samples and held-out error (learned vs analytic): MAPE (%)
    for runtime and energy, MAE (s) for queue wait."""
    t = Table(title=f"model {view['version']} (fallback {view['fallback']})")
    for col in ("TARGET", "VERSION", "SAMPLES", "ERROR", "ANALYTIC", "SOURCE"):
        t.add_column(col)
    for x in view["targets"]:
        m = x["metric"]
        t.add_row(x["target"], f"v{x['version']}", str(x["samples"]), _error(x["error"], m),
                  _error(x["analyticError"], m), x["source"])
    if not view["targets"]:
        t.caption = "untrained: the analytic model answers (run `continuum model train`)"
    return t


@app.command("train")
def train(source: Annotated[str, typer.Option(
              help="auto (recorded runs + twin bootstrap), store (recorded only) or twin")
          ] = "auto",
          url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Train the predictors now, save a new version and serve it."""
    view = _request(url, "POST", "/v1/models:retrain", params={"source": source})
    if as_json:
        console.print_json(json.dumps(view))
        return
    on = view.get("trainedOn", {})
    console.print(f"trained on {on.get('recorded', 0)} recorded + {on.get('twin', 0)} twin runs")
    console.print(models_table(view))


@app.command("eval")
def evaluate(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Show the served model's accuracy per target (held-out error vs the analytic model)."""
    view = _request(url, "GET", "/v1/models")
    if as_json:
        console.print_json(json.dumps(view))
        return
    console.print(models_table(view))
