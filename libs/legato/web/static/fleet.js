// Fleet page: re-fetch the table (same filters) when a run of any workflow changes, at most once a second.
"use strict";
(function () {
  const box = document.getElementById("fleet");
  if (!box || !window.EventSource) return;
  let busy = false;
  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const params = new URLSearchParams(window.location.search);
      params.set("partial", "1");
      const res = await fetch("/?" + params.toString(), { credentials: "same-origin" });
      if (res.ok) box.innerHTML = await res.text();
    } finally {
      busy = false;
    }
  }
  const source = new EventSource(box.dataset.live);
  source.addEventListener("changed", refresh);
})();
