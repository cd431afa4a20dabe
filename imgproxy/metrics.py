"""A tiny Prometheus registry: counters and summaries with labels, rendered as text format 0.0.4.

Hand-written (about 60 lines) rather than prometheus_client, whose default registry is global state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]

HELP = {
    "imgproxy_requests_total": "HTTP requests by route and status",
    "imgproxy_stage_seconds": "Time spent building each stage",
    "imgproxy_origin_fetches_total": "Originals fetched, by origin",
    "imgproxy_origin_errors_total": "Origin failures by kind",
    "imgproxy_image_errors_total": "Images ended in error, by error code",
    "imgproxy_cache_evictions_total": "Images evicted from the disk cache",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class Metrics:
    def __init__(self) -> None:
        self.counters: defaultdict[str, defaultdict[Labels, float]] = defaultdict(
            lambda: defaultdict(float)
        )
        self.summaries: defaultdict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self.gauges: dict[str, Callable[[], float]] = {}
        # Shown from the first scrape, before anything is evicted.
        self.counters["imgproxy_cache_evictions_total"][()] = 0.0

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.counters[name][tuple(sorted(labels.items()))] += amount

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        entry = self.summaries[name].setdefault(key, [0.0, 0.0])
        entry[0] += 1
        entry[1] += value

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """A value read when scraped (queue depth, cache bytes)."""
        self.gauges[name] = read

    def render(self, extra: dict[str, float] | None = None) -> str:
        lines: list[str] = []
        for name, series in sorted(self.counters.items()):
            lines += [f"# HELP {name} {HELP.get(name, name)}", f"# TYPE {name} counter"]
            lines += [f"{name}{_labels(k)} {v:g}" for k, v in sorted(series.items())]
        for name, summary in sorted(self.summaries.items()):
            lines += [f"# HELP {name} {HELP.get(name, name)}", f"# TYPE {name} summary"]
            for k, (count, total) in sorted(summary.items()):
                lines += [
                    f"{name}_count{_labels(k)} {count:g}",
                    f"{name}_sum{_labels(k)} {total:g}",
                ]
        values = {name: read() for name, read in self.gauges.items()}
        values.update(extra or {})
        for name, value in sorted(values.items()):
            lines += [f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
