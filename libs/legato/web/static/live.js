// Pages whose <main> has data-live (a server-sent events URL) and data-live-ids (element ids): when the
// stream says "changed", re-fetch this page and swap those elements in (at most one fetch at a time).
"use strict";
(function () {
  const main = document.querySelector("main[data-live]");
  if (!main || !window.EventSource) return;
  const ids = (main.dataset.liveIds || "").split(/\s+/).filter(Boolean);
  let busy = false;
  let again = false;
  let stale = false; // a swap was skipped for the focused form: redo it when the focus leaves
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const res = await fetch(window.location.href, { credentials: "same-origin" });
      if (!res.ok) return;
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      for (const id of ids) {
        const fresh = doc.getElementById(id);
        const old = document.getElementById(id);
        // not under the user's cursor: a reason half typed in a form there would be lost, and a button
        // held down (it has the focus from the press) would be replaced before its release: no click
        if (old && old.contains(document.activeElement) && document.activeElement.matches("input, select, textarea, button")) {
          stale = true;
          continue;
        }
        if (fresh && old) old.replaceWith(document.adoptNode(fresh));
      }
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }
  document.addEventListener("focusout", () => { if (stale) { stale = false; setTimeout(refresh, 200); } });
  new EventSource(main.dataset.live).addEventListener("changed", refresh);
})();
