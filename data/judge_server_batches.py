"""Server side of the OpenAI Files and Batch APIs for the local judge server.

Enough of the protocol for the SDK's ``files.create / retrieve / content`` and
``batches.create / retrieve / cancel``: an uploaded JSONL input file (one
``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`` per line) is
validated, then processed in a background thread after ``batch_delay`` seconds. Results go to an
output file (HTTP 200 lines) and an error file (non-200 lines), each line
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`` as
OpenAI writes them. An input file that breaks the format fails the whole batch with
``errors.data`` naming the line, as OpenAI does. Everything is kept in memory.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from data.judge_api import CompletionServer, HTTPError

ENDPOINTS = ("/v1/chat/completions",)
TERMINAL = ("completed", "failed", "cancelled", "expired")


def _http_error(status: int, message: str) -> HTTPError:
    return HTTPError(status, message)


class BatchRunner:
    def __init__(self, state: CompletionServer) -> None:
        self.state = state
        self.lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}  # id -> {"object": {...}, "data": bytes}
        self.batches: dict[str, dict[str, Any]] = {}

    # -- files -------------------------------------------------------------------------------
    def add_file(self, name: str, data: bytes, purpose: str) -> dict[str, Any]:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        obj = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose or "batch",
            "status": "processed",
        }
        with self.lock:
            self.files[fid] = {"object": obj, "data": data}
        return obj

    def _file(self, fid: str) -> dict[str, Any]:
        with self.lock:
            if fid not in self.files:
                raise _http_error(404, f"No such File object: {fid}")
            return self.files[fid]

    def file_object(self, fid: str) -> dict[str, Any]:
        return self._file(fid)["object"]

    def file_content(self, fid: str) -> bytes:
        return self._file(fid)["data"]

    # -- batches -----------------------------------------------------------------------------
    def create(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict):
            raise _http_error(400, "the batch request must be a JSON object")
        if req.get("endpoint") not in ENDPOINTS:
            raise _http_error(400, f"endpoint must be one of {ENDPOINTS}")
        if req.get("completion_window") != "24h":
            raise _http_error(400, "completion_window must be '24h'")
        self._file(req.get("input_file_id", ""))
        now = int(time.time())
        bid = f"batch_{uuid.uuid4().hex[:24]}"
        batch = {
            "id": bid,
            "object": "batch",
            "endpoint": req["endpoint"],
            "errors": None,
            "input_file_id": req["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": req.get("metadata"),
        }
        with self.lock:
            self.batches[bid] = batch
        threading.Thread(target=self._run, args=(bid,), daemon=True).start()
        return dict(batch)

    def get(self, bid: str) -> dict[str, Any]:
        with self.lock:
            if bid not in self.batches:
                raise _http_error(404, f"No such Batch object: {bid}")
            return json.loads(json.dumps(self.batches[bid]))

    def cancel(self, bid: str) -> dict[str, Any]:
        with self.lock:
            if bid not in self.batches:
                raise _http_error(404, f"No such Batch object: {bid}")
            b = self.batches[bid]
            if b["status"] not in TERMINAL:
                b["status"] = "cancelling"
                b["cancelling_at"] = int(time.time())
        return self.get(bid)

    def _set(self, bid: str, **kw: Any) -> dict[str, Any]:
        with self.lock:
            self.batches[bid].update(kw)
            return self.batches[bid]

    def _lines(self, bid: str) -> list[dict[str, Any]] | None:
        """The validated input lines, or None after failing the batch."""
        data = self._file(self.batches[bid]["input_file_id"])["data"]
        lines, seen, errors = [], set(), []
        for n, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError:
                errors.append({"code": "invalid_json_line", "message": "not valid JSON", "line": n})
                continue
            cid = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(cid, str) or not cid or cid in seen:
                msg = "custom_id is missing or duplicated"
                errors.append({"code": "invalid_custom_id", "message": msg, "line": n})
            elif line.get("method") != "POST" or line.get("url") != self.batches[bid]["endpoint"]:
                msg = "method must be POST and url the batch endpoint"
                errors.append({"code": "invalid_url", "message": msg, "line": n})
            else:
                seen.add(cid)
                lines.append(line)
        if errors or not lines:
            errors = errors or [{"code": "empty_file", "message": "no requests", "line": None}]
            self._set(
                bid,
                status="failed",
                failed_at=int(time.time()),
                errors={"object": "list", "data": errors},
            )
            return None
        return lines

    def _run(self, bid: str) -> None:
        lines = self._lines(bid)
        if lines is None:
            return
        self._set(
            bid,
            status="in_progress",
            in_progress_at=int(time.time()),
            request_counts={"total": len(lines), "completed": 0, "failed": 0},
        )
        end = time.monotonic() + self.state.batch_delay
        while time.monotonic() < end and self.batches[bid]["status"] == "in_progress":
            time.sleep(0.01)
        out, err = [], []
        for line in lines:
            if self.batches[bid]["status"] == "cancelling":
                break
            rid = f"req_{uuid.uuid4().hex[:24]}"
            try:
                body, status = self.state.completion(line.get("body"), batch=True), 200
            except HTTPError as e:
                body, status = {"error": {"message": e.message, "type": e.kind}}, e.status
            with self.state.lock:
                self.state.requests[f"batch_line {status}"] += 1
            rec = {
                "id": f"batch_req_{uuid.uuid4().hex[:24]}",
                "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": rid, "body": body},
                "error": None,
            }
            (out if status == 200 else err).append(json.dumps(rec))
            with self.lock:
                c = self.batches[bid]["request_counts"]
                c["completed" if status == 200 else "failed"] += 1
        self._set(bid, finalizing_at=int(time.time()))
        ids: dict[str, Any] = {}
        for key, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                ids[key] = self.add_file(
                    f"{bid}_{key[:-8]}.jsonl", ("\n".join(rows) + "\n").encode(), "batch_output"
                )["id"]
        if self.batches[bid]["status"] == "cancelling":
            self._set(bid, status="cancelled", cancelled_at=int(time.time()), **ids)
        else:
            self._set(bid, status="completed", completed_at=int(time.time()), **ids)
