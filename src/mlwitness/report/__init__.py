"""The auditor's report: one self-contained HTML file from a `ReportData` tree.

- `data`: the `ReportData` dataclass tree — header, volume, favourable rate, drift, bias,
  guard violations, quality, reviews, replay — aggregated (buckets, histograms, samples).
- `render`: `render(report) -> str`, the HTML document; `SECTION_IDS` are its sections' ids.
- `charts`: matplotlib figures as inline SVG (matplotlib is the optional extra
  `mlwitness[report]`; without it `render` raises `MatplotlibMissing` saying so).
- `markup`, `sections`, `style`: escaping and tables, the larger sections, the stylesheet.

Nothing here reads the ledger: the caller builds the `ReportData`.
"""

from mlwitness.report.charts import MatplotlibMissing
from mlwitness.report.data import (
    BiasGroup,
    BiasSection,
    DriftFeature,
    DriftSection,
    Environment,
    Header,
    Histogram,
    Model,
    QualityPoint,
    QualitySection,
    RateBound,
    RateSection,
    ReplayCheck,
    ReplaySection,
    ReportData,
    ReviewPoint,
    ReviewSection,
    Verification,
    ViolationSection,
    VolumeSection,
)
from mlwitness.report.render import SECTION_IDS, render

__all__ = [
    "SECTION_IDS",
    "BiasGroup",
    "BiasSection",
    "DriftFeature",
    "DriftSection",
    "Environment",
    "Header",
    "Histogram",
    "MatplotlibMissing",
    "Model",
    "QualityPoint",
    "QualitySection",
    "RateBound",
    "RateSection",
    "ReplayCheck",
    "ReplaySection",
    "ReportData",
    "ReviewPoint",
    "ReviewSection",
    "Verification",
    "ViolationSection",
    "VolumeSection",
    "render",
]
