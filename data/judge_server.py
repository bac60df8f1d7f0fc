"""A local OpenAI-compatible judge server: ``python -m data.judge_server --shapes DIR``.

It speaks the parts of the OpenAI HTTP API that the official SDK uses for judging --
``POST /v1/chat/completions`` (with ``usage``), ``GET /v1/models``, ``/v1/files`` (multipart
upload, retrieve, content) and ``/v1/batches`` (create, retrieve, cancel) -- and the Azure
OpenAI route ``/openai/deployments/<name>/chat/completions``. Instead of a VLM, an *answerer*
judges: for the Shapes domain (:class:`data.shapes_judge.ShapesAnswerer`) it recognises the
prompt (:func:`core.judges.prompts.identify`), reads the instruction back from it, finds the
triplet by the pixel hash of the original image plus the instruction, and scores the edited image
with the Shapes oracle. So every path of the real client -- HTTP, retries, parsing, structured
output, batches -- runs offline, in tests, through real sockets.

Fault injection (all probabilities per request, drawn from a seeded RNG)::

    --latency 0.05 --jitter 0.01   seconds added to every chat completion
    --p429 P  --retry-after S      429 with Retry-After / retry-after-ms headers
    --p500 P                       500 server error
    --ptimeout P --hang S          hold the request S seconds (the client times out first)
    --pmalformed P                 a reply without a usable answer (prose, truncated JSON)
    --prange P                     an out-of-range reply (score 7, -1, NaN, verdict "maybe")
    --faults P                     P spread evenly over the five kinds above
    --reply-style json|dict|fenced|prose|mixed   how healthy replies are written

``GET /stats`` returns counters (requests by route and status, injected faults by kind, and
chat completions per judged item) that tests use to prove work was not repeated.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.parser
import email.policy
import json
import random
import re
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from core.images import ImageError, image_hash, load_image
from core.judges.images import image_tokens
from core.judges.prompts import Prompt, available_versions, load_prompt
from core.store.triplets import triplet_id
from data.judge_api import Answerer, HTTPError, UnknownItem
from data.judge_faults import (
    FaultConfig,
    add_fault_args,
    corrupt_reply,
    fault_config,
    render_reply,
    reply_object,
)
from data.judge_server_batches import BatchRunner
from data.shapes_judge import ShapesAnswerer

# -- the server ------------------------------------------------------------------------------


@dataclass
class ServerState:
    answerer: Answerer
    faults: FaultConfig = field(default_factory=FaultConfig)
    model: str = "shapes-oracle"
    api_key: str | None = None  # when set, requests must carry it
    batch_delay: float = 0.0  # seconds a batch stays in_progress before it is processed

    def __post_init__(self) -> None:
        self.rng = random.Random(self.faults.seed)
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # "<route> <status>"
        self.faults_injected: Counter[str] = Counter()
        self.items: Counter[str] = Counter()  # "<triplet id>|<prompt name>" -> answers produced
        self.active = 0  # requests being handled right now
        self.prompts = [load_prompt(n, v) for n, vs in available_versions().items() for v in vs]
        self.batches = BatchRunner(self)

    def draw(self) -> tuple[str | None, float, random.Random]:
        with self.lock:
            fault = self.faults.draw(self.rng)
            delay = self.faults.latency + self.rng.uniform(0, self.faults.jitter)
            return fault, delay, random.Random(self.rng.random())

    def identify(self, text: str) -> tuple[Prompt, str]:
        for prompt in self.prompts:
            instruction = prompt.match(text)
            if instruction is not None:
                return prompt, instruction
        raise HTTPError(400, "the user message is not an MRC Studio judge prompt")

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "faults": dict(self.faults_injected),
                "items": dict(self.items),
                "chat_completions": sum(self.items.values()),
                "active": self.active,  # requests being handled (an HTTP /stats call excludes itself)
            }

    # -- chat completions --------------------------------------------------------------------
    def completion(
        self, body: Any, model: str | None = None, batch: bool = False
    ) -> dict[str, Any]:
        """One chat completion. For a Batch API line (``batch=True``) nothing sleeps.

        The injected latency is the time from receiving the request to answering it: the
        oracle's own compute time is part of it, not added to it.
        """
        start = time.monotonic()
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise HTTPError(400, "the request body must be an object with a 'messages' list")
        model = model or body.get("model")
        if not isinstance(model, str) or not model:
            raise HTTPError(400, "the request has no 'model'")
        texts, images, detail = [], [], "auto"
        for msg in body["messages"]:
            if not isinstance(msg, dict) or msg.get("role") != "user":
                continue
            content = msg.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts if isinstance(parts, list) else []:
                if not isinstance(part, dict):
                    raise HTTPError(400, "message content parts must be objects")
                if part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    detail = (part.get("image_url") or {}).get("detail", "auto")
                    images.append(_decode_data_url(url))
        prompt, instruction = self.identify("\n".join(texts))
        if len(images) != 2:
            raise HTTPError(400, f"expected 2 images (original, edited), got {len(images)}")
        fault, delay, rng = self.draw()
        until = start + (0.0 if batch else delay)
        if fault in ("429", "500", "timeout"):
            time.sleep(max(0.0, until - time.monotonic()))
            with self.lock:
                self.faults_injected[fault] += 1
            if fault == "429":
                ra = self.faults.retry_after
                headers = {
                    "retry-after-ms": str(int(ra * 1000)),
                    "retry-after": str(max(1, round(ra))),
                }
                raise HTTPError(429, "Rate limit reached (injected fault).", "requests", headers)
            if fault == "timeout" and not batch:
                time.sleep(self.faults.hang)  # the client gives up first; no answer is produced
                raise HTTPError(504, "The request timed out (injected fault).", "timeout")
            raise HTTPError(500, "The server had an error (injected fault).", "server_error")
        try:
            answer = self.answerer.answer(prompt, instruction, images[0], images[1])
        except UnknownItem as e:
            raise HTTPError(400, str(e)) from None
        # the store's triplet id of what was judged (pixel hashes + instruction)
        key = triplet_id(image_hash(images[0]), image_hash(images[1]), instruction)
        with self.lock:
            self.items[f"{key}|{prompt.name}"] += 1
        obj = reply_object(prompt, answer)
        if fault in ("malformed", "out_of_range"):
            with self.lock:
                self.faults_injected[fault] += 1
            content = corrupt_reply(obj, fault, rng)
        elif body.get("response_format", {}).get("type") == "json_schema":
            content = json.dumps(obj)
        else:
            content = render_reply(obj, self.faults.reply_style, rng)
        time.sleep(max(0.0, until - time.monotonic()))
        text_tokens = sum(len(t) for t in texts) // 4 + 12
        pic_tokens = sum(image_tokens(i.width, i.height, detail) for i in images)
        completion_tokens = max(1, len(content) // 4)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "mrc-judge-server",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": text_tokens + pic_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": text_tokens + pic_tokens + completion_tokens,
            },
        }


def _decode_data_url(url: str) -> Image.Image:
    m = re.match(r"data:image/[a-z0-9.+-]+;base64,(.*)$", url, re.S | re.I)
    if not m:
        raise HTTPError(400, "images must be sent as base64 data URLs (data:image/...;base64,...)")
    try:
        data = base64.b64decode(m.group(1), validate=True)
        return load_image(data, name="an image in the request")
    except (binascii.Error, ImageError) as e:
        raise HTTPError(400, f"an image in the request cannot be decoded: {e}") from None


_ROUTES = [
    ("POST", re.compile(r"^/chat/completions$"), "chat"),
    ("POST", re.compile(r"^/deployments/(?P<model>[^/]+)/chat/completions$"), "chat"),
    ("GET", re.compile(r"^/models$"), "models"),
    ("GET", re.compile(r"^/stats$"), "stats"),
    ("POST", re.compile(r"^/files$"), "file_create"),
    ("GET", re.compile(r"^/files/(?P<id>[^/]+)$"), "file_get"),
    ("GET", re.compile(r"^/files/(?P<id>[^/]+)/content$"), "file_content"),
    ("POST", re.compile(r"^/batches$"), "batch_create"),
    ("GET", re.compile(r"^/batches/(?P<id>[^/]+)$"), "batch_get"),
    ("POST", re.compile(r"^/batches/(?P<id>[^/]+)/cancel$"), "batch_cancel"),
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    disable_nagle_algorithm = True  # no 40 ms Nagle / delayed-ACK stalls between small writes
    server: JudgeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return bytes(out)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        path = self.path.split("?", 1)[0]
        path = re.sub(r"^/(v1|openai)(?=/)", "", path)
        route, status = "unknown", 500
        with state.lock:
            state.active += 1
        try:
            body = self._body() if method == "POST" else b""
            for m, pattern, name in _ROUTES:
                match = pattern.match(path)
                if m == method and match:
                    route = name
                    break
            else:
                raise HTTPError(404, f"no route {method} {self.path}")
            if route != "stats" and state.api_key:
                given = self.headers.get("api-key") or self.headers.get(
                    "Authorization", ""
                ).removeprefix("Bearer ")
                if given != state.api_key:
                    raise HTTPError(401, "Incorrect API key provided.", "invalid_api_key")
            status, payload, ctype = (
                200,
                self._handle(route, match.groupdict(), body),
                "application/json",
            )
            if isinstance(payload, bytes):
                ctype = "application/octet-stream"
            else:
                payload = json.dumps(payload).encode()
            self._send(status, payload, ctype)
        except HTTPError as e:
            status = e.status
            err = {"error": {"message": e.message, "type": e.kind, "param": None, "code": None}}
            try:
                self._send(e.status, json.dumps(err).encode(), "application/json", e.headers)
            except (BrokenPipeError, ConnectionResetError):
                status = 499  # the client went away (it timed out)
        except (BrokenPipeError, ConnectionResetError):
            status = 499
        finally:
            with state.lock:
                state.requests[f"{route} {status}"] += 1
                state.active -= 1

    def _handle(self, route: str, args: dict[str, str], body: bytes) -> Any:
        state = self.server.state
        if route == "stats":
            stats = state.stats()
            stats["active"] -= 1  # not counting this request
            return stats
        if route == "models":
            return {
                "object": "list",
                "data": [
                    {"id": state.model, "object": "model", "created": 0, "owned_by": "mrc-studio"}
                ],
            }
        if route == "file_create":
            fields = _multipart(self.headers.get("Content-Type", ""), body)
            if "file" not in fields:
                raise HTTPError(400, "the upload has no 'file' field")
            name, data = fields["file"]
            return state.batches.add_file(
                name or "upload.jsonl", data, (fields.get("purpose") or (None, b""))[1].decode()
            )
        if route == "file_get":
            return state.batches.file_object(args["id"])
        if route == "file_content":
            return state.batches.file_content(args["id"])
        if route == "batch_create":
            return state.batches.create(_json(body))
        if route == "batch_get":
            return state.batches.get(args["id"])
        if route == "batch_cancel":
            return state.batches.cancel(args["id"])
        return state.completion(_json(body), args.get("model"))

    def _send(
        self, status: int, payload: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"the request body is not valid JSON: {e}") from None


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    if not content_type.startswith("multipart/form-data"):
        raise HTTPError(400, "file uploads must be multipart/form-data")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            out[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return out


class JudgeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self, state: ServerState, host: str = "127.0.0.1", port: int = 0, verbose: bool = False
    ):
        super().__init__((host, port), Handler)
        self.state, self.verbose = state, verbose

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is normal here; anything else is logged."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def start_server(state: ServerState, port: int = 0, verbose: bool = False) -> JudgeHTTPServer:
    """Start a server on 127.0.0.1 in a background thread; ``server.url`` is the SDK base URL."""
    server = JudgeHTTPServer(state, port=port, verbose=verbose)
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="judge-server",
        daemon=True,
    ).start()
    return server


def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(
        prog="python -m data.judge_server", description=__doc__.split("\n")[0]
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--shapes", help="a Shapes folder written by `python -m data synth`")
    src.add_argument("--store", help="a store holding Shapes triplets")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument(
        "--model", default="shapes-oracle", help="the model name reported by /v1/models"
    )
    ap.add_argument("--api-key", default=None, help="require this key (default: accept any)")
    ap.add_argument(
        "--batch-delay", type=float, default=0.0, help="seconds a batch stays in_progress"
    )
    ap.add_argument("--verbose", action="store_true", help="log every request")
    add_fault_args(ap)
    args = ap.parse_args(argv)
    try:
        if args.shapes:
            answerer = ShapesAnswerer.from_folder(args.shapes)
        else:
            from core.store import Store

            answerer = ShapesAnswerer.from_store(Store(args.store))
        state = ServerState(
            answerer, fault_config(args), args.model, args.api_key, args.batch_delay
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    server = JudgeHTTPServer(state, port=args.port, verbose=args.verbose)
    print(
        f"judge server on {server.url} ({len(answerer)} Shapes triplets); Ctrl-C stops it",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
