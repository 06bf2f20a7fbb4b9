"""Questions over a window of decisions: drift (against a baseline or another window) and
bias (favorable-outcome rates by a protected attribute). The statistics are
`mlwitness.analytics`'; the full report travels as JSON beside the headline figures."""

from __future__ import annotations

import json
from typing import Any

from mlwitness.analytics.baseline import latest_baseline, load_baseline
from mlwitness.analytics.bias import bias_report
from mlwitness.analytics.drift import Window, drift_report
from mlwitness.audit.results import BiasGroup, BiasResult, DriftResult
from mlwitness.audit.trail import Asker, Trail
from mlwitness.errors import InvalidInput
from mlwitness.ledger.reader import LedgerReader


class Monitoring:
    def __init__(self, reader: LedgerReader, trail: Trail) -> None:
        self.reader = reader
        self.trail = trail

    def drift(self, asker: Asker, *, since_us: int = 0, until_us: int = 0, model: str = "",
              baseline: str = "", reference_since_us: int = 0, reference_until_us: int = 0,
              features: list[str] | None = None) -> DriftResult:
        with self.trail.audited(asker, since_us=since_us, until_us=until_us, model=model,
                                baseline=baseline, reference_since_us=reference_since_us,
                                reference_until_us=reference_until_us,
                                features=features) as summary:
            con = self.reader.cursor()
            reference: Any
            if reference_since_us or reference_until_us:
                if baseline:
                    raise InvalidInput("compare with a baseline or a reference window, "
                                       "not both")
                reference = Window(reference_since_us, reference_until_us)
                label = f"window {reference_since_us}..{reference_until_us}"
            else:
                reference = load_baseline(con, baseline or latest_baseline(con))
                label = f"baseline {reference.sha256}"
            report = drift_report(con, reference, since_us=since_us, until_us=until_us,
                                  model=model, columns=features or None).to_dict()
            drifted = list(dict.fromkeys(  # a label drifts as numbers and as categories
                f["name"] for f in report["features"] if f["verdict"] == "drift"))
            summary.update(verdict=report["verdict"], drifted=drifted, rows=report["rows"],
                           reference=label)
            return DriftResult(drift=report["verdict"] == "drift", drifted=drifted,
                               window_rows=report["rows"], reference=label,
                               report_json=json.dumps(report, sort_keys=True))

    def bias(self, asker: Asker, *, attribute: str, favorable: str, since_us: int = 0,
             until_us: int = 0, model: str = "", privileged: str = "",
             bins: list[float] | None = None) -> BiasResult:
        with self.trail.audited(asker, attribute=attribute, favorable=favorable,
                                since_us=since_us, until_us=until_us, model=model,
                                privileged=privileged, bins=bins or []) as summary:
            if not attribute or not favorable:
                raise InvalidInput("give an attribute (e.g. age_band) and a favorable outcome "
                                   "(e.g. label=1)")
            report = bias_report(self.reader.cursor(), attribute=attribute,
                                 favorable=favorable, since_us=since_us, until_us=until_us,
                                 model=model, privileged=privileged or None,
                                 bins=list(bins) if bins else None)
            summary.update(verdict=report.verdict, groups=len(report.groups))
            chi2 = report.chi2 or {}
            fisher = report.fisher or {}
            return BiasResult(
                attribute=attribute, favorable=favorable, privileged=report.privileged,
                groups=[BiasGroup(group=g.group, n=g.n, favorable=g.favorable, rate=g.rate,
                                  disparate_impact=g.disparate_impact,
                                  statistical_parity_difference=g.statistical_parity_difference,
                                  pvalue=g.pvalue, pvalue_holm=g.pvalue_holm)
                        for g in report.groups],
                chi2=chi2.get("statistic", 0.0), chi2_pvalue=chi2.get("pvalue", 1.0),
                dof=int(chi2.get("dof", 0)), has_fisher=bool(fisher),
                fisher_odds_ratio=fisher.get("odds_ratio", 0.0),
                fisher_pvalue=fisher.get("pvalue", 1.0),
                biased=report.verdict == "disparity", verdict=report.verdict,
                report_json=json.dumps(report.to_dict(), sort_keys=True),
            )
