// Re-reads a function page's invocations table every 2 s, in place: the server renders
// the table (escaped, as every page); this script only swaps the parsed element in. No
// innerHTML on the live page, no inline script anywhere (the CSP forbids it).
(function () {
  "use strict";
  var box = document.getElementById("invocations-box");
  if (!box || !window.fetch || !window.DOMParser) { return; }
  var source = box.getAttribute("data-source");
  // The session's token (base.html): the dashboard refuses a script's request without it.
  var token = document.querySelector('meta[name="sora-csrf"]');
  token = token ? token.getAttribute("content") : "";
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(source, { credentials: "same-origin", headers: { "Accept": "text/html", "X-Sora-CSRF": token } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (text) {
        var parsed = new DOMParser().parseFromString(text, "text/html");
        var table = parsed.getElementById("invocations");
        var current = document.getElementById("invocations");
        if (table && current) {
          current.replaceWith(document.importNode(table, true));
        }
      })
      .catch(function () { /* a missed refresh: the next one tries again */ })
      .then(function () { busy = false; });
  }
  window.setInterval(refresh, 2000);
}());
