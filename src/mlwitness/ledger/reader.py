"""Reading the ledger for auditors: one record, filtered lists, windows for replay.

A reader gets DuckDB cursors from a factory: the sidecar's writer (after `sync()`, so that
every acknowledged record is visible) or a read-only connection to a copied ledger file.
"""

from __future__ import annotations

import builtins
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb

from mlwitness.errors import FailedPrecondition, InvalidInput, RecordNotFound
from mlwitness.ledger import erasure, schema, store
from mlwitness.ledger.filters import Filters
from mlwitness.ledger.record import Record

AMBIGUOUS_LISTED = 5  # records listed when a request id names several
_PAGE_TOKEN = re.compile(r"[0-9]{1,18}")  # a seq; str.isdigit() would take "²" too

_RECORD_COLUMNS = (
    "seq, kind, request_id, received_us, responded_us, model_name, model_version, "
    "model_sha256, env_id, peer, metadata, status, message, violations, detail, "
    "request, response, prev_hash, hash, coalesce(format, 1), salt, payload_commitment, "
    "erased_by"
)
_FIELDS = 23  # columns of _RECORD_COLUMNS


@dataclass
class StoredRecord:
    record: Record
    inputs: list[dict[str, Any]] = field(default_factory=list)  # one {name: value} per row
    outputs: list[dict[str, Any]] = field(default_factory=list)


def _record(row: tuple) -> Record:
    return Record(
        seq=row[0], kind=row[1], request_id=row[2], received_us=row[3], responded_us=row[4],
        model_name=row[5], model_version=row[6], model_sha256=row[7], env_id=row[8],
        peer=row[9], metadata=row[10], status=row[11], message=row[12], violations=row[13],
        detail=row[14], request=bytes(row[15]), response=bytes(row[16]),
        prev_hash=bytes(row[17]), hash=bytes(row[18]), format=row[19],
        salt=bytes(row[20] or b""), payload_commitment=bytes(row[21] or b""),
        erased_by=row[22] or 0,
    )


def _merge_rows(numeric: list | None, text: list | None) -> list[dict[str, Any]]:
    rows = [dict(m) for m in (numeric or [])]
    for index, m in enumerate(text or []):
        if index < len(rows):
            rows[index].update(m)
        else:
            rows.append(dict(m))
    return rows


