"""The local judge server: the OpenAI protocol parts the SDK uses, fault injection, batches.

Everything goes through real HTTP on 127.0.0.1; the Shapes answerer recovers each request's
ground truth from the original image's pixel hash and the instruction read back from the prompt.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import httpx
import openai
import pytest

from core.judges.base import JudgeInput
from core.judges.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from core.judges.parsing import ReplyError, parse_annotation, parse_evaluation
from core.judges.prompts import load_prompt_set
from core.store import Store
from data import annotate_batch as batch_mod
from data.annotate_runner import read_ledger
from data.judge_faults import REPLY_STYLES, FaultConfig, corrupt_reply, render_reply, reply_object
from data.shapes.oracle import ShapesOracle
from data.shapes_judge import ShapesAnswerer, ShapesJudge
from tests._judge_fakes import judge_servers, png, shapes_items

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("shapes") / "s.db")
    store.add_triplets(shapes_items(21, size=32, seed=7), progress=False)
    return store


@pytest.fixture
def server(shapes_store):
    for start in judge_servers(shapes_store):  # the loop's second turn shuts the servers down
        yield lambda faults=None, _start=start, **kw: _start(faults=faults, **kw)


def chat_body(store, triplet, prompt_name="annotate_all", images=None, **extra):
    prompt = load_prompt_set("one" if prompt_name.endswith("_all") else "three").prompts[
        prompt_name
    ]
    system, user = prompt.render(triplet["instruction"])
    urls = images or [
        "data:image/png;base64,"
        + base64.b64encode(store.image_path(triplet[k]).read_bytes()).decode()
        for k in ("original", "edited")
    ]
    parts = [{"type": "text", "text": user}] + [
        {"type": "image_url", "image_url": {"url": u}} for u in urls
    ]
    return {
        "model": "m",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": parts}],
        **extra,
    }


def test_chat_completion_protocol_and_ground_truth(server, shapes_store):
    srv = server()
    t = shapes_store.list_triplets()[0]
    with httpx.Client(base_url=srv.url) as http:
        r = http.post("/chat/completions", json=chat_body(shapes_store, t))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
        u = body["usage"]
        assert (
            u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
            and u["prompt_tokens"] > 2 * 85
        )
        got = parse_annotation(body["choices"][0]["message"]["content"])
        want = ShapesOracle().annotate(
            shapes_store.image(t["original"]),
            t["instruction"],
            shapes_store.image(t["edited"]),
            meta=t["meta"],
        )
        assert got == {p: want[p] for p in got}
        r = http.post("/chat/completions", json=chat_body(shapes_store, t, "evaluate_quality"))
        assert r.status_code == 200 and set(
            json.loads(r.json()["choices"][0]["message"]["content"])
        ) == {"quality", "score"}
        assert http.get("/models").json()["data"][0]["id"] == "shapes-oracle"
        stats = http.get("/stats").json()
        assert stats["chat_completions"] == 2 and stats["active"] == 0
        assert stats["items"] == {f"{t['id']}|annotate_all": 1, f"{t['id']}|evaluate_quality": 1}


@pytest.mark.parametrize(
    "mutate, status, fragment",
    [
        (lambda b: b.pop("messages"), 400, "messages"),
        (lambda b: b["messages"][1]["content"].pop(), 400, "expected 2 images"),
        (
            lambda b: b["messages"][1]["content"][0].update(text="hello"),
            400,
            "not an MRC Studio judge prompt",
        ),
        (
            lambda b: b["messages"][1]["content"][1]["image_url"].update(url="http://x/y.png"),
            400,
            "data URLs",
        ),
        (
            lambda b: b["messages"][1]["content"][1]["image_url"].update(
                url="data:image/png;base64,AAAA"
            ),
            400,
            "cannot be decoded",
        ),
    ],
)
def test_bad_requests_get_clear_400s(server, shapes_store, mutate, status, fragment):
    srv = server()
    body = chat_body(shapes_store, shapes_store.list_triplets()[0])
    mutate(body)
    r = httpx.post(srv.url + "/chat/completions", json=body)
    assert r.status_code == status and fragment in r.json()["error"]["message"]


def test_unknown_triplet_and_routes(server, shapes_store):
    srv = server()
    t = dict(shapes_store.list_triplets()[0], instruction="an instruction it never saw")
    r = httpx.post(srv.url + "/chat/completions", json=chat_body(shapes_store, t))
    assert r.status_code == 400 and "not a Shapes triplet" in r.json()["error"]["message"]
    other = "data:image/png;base64," + base64.b64encode(png(9)).decode()
    r = httpx.post(
        srv.url + "/chat/completions",
        json=chat_body(shapes_store, shapes_store.list_triplets()[1], images=[other, other]),
    )
    assert r.status_code == 400
    assert httpx.get(srv.url + "/nowhere").status_code == 404
    assert httpx.post(srv.url + "/chat/completions", content=b"{not json").status_code == 400


def test_injected_faults_have_the_right_shape(server, shapes_store):
    t = shapes_store.list_triplets()[0]
    srv = server(FaultConfig(p429=1.0, retry_after=2.5))
    r = httpx.post(srv.url + "/chat/completions", json=chat_body(shapes_store, t))
    assert (
        r.status_code == 429
        and r.headers["retry-after-ms"] == "2500"
        and r.headers["retry-after"] == "2"
    )
    srv = server(FaultConfig(p500=1.0))
    assert (
        httpx.post(srv.url + "/chat/completions", json=chat_body(shapes_store, t)).status_code
        == 500
    )
    srv = server(FaultConfig(ptimeout=1.0, hang=0.5))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/chat/completions", json=chat_body(shapes_store, t), timeout=0.1)
    srv = server(FaultConfig(latency=0.2))
    t0 = time.monotonic()
    assert (
        httpx.post(srv.url + "/chat/completions", json=chat_body(shapes_store, t)).status_code
        == 200
    )
    assert time.monotonic() - t0 >= 0.2
    assert srv.state.stats()["items"] and not srv.state.stats()["faults"]


def test_reply_styles_parse_and_corruptions_never_do():
    prompts = load_prompt_set("one").prompts | load_prompt_set("three").prompts
    from core.judges.base import Verdict
    from core.rewards import Label

    rng = random.Random(0)
    for prompt in prompts.values():
        answer = {
            p: (
                Label(3.5, "the red star is blurred")
                if prompt.task == "annotate"
                else Verdict(True, 4.2)
            )
            for p in prompt.perspectives
        }
        obj = reply_object(prompt, answer)
        parse = parse_annotation if prompt.task == "annotate" else parse_evaluation
        for style in REPLY_STYLES:
            assert parse(render_reply(obj, style, rng), prompt.perspectives) == answer
        for _ in range(40):
            for kind in ("malformed", "out_of_range"):
                with pytest.raises(ReplyError):
                    parse(corrupt_reply(obj, kind, rng), prompt.perspectives)
    with pytest.raises(ValueError):
        FaultConfig(p429=0.6, p500=0.6)


# -- Files and Batch API -----------------------------------------------------------------------


def test_files_and_batches_through_the_sdk(server, shapes_store, tmp_path):
    srv = server(batch_delay=0.2)
    client = openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0)
    t = shapes_store.list_triplets()[0]
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": chat_body(shapes_store, t),
        }
        for i in range(3)
    ]
    lines[2]["body"]["messages"][1]["content"].pop()  # one bad request -> error file
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    f = client.files.create(file=path.open("rb"), purpose="batch")
    assert client.files.retrieve(f.id).bytes == path.stat().st_size
    assert client.files.content(f.id).content == path.read_bytes()
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert b.status in ("validating", "in_progress")
    while (b := client.batches.retrieve(b.id)).status not in ("completed", "failed"):
        time.sleep(0.02)
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (
        2,
        1,
    )
    out = [
        json.loads(x) for x in client.files.content(b.output_file_id).content.decode().splitlines()
    ]
    err = [
        json.loads(x) for x in client.files.content(b.error_file_id).content.decode().splitlines()
    ]
    assert [o["custom_id"] for o in out] == ["c0", "c1"] and out[0]["response"][
        "status_code"
    ] == 200
    assert err[0]["custom_id"] == "c2" and err[0]["response"]["status_code"] == 400
    # a malformed input file fails the whole batch, naming the line
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(lines[0]) + "\n" + json.dumps(lines[0]) + "\nnot json\n")
    f = client.files.create(file=bad.open("rb"), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while (b := client.batches.retrieve(b.id)).status not in ("completed", "failed"):
        time.sleep(0.02)
    assert b.status == "failed" and [e.line for e in b.errors.data] == [2, 3]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_batch_api_path_submit_poll_collect(server, shapes_store, tmp_path):
    store = Store(tmp_path / "b.db")
    store.add_triplets(shapes_items(12, size=32, seed=8), progress=False)
    srv = server(FaultConfig(pmalformed=0.25, seed=1), batch_delay=0.1)
    srv.state.answerer = ShapesAnswerer.from_store(store)
    cfg = OpenAIJudgeConfig(base_url=srv.url, api_key="k", model="gpt-4o", mode="three")
    args = Namespace(task="annotate", split=None, source=None, only_failed=False, limit=None,
                     batch_max_lines=16, wait=True, poll_every=0.05, no_labels=False)  # fmt: skip
    for step in ("submit", "submit", "poll", "collect"):
        args.batch = step
        assert batch_mod.batch_command(args, store, OpenAIJudge(cfg)) == 0
    state = batch_mod.load_state(store)
    assert len(state["batches"]) == 3  # 36 requests in files of at most 16 lines, whole triplets
    assert all(b["collected"] and b["missing"] == 0 for b in state["batches"].values())
    rows = store.annotations(judge_model="gpt-4o")
    assert (
        len(rows) == 12 and len({r["triplet_id"] for r in rows}) == 12
    )  # second submit added nothing
    oracle = ShapesOracle()
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all(r["failure_reason"].startswith("unparsable: ") for r in failed)
    for r in rows:
        if r["status"] == "ok":
            t = store.get_triplet(r["triplet_id"])
            assert r["rewards"] == oracle.annotate(
                store.image(t["original"]),
                t["instruction"],
                store.image(t["edited"]),
                meta=t["meta"],
            )
            assert r["meta"]["usage"]["calls"] == 3 and r["meta"]["usage"]["prompt_tokens"] > 0
    ledger = read_ledger(store.path.with_name("b_ledger.jsonl"))
    (run,) = ledger.values()
    assert run["results"] == 12 and run["cost_usd"] == pytest.approx(
        (run["usage"].prompt_tokens * 2.5 + run["usage"].completion_tokens * 10) / 1e6 / 2
    )  # gpt-4o at half price
    # the failed ones go again (a new batch), now without faults
    srv.state.faults = FaultConfig()
    args.only_failed = True
    for step in ("submit", "collect"):
        args.batch = step
        batch_mod.batch_command(args, store, OpenAIJudge(cfg))
    assert len(store.annotations(judge_model="gpt-4o", status="ok")) == 12


def test_shapes_judge_needs_ground_truth(shapes_store):
    t = shapes_store.list_triplets()[0]
    item = JudgeInput(t["instruction"], shapes_store.image_path(t["original"]).read_bytes(),
                      shapes_store.image_path(t["edited"]).read_bytes(), triplet_id=t["id"])  # fmt: skip
    res = asyncio.run(ShapesJudge(shapes_store).annotate(item))
    assert res.ok and res.usage.calls == 0 and res.judge.model == "shapes-oracle-v1"
    direct = JudgeInput(item.instruction, item.original, item.edited, context={"meta": t["meta"]})
    assert asyncio.run(ShapesJudge().annotate(direct)).rewards == res.rewards
    ev = asyncio.run(ShapesJudge().evaluate(direct))
    assert ev.evaluation.scores == res.rewards.scores
    orphan = asyncio.run(ShapesJudge().annotate(JudgeInput("x", item.original, item.edited)))
    assert orphan.reason_code == "bad_input" and "ground truth" in orphan.reason


def test_server_cli_starts_and_serves(shapes_store):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "data.judge_server", "--store", str(shapes_store.path), "--port", str(port), "--latency", "0.01"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}/v1" in line and "21 Shapes triplets" in line
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
