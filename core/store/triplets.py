"""Triplets: (original image, instruction, edited image) plus optional target and mask.

A triplet's id is a content hash of (original pixels, edited pixels, instruction), so adding
the same triplet twice is a no-op that returns the same id; the first write's metadata
(category, split, source, meta) is kept. Bulk adds validate and hash every image, write the
image files, and then insert all rows in ONE transaction: a bad image anywhere in the batch
raises :class:`~core.images.ImageError` naming the item and leaves no rows behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tqdm.auto import tqdm

from core.instructions import InstructionError, check_instruction

from .base import (
    StoreBase,
    dumps,
    insert_image_rows,
    now,
    prepare_blob,
    require_row,
    require_text,
)
from .errors import StoreInputError
from .schema import REVIEW_STATUSES

TRIPLET_ID_CHARS = 16  # 64 bits of sha256: collision odds ~1e-8 at a million triplets
_IMAGE_FIELDS = ("original", "edited", "target", "mask")
_FIELDS = {
    "original",
    "edited",
    "instruction",
    "category",
    "target",
    "mask",
    "split",
    "source",
    "external_id",
    "meta",
}
_COLUMNS = (
    "id, instruction, category, original, edited, target, mask, split, source, external_id, "
    "meta, created_at"
)


def triplet_id(original: str, edited: str | None, instruction: str) -> str:
    """The content id of a triplet from its image hashes and instruction (exact string)."""
    h = hashlib.sha256(b"mrc-triplet-v1")
    for part in (original, edited or "", instruction):
        h.update(b"\0" + part.encode("utf-8"))
    return h.hexdigest()[:TRIPLET_ID_CHARS]


def _image_name(src: Any, field: str, where: str) -> str:
    if isinstance(src, (str, os.PathLike)):
        return f"{where}{field} image {os.fspath(src)!r}"
    return f"{where}{field} image"


class TripletsMixin(StoreBase):
    def add_triplet(
        self,
        original: Any,
        edited: Any,
        instruction: str,
        *,
        category: str | None = None,
        target: Any = None,
        mask: Any = None,
        split: str = "train",
        source: str = "",
        external_id: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Add one triplet (images: anything ``load_image`` accepts); return its id."""
        item = dict(
            original=original,
            edited=edited,
            instruction=instruction,
            category=category,
            target=target,
            mask=mask,
            split=split,
            source=source,
            external_id=external_id,
            meta=meta,
        )
        return self.add_triplets([item], progress=False, _where="the ")[0]

    def add_triplets(
        self,
        items: Iterable[Mapping[str, Any]],
        *,
        progress: bool = True,
        _where: str | None = None,
    ) -> list[str]:
        """Add many triplets (mappings with :meth:`add_triplet`'s argument names) atomically.

        Returns the ids in input order. Existing triplets are left as they are.
        """
        created = now()
        rows: list[dict[str, Any]] = []
        image_rows: dict[str, dict[str, Any]] = {}
        total = len(items) if isinstance(items, Sequence) else None
        bar = tqdm(items, total=total, desc="adding triplets", unit="triplet", disable=not progress)
        for i, item in enumerate(bar):
            where = _where if _where is not None else f"item {i}: "
            row, blobs = self._prepare_triplet(item, where, created)
            for blob in blobs:
                if blob.hash not in image_rows:
                    image_rows[blob.hash] = self._write_blob(blob, created)
            rows.append(row)
        with self.transaction() as db:
            insert_image_rows(db, list(image_rows.values()))
            db.conn.executemany(
                f"INSERT INTO triplets ({_COLUMNS}) VALUES "
                "(:id, :instruction, :category, :original, :edited, :target, :mask, :split, "
                ":source, :external_id, :meta, :created_at) ON CONFLICT(id) DO NOTHING",
                rows,
            )
        return [r["id"] for r in rows]

    def _prepare_triplet(self, item: Mapping[str, Any], where: str, created: str):
        if not isinstance(item, Mapping):
            raise StoreInputError(f"{where}a triplet must be a mapping, got {type(item).__name__}.")
        unknown = set(item) - _FIELDS
        if unknown:
            raise StoreInputError(
                f"{where}unknown triplet field(s) {sorted(unknown)}; expected {sorted(_FIELDS)}."
            )
        if item.get("original") is None:
            raise StoreInputError(f"{where}the original image is missing.")
        try:
            instruction = check_instruction(item.get("instruction"), f"{where}the instruction")
        except InstructionError as e:
            raise StoreInputError(str(e)) from None
        for field in ("category", "external_id"):
            if item.get(field) is not None and not isinstance(item[field], str):
                raise StoreInputError(
                    f"{where}{field} must be a string or None, got {item[field]!r}."
                )
        split = require_text(item.get("split", "train"), f"{where}split")
        source = item.get("source", "") or ""
        if not isinstance(source, str):
            raise StoreInputError(f"{where}source must be a string, got {source!r}.")
        meta = item.get("meta")
        if meta is not None and not isinstance(meta, Mapping):
            raise StoreInputError(f"{where}meta must be a mapping, got {type(meta).__name__}.")
        blobs, hashes = [], {}
        for field in _IMAGE_FIELDS:
            src = item.get(field)
            if src is None:
                hashes[field] = None
                continue
            blob = prepare_blob(src, mask=field == "mask", name=_image_name(src, field, where))
            blobs.append(blob)
            hashes[field] = blob.hash
        row = {
            "id": triplet_id(hashes["original"], hashes["edited"], instruction),
            "instruction": instruction,
            "category": item.get("category"),
            **hashes,
            "split": split,
            "source": source,
            "external_id": item.get("external_id"),
            "meta": dumps(dict(meta or {}), f"{where}meta"),
            "created_at": created,
        }
        return row, blobs

    def get_triplet(self, triplet_id: str) -> dict[str, Any]:
        """One triplet as a dict (``meta`` parsed; image fields are hashes, see ``image()``)."""
        with self.db() as db:
            row = require_row(db, "triplets", "id", triplet_id, "triplet")
        row["meta"] = json.loads(row["meta"])
        return row

    def _triplet_filters(
        self,
        split: str | None,
        category: str | None,
        source: str | None,
        status: str | Sequence[str] | None,
        labeled: bool | None,
    ) -> tuple[str, list[Any]]:
        where, params = [], []
        for col, value in (("split", split), ("category", category), ("source", source)):
            if value is not None:
                where.append(f"t.{col} = ?")
                params.append(value)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for s in statuses:
                if s not in REVIEW_STATUSES:
                    raise StoreInputError(
                        f"review status must be one of {', '.join(REVIEW_STATUSES)}; got {s!r}."
                    )
            where.append(f"l.status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if labeled is not None:
            where.append("l.triplet_id IS NOT NULL" if labeled else "l.triplet_id IS NULL")
        sql = "FROM triplets t LEFT JOIN labels l ON l.triplet_id = t.id"
        return (sql + (" WHERE " + " AND ".join(where) if where else "")), params

    def list_triplets(
        self,
        *,
        split: str | None = None,
        category: str | None = None,
        source: str | None = None,
        status: str | Sequence[str] | None = None,
        labeled: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Triplets in insertion order, with ``review_status`` and ``label_version`` (None if
        unlabeled). Filters combine with AND; ``status`` is a review status or a list of them."""
        body, params = self._triplet_filters(split, category, source, status, labeled)
        sql = f"SELECT t.*, l.status AS review_status, l.version AS label_version {body} "
        sql += "ORDER BY t.rowid LIMIT ? OFFSET ?"
        with self.db() as db:
            rows = list(db.query(sql, [*params, -1 if limit is None else int(limit), int(offset)]))
        for r in rows:
            r["meta"] = json.loads(r["meta"])
        return rows

    def count_triplets(
        self,
        *,
        split: str | None = None,
        category: str | None = None,
        source: str | None = None,
        status: str | Sequence[str] | None = None,
        labeled: bool | None = None,
    ) -> int:
        body, params = self._triplet_filters(split, category, source, status, labeled)
        with self.db() as db:
            return db.execute(f"SELECT count(*) {body}", params).fetchone()[0]
