"""The studio in a real browser (Debian's Chromium through Playwright, never a downloaded one):
a gold-pair rating campaign with an excluded rater, and keyboard accessibility on the Review
tab (issue 14).

* An admin sets up a blind campaign that mixes in gold pairs (known answers); two raters rate
  in their own browsers, one answering the gold pairs right, one giving 3 to everything; the
  raters table shows the second one's poor agreement with gold; the admin excludes them and
  the result tables leave their ratings out, while ratings made earlier in local single-user
  mode stay in their own table.
* On the Review tab the keyboard focus ring is visible (the studio's CSS, ``:focus-visible``),
  arrow keys on a focused score slider move the slider and nothing else, and ArrowRight with
  the focus elsewhere still moves to the next item.

Skipped with the reason when /usr/bin/chromium is missing, as ``test_studio_browser.py``.
"""

from __future__ import annotations

import pytest

from studio.app import create_context
from studio.auth import LOCAL_USER, ensure_local_user
from studio.media import NeutralImages
from studio.rating import BlindRating, Evaluation
from tests.studio_helpers import (
    BAD,
    CHROMIUM,
    GOOD,
    SYSTEM_A,
    SYSTEM_B,
    TIMEOUT,
    add_gold_pairs,
    browser_login,
    build_store,
    chromium,
    serve,
    tiny_model,
)

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does this)",
    ),
]
P = ("following", "preserving", "quality")
# A Gradio 6 data frame as the page shows it: {column: [cell text, ...]}.
TABLE = """(el) => {
  const heads = [...el.querySelectorAll("th[role=columnheader]")].map((th) => th.title);
  const rows = [...el.querySelectorAll("[role=row].virtual-row")].map((row) =>
    [...row.querySelectorAll("[role=gridcell]")].map((cell) => cell.textContent.trim()));
  return Object.fromEntries(heads.map((h, i) => [h, rows.map((r) => r[i])]));
}"""
# The keyboard focus ring of the focused element, and whether the browser calls it keyboard
# focus (:focus-visible).
FOCUS = """() => {
  const el = document.activeElement;
  const s = getComputedStyle(el);
  return {tag: el.tagName, type: el.type || "", label: el.getAttribute("aria-label") || "",
          visible: el.matches(":focus-visible"), style: s.outlineStyle, width: s.outlineWidth,
          color: s.outlineColor, offset: s.outlineOffset};
}"""
SLIDER = "range slider for Instruction following"  # the following score's slider
RING = {"style": "solid", "width": "3px", "color": "rgb(37, 99, 235)", "offset": "-3px"}


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _page(browser):
    """A page in a fresh browser context (its own cookies: one signed-in user)."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT)
    return page


def _rate_in_local_mode(store, tmp_path) -> None:
    """One rating by the built-in ``local`` user, as single-user mode stores it: system A all
    0, system B all 5, B preferred (the opposite of the team, so a leak would show)."""
    ensure_local_user(store)
    rating = BlindRating(store, Evaluation(SYSTEM_A, SYSTEM_B), NeutralImages(tmp_path / "local"))
    pair = rating.next(LOCAL_USER)
    a_left = _pending(store, LOCAL_USER)["a_side"] == "L"
    zero, five = dict.fromkeys(P, 0), dict.fromkeys(P, 5)
    left, right = (zero, five) if a_left else (five, zero)
    rating.submit(LOCAL_USER, pair.assignment_id, left, right, "right" if a_left else "left")


def _pending(store, rater: str) -> dict:
    """The rater's pair on screen (server side: the page never learns which side is what)."""
    with store.db() as db:
        (row,) = db.query(
            "SELECT a_side, gold_id FROM rating_assignments WHERE rater = ? AND status = 'pending'",
            [rater],
        )
    return row


def _rate_all(page, store, rater: str, answer) -> list[bool]:
    """Rate every pair the campaign gives ``rater`` by clicking; ``answer(a_left, gold)``
    gives (left scores, right scores, preference). Returns, per pair, whether it was gold."""
    page.locator("#rate-start").click()
    progress = page.locator("#rate-progress")
    progress.get_by_text("You have rated 0 pair(s)").wait_for()
    gold = []
    while "Nothing left for you to rate" not in page.locator("#rate-instruction").inner_text():
        row = _pending(store, rater)
        gold.append(row["gold_id"] is not None)
        left, right, preference = answer(row["a_side"] == "L", row["gold_id"] is not None)
        for side, scores in (("left", left), ("right", right)):
            for p in P:
                page.locator(f"#rate-{side}-{p}").get_by_label(str(scores[p]), exact=True).check()
        page.locator("#rate-preference").get_by_label(preference, exact=True).check()
        page.locator("#rate-submit").click()
        progress.get_by_text(f"You have rated {len(gold)} pair(s)").wait_for()
    return gold


