// MRC Studio keyboard shortcuts (Gradio has no hotkey API; this script is added with
// launch(head=...)). It only clicks buttons and sets inputs by elem_id, so every action
// still goes through the same Gradio events as a mouse click.
//
// Review tab: 0-5 set the highlighted perspective's score (Shift adds 0.5) and move to the
//   next one; Up/Down choose the perspective; Enter accepts (the store records "fixed" when
//   the values changed); Left/Right move to the previous/next item; r rejects; s skips;
//   u undoes your last decision (the item opens again).
// Human-eval tab: 0-5 set the highlighted score and move on (left F/P/Q, then right F/P/Q);
//   Up/Down choose; l / r / t / x prefer left / right / tie / both bad; Enter submits;
//   Right skips.
// Keys typed into a text box are left alone (Escape leaves the box); so are the arrow, Home,
// End and Page keys on a focused slider, which move the slider as a browser does.
(() => {
  if (window.__mrcHotkeys) return;
  window.__mrcHotkeys = true;
  const P = ["following", "preserving", "quality"];
  const FIELDS = {
    review: P.map((p) => `review-score-${p}`),
    rate: ["left", "right"].flatMap((s) => P.map((p) => `rate-${s}-${p}`)),
  };
  const cursor = { review: 0, rate: 0 };
  const byId = (id) => document.getElementById(id);
  const shown = (el) => !!el && el.getClientRects().length > 0;

  function activeTab() {
    if (shown(byId("review-accept"))) return "review";
    if (shown(byId("rate-submit"))) return "rate";
    return null;
  }

  function highlight(tab) {
    document.querySelectorAll(".mrc-cursor").forEach((el) => el.classList.remove("mrc-cursor"));
    const el = byId(FIELDS[tab][cursor[tab]]);
    if (el) el.classList.add("mrc-cursor");
  }

  function setValue(input, value) {
    const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, "value").set;
    setter.call(input, String(value));
    input.dispatchEvent(new Event("input", { bubbles: true }));
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function setScore(tab, value) {
    const box = byId(FIELDS[tab][cursor[tab]]);
    if (!box) return false;
    const radio = box.querySelector(`input[type="radio"][value="${Math.round(value)}"]`);
    if (radio) {
      radio.click();
      return true;
    }
    const range = box.querySelector('input[type="range"]');
    const number = box.querySelector('input[type="number"]');
    if (range) setValue(range, value);
    if (number) setValue(number, value);
    return !!(range || number);
  }

  function click(id) {
    const el = byId(id);
    if (!el) return;
    (el.tagName === "BUTTON" ? el : el.querySelector("button") || el).click();
  }

  function choosePreference(value) {
    const radio = document.querySelector(`#rate-preference input[type="radio"][value="${value}"]`);
    if (radio) radio.click();
  }

  document.addEventListener(
    "keydown",
    (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing) return;
      const tab = activeTab();
      if (!tab) return;
      const t = e.target;
      const typing =
        t &&
        (t.tagName === "TEXTAREA" ||
          t.isContentEditable ||
          (t.tagName === "INPUT" && !["range", "radio", "checkbox", "button"].includes(t.type)));
      if (typing) {
        if (e.key === "Escape") t.blur();
        return;
      }
      const sliderKeys = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End",
                          "PageUp", "PageDown"];
      if (t && t.tagName === "INPUT" && t.type === "range" && sliderKeys.includes(e.key)) return;
      const fields = FIELDS[tab];
      const digit = /^Digit([0-5])$/.exec(e.code) || /^Numpad([0-5])$/.exec(e.code);
      let handled = true;
      if (digit) {
        let value = Number(digit[1]);
        if (e.shiftKey && tab === "review" && value < 5) value += 0.5;
        if (setScore(tab, value)) cursor[tab] = Math.min(cursor[tab] + 1, fields.length - 1);
      } else if (e.key === "ArrowDown") {
        cursor[tab] = Math.min(cursor[tab] + 1, fields.length - 1);
      } else if (e.key === "ArrowUp") {
        cursor[tab] = Math.max(cursor[tab] - 1, 0);
      } else if (e.key === "Enter") {
        click(tab === "review" ? "review-accept" : "rate-submit");
        cursor[tab] = 0;
      } else if (tab === "review" && e.key === "ArrowRight") {
        click("review-forward");
        cursor[tab] = 0;
      } else if (tab === "review" && e.key === "ArrowLeft") {
        click("review-back");
        cursor[tab] = 0;
      } else if (tab === "review" && e.key === "r") {
        click("review-reject");
        cursor[tab] = 0;
      } else if (tab === "review" && e.key === "s") {
        click("review-skip");
        cursor[tab] = 0;
      } else if (tab === "review" && e.key === "u") {
        click("review-undo");
        cursor[tab] = 0;
      } else if (tab === "rate" && e.key === "ArrowRight") {
        click("rate-skip");
        cursor[tab] = 0;
      } else if (tab === "rate" && ["l", "r", "t", "x"].includes(e.key)) {
        choosePreference({ l: "left", r: "right", t: "tie", x: "both bad" }[e.key]);
      } else {
        handled = false;
      }
      if (handled) {
        e.preventDefault();
        e.stopPropagation();
        highlight(tab);
      }
    },
    true,
  );
})();
