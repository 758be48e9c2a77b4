"""Parsing and checking of submitted workflow documents.

:func:`parse_document` turns a JSON or YAML body into a
:class:`~continuum.model.WorkflowDocument`; :func:`check_workflow` finds what the
schema cannot: duplicate and unknown task names, dependency cycles (named), inputs no
task produces, unknown datasets, and tasks no node of the federation could ever hold.
Every problem is a :class:`~continuum.errors.Problem` naming the field and the fix.

A task that reads another task's output depends on it, whether or not ``dependsOn``
says so: :func:`effective_dependencies` adds that edge.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from threading import Lock
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from continuum.errors import Problem, ValidationFailed
from continuum.model import Node, WorkflowDocument
from placement import never_fits

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")

MAX_DEPTH = 64
"""Deepest nesting of objects and lists a body may have (a workflow needs about 8)."""
MAX_YAML_NODES = 1_000_000
"""Most YAML nodes a body may expand to through aliases (``*a``): a "billion laughs"
body of a few hundred bytes is refused before it is built."""


def _too_deep(what: str) -> ValidationFailed:
    return ValidationFailed([Problem(["body"], f"the body {what}: flatten it (the limits are "
                                     f"{MAX_DEPTH} levels of nested objects and lists and "
                                     f"{MAX_YAML_NODES} YAML nodes)", "body_too_deep")])


def _check_json_depth(data: Any) -> None:
    """Raise :func:`_too_deep` when ``data`` nests more than :data:`MAX_DEPTH` levels
    (iteratively: a deep value never recurses here)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep(f"nests more than {MAX_DEPTH} levels")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items if isinstance(v, dict | list))


def _check_yaml_shape(body: bytes) -> None:
    """Walk the YAML event stream (the parser keeps its own stack: no recursion) and raise
    :func:`_too_deep` for nesting deeper than :data:`MAX_DEPTH` or more than
    :data:`MAX_YAML_NODES` nodes once aliases are expanded. Parse errors are left to the
    loader, which reports them with their position."""
    anchors: dict[str, tuple[int, int]] = {}  # anchor → (depth, expanded nodes)
    stack: list[list[Any]] = [[None, 0, 0]]  # [anchor, deepest child, nodes inside]

    def add(depth: int, nodes: int) -> None:
        top = stack[-1]
        top[1], top[2] = max(top[1], depth), top[2] + nodes
        if top[1] + len(stack) - 1 > MAX_DEPTH:
            raise _too_deep(f"nests more than {MAX_DEPTH} levels")
        if top[2] > MAX_YAML_NODES:
            raise _too_deep(f"expands to more than {MAX_YAML_NODES} nodes through aliases")

    try:
        for ev in yaml.parse(body, Loader=yaml.SafeLoader):
            if isinstance(ev, yaml.CollectionStartEvent):
                stack.append([ev.anchor, 0, 0])
                if len(stack) - 1 > MAX_DEPTH:
                    raise _too_deep(f"nests more than {MAX_DEPTH} levels")
            elif isinstance(ev, yaml.CollectionEndEvent):
                anchor, deepest, nodes = stack.pop()
                if anchor is not None:
                    anchors[anchor] = (deepest + 1, nodes + 1)
                add(deepest + 1, nodes + 1)
            elif isinstance(ev, yaml.ScalarEvent):
                if ev.anchor is not None:
                    anchors[ev.anchor] = (0, 1)
                add(0, 1)
            elif isinstance(ev, yaml.AliasEvent):
                add(*anchors.get(ev.anchor or "", (0, 1)))
    except yaml.YAMLError:
        return


def parse_body(body: bytes, content_type: str | None) -> Any:
    """Decode a request body as JSON or YAML (by ``Content-Type``; JSON when absent).

    Raises:
        ValidationFailed: the body is empty or not valid JSON/YAML (with line and column),
            or nests deeper than :data:`MAX_DEPTH` (type ``body_too_deep``, ``loc``
            ``["body"]``; checked before a YAML body is built).
    """
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    if not body.strip():
        raise ValidationFailed([Problem(["body"], "the request body is empty; send a "
                                        "Workflow document as JSON or YAML", "empty_body")])
    if ctype in YAML_TYPES:
        _check_yaml_shape(body)
        try:
            return yaml.safe_load(body)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValidationFailed([Problem(["body"], f"the body is not valid YAML{where}: "
                                            f"{getattr(e, 'problem', e)}", "yaml_invalid")]) from e
    try:
        data = orjson.loads(body)  # the fast path; errors are worded by json below
    except orjson.JSONDecodeError:
        data = _json_loads(body, ctype)
    _check_json_depth(data)
    return data


