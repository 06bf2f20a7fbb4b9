"""The report's stylesheet, inlined into its <style> element (no external fonts or files)."""

CSS = """
:root {
  --ink: #1b1f24; --soft: #525a63; --rule: #d5d9de; --faint: #f4f5f7; --accent: #1f3b63;
  --ok: #25633a; --ok-bg: #e5f1e8; --warn: #7d5200; --warn-bg: #fbefd5;
  --bad: #8e1f16; --bad-bg: #f9e1dd; --info: #3d4650; --info-bg: #eceef1;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0 auto; max-width: 1120px; padding: 28px 40px 56px; color: var(--ink);
  background: #fff; font: 14px/1.5 "Liberation Sans", "Helvetica Neue", Helvetica, Arial,
  "DejaVu Sans", sans-serif;
}
h1, h2, h3 { line-height: 1.25; color: var(--ink); }
h1 { font-size: 26px; font-weight: 600; margin: 2px 0 6px; letter-spacing: -0.01em; }
h2 {
  font-size: 19px; font-weight: 600; margin: 44px 0 12px; padding-bottom: 6px;
  border-bottom: 2px solid var(--accent);
}
h3 { font-size: 15px; font-weight: 600; margin: 26px 0 8px; }
p { margin: 0 0 10px; max-width: 78ch; }
code, pre, .mono { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas,
  monospace; font-size: 12px; }
pre { white-space: pre-wrap; word-break: break-all; background: var(--faint);
  border: 1px solid var(--rule); padding: 8px 10px; margin: 0; }
a { color: var(--accent); }
.masthead { border-bottom: 1px solid var(--rule); padding-bottom: 14px; }
.kicker { text-transform: uppercase; letter-spacing: 0.08em; font-size: 11.5px;
  color: var(--soft); margin: 0; }
.lede { color: var(--soft); margin: 0; max-width: none; }
nav ol { columns: 3; margin: 14px 0 0; padding-left: 20px; color: var(--soft); }
nav li { margin: 2px 0; }
.empty { color: var(--soft); font-style: italic; }
.note { color: var(--soft); font-size: 12.5px; }

table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums;
  font-size: 12.5px; margin: 0 0 14px; }
caption { text-align: left; font-weight: 600; font-size: 13.5px; color: var(--ink);
  padding: 6px 0 6px; caption-side: top; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--rule); vertical-align: top;
  text-align: left; }
thead th { border-bottom: 1.5px solid var(--ink); font-weight: 600; vertical-align: bottom; }
tbody th { font-weight: normal; }
tfoot th, tfoot td { border-top: 1.5px solid var(--ink); border-bottom: 0; font-weight: 600; }
.num { text-align: right; white-space: nowrap; }
.nowrap { white-space: nowrap; }
.facts { width: auto; min-width: 60%; }
.facts th { color: var(--soft); width: 13em; }
.facts td { overflow-wrap: anywhere; }
.findings td:nth-child(2) { white-space: nowrap; }
.hash { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 11.5px;
  overflow-wrap: anywhere; }
.scroll { max-height: 24em; overflow: auto; border-bottom: 1px solid var(--rule);
  margin-bottom: 14px; }
.scroll table { margin: 0; }
.scroll thead th { position: sticky; top: 0; background: #fff; }

.pill { display: inline-block; padding: 0 8px; border-radius: 9px; font-size: 11.5px;
  font-weight: 600; line-height: 18px; white-space: nowrap; }
.pill-ok { color: var(--ok); background: var(--ok-bg); }
.pill-attention { color: var(--warn); background: var(--warn-bg); }
.pill-fail { color: var(--bad); background: var(--bad-bg); }
.pill-info, .pill-none { color: var(--info); background: var(--info-bg); }

.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 28px;
  align-items: start; margin: 8px 0 18px; }
.pair.stack { grid-template-columns: minmax(0, 1fr); gap: 4px; }
figure { margin: 0 0 14px; }
figcaption { font-size: 12px; color: var(--soft); margin-top: 4px; }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart * { stroke-linejoin: round; stroke-linecap: butt; }
.feature { border-top: 1px solid var(--rule); padding-top: 4px; }
.feature h3 { display: flex; gap: 10px; align-items: baseline; }
.feature h3 .sub { font-weight: normal; color: var(--soft); font-size: 12.5px; }
footer { margin-top: 48px; padding-top: 12px; border-top: 1px solid var(--rule);
  color: var(--soft); font-size: 12px; }

@media screen and (max-width: 820px) {
  body { padding: 18px; }
  .pair { grid-template-columns: minmax(0, 1fr); }
  nav ol { columns: 1; }
}

@page { size: A4; margin: 16mm 14mm 16mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 9.5pt; }
  nav { display: none; }
  h2 { margin-top: 0; }
  section { break-before: page; }
  section#summary, section.no-data { break-before: auto; }
  h2, h3, caption { break-after: avoid; }
  figure, tr, .facts, .findings, .pill { break-inside: avoid; }
  .pair { gap: 6mm; }
  .scroll { max-height: none; overflow: visible; border: 0; }
  .scroll thead th { position: static; }
  table { font-size: 8pt; line-height: 1.3; }
  th, td { padding: 1px 5px; }
  thead { display: table-header-group; }  /* repeated on each page a table spans */
  a { color: inherit; text-decoration: none; }
}
"""
