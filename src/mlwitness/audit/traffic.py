"""Traffic replay: many recorded calls re-run in one onnxruntime run and judged in bulk.

`replay_batch` groups recorded calls by model and layout, cuts them into chunks, and
replays each chunk: calls whose tensors are all numeric raw contents are stacked, run and
compared row by row without decoding (`replay_rows`); the others are decoded and run
concatenated (`replay_calls`, `run_concatenated`). A call that differs in a batch is
judged on a run of its own. `AuditService.replay_range` drives it and counts the results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mlwitness.audit.fidelity import ulps
from mlwitness.audit.replay import DecisionRule, Decoded, Parsed, compare, decoded, parse_call
from mlwitness.codec import DATATYPES, Tensor
from mlwitness.errors import MlwitnessError
from mlwitness.ledger.record import Record
from mlwitness.model.runtime import Runnable
from mlwitness.model.sandbox import Aborted

BATCH_ROWS = 8192  # rows per onnxruntime run when a model takes any batch size


@dataclass
class Outcome:
    """One record replayed: bit-identical or not, the largest absolute difference and
    distance in ulps, and (row, recorded decision, replayed decision) for every row whose
    decision changed."""

    record: Record
    identical: bool
    max_abs_diff: float
    flips: list[tuple[int, str, str]]
    rows: int
    max_ulps: float = 0.0


def outcome(record: Record, recorded: Sequence[Tensor], replayed: Sequence[Tensor],
            rule: DecisionRule, rows: int) -> Outcome:
    diffs = compare(recorded, replayed)
    identical = all(d.identical for d in diffs)
    flips: list[tuple[int, str, str]] = []
    if not identical:
        before, after = rule.decisions(recorded), rule.decisions(replayed)
        flips = [(i, a, b) for i, (a, b) in enumerate(zip(before, after, strict=False))
                 if a != b]
    return Outcome(record, identical, max((d.max_abs_diff for d in diffs), default=0.0),
                   flips, rows, max((d.max_ulps for d in diffs), default=0.0))


def _stack(spec: Any, parts: list[bytes], total: int) -> Tensor:
    dtype = DATATYPES[spec.datatype].dtype
    array = np.frombuffer(b"".join(parts), dtype=dtype).reshape(total, *spec.shape[1:])
    return Tensor(spec.name, spec.datatype, tuple(array.shape), array)


def _rows_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: are the bytes identical (NaN payloads, -0.0 and all)?"""
    n = a.shape[0]
    return np.all(a.reshape(n, -1).view(np.uint8) == b.reshape(n, -1).view(np.uint8), axis=1)


def replay_rows(model: Runnable, calls: list[Parsed], rule: DecisionRule
                ) -> list[Outcome | str] | None:
    """Replay calls that share one raw numeric layout (`Parsed.raw`) with one onnxruntime
    run over all their rows, compared with the recorded outputs in bulk. A call whose rows
    come back different is run again on its own, as it was served — a batch can round
    differently (onnxruntime's one-row MatMul takes another path) — and judged on that.
    Returns None when the model's outputs do not line up with the recorded ones (the
    caller then replays one call at a time); raises MlwitnessError if the model refuses
    the batch. A call that fails on its own gives a string: why."""
    first = calls[0]
    bounds = np.cumsum([0, *(c.rows for c in calls)])
    starts, total = bounds[:-1], int(bounds[-1])
    inputs = [_stack(spec, [c.request.raw_input_contents[i] for c in calls], total)
              for i, spec in enumerate(first.request.inputs)]
    requested = [o.name for o in first.request.outputs]
    replayed = {t.name: t.array for t in model.run(inputs, requested)}
    recorded = {spec.name: _stack(spec, [c.response.raw_output_contents[i] for c in calls],
                                  total) for i, spec in enumerate(first.response.outputs)}
    for name, old in recorded.items():
        new = replayed.get(name)
        if new is None or new.dtype != old.array.dtype or new.shape != old.array.shape:
            return None
    same = np.ones(len(calls), dtype=bool)
    for name, old in recorded.items():
        same &= np.logical_and.reduceat(_rows_equal(old.array, replayed[name]), starts)
    failed: dict[int, str] = {}
    names = list(replayed)
    differing = [int(i) for i in np.flatnonzero(~same)]
    slices = [(int(bounds[i]), int(bounds[i + 1])) for i in differing]
    # Plain arrays, all in one request: this runs for every call of a differing candidate.
    alone_runs = model.run_slices(names, {t.name: t.array for t in inputs}, slices) \
        if differing else []
    for i, (lo, hi), alone in zip(differing, slices, alone_runs, strict=True):
        if alone is None:  # model.run says why, in our terms
            try:
                model.run([replace(t, shape=(hi - lo, *t.shape[1:]), array=t.array[lo:hi])
                           for t in inputs], requested)
                reason = "onnxruntime failed on this call alone"
            except Aborted:
                raise
            except MlwitnessError as exc:
                reason = exc.message
            failed[int(i)] = f"seq {calls[i].record.seq}: {reason}"
            continue
        for name, array in zip(names, alone, strict=True):
            target = replayed[name]
            if array.shape != target[lo:hi].shape or array.dtype != target.dtype:
                return None
            if not target.flags.writeable:
                target = replayed[name] = target.copy()
            target[lo:hi] = array
    identical = np.ones(len(calls), dtype=bool)
    max_abs = np.zeros(len(calls))
    max_ulps = np.zeros(len(calls))
    for name, old in recorded.items():
        new = replayed[name]
        same = _rows_equal(old.array, new)
        identical &= np.logical_and.reduceat(same, starts)
        a = old.array.reshape(total, -1).astype(np.float64)
        b = new.reshape(total, -1).astype(np.float64)
        with np.errstate(invalid="ignore"):
            delta = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
        max_abs = np.maximum(max_abs, np.maximum.reduceat(delta.max(axis=1, initial=0.0),
                                                          starts))
        if not same.all():  # the distance only where something differs: the rare case
            distance = ulps(old.array.reshape(total, -1), new.reshape(total, -1))
            max_ulps = np.maximum(max_ulps, np.maximum.reduceat(
                distance.max(axis=1, initial=0.0), starts))
    flips: dict[int, list[tuple[int, str, str]]] = {}
    if not identical.all():
        old_tensors = list(recorded.values())
        new_tensors = [replace(t, array=replayed[t.name]) for t in old_tensors]
        kind, before = rule.keys(old_tensors)
        after = rule.keys(new_tensors)[1]
        for row in np.flatnonzero(before != after):
            at = int(np.searchsorted(bounds, row, side="right")) - 1
            flips.setdefault(at, []).append((int(row - bounds[at]),
                                             rule.text(kind, before[row]),
                                             rule.text(kind, after[row])))
    return [failed[i] if i in failed else
            Outcome(c.record, bool(identical[i]), float(max_abs[i]), flips.get(i, []), c.rows,
                    float(max_ulps[i]))
            for i, c in enumerate(calls)]


