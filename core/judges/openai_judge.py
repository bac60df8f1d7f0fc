"""A judge on any OpenAI-compatible chat-completions server (OpenAI, Azure OpenAI, vLLM, ...).

Built on the official ``openai`` SDK's async clients. Two request modes:

* ``three`` -- the paper's protocol: one call per perspective (three per triplet), each with its own
  prompt; the replies are free text read by :mod:`core.judges.parsing`. ``sequential=True`` sends
  the three calls one after another, as the paper did; by default they run concurrently.
* ``one`` -- a single call covering all three perspectives, so the images are sent once; the
  reply is constrained by a strict JSON schema (``response_format={"type": "json_schema", ...}``,
  switch off with ``structured_output=False`` for servers without it).

Flow control lives here so every user of a judge gets it: at most ``max_concurrency`` requests in
flight, requests/min and tokens/min limits, per-request timeouts, and retries (see
:mod:`core.judges.limits`). The SDK's own retries are disabled (``max_retries=0``) so that every
attempt is counted and the policy is ours. Transient errors (429, 5xx, timeouts, connection) are
retried with backoff honouring ``Retry-After``; a 429 pauses all requests. Permanent errors
(400/401/403/404, exhausted quota) fail at once. Unparsable or out-of-range replies are asked
again up to ``reply_attempts`` times, then the triplet is a *failed* result with the raw reply.

Images are prepared once per triplet (:func:`core.judges.images.prepare_image`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

import openai

from core.judges.base import (
    BAD_INPUT,
    CONNECTION,
    RATE_LIMITED,
    REJECTED,
    SERVER_ERROR,
    TIMEOUT,
    UNPARSABLE,
    Evaluation,
    Judge,
    JudgeInput,
    JudgeResult,
    JudgeSpec,
    Usage,
)
from core.judges.images import ImagePrepError, PreparedImage, image_tokens, prepare_image
from core.judges.limits import RateLimiter, RetryPolicy
from core.judges.parsing import ReplyError, parse_annotation, parse_evaluation
from core.judges.prompts import Prompt, load_prompt_set, response_schema
from core.rewards import Rewards

COMPLETION_TOKENS_PER_PERSPECTIVE = 60  # estimate for rate limits and --dry-run only


@dataclass
class OpenAIJudgeConfig:
    model: str = "gpt-4o"  # on Azure: the deployment name
    mode: str = "one"  # "one" call per triplet (JSON schema) or "three" (the paper's protocol)
    base_url: str | None = None  # default $OPENAI_BASE_URL, else https://api.openai.com/v1
    api_key: str | None = None  # default $OPENAI_API_KEY ($AZURE_OPENAI_API_KEY on Azure)
    azure_endpoint: str | None = None  # e.g. https://my-resource.openai.azure.com -> Azure client
    azure_api_version: str = "2024-10-21"
    prompt_version: int | None = None  # None: the newest complete prompt set
    prompt_dir: str | None = None  # None: core/judges/prompts
    structured_output: bool = True  # mode "one": response_format json_schema (strict)
    sequential: bool = False  # mode "three": one call after another, as in the paper
    max_side: int = 512  # long side of the images sent, px (never upscaled)
    image_format: str = "auto"  # "auto" (lossless stays PNG, JPEG stays JPEG), "png", "jpeg"
    detail: str = "auto"  # OpenAI image detail: "low", "high" or "auto"
    temperature: float = 0.0
    max_tokens: int = 400  # per call
    timeout_s: float = 60.0  # per HTTP request
    max_concurrency: int = 8  # HTTP requests in flight
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    seed: int | None = None  # seeds the backoff jitter (tests)


class _CallFailed(Exception):
    def __init__(self, code: str, reason: str, raw: str = "") -> None:
        super().__init__(reason)
        self.code, self.reason, self.raw = code, reason, raw


def make_client(cfg: OpenAIJudgeConfig) -> openai.AsyncOpenAI:
    """The SDK client for ``cfg`` (Azure when ``azure_endpoint`` is set); SDK retries off."""
    if cfg.azure_endpoint:
        key = cfg.api_key or os.environ.get("AZURE_OPENAI_API_KEY")
        if not key:
            raise ValueError("no Azure API key: pass --api-key or set AZURE_OPENAI_API_KEY")
        return openai.AsyncAzureOpenAI(
            azure_endpoint=cfg.azure_endpoint,
            api_version=cfg.azure_api_version,
            api_key=key,
            max_retries=0,
            timeout=cfg.timeout_s,
        )
    key = cfg.api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ValueError(
            "no API key: set OPENAI_API_KEY (for a local server such as vLLM or "
            "data.judge_server any value works, e.g. OPENAI_API_KEY=EMPTY)"
        )
    return openai.AsyncOpenAI(
        api_key=key,
        base_url=cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None,
        max_retries=0,
        timeout=cfg.timeout_s,
    )


def _retry_after(err: openai.APIStatusError) -> float | None:
    headers = err.response.headers if err.response is not None else {}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) / divisor
            except ValueError:
                continue  # an HTTP date: fall back to our own backoff
    return None


def _status_text(err: openai.APIStatusError) -> str:
    return f"HTTP {err.status_code}: {err.message}"


class OpenAIJudge(Judge):
    def __init__(self, config: OpenAIJudgeConfig | None = None, client: Any = None) -> None:
        self.cfg = cfg = config or OpenAIJudgeConfig()
        if cfg.mode not in ("one", "three"):
            raise ValueError(f"mode must be 'one' or 'three', got {cfg.mode!r}")
        self.prompts = load_prompt_set(cfg.mode, cfg.prompt_version, cfg.prompt_dir)
        self.spec = JudgeSpec(
            "openai", cfg.model, self.prompts.label, cfg.mode, self.prompts.digest
        )
        self.client = client if client is not None else make_client(cfg)
        self.limiter = RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute)
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self._rng = random.Random(cfg.seed)

    # -- requests ------------------------------------------------------------------------
    def prepare(self, item: JudgeInput) -> tuple[PreparedImage, PreparedImage]:
        c = self.cfg
        return (
            prepare_image(item.original, c.max_side, c.image_format, what="original image"),
            prepare_image(item.edited, c.max_side, c.image_format, what="edited image"),
        )

    def build_request(
        self, prompt: Prompt, instruction: str, images: tuple[PreparedImage, PreparedImage]
    ) -> dict[str, Any]:
        """The chat-completions body of one call (also a Batch API line's ``body``)."""
        system, user = prompt.render(instruction)
        parts: list[dict[str, Any]] = [{"type": "text", "text": user}]
        for img in images:
            parts.append(
                {"type": "image_url", "image_url": {"url": img.data_url, "detail": self.cfg.detail}}
            )
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": parts}],
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if self.cfg.mode == "one" and self.cfg.structured_output:
            body["response_format"] = response_schema(prompt.task, prompt.perspectives)
        return body

    def estimate_call_tokens(self, prompt: Prompt, instruction: str, images) -> tuple[int, int]:
        """(prompt, completion) tokens one call is expected to use."""
        system, user = prompt.render(instruction)
        text = (len(system) + len(user)) // 4 + 12
        pics = sum(image_tokens(i.width, i.height, self.cfg.detail) for i in images)
        return text + pics, COMPLETION_TOKENS_PER_PERSPECTIVE * len(prompt.perspectives)

    def estimate(self, task: str, item: JudgeInput) -> Usage:
        images = self.prepare(item)
        usage = Usage()
        for prompt in self.prompts.for_task(task):
            p, c = self.estimate_call_tokens(prompt, item.instruction, images)
            usage += Usage(1, p, c, sum(i.wire_bytes for i in images))
        return usage

    async def _call(self, body: dict[str, Any], est: int, image_bytes: int, usage: Usage) -> str:
        """One completion with transient-error retries; returns the reply text."""
        policy = self.cfg.retry
        last: _CallFailed | None = None
        for attempt in range(1, policy.max_attempts + 1):
            if attempt > 1:
                usage.retries += 1
            await self.limiter.acquire(est)
            retry_after = None
            async with self._slots:
                usage.calls += 1
                usage.image_bytes += image_bytes
                try:
                    resp = await self.client.chat.completions.create(**body)
                except openai.APITimeoutError:
                    last = _CallFailed(
                        TIMEOUT, f"the request timed out after {self.cfg.timeout_s:g} s"
                    )
                except openai.APIConnectionError as e:
                    last = _CallFailed(CONNECTION, f"could not reach the server ({e})")
                except openai.RateLimitError as e:
                    if e.code == "insufficient_quota":
                        raise _CallFailed(REJECTED, _status_text(e)) from None
                    retry_after = _retry_after(e)
                    last = _CallFailed(RATE_LIMITED, _status_text(e))
                except openai.APIStatusError as e:
                    if e.status_code >= 500 or e.status_code in (408, 409):
                        retry_after = _retry_after(e)
                        last = _CallFailed(SERVER_ERROR, _status_text(e))
                    else:
                        raise _CallFailed(REJECTED, _status_text(e)) from None
                else:
                    u = resp.usage
                    actual = None
                    if u is not None:
                        usage.prompt_tokens += u.prompt_tokens or 0
                        usage.completion_tokens += u.completion_tokens or 0
                        actual = (u.prompt_tokens or 0) + (u.completion_tokens or 0)
                    self.limiter.settle(est, actual)
                    if not resp.choices:
                        raise ReplyError(UNPARSABLE, "the server returned no choices")
                    msg = resp.choices[0].message
                    if getattr(msg, "refusal", None):
                        raise ReplyError(UNPARSABLE, f"the model refused: {msg.refusal}")
                    return msg.content or ""
            if retry_after is not None and retry_after > policy.max_retry_after:
                raise _CallFailed(
                    last.code, f"{last.reason}; Retry-After {retry_after:g} s exceeds the limit"
                )
            if retry_after is not None and last.code == RATE_LIMITED:
                self.limiter.pause(retry_after)
            if attempt < policy.max_attempts:
                await asyncio.sleep(policy.delay(attempt, retry_after, self._rng))
        assert last is not None
        raise _CallFailed(last.code, f"{last.reason} (after {policy.max_attempts} attempts)")

    async def _ask(self, task: str, prompt: Prompt, item: JudgeInput, images, usage: Usage):
        """One prompt's answer, asking again while the reply is unusable."""
        body = self.build_request(prompt, item.instruction, images)
        p, c = self.estimate_call_tokens(prompt, item.instruction, images)
        image_bytes = sum(i.wire_bytes for i in images)
        parse = parse_annotation if task == "annotate" else parse_evaluation
        tries = self.cfg.retry.reply_attempts
        for attempt in range(1, tries + 1):
            text = ""
            try:
                text = await self._call(body, p + c, image_bytes, usage)
                return parse(text, prompt.perspectives), text
            except ReplyError as e:
                if attempt == tries:
                    raise _CallFailed(e.code, f"{e} (after {tries} replies)", text) from None
                usage.retries += 1

    async def _judge(self, task: str, item: JudgeInput) -> JudgeResult:
        usage = Usage()
        try:
            images = await asyncio.to_thread(self.prepare, item)
        except ImagePrepError as e:
            return JudgeResult.failed(task, self.spec, BAD_INPUT, str(e), usage=usage, attempts=0)
        prompts = self.prompts.for_task(task)
        jobs = [self._ask(task, p, item, images, usage) for p in prompts]
        if self.cfg.sequential:
            outcomes = []
            for job in jobs:
                try:
                    outcomes.append(await job)
                except _CallFailed as e:
                    outcomes.append(e)
                    for rest in jobs[len(outcomes) :]:
                        rest.close()  # never started: no request, nothing to count
                    break
        else:
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        for o in outcomes:
            if isinstance(o, BaseException) and not isinstance(o, _CallFailed):
                raise o
        raws = {
            p.name: (o[1] if isinstance(o, tuple) else o.raw) for p, o in zip(prompts, outcomes)
        }
        raw = (
            next(iter(raws.values())) if len(prompts) == 1 else json.dumps(raws, ensure_ascii=False)
        )
        failures = [o for o in outcomes if isinstance(o, _CallFailed)]
        if failures:
            f = failures[0]
            return JudgeResult.failed(
                task, self.spec, f.code, f.reason, raw, usage=usage, attempts=usage.calls
            )
        values: dict[str, Any] = {}
        for parsed, _text in outcomes:
            values.update(parsed)
        value = (
            {"rewards": Rewards(**values)}
            if task == "annotate"
            else {"evaluation": Evaluation(**values)}
        )
        return JudgeResult(
            task, "ok", self.spec, raw=raw, usage=usage, attempts=usage.calls, **value
        )

    def parse_reply(self, task: str, prompt_name: str, text: str) -> dict[str, Any]:
        """Read one reply of prompt ``prompt_name`` (Batch API results). Raises ReplyError."""
        prompt = self.prompts.prompts[prompt_name]
        parse = parse_annotation if task == "annotate" else parse_evaluation
        return parse(text, prompt.perspectives)

    async def aclose(self) -> None:
        await self.client.close()
