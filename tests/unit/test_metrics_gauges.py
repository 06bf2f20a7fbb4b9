"""The drift gauges keep the two analyses of one column apart."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlwitness.analytics.drift import FeatureDrift
from mlwitness.metrics import Metrics


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = generate_latest(metrics.registry).decode()
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name}


def column(name: str, kind: str, verdict: str, **statistics: float) -> FeatureDrift:
    return FeatureDrift(name, "output", kind, 100, 0, 100, verdict, statistics=statistics)


def test_a_label_judged_as_numbers_and_as_categories_is_two_series() -> None:
    metrics = Metrics("credit")
    metrics.show_drift([column("label", "numeric", "ok", psi=0.01, ks_statistic=0.02),
                        column("label", "categorical", "drift", chi2_pvalue=1e-6, linf=0.2)])
    assert samples(metrics, "mlwitness_drift_detected") == {
        (("feature", "label"), ("kind", "numeric")): 0.0,
        (("feature", "label"), ("kind", "categorical")): 1.0,
    }
    scores = samples(metrics, "mlwitness_drift_score")
    assert scores[(("feature", "label"), ("kind", "numeric"), ("statistic", "psi"))] == 0.01
    assert scores[(("feature", "label"), ("kind", "categorical"),
                   ("statistic", "chi2_pvalue"))] == 1e-6
    assert len(scores) == 4


def test_a_new_report_replaces_the_gauges() -> None:
    metrics = Metrics("credit")
    metrics.show_drift([column("income", "numeric", "drift", psi=0.5)])
    metrics.show_drift([column("fico", "numeric", "ok", psi=0.01)])
    assert samples(metrics, "mlwitness_drift_detected") == {
        (("feature", "fico"), ("kind", "numeric")): 0.0}
