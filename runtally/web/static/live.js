// Live updates: poll /api/stamp; when the database changed, re-render <main id="live">.
// The server sends only the page's live block for X-Runtally-Live: 1 (already escaped HTML).
(function () {
  "use strict";
  var main = document.getElementById("live");
  var state = document.getElementById("live-state");
  if (!main || !window.fetch) { return; }
  var every = parseInt(main.getAttribute("data-poll-ms"), 10) || 2000;
  var last = null;
  var busy = false;

  function mark(text, cls) {
    if (state) { state.textContent = text; state.className = "live-state " + cls; }
  }

  function refresh() {
    return fetch(window.location.href, { headers: { "X-Runtally-Live": "1" }, cache: "no-store" })
      .then(function (r) { return r.text(); })
      .then(function (html) { main.innerHTML = html; });
  }

  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch("/api/stamp", { cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
      .then(function (body) {
        var changed = last !== null && body.stamp !== last;
        last = body.stamp;
        mark("live", "on");
        return changed ? refresh() : null;
      })
      .catch(function () { mark("offline", "off"); })
      .then(function () { busy = false; });
  }

  tick();
  window.setInterval(tick, every);
})();
