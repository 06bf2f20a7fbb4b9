"""Generated from protos/ by `python scripts/gen_protos.py`. Do not edit by hand."""
