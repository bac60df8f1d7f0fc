"""The OpenAI-compatible judge against the local judge server, through real HTTP and the SDK.

A deterministic answerer (tests/_judge_fakes.py) stands in for the VLM, so every expected label
is computed here; fault injection exercises retries, Retry-After, timeouts, unusable replies and
permanent errors. Latencies are tens of milliseconds to keep the file fast.
"""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from PIL import Image

from core.judges.base import JudgeInput
from core.judges.images import prepare_image
from core.judges.limits import RateLimiter, RetryPolicy, TokenBucket
from core.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from core.rewards import PERSPECTIVES
from data.judge_server import FaultConfig, ServerState, start_server
from tests._judge_fakes import HashAnswerer, expected_scores, png


@pytest.fixture
def server():
    servers = []

    def make(faults: FaultConfig | None = None, **kw):
        state = ServerState(HashAnswerer(kw.pop("known", None)), faults or FaultConfig(), **kw)
        srv = start_server(state)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def judge_for(srv, **kw) -> OpenAIJudge:
    kw.setdefault("retry", RetryPolicy(max_attempts=3, reply_attempts=2, base_delay=0.01))
    cfg = OpenAIJudgeConfig(base_url=srv.url, api_key="test-key", model="judge-test", seed=0, **kw)
    return OpenAIJudge(cfg)


def run(coro):
    return asyncio.run(coro)


ITEM = JudgeInput("turn the red circle blue", png(1), png(2), triplet_id="t1")
EXPECTED = expected_scores(Image.open(io.BytesIO(png(2))))


async def _judge(judge, task, item=ITEM):
    async with judge:
        return await judge.run(task, item)


@pytest.mark.parametrize("mode", ["one", "three"])
def test_annotate_and_evaluate_in_both_modes(server, mode):
    srv = server(FaultConfig(reply_style="mixed", seed=3))
    res = run(_judge(judge_for(srv, mode=mode), "annotate"))
    assert res.ok, res.reason
    assert res.rewards.scores == tuple(EXPECTED[p] for p in PERSPECTIVES)
    for p in PERSPECTIVES:
        assert (res.rewards[p].text == "") == (EXPECTED[p] == 5)
    calls = 1 if mode == "one" else 3
    wire = sum(prepare_image(b).wire_bytes for b in (ITEM.original, ITEM.edited))
    assert res.usage.calls == calls and res.usage.retries == 0
    assert res.usage.image_bytes == calls * wire  # images sent once per call
    assert res.usage.prompt_tokens > 85 * 2 * calls and res.usage.completion_tokens > 0
    assert res.judge.mode == mode and res.judge.prompt_version == "v1"

    ev = run(_judge(judge_for(srv, mode=mode), "evaluate"))
    assert ev.ok, ev.reason
    assert ev.evaluation.scores == res.rewards.scores
    assert ev.evaluation.verdicts == tuple(EXPECTED[p] >= 3 for p in PERSPECTIVES)
    assert srv.state.stats()["chat_completions"] == 2 * calls


def test_structured_output_is_requested_in_one_call_mode(server):
    srv = server()
    judge = judge_for(srv, mode="one")
    prompt = judge.prompts.for_task("annotate")[0]
    body = judge.build_request(prompt, "x", judge.prepare(ITEM))
    assert body["response_format"]["type"] == "json_schema"
    assert [p["type"] for p in body["messages"][1]["content"]] == ["text", "image_url", "image_url"]
    three = judge_for(srv, mode="three")
    assert "response_format" not in three.build_request(
        three.prompts.for_task("annotate")[0], "x", three.prepare(ITEM)
    )
    run(judge.aclose())
    run(three.aclose())


def test_429_retry_after_is_honoured_then_fails_with_reason(server):
    srv = server(FaultConfig(p429=1.0, retry_after=0.15))
    t0 = time.monotonic()
    res = run(_judge(judge_for(srv), "annotate"))
    elapsed = time.monotonic() - t0
    assert not res.ok and res.reason_code == "rate_limited"
    assert "429" in res.reason and "after 3 attempts" in res.reason
    assert res.usage.calls == 3 and res.usage.retries == 2
    assert elapsed >= 2 * 0.15  # two waits, each at least Retry-After
    assert srv.state.stats()["requests"] == {"chat 429": 3}


@pytest.mark.parametrize(
    "faults, code",
    [
        (FaultConfig(p500=1.0), "server_error"),
        (FaultConfig(ptimeout=1.0, hang=1.0), "timeout"),
        (FaultConfig(pmalformed=1.0), "unparsable"),
        (FaultConfig(prange=1.0), "out_of_range"),
    ],
)
def test_faults_end_as_explicit_failures(server, faults, code):
    srv = server(faults)
    res = run(_judge(judge_for(srv, timeout_s=0.3), "annotate"))
    assert res.status == "failed" and res.reason_code == code and res.reason
    assert res.rewards is None
    if code in ("unparsable", "out_of_range"):
        assert res.usage.calls == 2  # reply_attempts
        assert "after 2 replies" in res.reason
    else:
        assert res.usage.calls == 3  # max_attempts


