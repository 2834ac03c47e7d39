"""Runs every query of a Grafana dashboard against a live Prometheus and lists the ones that show nothing.

A misspelled metric, a label that does not exist or a syntax error all leave a Grafana panel
silently empty; here each becomes a failure naming the expression and why.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .dashboard_queries import BUILTIN_VALUES, dashboard_expressions, render, template_values, unresolved_variables


@dataclass(frozen=True)
class QueryFailure:
    expr: str  # as sent to Prometheus, variables filled in
    reason: str


def check_dashboard(prom_url: str, dashboard: dict, values: dict[str, str] | None = None,
                    timeout_s: float = 10.0) -> list[QueryFailure]:
    """Every dashboard query that errors, has an unfilled variable, or returns no (non-NaN) sample now."""
    filled = {**BUILTIN_VALUES, **template_values(dashboard), **(values or {})}
    failures = []
    for expr in dashboard_expressions(dashboard):
        query = render(expr, filled)
        reason = _why_empty(prom_url, query, timeout_s)
        if reason:
            failures.append(QueryFailure(query, reason))
    return failures


def _why_empty(prom_url: str, query: str, timeout_s: float) -> str | None:
    unknown = unresolved_variables(query)
    if unknown:
        return f"unresolved Grafana variables: {', '.join(unknown)}"
    answer = instant_query(prom_url, query, timeout_s)
    if answer.get("status") != "success":
        return f"{answer.get('errorType', 'error')}: {answer.get('error', answer)}"
    result = answer["data"]["result"]
    if not result:
        return "no data (empty result)"
    if all(math.isnan(value) for value in _values(answer["data"])):
        return "no data (every value NaN: nothing happened in the window)"
    return None


def instant_query(prom_url: str, query: str, timeout_s: float = 10.0) -> dict:
    """Prometheus's /api/v1/query answer; its JSON error body too, which comes with HTTP 400/422."""
    url = f"{prom_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            return json.load(exc)
        except ValueError:
            return {"status": "error", "errorType": f"HTTP {exc.code}", "error": exc.reason}


def _values(data: dict) -> list[float]:
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    if data["resultType"] == "matrix":
        return [float(value) for series in data["result"] for _, value in series["values"]]
    return [float(series["value"][1]) for series in data["result"]]
