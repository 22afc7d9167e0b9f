"""Recording a notebook's key numbers so that the runner can collect them from the executed notebook."""

from __future__ import annotations

import json
import math
from typing import Any

RESULTS_MIME = "application/vnd.llm-roadmap.results+json"


def _plain(value: Any) -> Any:
    """JSON-safe scalars: numpy and torch numbers become python numbers; floats are rounded to 6 significant digits."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float):
        return value if not math.isfinite(value) else float(f"{value:.6g}")
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    return str(value)


def record_results(**results: Any) -> dict[str, Any]:
    """Show the run's key numbers as a table and tag them for the runner (a custom MIME output in the notebook)."""
    clean = {key: _plain(value) for key, value in results.items()}
    width = max((len(k) for k in clean), default=0)
    table = "\n".join(f"{key:<{width}}  {value}" for key, value in clean.items())
    markdown = "| result | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in clean.items())
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display({RESULTS_MIME: clean, "text/markdown": markdown, "text/plain": table}, raw=True)
    else:
        print(table)
    return clean


def results_from_notebook(nb: dict | Any) -> dict[str, Any]:
    """Every value recorded with `record_results` in an executed notebook (later records win)."""
    found: dict[str, Any] = {}
    for cell in nb["cells"]:
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            data = output.get("data", {})
            if RESULTS_MIME in data:
                payload = data[RESULTS_MIME]
                found.update(json.loads(payload) if isinstance(payload, str) else payload)
    return found
