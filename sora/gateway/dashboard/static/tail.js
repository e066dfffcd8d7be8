// The live log tail of /ui/functions/NAME/logs: follows the page's Server-Sent Events stream
// and appends each line to ol#log-tail. A function's output is text, never markup: every value
// is set with textContent (and attributes with setAttribute), never innerHTML.
(function () {
  "use strict";
  var list = document.getElementById("log-tail");
  var status = document.getElementById("tail-status");
  if (!list || !window.EventSource) { return; }
  var KEEP = 2000;   // lines kept on the page; older ones are dropped as new ones come

  function say(text) { if (status) { status.textContent = text; } }

  function pad(n, width) { var s = String(n); while (s.length < width) { s = "0" + s; } return s; }

  function when(seconds) {
    var d = new Date(seconds * 1000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1, 2) + "-" + pad(d.getUTCDate(), 2) +
      " " + pad(d.getUTCHours(), 2) + ":" + pad(d.getUTCMinutes(), 2) + ":" +
      pad(d.getUTCSeconds(), 2) + "." + pad(d.getUTCMilliseconds(), 3) + "Z";
  }

  function append(line) {
    var item = document.createElement("li");
    item.className = "log-line stream-" + String(line.stream).replace(/[^a-z]/g, "");
    item.setAttribute("data-id", String(line.id));
    item.setAttribute("data-stream-name", String(line.stream));
    var time = document.createElement("time");
    time.textContent = when(line.time);
    var link = document.createElement("a");
    link.className = "request-id";
    link.setAttribute("href", "/ui/invocations/" + encodeURIComponent(String(line.requestId)));
    link.textContent = String(line.requestId);
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = String(line.line);
    item.appendChild(time);
    item.appendChild(document.createTextNode(" "));
    item.appendChild(link);
    item.appendChild(document.createTextNode(" "));
    item.appendChild(text);
    // Keep following the end only if the reader is there (not scrolled up to read).
    var follow = list.scrollTop + list.clientHeight >= list.scrollHeight - 40;
    list.appendChild(item);
    while (list.children.length > KEEP) { list.removeChild(list.firstElementChild); }
    if (follow) { list.scrollTop = list.scrollHeight; }
  }

  list.scrollTop = list.scrollHeight;   // a tail starts at its end

  // The session's token (base.html) goes in the query: EventSource sends no headers, and the
  // dashboard refuses a script's request without it. The gateway writes no access log.
  var token = document.querySelector('meta[name="sora-csrf"]');
  var url = list.getAttribute("data-stream");
  url += (url.indexOf("?") < 0 ? "?" : "&") + "csrf=" +
    encodeURIComponent(token ? token.getAttribute("content") : "");
  var source = new EventSource(url);
  source.onopen = function () { say("Live: new lines appear as the function prints them."); };
  source.onmessage = function (event) {
    var line;
    try { line = JSON.parse(event.data); } catch (e) { return; }
    append(line);
  };
  source.onerror = function () {
    // EventSource reconnects by itself (after the last line it got); it gives up only when
    // the answer is not a stream (e.g. the session ended: the login page).
    say(source.readyState === EventSource.CLOSED
      ? "Disconnected: reload the page (you may need to log in again)."
      : "Reconnecting...");
  };
})();
