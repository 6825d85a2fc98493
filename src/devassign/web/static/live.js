// devassign dashboard: pages that update in place, without reloading (docs/operations.md,
// "Dashboard"). A page names its event stream (<body data-stream="/ui/events/stream?...">)
// and its live parts (data-live="/ui/fragments/..."). On each event, and every 10 s for the
// ages and the cloud-wide counts, each live part is replaced by its fragment: HTML the server
// rendered and escaped, scoped like the page. Nothing from an event goes into the page, and
// this script never builds markup from data: it sets text (textContent) and moves nodes.
(function () {
  "use strict";
  var EVERY_MS = 10000; // a refresh without an event: ages, other projects' counts
  var SETTLE_MS = 100; // events that come together cause one refresh

  var body = document.body;
  var stream = body.getAttribute("data-stream");
  var parts = document.querySelectorAll("[data-live]");
  var status = document.getElementById("live-status");
  if (!stream || !parts.length || !window.EventSource || !window.fetch || !window.DOMParser) {
    return;
  }

  var timer = null;
  var running = false;
  var again = false;
  var stopped = false;
  var refreshes = 0;
  var source = null;

  function say(text, state) {
    if (status) {
      status.textContent = text;
      status.className = "live " + state;
    }
  }

  function stop(text) {
    stopped = true;
    if (source) {
      source.close();
    }
    say(text, "off");
  }

  function soon(ms) {
    if (timer === null && !stopped) {
      timer = window.setTimeout(refresh, ms);
    }
  }

  function load(part) {
    var options = { credentials: "same-origin", cache: "no-store", redirect: "manual" };
    return window.fetch(part.getAttribute("data-live"), options).then(function (r) {
      // A redirect is the sign-in form: the session ended. 403 or 404: no longer visible.
      if (r.type === "opaqueredirect" || r.status === 401 || r.status === 403 || r.status === 404) {
        throw new Error("gone");
      }
      if (!r.ok || r.headers.get("X-Devassign-Fragment") !== "1") {
        throw new Error("failed");
      }
      return r.text().then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").body;
        var nodes = [];
        for (var i = 0; i < fresh.childNodes.length; i++) {
          nodes.push(document.importNode(fresh.childNodes[i], true));
        }
        part.replaceChildren.apply(part, nodes);
      });
    });
  }

  function refresh() {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    Promise.all(Array.prototype.map.call(parts, load))
      .then(
        function () {
          refreshes += 1;
          body.setAttribute("data-refreshes", String(refreshes));
        },
        function (err) {
          if (err && err.message === "gone") {
            stop("signed out or gone: reload the page");
          } else {
            say("update failed, retrying", "off");
          }
        }
      )
      .then(function () {
        running = false;
        if (again) {
          again = false;
          soon(SETTLE_MS);
        }
      });
  }

  source = new window.EventSource(stream);
  source.onopen = function () {
    say("live", "on");
  };
  source.onmessage = function () {
    soon(SETTLE_MS);
  };
  source.onerror = function () {
    if (source.readyState === window.EventSource.CLOSED) {
      stop("disconnected: reload the page");
    } else {
      say("reconnecting", "off");
    }
  };
  window.setInterval(function () {
    if (!document.hidden) {
      soon(0);
    }
  }, EVERY_MS);
})();