def test_transient_faults_recover(server):
    srv = server(FaultConfig.spread(0.5, seed=1))
    judge = judge_for(
        srv, retry=RetryPolicy(max_attempts=8, reply_attempts=6, base_delay=0.005), timeout_s=0.3
    )
    judge.cfg.timeout_s = 0.3
    srv.state.faults.hang = 0.6

    async def many():
        async with judge:
            return await asyncio.gather(
                *(judge.annotate(JudgeInput("x", png(1), png(i))) for i in range(10, 20))
            )

    results = run(many())
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    for i, r in zip(range(10, 20), results):
        exp = expected_scores(Image.open(io.BytesIO(png(i))))
        assert r.rewards.scores == tuple(exp[p] for p in PERSPECTIVES)
    assert sum(r.usage.retries for r in results) > 0


def test_permanent_errors_fail_at_once(server):
    srv = server(api_key="right-key")
    res = run(_judge(judge_for(srv), "annotate"))
    assert res.reason_code == "rejected" and "401" in res.reason and res.usage.calls == 1
    srv2 = server(known={"nothing"})
    res = run(_judge(judge_for(srv2), "annotate"))
    assert res.reason_code == "rejected" and "not in the test set" in res.reason


def test_bad_image_is_a_failed_result_without_a_call(server):
    srv = server()
    bad = JudgeInput("x", png(1), png(2)[:60])
    res = run(_judge(judge_for(srv), "annotate", bad))
    assert res.reason_code == "bad_input" and "edited image" in res.reason
    assert res.usage.calls == 0 and srv.state.stats()["requests"] == {}


def test_sequential_three_calls_stop_at_the_first_failure(server):
    srv = server(FaultConfig(pmalformed=1.0))
    res = run(_judge(judge_for(srv, mode="three", sequential=True), "annotate"))
    assert res.reason_code == "unparsable" and res.usage.calls == 2  # only the first prompt


def test_azure_client_route(server):
    srv = server()
    endpoint = srv.url.removesuffix("/v1")
    cfg = OpenAIJudgeConfig(model="my-deployment", azure_endpoint=endpoint, api_key="k")
    res = run(_judge(OpenAIJudge(cfg), "annotate"))
    assert res.ok, res.reason
    assert res.rewards.scores == tuple(EXPECTED[p] for p in PERSPECTIVES)


def test_missing_api_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIJudge(OpenAIJudgeConfig())


def test_images_are_oriented_converted_and_capped():
    img = Image.new(
        "RGBA", (300, 100), (255, 0, 0, 0)
    )  # fully transparent: white after compositing
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", exif=exif.tobytes())
    out = prepare_image(buf.getvalue(), max_side=64)
    assert (out.width, out.height) == (21, 64) and out.mime == "image/jpeg"  # rotated, capped
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = prepare_image(buf.getvalue(), max_side=512)
    assert out.mime == "image/png" and (out.width, out.height) == (300, 100)
    assert Image.open(io.BytesIO(out.data)).getpixel((0, 0)) == (255, 255, 255)
    buf = io.BytesIO()
    Image.new("CMYK", (20, 20), (0, 255, 0, 0)).save(buf, "TIFF")
    assert prepare_image(buf.getvalue()).mime == "image/png"


def test_retry_policy_and_rate_limits():
    import random

    policy = RetryPolicy(base_delay=1.0, max_delay=4.0)
    rng = random.Random(0)
    delays = [policy.delay(n, None, rng) for n in range(1, 8) for _ in range(50)]
    assert 0 <= min(delays) and max(delays) <= 4.0
    assert policy.delay(1, retry_after=2.5, rng=rng) >= 2.5  # never earlier than Retry-After
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)

    async def timed(rpm: float, n: int) -> float:
        limiter = RateLimiter(requests_per_minute=rpm)
        t0 = time.monotonic()
        for _ in range(n):
            await limiter.acquire(0)
        return time.monotonic() - t0

    # 1200/min = 20/s with a 1 s burst of 20: 30 requests need at least ~0.5 s
    assert 0.45 <= run(timed(1200, 30)) < 2.0

    async def tokens() -> float:
        bucket = TokenBucket(60_000, burst_seconds=0.1)  # 1000 tokens/s, 100 stored
        t0 = time.monotonic()
        for _ in range(3):
            await bucket.acquire(200)  # larger than the bucket: waits for a full one, goes negative
        return time.monotonic() - t0

    assert 0.35 <= run(tokens()) < 2.0
