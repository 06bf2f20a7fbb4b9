"""Hypothesis strategies for audit questions (mlwitness.audit.v1.AuditService) with
adversarial field values: unknown and negative seqs, weird ids and tokens, huge page sizes
and sweeps, NaN and infinite numbers, unknown features, hostile guard files and candidate
models that are not quite models.

`questions(known)` draws (RPC name, request bytes); `Known` holds what the ledger under
test really has (request ids, seqs, times, model hashes), so that examples reach past the
lookups into replay, drift and bias.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fuzz_requests import F64, I32, I64, huge_text, texts, weighted
from hypothesis import strategies as st

from mlwitness.protocol import audit_pb2 as apb

OUTPUT_COLUMNS = ("label", "probabilities_0", "probabilities_1", "probabilities")
STREAMING = frozenset({"ReplayRange"})


@dataclass(frozen=True)
class Known:
    request_ids: tuple[str, ...]
    seqs: tuple[int, ...]
    first_us: int
    last_us: int
    model_names: tuple[str, ...]
    model_shas: tuple[str, ...]
    features: tuple[str, ...]
    model_bytes: bytes  # a model the ledger stores: mutated into candidate uploads
    guards: str  # a valid guard file for this model


def refs(known: Known) -> st.SearchStrategy[apb.RecordRef]:
    seqs = weighted((6, st.sampled_from(known.seqs)), (2, I64),
                    (1, st.sampled_from([0, -1, 2**63 - 1, -(2**63)])))
    ids = texts(*known.request_ids, "seq:1", "seq:-1", "seq:x", weight=10)
    return weighted((4, st.builds(lambda s: apb.RecordRef(seq=s), seqs)),
                    (4, st.builds(lambda i: apb.RecordRef(request_id=i), ids)),
                    (1, st.just(apb.RecordRef())))


def times(known: Known) -> st.SearchStrategy[int]:
    span = st.integers(known.first_us - 1_000_000, known.last_us + 1_000_000)
    return weighted((4, st.just(0)), (4, span), (2, I64),
                    (1, st.sampled_from([-1, 2**63 - 1, -(2**63)])))


def models(known: Known) -> st.SearchStrategy[str]:
    prefixes = [sha[:n] for sha in known.model_shas for n in (1, 5, 6, 12, 64)]
    return weighted((6, st.just("")), (4, texts(*known.model_names, *prefixes, weight=10)),
                    (1, st.sampled_from([s.upper() for s in known.model_shas])))


def candidates(known: Known) -> st.SearchStrategy[bytes]:
    """Candidate model uploads: none mostly; else junk, or the stored model damaged."""

    def damaged(data: bytes, at: int, bit: int, cut: bool) -> bytes:
        at %= len(data)
        if cut:
            return data[:at]
        out = bytearray(data)
        out[at] ^= 1 << bit
        return bytes(out)

    broken = st.builds(damaged, st.just(known.model_bytes), st.integers(0, 2**20),
                       st.integers(0, 7), st.booleans())
    return weighted((12, st.just(b"")), (1, st.binary(min_size=1, max_size=64)), (2, broken))


def hostile_guards(known: Known) -> st.SearchStrategy[tuple[str, str]]:
    """(toml, json) pairs for SetGuards: valid, bent (bounds NaN, inverted, huge windows,
    unknown keys and columns), deeply nested, huge, both fields or neither."""
    valid = known.guards
    numbers = st.sampled_from(["nan", "inf", "-inf", "1e400", "-0.0", "9" * 400,
                               "170141183460469231731687303715884105727", "0", "-1"])

    def bend(number: str, key: str) -> str:
        for field in ("min = 0.0", "max = 500000.0", "window = 50", "min_samples = 10",
                      "min = 0.25"):
            if field.startswith(key):
                return valid.replace(field, f"{key} = {number}", 1)
        return valid + f"\n{key} = {number}\n"

    bent = st.builds(bend, numbers, st.sampled_from(["min", "max", "window", "min_samples",
                                                     "confidence", "unknown"]))
    feature = st.builds(lambda name: f"version = 1\n[features.{json.dumps(name)}]\nmin = 1\n",
                        texts(*known.features, *OUTPUT_COLUMNS))
    deep = st.integers(10, 100_000).map(lambda d: "version = 1\nx = " + "[" * d + "]" * d)
    many = st.integers(100, 20_000).map(
        lambda n: "version = 1\n" + "".join(f"[features.f{i}]\nmin = {i}\n" for i in range(n)))
    toml = weighted((3, st.just(valid)), (4, bent), (2, feature), (1, deep), (1, many),
                    (2, st.text(max_size=200)),
                    (1, st.sampled_from(["version = 2", "version = 1\nmode = 'enforce'",
                                         "[[rates]]\n" * 3, "= = =", "\x00"])))
    deep_json = st.integers(10, 100_000).map(lambda d: "[" * d + "]" * d)
    nan_bound = json.dumps({"version": 1, "features": {"income": {"min": 0,
                                                                   "max": float("nan")}}})
    as_json = weighted((2, st.just(nan_bound)), (1, deep_json), (2, st.text(max_size=100)))
    return weighted((8, st.tuples(toml, st.just(""))), (3, st.tuples(st.just(""), as_json)),
                    (1, st.tuples(toml, as_json)), (1, st.just(("", ""))))


def _sweep_values() -> st.SearchStrategy[list[float]]:
    return weighted((6, st.just([])), (3, st.lists(F64, max_size=30)),
                    (1, st.integers(10_001, 200_000).map(lambda n: [float(i) for i in range(n)])))


def messages(known: Known) -> dict[str, st.SearchStrategy[Any]]:
    """RPC name -> strategy of its request message."""
    t, m = times(known), models(known)
    features = texts(*known.features, "0", "5", "6", "-1", "99", *OUTPUT_COLUMNS, weight=10)
    outputs = texts("", *OUTPUT_COLUMNS, weight=10)
    page_sizes = weighted((4, st.integers(-2, 60)), (1, I32),
                          (1, st.sampled_from([1000, 1001, 2**31 - 1, -(2**31)])))
    tree_sizes = weighted((4, st.integers(-2, 120)), (2, I64),
                          (1, st.sampled_from([0, -1, 2**63 - 1, -(2**63)])))
    tokens = weighted((6, st.just("")), (2, st.text(max_size=40)), (1, huge_text()),
                      (1, st.sampled_from(["0", "-1", "9" * 40, "seq:5", "null", "{}", "=="])))
    return {
        "GetRecord": st.builds(apb.GetRecordRequest, ref=refs(known)),
        "ListRecords": st.builds(apb.ListRecordsRequest, since_us=t, until_us=t, model=m,
                                 status=texts("OK", "INVALID_ARGUMENT"),
                                 caller=texts("alice", "mallory", "ipv4:"),
                                 page_size=page_sizes, page_token=tokens),
        "Replay": st.builds(apb.ReplayRequest, ref=refs(known), candidate_sha256=m,
                            candidate_onnx=candidates(known)),
        "WhatIf": st.builds(apb.WhatIfRequest, ref=refs(known), overrides=st.lists(
            st.builds(apb.Override, feature=features, value=F64), max_size=4),
            all_rows=st.booleans(), row=weighted((4, st.integers(-1, 12)), (1, I32))),
        "Sensitivity": st.builds(
            apb.SensitivityRequest, ref=refs(known), feature=features, start=F64, stop=F64,
            steps=weighted((4, st.integers(-1, 40)), (1, I32),
                           (1, st.sampled_from([10_000, 10_001, 2**31 - 1]))),
            scale=texts("", "linear", "log", weight=10), values=_sweep_values(),
            row=weighted((4, st.integers(-1, 12)), (1, I32)), output=outputs,
            threshold=st.one_of(st.none(), F64)),
        "ReplayRange": st.builds(apb.ReplayRangeRequest, since_us=t, until_us=t, model=m,
                                 candidate_sha256=m, candidate_onnx=candidates(known),
                                 max_listed=weighted((4, st.integers(-1, 5)), (1, I32))),
        "VerifyLedger": st.just(apb.VerifyLedgerRequest()),
        "Drift": st.builds(apb.DriftRequest, since_us=t, until_us=t, model=m,
                           baseline=texts("", "latest", weight=10),
                           reference_since_us=t, reference_until_us=t,
                           features=st.lists(features, max_size=4)),
        "Bias": st.builds(
            apb.BiasRequest, attribute=texts("age_band", *known.features, "label", weight=10),
            favorable=texts("label=1", "probabilities_1>=0.5", "label=", ">=0.5",
                            "label=1=2", "probabilities_1>=nan", "probabilities_1>=inf",
                            "income>=1e400", weight=10),
            since_us=t, until_us=t, model=m, privileged=texts("", "18-25", "1", weight=10),
            bins=weighted((6, st.just([])), (3, st.lists(F64, max_size=12)),
                          (1, st.integers(1_000, 50_000).map(lambda n: [float(i)
                                                                        for i in range(n)])))),
        "Violations": st.builds(apb.ViolationsRequest, since_us=t, until_us=t, model=m),
        "GetGuards": st.just(apb.GetGuardsRequest()),
        "GetCheckpoint": st.builds(apb.GetCheckpointRequest, size=tree_sizes),
        "InclusionProof": st.builds(apb.InclusionProofRequest, ref=refs(known),
                                    tree_size=tree_sizes),
        "ConsistencyProof": st.builds(apb.ConsistencyProofRequest, from_size=tree_sizes,
                                      to_size=tree_sizes),
        "Status": st.just(apb.StatusRequest()),
        "SetGuards": hostile_guards(known).map(
            lambda pair: apb.SetGuardsRequest(toml=pair[0], json=pair[1])),
    }


def questions(known: Known, only: tuple[str, ...] = ()) -> st.SearchStrategy[tuple[str, bytes]]:
    """(RPC name, serialized request) over every RPC of the audit service (or `only`)."""
    strategies = messages(known)
    names = only or tuple(sorted(strategies))
    return st.sampled_from(names).flatmap(
        lambda name: strategies[name].map(lambda message: (name, message.SerializeToString())))


REQUESTS = {
    "GetRecord": apb.GetRecordRequest, "ListRecords": apb.ListRecordsRequest,
    "Replay": apb.ReplayRequest, "WhatIf": apb.WhatIfRequest,
    "Sensitivity": apb.SensitivityRequest, "ReplayRange": apb.ReplayRangeRequest,
    "VerifyLedger": apb.VerifyLedgerRequest, "Drift": apb.DriftRequest,
    "Bias": apb.BiasRequest, "Violations": apb.ViolationsRequest,
    "GetGuards": apb.GetGuardsRequest, "SetGuards": apb.SetGuardsRequest,
    "GetCheckpoint": apb.GetCheckpointRequest, "InclusionProof": apb.InclusionProofRequest,
    "ConsistencyProof": apb.ConsistencyProofRequest, "Status": apb.StatusRequest,
}
