"""Login, roles and blinding: what the studio refuses and what it never reveals."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError
from PIL import Image

import app as app_cli
from studio.app import create_context
from studio.auth import LOCAL_USER, is_local_host, password_check
from studio.rating import BlindRating, Evaluation
from tests.studio_helpers import (
    MODEL_A,
    MODEL_B,
    PASSWORD,
    SYSTEM_A,
    SYSTEM_B,
    build_store,
    client,
    serve,
    tiny_model,
)

FILTERS = ("to review", "(any)", "(any)", "(any)", 0, 5)
SECRETS = [SYSTEM_A, SYSTEM_B, MODEL_A, MODEL_B, "system-alpha", "system-bravo", "ALPHA", "BRAVO"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("sec") / "s.db")


def _ctx(store, login: bool):
    return create_context(
        store, tiny_model(), login_required=login, evaluation=Evaluation(SYSTEM_A, SYSTEM_B)
    )


def test_local_hosts():
    assert is_local_host("127.0.0.1") and is_local_host("localhost") and is_local_host("::1")
    assert not is_local_host("0.0.0.0") and not is_local_host("192.168.1.5")


def test_without_login_a_public_studio_refuses_review_and_rating(store):
    """Misconfigured: login is required (public host) but the app was launched without auth."""
    with serve(_ctx(store, login=True), auth=False) as url:
        anonymous = client(url)
        for args, api in [(FILTERS, "/review_next"), ((), "/rate_next"),
                          (("5",) * 6 + ("left",), "/rate_submit"),
                          ((5, 5, 5, "", "", "", "", *FILTERS), "/review_accept"),
                          ((False,), "/review_export"), ((), "/results")]:  # fmt: skip
            with pytest.raises(AppError, match="You must log in"):
                anonymous.predict(*args, api_name=api)
        assert store.ratings() == []


def test_with_login_anonymous_requests_never_reach_the_app(store):
    with serve(_ctx(store, login=True)) as url:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "gradio_api/info")
        assert err.value.code == 401
        with pytest.raises(ValueError):  # a wrong password cannot log in
            from gradio_client import Client

            Client(url, auth=("rita", "wrong password"), verbose=False)
        assert client(url, "rita").predict(api_name="/rate_next")[0].startswith("### ")


def test_the_local_identity_cannot_log_in(store):
    check = password_check(store)
    assert check("rita", PASSWORD) and not check("rita", "nope")
    assert not check(LOCAL_USER, PASSWORD)


def test_roles_are_enforced(store):
    with serve(_ctx(store, login=True)) as url:
        rita = client(url, "rita")
        with pytest.raises(AppError, match="role 'rater'"):
            rita.predict(*FILTERS, api_name="/review_next")
        with pytest.raises(AppError, match="role 'rater'"):
            rita.predict(api_name="/results")
        with pytest.raises(AppError, match="role 'annotator'"):
            client(url, "alice").predict(api_name="/rate_next")


def test_a_rater_cannot_submit_as_another(store, tmp_path):
    with serve(_ctx(store, login=True)) as url:
        raul = client(url, "raul")
        params = raul.view_api(print_info=False, return_format="dict")["named_endpoints"]
        names = {p["parameter_name"] for p in params["/rate_submit"]["parameters"]}
        assert not names & {"user", "username", "rater", "assignment", "assignment_id"}
        raul.predict(api_name="/rate_next")
        raul.predict("3", "3", "3", "2", "2", "2", "tie", api_name="/rate_submit")
        (row,) = store.ratings(rater="raul")  # the rater is the logged-in user
        assert row["preference"] == "tie"
    # Even a handler bug could not file raul's assignment under rita: the store refuses it.
    rating = BlindRating(store, Evaluation(SYSTEM_A, SYSTEM_B), tiny_model_media(tmp_path))
    pending = rating.next("raul")
    scores = {"following": 1, "preserving": 1, "quality": 1}
    with pytest.raises(ValueError, match="belongs to 'raul'"):
        rating.submit("rita", pending.assignment_id, scores, scores, None)


def tiny_model_media(tmp_path):
    from studio.media import NeutralImages

    return NeutralImages(tmp_path / "media")


def _assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked through {where}"


def test_the_blind_tab_leaks_no_system_name(store, tmp_path):
    with serve(_ctx(store, login=True)) as url:
        rita = client(url, "rita")
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        login = urllib.parse.urlencode({"username": "rita", "password": PASSWORD}).encode()
        opener.open(url + "login", login)
        for path in ("", "config", "gradio_api/info"):
            _assert_clean(opener.open(url + path).read().decode(), f"GET /{path}")
        seen = []
        for _ in range(3):
            pair = rita.predict(api_name="/rate_next")
            _assert_clean(json.dumps(pair, default=str), "the rate_next response")
            for path in pair[1:4]:  # input, left, right
                name = Path(path).name
                assert re.fullmatch(r"[0-9a-f]{32}\.png", name), name  # neutral uuid names
                _assert_clean(path, "an image path")
                info = Image.open(path).info
                assert not {k for k in info if k not in ("dpi",)}, info  # no text chunks
                seen.append(name)
            out = rita.predict("4", "4", "4", "2", "2", "2", "right", api_name="/rate_submit")
            _assert_clean(json.dumps(out, default=str), "the rate_submit response")
        assert len(set(seen)) == len(seen)  # every serving gets a fresh name
        _assert_clean(json.dumps(rita.predict(api_name="/page_load"), default=str), "page_load")


def test_app_refuses_public_serving_without_users(tmp_path, capsys):
    code = app_cli.main(["--db", str(tmp_path / "empty.db"), "--host", "0.0.0.0"])
    assert code == 2
    assert "requires login" in capsys.readouterr().err
