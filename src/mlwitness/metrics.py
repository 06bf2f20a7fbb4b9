"""Prometheus metrics (`--metrics-port`, default 9090; 0 turns them off).

Per-call metrics are counted on the inference path with pre-bound label children; ledger
figures are read from the writer's counters at scrape time, so they cost the hot path
nothing. The drift gauges show a drift report that the server works out every
--drift-interval (`refresh_drift`), the quality gauges the figures it works out every
--quality-interval (`refresh_quality`): this module computes no statistics itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("mlwitness")

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)

# name → help: docs/monitoring.md's metrics table is checked against this.
DOCUMENTED = {
    "mlwitness_requests_total": "ModelInfer calls by model and gRPC status",
    "mlwitness_request_latency_seconds": "ModelInfer latency, record durable included",
    "mlwitness_guard_violations_total": "guard violations by guard, column and kind",
    "mlwitness_rate_estimate": "decision rate over a rate guard's window (point estimate)",
    "mlwitness_rate_interval_low": "lower Wilson bound of a rate guard's window",
    "mlwitness_rate_interval_high": "upper Wilson bound of a rate guard's window",
    "mlwitness_rate_breach": "1 while a rate guard's interval lies outside its bounds",
    "mlwitness_drift_score": "latest drift statistic per feature and kind vs the baseline",
    "mlwitness_drift_detected": "1 when a feature's latest drift verdict (of that kind) is "
                                "drift",
    "mlwitness_outcome_coverage": "share of decision rows in the quality window with an "
                                  "outcome (--quality-label)",
    "mlwitness_quality_outcomes": "decision rows with an outcome behind the quality figures",
    "mlwitness_quality": "latest model quality figure over the quality window, by metric "
                         "(accuracy, precision, recall, roc_auc, brier)",
    "mlwitness_ledger_records_total": "records made durable in the journal",
    "mlwitness_ledger_flushes_total": "journal group commits (write + fdatasync)",
    "mlwitness_ledger_flush_seconds_total": "time spent in journal group commits",
    "mlwitness_ledger_loaded_total": "records loaded into DuckDB",
    "mlwitness_ledger_load_seconds_total": "time spent loading DuckDB batches",
    "mlwitness_ledger_rows_failed_total": "records loaded without decoded columns (inputs, "
                                          "outputs, parameters): they could not be built",
    "mlwitness_ledger_backlog": "records acknowledged but not yet in DuckDB",
    "mlwitness_ledger_last_commit_batch": "records in the latest journal group commit",
    "mlwitness_ledger_healthy": "1 while the ledger can commit records",
    "mlwitness_checkpoint_size": "tree size (records) of the latest checkpoint",
    "mlwitness_checkpoint_age_seconds": "seconds since the latest checkpoint was issued",
    "mlwitness_checkpoint_pending_records": "records loaded into DuckDB and not yet in a "
                                            "checkpoint",
    "mlwitness_checkpoint_published_size": "tree size of the latest checkpoint published "
                                           "to --checkpoint-dir",
    "mlwitness_checkpoint_published_age_seconds": "seconds since a checkpoint was last "
                                                  "published",
    "mlwitness_checkpoint_publish_failures_total": "publishing rounds to --checkpoint-dir "
                                                   "that failed (each is retried)",
    "mlwitness_checkpoint_stopped": "1 once checkpoints stopped: the ledger no longer gives "
                                    "the tree it published (see `mlwitness audit status`)",
    "mlwitness_archive_lag_seconds": "age of the oldest record loaded and not yet in a "
                                     "segment committed to --archive (0: none)",
    "mlwitness_archive_lag_records": "records loaded and not yet in a committed segment",
    "mlwitness_archive_archived_seq": "the chain's last record in a committed segment",
    "mlwitness_archive_failures": "consecutive failed attempts to ship (each retried with "
                                  "backoff; 0 once one succeeds)",
    "mlwitness_archive_segments_total": "segments shipped by this process",
    "mlwitness_archive_records_total": "records shipped by this process",
    "mlwitness_archive_cpu_seconds_total": "CPU time the shipper thread spent sealing and "
                                           "uploading: what archiving costs the pod",
}


# The drift statistics exported as gauges: numeric columns' then categorical columns'.
DRIFT_STATISTICS = ("psi", "ks_statistic", "js_distance", "wasserstein", "chi2_pvalue", "linf")


class DriftedColumn(Protocol):
    """One column of a drift report (analytics.drift.FeatureDrift)."""

    name: str
    kind: str  # "numeric" | "categorical"
    verdict: str
    statistics: dict[str, Any]


class _LedgerCollector(Collector):
    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def collect(self) -> Iterable[Any]:
        stats = self.writer.stats
        for name, value in (
            ("mlwitness_ledger_records", stats.appended),
            ("mlwitness_ledger_flushes", stats.flushes),
            ("mlwitness_ledger_flush_seconds", stats.flush_seconds),
            ("mlwitness_ledger_loaded", stats.loaded),
            ("mlwitness_ledger_load_seconds", stats.load_seconds),
            ("mlwitness_ledger_rows_failed", stats.undecoded),
        ):
            yield CounterMetricFamily(name, DOCUMENTED[name + "_total"], value=value)
        for name, value in (
            ("mlwitness_ledger_backlog", self.writer.backlog),
            ("mlwitness_ledger_last_commit_batch", stats.last_flush_batch),
            ("mlwitness_ledger_healthy", 1.0 if self.writer.healthy else 0.0),
        ):
            yield GaugeMetricFamily(name, DOCUMENTED[name], value=value)


class _CheckpointCollector(Collector):
    """Checkpoints and their publishing, read off the checkpointer at scrape time
    (ledger/checkpoints.py: `latest`, `state`; its publisher's `published_*`, `failures`).
    An age is left out until there is something to be old."""

    def __init__(self, checkpointer: Any) -> None:
        self.checkpointer = checkpointer

    def collect(self) -> Iterable[Any]:
        c = self.checkpointer
        now = time.time()
        latest = c.latest
        size = latest.size if latest is not None else 0
        yield self._gauge("mlwitness_checkpoint_size", size)
        if latest is not None:
            yield self._gauge("mlwitness_checkpoint_age_seconds",
                              max(0.0, now - latest.created_us / 1e6))
        yield self._gauge("mlwitness_checkpoint_pending_records",
                          max(0, c.ledger.loaded_seq - size))
        yield self._gauge("mlwitness_checkpoint_stopped", 1.0 if c.state == "stopped" else 0.0)
        publisher = c.publisher
        if publisher is None:
            return
        yield self._gauge("mlwitness_checkpoint_published_size", publisher.published_size)
        if publisher.published_us:
            yield self._gauge("mlwitness_checkpoint_published_age_seconds",
                              max(0.0, now - publisher.published_us / 1e6))
        name = "mlwitness_checkpoint_publish_failures"
        yield CounterMetricFamily(name, DOCUMENTED[name + "_total"], value=publisher.failures)

    @staticmethod
    def _gauge(name: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, DOCUMENTED[name], value=value)


class _ArchiveCollector(Collector):
    """Shipping to --archive, read off the shipper's status at scrape time
    (archive/shipper.py: ShipperStatus)."""

    def __init__(self, shipper: Any) -> None:
        self.shipper = shipper

    def collect(self) -> Iterable[Any]:
        s = self.shipper.status()
        for name, value in (
            ("mlwitness_archive_lag_seconds", s.lag_seconds),
            ("mlwitness_archive_lag_records", s.lag_records),
            ("mlwitness_archive_archived_seq", max(s.archived_seq, 0)),
            ("mlwitness_archive_failures", s.failures),
        ):
            yield GaugeMetricFamily(name, DOCUMENTED[name], value=value)
        for name, value in (("mlwitness_archive_segments", s.segments_shipped),
                            ("mlwitness_archive_records", s.records_shipped),
                            ("mlwitness_archive_cpu_seconds", s.cpu_seconds)):
            yield CounterMetricFamily(name, DOCUMENTED[name + "_total"], value=value)


class _BeforeScrape(Collector):
    """Runs hooks at the start of every scrape and yields no metric. Registered first, so
    gauges the hooks update are read after them."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def collect(self) -> Iterable[Any]:
        for hook in list(self.hooks):
            hook()
        return iter(())


class Metrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self._before_scrape = _BeforeScrape()
        self.registry.register(self._before_scrape)
        self.model = model
        self._requests = Counter("mlwitness_requests", DOCUMENTED["mlwitness_requests_total"],
                                 ["model", "status"], registry=self.registry)
        self._latency = Histogram("mlwitness_request_latency_seconds",
                                  DOCUMENTED["mlwitness_request_latency_seconds"], ["model"],
                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        self._latency_model = self._latency.labels(model)
        self._by_status: dict[str, Any] = {}
        self.violations = Counter("mlwitness_guard_violations",
                                  DOCUMENTED["mlwitness_guard_violations_total"],
                                  ["guard", "column", "kind"], registry=self.registry)
        rate = ["guard"]
        self.rate_estimate = Gauge("mlwitness_rate_estimate",
                                   DOCUMENTED["mlwitness_rate_estimate"], rate,
                                   registry=self.registry)
        self.rate_low = Gauge("mlwitness_rate_interval_low",
                              DOCUMENTED["mlwitness_rate_interval_low"], rate,
                              registry=self.registry)
        self.rate_high = Gauge("mlwitness_rate_interval_high",
                               DOCUMENTED["mlwitness_rate_interval_high"], rate,
                               registry=self.registry)
        self.rate_breach = Gauge("mlwitness_rate_breach", DOCUMENTED["mlwitness_rate_breach"],
                                 rate, registry=self.registry)
        # `kind` keeps apart the two analyses of one column: a label is judged as numbers
        # and as categories, and their statistics and verdicts are not one series.
        self.drift_score = Gauge("mlwitness_drift_score", DOCUMENTED["mlwitness_drift_score"],
                                 ["feature", "kind", "statistic"], registry=self.registry)
        self.drift_detected = Gauge("mlwitness_drift_detected",
                                    DOCUMENTED["mlwitness_drift_detected"], ["feature", "kind"],
                                    registry=self.registry)
        self.outcome_coverage = Gauge("mlwitness_outcome_coverage",
                                      DOCUMENTED["mlwitness_outcome_coverage"],
                                      registry=self.registry)
        self.quality_outcomes = Gauge("mlwitness_quality_outcomes",
                                      DOCUMENTED["mlwitness_quality_outcomes"],
                                      registry=self.registry)
        self.quality = Gauge("mlwitness_quality", DOCUMENTED["mlwitness_quality"], ["metric"],
                             registry=self.registry)
        self._server: Any = None

    def observe(self, status: str, seconds: float) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._requests.labels(self.model, status)
        child.inc()
        self._latency_model.observe(seconds)

    def show_drift(self, features: Iterable[DriftedColumn]) -> None:
        """Replace the drift gauges with one report's columns (a column without data this
        time shows nothing, rather than its last value)."""
        self.drift_score.clear()
        self.drift_detected.clear()
        for feature in features:
            for statistic in DRIFT_STATISTICS:
                value = feature.statistics.get(statistic)
                if isinstance(value, int | float):
                    self.drift_score.labels(feature.name, feature.kind, statistic).set(value)
            self.drift_detected.labels(feature.name, feature.kind).set(
                1.0 if feature.verdict == "drift" else 0.0)

    def show_quality(self, coverage: float | None, outcomes: int,
                     figures: dict[str, float | None]) -> None:
        """Replace the quality gauges with one computation's figures (an undefined figure,
        e.g. precision without a positive decision, shows nothing rather than its last
        value)."""
        self.outcome_coverage.set(coverage if coverage is not None else math.nan)
        self.quality_outcomes.set(outcomes)
        self.quality.clear()
        for metric, value in figures.items():
            if value is not None:
                self.quality.labels(metric).set(value)

    def before_scrape(self, hook: Callable[[], None]) -> None:
        """Call `hook` at each scrape, before any metric is read (e.g. to age gauges)."""
        self._before_scrape.hooks.append(hook)

    def watch_ledger(self, writer: Any) -> None:
        self.registry.register(_LedgerCollector(writer))

    def watch_checkpoints(self, checkpointer: Any) -> None:
        self.registry.register(_CheckpointCollector(checkpointer))

    def watch_archive(self, shipper: Any) -> None:
        self.registry.register(_ArchiveCollector(shipper))

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


Observer = Callable[[str, float], None]


async def refresh_quality(metrics: Metrics,
                          compute: Callable[[int], tuple[float | None, int,
                                                         dict[str, float | None]]],
                          interval_s: float) -> None:
    """Every `interval_s`, show `compute(until_us)` (coverage, rows with an outcome and the
    quality figures, worked out in a thread) on the quality gauges; a failure is logged
    and the gauges keep the last figures."""
    while True:
        await asyncio.sleep(interval_s)
        now = time.time_ns() // 1000
        try:
            coverage, outcomes, figures = await asyncio.to_thread(compute, now)
        except Exception:
            log.exception("periodic quality computation failed")
            continue
        metrics.show_quality(coverage, outcomes, figures)


async def refresh_drift(metrics: Metrics, compute: Callable[[int], Iterable[DriftedColumn]],
                        interval_s: float) -> None:
    """Every `interval_s`, show `compute(until_us)` (recent traffic's drift against the
    baseline, worked out in a thread) on the drift gauges. A computation that fails is
    logged and the gauges keep the last report."""
    while True:
        await asyncio.sleep(interval_s)
        now = time.time_ns() // 1000
        try:
            features = await asyncio.to_thread(compute, now)
        except Exception:
            log.exception("periodic drift computation failed")
            continue
        metrics.show_drift(features)
