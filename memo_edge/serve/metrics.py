"""Prometheus metrics of one service, in a registry of its own (several apps may live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("memo_edge_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("memo_edge_request_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=r)
        self.batch_images = Histogram("memo_edge_batch_images", "Images per batch (one backend call unless "
                                      "a request exceeds the largest batch)", buckets=_SIZES, registry=r)
        self.batch_requests = Histogram("memo_edge_batch_requests", "Requests coalesced per batch",
                                        buckets=_SIZES, registry=r)
        self.version = Gauge("memo_edge_package_version", "The package version being served", registry=r)
        self.swaps = Counter("memo_edge_version_swaps", "Hot swaps to another package version", registry=r)
        self.update_jobs = Counter("memo_edge_update_jobs", "Update jobs by outcome (refused: before any training)",
                                   ["outcome"], registry=r)
        self.update_running = Gauge("memo_edge_update_job_running", "1 while an update job runs", registry=r)

    def on_batch(self, images: int, requests: int) -> None:
        self.batch_images.observe(images)
        self.batch_requests.observe(requests)

    def on_swap(self, version: int) -> None:
        self.version.set(version)
        self.swaps.inc()

    def on_job(self, outcome: str | None) -> None:
        """A job started (``None``) or ended: succeeded, failed or refused."""
        self.update_running.set(1 if outcome is None else 0)
        if outcome is not None:
            self.update_jobs.labels(outcome).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
