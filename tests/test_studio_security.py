"""Login, roles and blinding: what the studio refuses and what it never reveals."""

from __future__ import annotations

import email.utils
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError
from PIL import Image

import app as app_cli
from studio.app import create_context
from studio.auth import LOCAL_USER, LoginThrottle, is_local_host, password_check
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
    triplet_ids,
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
        counts = store.review_counts()
        for args, api in [(FILTERS, "/review_next"), ((), "/rate_next"),
                          (("5",) * 6 + ("left",), "/rate_submit"),
                          ((5, 5, 5, "", "", "", "", *FILTERS), "/review_accept"),
                          ((False,), "/review_export"), ((), "/results")]:  # fmt: skip
            if api in ("/review_next", "/review_accept"):  # Review steps: a notice, not an error
                *untouched, notice = anonymous.predict(*args, api_name=api)
                assert "You must log in" in notice["message"]
                assert all(o["__type__"] == "update" for o in untouched)
                continue
            with pytest.raises(AppError, match="You must log in"):
                anonymous.predict(*args, api_name=api)
        assert store.ratings() == []
        assert store.review_counts() == counts  # nothing saved


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


def test_logins_are_throttled_per_name(store):
    now = [0.0]
    slept = []
    throttle = LoginThrottle(limit=3, window=60.0, floor=0.0, clock=lambda: now[0],
                             sleep=slept.append)  # fmt: skip
    check = password_check(store, throttle)
    for _ in range(3):
        assert not check("rita", "wrong guess")
    assert not check("rita", PASSWORD)  # throttled: even the right password is refused
    assert not check("RITA ", PASSWORD)  # the same name, differently spelt
    assert check("raul", PASSWORD)  # other names are not affected
    now[0] = 61.0
    assert check("rita", PASSWORD)  # the failures left the window


def test_a_login_takes_the_same_time_whether_the_name_exists_or_not(store):
    check = password_check(store, LoginThrottle(floor=0.5))
    timings = {}
    for name, password in (("rita", PASSWORD), ("rita", "wrong"), ("nobody-here", "wrong"),
                           (LOCAL_USER, "wrong")):  # fmt: skip
        start = time.monotonic()
        check(name, password)
        timings[name, password] = time.monotonic() - start
    assert min(timings.values()) >= 0.5, timings
    assert max(timings.values()) - min(timings.values()) < 0.25, timings


def test_roles_are_enforced(store):
    with serve(_ctx(store, login=True)) as url:
        rita = client(url, "rita")
        *untouched, notice = rita.predict(*FILTERS, api_name="/review_next")  # a Review step
        assert "role 'rater'" in notice["message"]
        assert all(o["__type__"] == "update" for o in untouched)  # no item shown
        labels = [store.get_label(t) for t in triplet_ids(store)]
        assert not any(label and label.locked_by == "rita" for label in labels)  # none taken
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


def test_a_rater_cannot_tell_the_systems_apart(tmp_path):
    """Everything a rater receives for a pair, compared between the two systems' outputs:
    the API answer's file records, and the served files' headers, sizes and names. The Edit
    tab's model is named like system A's model, so a leak of it would show too."""
    import dataclasses

    import numpy as np

    from tests.studio_helpers import call, login_opener

    store = build_store(tmp_path / "blind.db")
    ctx = _ctx(store, login=True)
    ctx.model = dataclasses.replace(ctx.model, name=MODEL_A)
    with serve(ctx) as url:
        opener = login_opener(url, "rita")
        for path in ("", "config", "gradio_api/info"):
            _assert_clean(opener.open(url + path).read().decode(), f"GET /{path}")
        loaded = call(opener, url, "page_load")
        _assert_clean(json.dumps(loaded), "page_load")
        shown = [u for u in loaded if isinstance(u, dict) and u.get("__type__") == "update"]
        tabs = [u.get("visible") for u in shown[:3]]  # edit, review, rate
        assert tabs == [False, False, True]
        with pytest.raises(RuntimeError, match="role 'rater'"):  # and the API refuses too
            call(opener, url, "edit", None, "x", 5, 5, 5, "", "", "", 2, 7.5, 1.5, 1.0, 0)
        with store.db() as db:
            store_mtimes = {
                Path(store.image_path(h)).stat().st_mtime
                for (h,) in db.execute("SELECT image FROM run_outputs")
            }
        from gradio_client import Client

        rita = Client(url, auth=("rita", PASSWORD), verbose=False, download_files=False)
        answer = rita.predict(api_name="/rate_next")
        for _ in range(4):
            _assert_clean(json.dumps(answer), "the rate_next answer")
            files = [a for a in answer if isinstance(a, dict) and "url" in a]
            assert len(files) == 3  # input, left, right
            records = [{k: v for k, v in f.items() if k not in ("url", "path", "orig_name")}
                       for f in files]  # fmt: skip
            assert records[1] == records[2], records  # same size, type, everything
            served = []
            for f in files:
                assert re.fullmatch(r"[0-9a-f]{32}\.png", f["orig_name"]), f["orig_name"]
                response = opener.open(f["url"])
                body = response.read()
                headers = {k.lower(): v for k, v in response.headers.items()}
                del headers["date"]  # the time of the request
                # the file's own random name: the only header that differs, and it is random
                disposition = headers.pop("content-disposition")
                assert disposition == f'inline; filename="{f["orig_name"]}"', disposition
                served.append((headers, body))
            (_, _), (h_left, left), (h_right, right) = served
            assert h_left == h_right, (h_left, h_right)  # Last-Modified, ETag, length, type
            assert len(left) == len(right)
            modified = email.utils.parsedate_to_datetime(h_left["last-modified"]).timestamp()
            assert modified not in store_mtimes  # no store file's time
            # The pixels are the systems' own outputs, unchanged.
            (row,) = [r for r in _assignments(store, "rita") if r["status"] == "pending"]
            a, b = _output_pixels(store, row["output_a"]), _output_pixels(store, row["output_b"])
            if row["a_side"] == "R":
                a, b = b, a
            assert np.array_equal(_pixels(left), a) and np.array_equal(_pixels(right), b)
            answer = rita.predict("4", "4", "4", "2", "2", "2", "right", api_name="/rate_submit")
            _assert_clean(json.dumps(answer), "the rate_submit answer")


def _assignments(store, rater):
    with store.db() as db:
        return list(db.query("SELECT * FROM rating_assignments WHERE rater = ?", [rater]))


def _output_pixels(store, output_id):
    import numpy as np

    with store.db() as db:
        (h,) = db.execute("SELECT image FROM run_outputs WHERE id = ?", [output_id]).fetchone()
    return np.asarray(Image.open(store.image_path(h)).convert("RGB"))


def _pixels(data: bytes):
    import io

    import numpy as np

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_the_edit_tabs_model_note_names_a_local_folder_relative_to_the_working_directory():
    from types import SimpleNamespace

    from studio.edit_tab import model_note

    def note(name):
        return model_note(SimpleNamespace(model=SimpleNamespace(name=name, resolution=32)))

    inside = Path.cwd() / "docs" / "demo_models" / "shapes_mrc"
    assert "Model: `docs/demo_models/shapes_mrc`" in note(str(inside))
    assert str(Path.cwd()) not in note(str(inside))
    assert "Model: `timbrooks/instruct-pix2pix`" in note("timbrooks/instruct-pix2pix")
    assert "Model: `/elsewhere/model`" in note("/elsewhere/model")  # outside: shown as given
    assert "32 px" in note("tiny")
