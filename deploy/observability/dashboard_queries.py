"""The PromQL of a Grafana dashboard: every panel's queries, with Grafana's variables filled in.

Grafana only shows a broken query as an empty panel; listing the expressions lets them be run
against a real Prometheus (see `dashboard_check`) before anyone opens the dashboard.
"""

from __future__ import annotations

import re

# Grafana's built-in variables, set to what a dashboard over a few minutes with a short scrape interval uses.
BUILTIN_VALUES = {"__rate_interval": "30s", "__interval": "30s", "__range": "5m", "__range_s": "300"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")  # ${name}, ${name:format}, $name, [[name]]


def dashboard_expressions(dashboard: dict) -> list[str]:
    """Every target's `expr`, in panel order, panels nested in rows included, each listed once."""
    found: list[str] = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            expr = target.get("expr", "").strip()
            if expr and expr not in found:
                found.append(expr)
    return found


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def template_values(dashboard: dict) -> dict[str, str]:
    """Each template variable's "All" value (or its current one): the widest query a user can pick."""
    values = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "datasource":
            continue  # chooses where queries go, never appears inside them
        if variable.get("includeAll") and variable.get("allValue"):
            values[variable["name"]] = variable["allValue"]
        elif isinstance(variable.get("current", {}).get("value"), str):
            values[variable["name"]] = variable["current"]["value"]
    return values


def render(expr: str, values: dict[str, str]) -> str:
    """The expression with every known variable replaced; unknown ones are left for the caller to report."""
    def value(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        return values.get(name, match.group(0))

    return _VARIABLE.sub(value, expr)


def unresolved_variables(expr: str) -> list[str]:
    return [next(group for group in m.groups() if group) for m in _VARIABLE.finditer(expr)]