class LedgerReader:
    def __init__(
        self,
        cursor: Callable[[], duckdb.DuckDBPyConnection],
        barrier: Callable[[], Any] = lambda: None,
        *,
        model_cache: int = 8,
    ) -> None:
        self._cursor = cursor
        self._barrier = barrier
        self._models: OrderedDict[str, store.StoredModel] = OrderedDict()
        self._environments: dict[str, dict[str, Any]] = {}
        self._model_cache = model_cache
        self._lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor that sees every record acknowledged so far."""
        self._barrier()
        return self._cursor()

    def stored_cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor on what is loaded now, without waiting for acknowledged records: for
        what only ever covers loaded records (the Merkle tree and its checkpoints)."""
        return self._cursor()

    def get(self, request_id: str = "", seq: int = 0, *, rows: bool = True) -> StoredRecord:
        """One record by request id or seq; `rows=False` skips the decoded per-row columns
        (replay reads the request and response bytes only). An erased record is refused:
        FailedPrecondition naming the admin record that erased it and why (`get_as_stored`
        gives it as it is stored, without its payload).

        A request id names whatever the caller sent, so several records may carry it (a
        retry after UNAVAILABLE, a client that reuses ids). Picking one of them would answer
        a question about a decision the auditor did not mean: that is FailedPrecondition,
        listing each record's seq and status so the auditor can ask for `seq:N`."""
        if not request_id and seq <= 0:
            raise InvalidInput("give a request id or a positive seq")
        if request_id:
            seq = self._seq_of(request_id)
        return self._fetch("seq = ?", [seq], f"no record with seq {seq}", rows=rows)

    def get_as_stored(self, request_id: str = "", seq: int = 0) -> StoredRecord:
        """One record as `get` finds it, an erased one too (with its payload commitment and
        `erased_by`, and nothing of its payload): for what proves a record's place in the
        chain, not its content."""
        if not request_id and seq <= 0:
            raise InvalidInput("give a request id or a positive seq")
        if request_id:
            seq = self._seq_of(request_id)
        return self._fetch("seq = ?", [seq], f"no record with seq {seq}", rows=False,
                           erased=True)

    def _fetch(self, where: str, params: builtins.list[Any], missing: str, *, rows: bool,
               erased: bool = False) -> StoredRecord:
        """The one record `where` selects; RecordNotFound saying `missing` if none, and
        FailedPrecondition for an erased one unless `erased`."""
        extra = ", inputs, inputs_text, outputs, outputs_text" if rows else ""
        sql = f"SELECT {_RECORD_COLUMNS}{extra} FROM entries WHERE {where}"
        # Records never change once stored, so one found without waiting for the loader is
        # the answer; only a miss needs the barrier (it may be acknowledged, not yet loaded).
        found = self._cursor().execute(sql, params).fetchall()
        if not found:
            found = self.cursor().execute(sql, params).fetchall()
        if not found:
            raise RecordNotFound(missing)
        row = found[0]
        if row[22] and not erased:  # erased_by
            raise erasure.refusal(self._cursor(), row[0], row[22])
        if not rows:
            return StoredRecord(_record(row))
        return StoredRecord(_record(row[:_FIELDS]), _merge_rows(row[_FIELDS], row[_FIELDS + 1]),
                            _merge_rows(row[_FIELDS + 2], row[_FIELDS + 3]))

    def _seq_of(self, request_id: str) -> int:
        """The seq of the one record with this request id. Always behind the barrier: a
        retry's record may be acknowledged and not yet loaded."""
        found = self.cursor().execute(
            "SELECT seq, status FROM entries WHERE request_id = ? ORDER BY seq LIMIT ?",
            [request_id, AMBIGUOUS_LISTED + 1],
        ).fetchall()
        if not found:
            raise RecordNotFound(f"no record with request id {request_id!r}")
        if len(found) > 1:
            listed = ", ".join(f"seq:{s} {status}" for s, status in found[:AMBIGUOUS_LISTED])
            more = " and more" if len(found) > AMBIGUOUS_LISTED else ""
            raise FailedPrecondition(
                f"request id {request_id!r} names more than one record ({listed}{more}); "
                "ask for one by seq:N"
            )
        return found[0][0]

    def list(self, filters: Filters, page_size: int = 50, page_token: str = ""
             ) -> tuple[list[dict[str, Any]], str]:
        """Newest first. The page token is the seq to continue below."""
        page_size = max(1, min(page_size or 50, 1000))
        where, params = filters.where()
        if page_token:
            if not _PAGE_TOKEN.fullmatch(page_token):
                raise InvalidInput(f"bad page token {page_token[:40]!r}: give the "
                                   "next_page_token of the previous page")
            where += " AND seq < ?"
            params.append(int(page_token))
        rows = self.cursor().execute(
            "SELECT seq, request_id, received_us, model_name, model_sha256, status, "
            f"responded_us - received_us, peer, {schema.BATCH_SIZE}, outputs[1], "
            f"coalesce(erased_by, 0) FROM entries WHERE {where} ORDER BY seq DESC LIMIT ?",
            [*params, page_size + 1],
        ).fetchall()
        more = len(rows) > page_size
        rows = rows[:page_size]
        keys = ("seq", "request_id", "received_us", "model_name", "model_sha256", "status",
                "latency_us", "caller", "batch_size", "first_output", "erased_by")
        items = [dict(zip(keys, row, strict=True)) for row in rows]
        for item in items:
            item["first_output"] = dict(item["first_output"] or {})
        return items, (str(items[-1]["seq"]) if more and items else "")

    def window(self, filters: Filters, batch: int = 4096) -> Iterator[builtins.list[Record]]:
        """Answered inference records in a window, oldest first, in batches, erased ones
        left out (nothing of their call is left to run). Only what a replay needs is read:
        seq, kind, request id, status, model, environment, request and response."""
        where, params = filters.where()
        cursor = self.cursor().execute(
            "SELECT seq, kind, request_id, status, message, model_sha256, env_id, request, "
            f"response FROM entries WHERE {where} AND status = 'OK' AND erased_by IS NULL "
            "ORDER BY seq",
            params,
        )
        while rows := cursor.fetchmany(batch):
            yield [Record(seq=r[0], kind=r[1], request_id=r[2], status=r[3], message=r[4],
                          model_sha256=r[5], env_id=r[6], request=r[7], response=r[8])
                   for r in rows]

    def count(self, filters: Filters) -> int:
        where, params = filters.where()
        return int(self.cursor().execute(
            f"SELECT count(*) FROM entries WHERE {where} AND status = 'OK' "
            "AND erased_by IS NULL", params
        ).fetchall()[0][0])

    def model(self, sha256: str) -> store.StoredModel:
        with self._lock:
            if sha256 in self._models:
                self._models.move_to_end(sha256)
                return self._models[sha256]
        model = store.get_model(self._cursor(), sha256)
        with self._lock:
            self._models[sha256] = model
            while len(self._models) > self._model_cache:
                self._models.popitem(last=False)
        return model

    def resolve_model(self, text: str) -> str:
        """The full SHA-256 of the stored model a hash or hash prefix names (any case)."""
        return store.resolve_model(self._cursor(), text)

    def environment(self, env_id: str) -> dict[str, Any]:
        """An environment fingerprint by id (content-addressed, so cached for good)."""
        if not env_id:
            return {}
        if env_id not in self._environments:
            self._environments[env_id] = store.get_environment(self._cursor(), env_id)
        return self._environments[env_id]


def detail_json(**fields: Any) -> str:
    return json.dumps(fields, sort_keys=True, default=str)