def chunks(calls: list[Parsed], rows: int) -> list[list[Parsed]]:
    chunks: list[list[Parsed]] = []
    current: list[Parsed] = []
    size = 0
    for item in calls:
        n = max(item.rows, 1)
        if current and size + n > rows:
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        chunks.append(current)
    return chunks


def run_concatenated(model: Runnable, calls: list[Decoded], requested: list[str]
                      ) -> list[list[Tensor]]:
    """Run many calls' rows in one onnxruntime call; split the outputs back per call."""
    if len(calls) == 1:
        return [model.run(calls[0].inputs, requested)]
    inputs = []
    for position, first in enumerate(calls[0].inputs):
        array = np.concatenate([c.inputs[position].array for c in calls])
        inputs.append(Tensor(first.name, first.datatype, array.shape, array))
    outputs = model.run(inputs, requested)
    sizes = [c.inputs[0].array.shape[0] for c in calls]
    bounds = np.cumsum([0, *sizes])
    split = []
    for i in range(len(calls)):
        part = []
        for tensor in outputs:
            array = tensor.array[bounds[i]:bounds[i + 1]]
            part.append(Tensor(tensor.name, tensor.datatype, array.shape, array))
        split.append(part)
    return split


def replay_batch(records: list[Record], candidate: str, rule: DecisionRule,
                 model_for: Callable[[str, str], Runnable]) -> Iterator[Outcome | str]:
    """Replay records (on `candidate`, or each on its recorded model), running rows of the
    same model, environment and layout together. Yields an Outcome per record, or why it
    could not be replayed. `model_for(sha256, env_id)` loads a model in a session with the
    options that environment records (raising MlwitnessError)."""
    groups: dict[tuple, list[Parsed]] = {}
    for record in records:
        try:
            call = parse_call(record)
        except Exception as exc:  # noqa: BLE001 — reported per record
            yield f"seq {record.seq}: {getattr(exc, 'message', exc)}"
            continue
        groups.setdefault((candidate or record.model_sha256, record.env_id, call.layout),
                          []).append(call)
    for (sha, env_id, layout), calls in groups.items():
        try:
            model = model_for(sha, env_id)
        except Aborted:
            raise
        except MlwitnessError as exc:
            for call in calls:
                yield f"seq {call.record.seq}: {exc.message}"
            continue
        signature = model.signature  # rows stack and split only along a dynamic first dim
        batchable = all(s.shape and s.shape[0] == -1
                        for s in (*signature.inputs, *signature.outputs))
        pieces = chunks(calls, BATCH_ROWS) if batchable else [[c] for c in calls]
        for chunk in pieces:
            outcomes = None
            if layout[2]:  # raw numeric contents: read and compare in bulk
                try:
                    outcomes = replay_rows(model, chunk, rule)
                except Aborted:
                    raise
                except MlwitnessError as exc:
                    outcomes = [f"seq {c.record.seq}: {exc.message}" for c in chunk]
            yield from outcomes if outcomes is not None else replay_calls(model, chunk, rule)


def replay_calls(model: Runnable, chunk: list[Parsed], rule: DecisionRule
                 ) -> Iterator[Outcome | str]:
    """The general way: decode each call, run the chunk's rows together, and judge a
    call whose outputs differ on a run of its own."""
    items: list[tuple[Record, Decoded]] = []
    for call in chunk:
        try:
            items.append((call.record, decoded(call)))
        except MlwitnessError as exc:
            yield f"seq {call.record.seq}: {exc.message}"
    if not items:
        return
    requested = items[0][1].requested
    try:
        outputs = run_concatenated(model, [c for _, c in items], requested)
    except Aborted:
        raise
    except MlwitnessError as exc:
        for record, _ in items:
            yield f"seq {record.seq}: {exc.message}"
        return
    for (record, done), replayed in zip(items, outputs, strict=True):
        rows = done.inputs[0].array.shape[0] if done.inputs and done.inputs[0].array.ndim \
            else 1
        result = outcome(record, done.outputs, replayed, rule, rows)
        if len(items) > 1 and not result.identical:
            # A batched run may round differently; judge this call on its own.
            try:
                alone = model.run(done.inputs, requested)
            except Aborted:
                raise
            except MlwitnessError as exc:
                yield f"seq {record.seq}: {exc.message}"
                continue
            result = outcome(record, done.outputs, alone, rule, rows)
        yield result