def _careful(a_left: bool, gold: bool):
    """rita: on a gold pair the known answer (its better image takes system A's place: 5s,
    the worse 1s); on a real pair A 4s and B 2s. Prefers A either way."""
    a, b = (GOOD, BAD) if gold else (dict.fromkeys(P, 4), dict.fromkeys(P, 2))
    return (a, b, "left") if a_left else (b, a, "right")


def _flat(a_left: bool, gold: bool):
    """raul: 3 for everything and a tie, gold pairs included."""
    three = dict.fromkeys(P, 3)
    return three, three, "tie"


def _table(page, elem_id: str) -> dict[str, list[str]]:
    return page.locator(f"#{elem_id}").evaluate(TABLE)


def test_gold_campaign_per_rater_agreement_and_an_excluded_rater(browser, tmp_path):
    store = build_store(tmp_path / "s.db", n_bench=3)
    gold_ids = add_gold_pairs(store, 2)
    _rate_in_local_mode(store, tmp_path)
    # The campaign starts without gold pairs (the newest two runs, k = 3); ada changes it.
    ctx = create_context(store, tiny_model(), login_required=True)
    assert ctx.rating.evaluation.gold_share == 0
    with serve(ctx) as url:
        admin = _page(browser)
        browser_login(admin, url, "ada")
        admin.get_by_role("tab", name="Human evaluation").click()
        admin.get_by_text("Evaluation set-up (admin)").click()
        # The page's load event fills the set-up form from the server; it may land after a
        # first fill and put 0 back, so fill until the value has stayed put for a moment.
        gold_percent = admin.locator("#rate-gold-percent input")
        for _ in range(20):
            gold_percent.fill("30")
            gold_percent.press("Tab")
            admin.wait_for_timeout(500)
            if gold_percent.input_value() == "30":
                break
        expect(gold_percent).to_have_value("30")
        admin.locator("#rate-configure").click()
        admin.get_by_text("Raters now compare").wait_for()
        setup = admin.get_by_text("Raters now compare").inner_text()
        assert setup == (
            f"Raters now compare {SYSTEM_A} with {SYSTEM_B} on 3 items, 3 raters per item; "
            "30% of the pairs are gold pairs (2 in the store); systems are not revealed after "
            "each vote."
        )

        # Two raters, each in their own browser. The seeded draws (seed 0, 30%) give rita
        # gold, real, gold, real, real and raul gold, gold, real, real, real: every gold
        # pair once each, between real pairs, counted in their own progress only.
        pages = {}
        for rater, answer, expected in (
            ("rita", _careful, [True, False, True, False, False]),
            ("raul", _flat, [True, True, False, False, False]),
        ):
            page = pages[rater] = _page(browser)
            browser_login(page, url, rater)
            assert _rate_all(page, store, rater, answer) == expected
        progress = pages["raul"].locator("#rate-progress").inner_text()
        assert progress == (
            "You have rated 5 pair(s). Overall: 7 of 9 ratings (1 of 3 items have all 3 raters)."
        )
        ratings = store.ratings()
        assert sorted(r["gold_id"] for r in ratings if r["gold_id"]) == sorted(gold_ids * 2)
        assert [r["mode"] for r in ratings].count("local") == 1

        # The results: both team raters pooled, the local rating apart.
        admin.get_by_text("Results (admin)").click()
        admin.locator("#results-refresh").click()
        note = admin.get_by_text("rated outputs")
        note.wait_for()
        assert note.inner_text() == (
            "2 raters, 12 rated outputs, 6 preferences. Means with 95% bootstrap intervals "
            "over items. Ratings made in local single-user mode are counted apart (below)."
        )
        scores = _table(admin, "results-scores")
        assert scores == {
            "system": [SYSTEM_A, SYSTEM_B],
            **{p: ["3.50 [3.50, 3.50]", "2.50 [2.50, 2.50]"] for p in P},
        }
        # The per-rater view: raul's gold answers are all wrong (a tie on a pair with a
        # known answer), 2 points off the known scores, and his scores never vary.
        raters = _table(admin, "results-raters")
        assert raters["rater"] == [LOCAL_USER, "raul", "rita"]
        assert raters["mode"] == ["local", "team", "team"]
        assert raters["excluded"] == ["false", "false", "false"]
        assert raters["gold_n"] == ["0", "2", "2"]
        assert raters["gold_accuracy"][1:] == ["0", "1"]
        assert raters["gold_score_mae"][1:] == ["2", "0"]
        assert raters["score_sd"][1:] == ["0", "1"]
        assert raters["modal_share"][1:] == ["1", "0.5"]
        local = _table(admin, "results-local")
        assert local["system"] == [SYSTEM_A, SYSTEM_B]
        assert [local["following"][0][:4], local["following"][1][:4]] == ["0.00", "5.00"]

        # ada excludes raul: the tables leave his ratings out, the raters table keeps him.
        admin.locator("#results-rater input").click()
        admin.get_by_role("option", name="raul", exact=True).click()
        admin.locator("#results-reason textarea").fill("the same score for everything")
        admin.locator("#results-exclude").click()
        note = admin.get_by_text("Excluded from these tables")
        note.wait_for()
        assert note.inner_text() == (
            "1 rater, 6 rated outputs, 3 preferences. Means with 95% bootstrap intervals "
            "over items. Excluded from these tables: raul. Ratings made in local single-user "
            "mode are counted apart (below)."
        )
        scores = _table(admin, "results-scores")
        assert scores == {
            "system": [SYSTEM_A, SYSTEM_B],
            **{p: ["4.00 [4.00, 4.00]", "2.00 [2.00, 2.00]"] for p in P},
        }
        raters = _table(admin, "results-raters")
        assert raters["rater"] == [LOCAL_USER, "raul", "rita"]
        assert raters["excluded"] == ["false", "true", "false"]
        assert raters["exclusion_reason"] == ["", "the same score for everything", ""]
        assert raters["gold_accuracy"][1:] == ["0", "1"]
        assert _table(admin, "results-local") == local
        (logged,) = store.exclusion_log()
        assert (logged["rater"], logged["action"], logged["by_user"], logged["reason"]) == (
            "raul", "exclude", "ada", "the same score for everything",
        )  # fmt: skip
        for page in (admin, *pages.values()):
            page.context.close()


