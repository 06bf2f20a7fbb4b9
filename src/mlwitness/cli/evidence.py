"""`mlwitness evidence verify F --key PUB [--model F.onnx]`: check an evidence bundle
offline — no ledger, no server — with the spec's verifier (`mlwitness.evidence.bundle_check`).

Exit 0: the bundle proves its decision (and, with a model, the re-run is bit-identical);
1: it does not (the first check that failed is named), or the re-run differs;
2: usage, or a file that cannot be read as a bundle.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from mlwitness.evidence import bundle_check as bc
from mlwitness.evidence import check


def _fail(message: str, code: int) -> int:
    print(f"mlwitness evidence verify: {message}", file=sys.stderr)
    return code


def _read(path: str, what: str, limit: int) -> bytes:
    """A file's bytes, up to `limit` (OSError, with its name, beyond it)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{what} {path} is larger than {limit} bytes")
    return data


def _keys(given: list[str]) -> list[str]:
    """Verifier keys: each --key a key itself or a file of them, one a line."""
    keys: list[str] = []
    for value in given:
        path = Path(value)
        if path.is_file():
            text = _read(value, "--key", 1 << 20).decode("utf-8", "replace")
            keys += [line.strip() for line in text.splitlines() if line.strip()]
        else:
            keys.append(value.strip())
    for key in keys:
        check.parse_verifier_key(key)  # VerificationError: said as a usage error
    return keys


def verify(args: argparse.Namespace) -> int:
    try:
        keys = _keys(args.key)
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(f"--key: {exc}", 2)
    except check.VerificationError as exc:
        return _fail(f"--key: not a verifier key (name+id+key, as `mlwitness keygen` "
                     f"prints): {exc}", 2)
    try:
        bundle = bc.load(_read(args.bundle, "bundle", bc.MAX_BUNDLE_BYTES))
        model = _read(args.model, "--model", bc.MAX_BUNDLE_BYTES) if args.model else None
    except OSError as exc:
        return _fail(str(exc), 2)
    except bc.BundleError as exc:
        return _fail(f"{args.bundle} is not an evidence bundle: {exc}", 2)
    try:
        report = bc.verify(bundle, keys)
        rerun = _rerun(bundle, model)
    except check.VerificationError as exc:
        return _invalid(str(exc), args.json)
    except (TypeError, KeyError, AttributeError, ValueError) as exc:  # a check missed a type
        return _invalid(f"malformed bundle ({type(exc).__name__}: {exc})", args.json)
    ok = rerun is None or rerun.identical
    if args.json:
        print(json.dumps(_as_json(report, rerun), indent=2))
        return 0 if ok else 1
    print(f"record        seq {report.seq}, request id {report.request_id!r}")
    for line in report.checked:
        print(f"  OK          {line}")
    for line in report.notes:
        print(f"  note        {line}")
    if rerun is not None:
        for line in rerun.outputs:
            print(f"  rerun       {line}")
        if rerun.providers_missing:
            print(f"  note        recorded providers not available here: "
                  f"{', '.join(rerun.providers_missing)}")
        print("re-run        " + ("bit-identical" if rerun.identical else
                                   "NOT bit-identical (see above; the environment fields "
                                   "that select kernels are in the bundle's environment)"))
    print("VALID: the bundle proves this decision is in the signed checkpoint of size "
          f"{report.tree_size} of {report.origin}")
    return 0 if ok else 1


def _invalid(reason: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"valid": False, "failed": reason}, indent=2))
    print(f"NOT VALID: {reason}", file=sys.stderr)
    return 1


def _rerun(bundle: dict[str, Any], model: bytes | None) -> bc.Rerun | None:
    """Re-run on --model, else on the model the bundle carries (none: no re-run)."""
    if model is None and "onnx" in bundle["model"]:
        model = base64.b64decode(bundle["model"]["onnx"])
    return bc.rerun(bundle, model) if model is not None else None


def _as_json(report: bc.Report, rerun: bc.Rerun | None) -> dict[str, Any]:
    out: dict[str, Any] = {"valid": True, "seq": report.seq, "request_id": report.request_id,
                           "tree_size": report.tree_size, "origin": report.origin,
                           "signed_by": report.signed_by, "checked": report.checked,
                           "notes": report.notes}
    if rerun is not None:
        out["rerun"] = {"identical": rerun.identical, "outputs": rerun.outputs,
                        "providers_missing": rerun.providers_missing}
    return out


def add_commands(sub: Any) -> None:
    evidence = sub.add_parser("evidence", help="check an evidence bundle offline (no ledger, "
                              "no server)")
    commands = evidence.add_subparsers(dest="evidence_command", required=True,
                                       metavar="COMMAND")
    p = commands.add_parser("verify", help="check a bundle (`mlwitness audit evidence`) "
                            "against the log's verifier key; exit 1 if it does not hold")
    p.add_argument("bundle", help="the evidence bundle (JSON)")
    p.add_argument("--key", required=True, action="append", metavar="PUB",
                   help="the log's verifier key (as `mlwitness keygen` printed it), or a "
                   "file of them")
    p.add_argument("--model", metavar="F.onnx", help="also re-run the decision on this model "
                   "(its SHA-256 must be the record's) and say whether the outputs are "
                   "bit-identical (a bundle made --with-model is re-run on its own model)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=verify)