def _json_loads(body: bytes, ctype: str) -> Any:
    """``json.loads`` of a body orjson refused: what the standard parser accepts beyond
    it (``NaN``) is accepted as before, and errors say where, as before."""
    try:
        return json.loads(body)
    except RecursionError as e:
        raise _too_deep(f"nests more than {MAX_DEPTH} levels") from e
    except UnicodeDecodeError as e:
        raise ValidationFailed([Problem(["body"], f"the body is not UTF-8 text (byte "
                                        f"{e.start}): send a JSON or YAML document",
                                        "encoding_invalid")]) from e
    except json.JSONDecodeError as e:
        hint = (" (to send YAML, set Content-Type: application/yaml)"
                if ctype == "application/json" else "")
        raise ValidationFailed([Problem(["body"], f"the body is not valid JSON at line {e.lineno}, "
                                        f"column {e.colno}: {e.msg}{hint}", "json_invalid")]) from e


def pydantic_problems(e: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[Problem]:
    """Translate pydantic errors into problems with a fix in each message."""
    problems = []
    for err in e.errors():
        loc = [*prefix, *err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = (f"unknown field {str(err['loc'][-1])!r}: remove it or check its spelling "
                   "(field names are camelCase, see docs/workflows.md)")
        elif err["type"] == "missing":
            msg = f"field {str(err['loc'][-1])!r} is required"
        elif err["type"] == "literal_error" and err["loc"] and err["loc"][-1] in ("apiVersion", "kind"):
            msg = f"{err['loc'][-1]} must be {err['ctx']['expected']}, got {err['input']!r}"
        problems.append(Problem(loc, msg, err["type"]))
    return problems


def parse_document(body: bytes, content_type: str | None) -> WorkflowDocument:
    """Parse and schema-check a workflow body.

    Raises:
        ValidationFailed: with one problem per wrong field.
    """
    data = parse_body(body, content_type)
    if not isinstance(data, dict):
        raise ValidationFailed([Problem(["body"], "the body must be a Workflow object "
                                        "(apiVersion, kind, metadata, spec)", "not_an_object")])
    try:
        return WorkflowDocument.model_validate(data)
    except ValidationError as e:
        raise ValidationFailed(pydantic_problems(e)) from e


CACHED_BODY_BYTES = 64 << 10
"""Largest body whose parsed document :func:`parse_document_cached` keeps (bytes)."""
CACHED_BODIES = 256
"""How many parsed documents it keeps (least recently used first out): at most
``CACHED_BODIES × CACHED_BODY_BYTES`` (16 MiB) of bodies."""
_parsed: OrderedDict[tuple[bytes, str | None], WorkflowDocument] = OrderedDict()
_parsed_lock = Lock()


def parse_document_cached(body: bytes, content_type: str | None) -> WorkflowDocument:
    """:func:`parse_document`, remembered per body: a client that submits the same
    document again and again (a sweep, a benchmark, a retry) pays for JSON/YAML parsing
    and schema validation once. The document returned is shared between callers: read
    it, never change it. Bodies that fail are not remembered (each gets its 422).

    Raises:
        ValidationFailed: as :func:`parse_document`.
    """
    if len(body) > CACHED_BODY_BYTES:
        return parse_document(body, content_type)
    key = (body, content_type)
    with _parsed_lock:
        doc = _parsed.get(key)
        if doc is not None:
            _parsed.move_to_end(key)
            return doc
    doc = parse_document(body, content_type)
    with _parsed_lock:
        _parsed[key] = doc
        while len(_parsed) > CACHED_BODIES:
            _parsed.popitem(last=False)
    return doc


def producers(doc: WorkflowDocument) -> dict[str, str]:
    """Artifact name → name of the task that outputs it."""
    return {o.name: t.name for t in doc.spec.tasks for o in t.outputs}


def effective_dependencies(doc: WorkflowDocument) -> dict[str, list[str]]:
    """Task name → the tasks it waits for: ``dependsOn`` plus producers of its inputs."""
    made_by = producers(doc)
    deps: dict[str, list[str]] = {}
    for t in doc.spec.tasks:
        d = list(dict.fromkeys(t.depends_on))
        for i in t.inputs:
            p = made_by.get(i.name)
            if p is not None and p not in d and p != t.name:
                d.append(p)
        deps[t.name] = d
    return deps


def _find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a list of task names (first repeated at the end), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(deps, white)
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = grey
        stack.append(n)
        for m in deps.get(n, []):
            if m not in colour:
                continue
            if colour[m] == grey:
                return [*stack[stack.index(m):], m]
            if colour[m] == white and (c := visit(m)):
                return c
        stack.pop()
        colour[n] = black
        return None

    for n in deps:
        if colour[n] == white and (c := visit(n)):
            return c
    return None


def check_workflow(doc: WorkflowDocument, nodes: list[Node]) -> None:
    """Check what the schema cannot; ``nodes`` is the federation's current inventory.

    Raises:
        ValidationFailed: with every problem found.
    """
    problems: list[Problem] = []
    tasks = doc.spec.tasks
    names = [t.name for t in tasks]
    seen: dict[str, int] = {}
    for i, t in enumerate(tasks):
        if t.name in seen:
            problems.append(Problem(["spec", "tasks", i, "name"],
                                    f"task name {t.name!r} is used twice (tasks {seen[t.name]} "
                                    f"and {i}); give each task a unique name", "duplicate_task"))
        seen.setdefault(t.name, i)
    known = set(names)
    made_by: dict[str, str] = {}
    for i, t in enumerate(tasks):
        for j, o in enumerate(t.outputs):
            if o.name in made_by:
                problems.append(Problem(["spec", "tasks", i, "outputs", j, "name"],
                                        f"artifact {o.name!r} is already an output of task "
                                        f"{made_by[o.name]!r}; output names must be unique "
                                        "within a workflow", "duplicate_output"))
            made_by.setdefault(o.name, t.name)
    datasets = {d.name for d in doc.spec.datasets}
    for i, t in enumerate(tasks):
        for j, dep in enumerate(t.depends_on):
            if dep not in known:
                problems.append(Problem(["spec", "tasks", i, "dependsOn", j],
                                        f"task {t.name!r} depends on {dep!r}, which is not a task "
                                        f"of this workflow (tasks: {', '.join(names)})",
                                        "unknown_dependency"))
        for j, inp in enumerate(t.inputs):
            if inp.name not in made_by:
                outs = ", ".join(sorted(made_by)) or "none"
                problems.append(Problem(["spec", "tasks", i, "inputs", j, "name"],
                                        f"input {inp.name!r} of task {t.name!r} is not an output "
                                        f"of any task (declared outputs: {outs})",
                                        "unknown_input"))
        for j, ds in enumerate(t.datasets):
            if ds not in datasets:
                problems.append(Problem(["spec", "tasks", i, "datasets", j],
                                        f"dataset {ds!r} is not declared in spec.datasets "
                                        f"(declared: {', '.join(sorted(datasets)) or 'none'})",
                                        "unknown_dataset"))
    cycle = _find_cycle(effective_dependencies(doc))
    if cycle:
        i = names.index(cycle[0])
        problems.append(Problem(["spec", "tasks", i, "dependsOn"],
                                f"dependency cycle {' → '.join(cycle)}: remove one of these "
                                "dependencies (an input counts as a dependency on its producer)",
                                "dependency_cycle"))
    if nodes:
        verdicts: dict[tuple[float, int, int], str | None] = {}  # one look per request shape
        for i, t in enumerate(tasks):
            shape = (t.resources.cpu, t.resources.memory, t.resources.gpu)
            if shape not in verdicts:
                verdicts[shape] = never_fits(t, nodes)
            why = verdicts[shape]
            if why:
                problems.append(Problem(["spec", "tasks", i, "resources"],
                                        f"task {t.name!r} can never be placed: {why}; lower the "
                                        "request or register a site with larger nodes",
                                        "unsatisfiable_resources"))
    if problems:
        raise ValidationFailed(problems)