def _tid(header) -> str:
    return header.locator("code").first.inner_text().strip()


def test_review_keyboard_focus_ring_and_slider_arrows(browser, tmp_path):
    store = build_store(tmp_path / "s.db")
    ctx = create_context(store, tiny_model(), login_required=False)
    with serve(ctx) as url:
        page = _page(browser)
        page.goto(url)
        page.get_by_text("Local single-user mode").wait_for()
        page.get_by_role("tab", name="Review").click()
        page.locator("#review-load").click()
        header = page.locator("#review-header")
        header.get_by_text("doubt").wait_for()
        tid = _tid(header)
        label = store.get_label(tid)
        assert label.rewards.following.score == 4.0  # the judge's score (studio_helpers)
        box = page.locator("#review-score-following")
        slider, number = box.locator("input[type=range]"), box.locator("input[type=number]")
        assert (slider.input_value(), number.input_value()) == ("4", "4")

        # Tab from the page: every element the focus reaches on the way to the score slider
        # shows the studio's blue ring (the first had no outline before), links included.
        first = page.locator("#review-original button").first
        assert first.evaluate("(el) => getComputedStyle(el).outlineStyle") == "none"
        header.click()
        assert page.evaluate("() => document.activeElement === document.body")
        page.keyboard.press("Tab")
        assert first.evaluate("(el) => el === document.activeElement")
        reached = [page.evaluate(FOCUS)]
        while reached[-1]["label"] != SLIDER and len(reached) < 40:
            page.keyboard.press("Tab")
            reached.append(page.evaluate(FOCUS))
        assert reached[-1]["label"] == SLIDER, reached
        for focus in reached:
            assert focus["visible"] and {k: focus[k] for k in RING} == RING, focus
        assert {"BUTTON", "A", "INPUT"} <= {f["tag"] for f in reached}
        assert page.locator(".mrc-cursor").count() == 0  # Tab is no review shortcut

        # Arrow keys, Home and End on the focused slider move the slider (step 0.1) and the
        # number box with it; the item, the saved label and the shortcut cursor stay.
        for key, value in (("ArrowRight", "4.1"), ("ArrowLeft", "4"), ("ArrowLeft", "3.9"),
                           ("ArrowUp", "4"), ("ArrowDown", "3.9"), ("End", "5"), ("Home", "0")):  # fmt: skip
            page.keyboard.press(key)
            expect(slider).to_have_value(value)
            expect(number).to_have_value(value)
        assert _tid(header) == tid
        assert page.locator(".mrc-cursor").count() == 0
        assert store.get_label(tid).version == label.version

        # With the focus elsewhere ArrowRight is the shortcut again: the next item opens,
        # nothing is saved for the one left (its label is unchanged).
        header.click()
        page.keyboard.press("ArrowRight")
        header.locator("code").first.filter(has_not_text=tid).wait_for()
        after = store.get_label(tid)
        assert (after.version, after.status, after.rewards.following.score) == (
            label.version, label.status, 4.0,
        )  # fmt: skip
        page.keyboard.press("ArrowLeft")
        header.locator("code", has_text=tid).first.wait_for()
        page.context.close()
