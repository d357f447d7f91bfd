// The /home status frame: the 24h / 7d toggle, number abbreviation and a ticking "Last sync".
// The server renders the first paint with the same rules (service/views.py filters), so this
// script only redraws; without it the pills are plain links to /home?window=....
(function () {
  "use strict";

  // Integer arithmetic, as in views.abbreviate, so server and browser agree digit for digit.
  var UNITS = [[1e3, "k"], [1e6, "M"], [1e9, "B"], [1e12, "T"]];

  function abbreviate(value) {
    var n = Math.trunc(Number(value));
    if (n < 0) return "-" + abbreviate(-n);
    if (n < 1000) return String(n);
    for (var i = 0; i < UNITS.length; i++) {
      var unit = UNITS[i][0], suffix = UNITS[i][1];
      var tenths = Math.floor((n * 10 + unit / 2) / unit);
      if (tenths < 1000) {
        var whole = Math.floor(tenths / 10), frac = tenths % 10;
        return frac ? whole + "." + frac + suffix : whole + suffix;
      }
      var rounded = Math.floor((n + unit / 2) / unit);
      if (rounded < 1000 || suffix === "T") return rounded + suffix;
    }
  }

  function grouped(value) {
    return Math.trunc(Number(value)).toLocaleString("en-US");
  }

  function relative(iso, nowMs) {
    if (!iso) return "never";
    var seconds = Math.floor((nowMs - Date.parse(iso)) / 1000);
    if (seconds < 60) return "just now";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + "h ago";
    return Math.floor(seconds / 86400) + "d ago";
  }

  function utcLabel(iso) {
    if (!iso) return "No agnes pull yet";
    return new Date(iso).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  // Exposed so the browser test can check these rules against the server's.
  window.AgnesHome = { abbreviate: abbreviate, grouped: grouped, relative: relative, utcLabel: utcLabel };

  var frame = document.querySelector("[data-status-frame]");
  if (!frame) return;

  var TICK_MS = 15 * 1000;
  var REFRESH_MS = 60 * 1000;
  // Windows are computed on the server's clock; measuring "ago" against it too keeps a
  // skewed laptop clock from showing "in 5m" or "2h ago" for a pull that just happened.
  var skew = Date.parse(frame.dataset.now) - Date.now();
  if (isNaN(skew)) skew = 0;
  var now = function () { return Date.now() + skew; };

  var tabs = Array.prototype.slice.call(frame.querySelectorAll("[role=tab]"));
  var panel = frame.querySelector("[role=tabpanel]");
  var statusEl = frame.querySelector("[data-frame-status]");
  var labelEl = frame.querySelector("[data-window-label]");
  var current = frame.dataset.window;
  var lastPull = null;
  var pending = 0;

  var syncEl = frame.querySelector('[data-field="last_pull_at"]');
  lastPull = syncEl.getAttribute("datetime");

  function field(name) {
    return frame.querySelector('[data-field="' + name + '"]');
  }

  function setNumber(name, value, exactOnly) {
    var el = field(name);
    if (!el) return;
    if (exactOnly) {
      el.textContent = grouped(value);
    } else {
      el.textContent = abbreviate(value);
      el.title = grouped(value);
      var note = frame.querySelector('[data-exact="' + name + '"]');
      if (note) note.textContent = abbreviate(value) === grouped(value) ? "" : "(exactly " + grouped(value) + ")";
    }
  }

  function renderSync() {
    syncEl.textContent = relative(lastPull, now());
    syncEl.title = utcLabel(lastPull);
    if (lastPull) syncEl.setAttribute("datetime", lastPull);
    else syncEl.removeAttribute("datetime");
  }

  function render(data) {
    lastPull = data.last_pull_at;
    renderSync();
    setNumber("sessions", data.sessions);
    setNumber("prompts", data.prompts);
    setNumber("projects", data.projects);
    setNumber("tokens.total", data.tokens.total);
    setNumber("tokens.total.exact", data.tokens.total, true);
    ["input", "output", "cache_read", "cache_creation"].forEach(function (key) {
      setNumber("tokens." + key, data.tokens[key], true);
    });
    renderEmpty(data);
  }

  // Five zeros say nothing: an empty window says when the analyst was last active (the page
  // rendered the day), or keeps the page's "nothing has arrived yet".
  var emptyEl = frame.querySelector("[data-empty-hint]");
  function renderEmpty(data) {
    if (!emptyEl) return;
    var empty = !(data.sessions || data.prompts || data.tokens.total || data.projects);
    emptyEl.hidden = !empty;
    var day = emptyEl.dataset.lastActive;
    if (empty && day) {
      emptyEl.textContent = "No activity in the " + labelEl.textContent.toLowerCase() + "; last active " + day + ".";
    }
  }

  // The cards' context (change, trend, cost) is rendered by the server only: take it from the page
  // of that window instead of repeating its rules here. Kept as it is when that fails.
  function refreshContext(windowKey, ticket) {
    if (!frame.querySelector("[data-context]")) return;
    fetch("/home?window=" + encodeURIComponent(windowKey), { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(); })
      .then(function (html) {
        if (ticket !== pending) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        frame.querySelectorAll("[data-context]").forEach(function (el) {
          var other = fresh.querySelector('[data-context="' + el.dataset.context + '"]');
          if (other) el.replaceWith(document.importNode(other, true));
        });
      })
      .catch(function () {});
  }

  function select(windowKey) {
    current = windowKey;
    frame.dataset.window = windowKey;
    tabs.forEach(function (tab) {
      var on = tab.dataset.window === windowKey;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      if (on) {
        panel.setAttribute("aria-labelledby", tab.id);
        labelEl.textContent = tab.title;
      }
    });
  }

  function say(text) {
    statusEl.textContent = text;
  }

  // Fetch one window. A failure keeps what is on screen (numbers and selected pill) and says
  // so quietly; a newer request wins over an older one that answers late.
  function load(windowKey, quiet) {
    var ticket = ++pending;
    frame.setAttribute("aria-busy", "true");
    return fetch("/api/me/home-stats?window=" + encodeURIComponent(windowKey), {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    })
      .then(function (response) {
        if (response.status === 401) throw new Error("signed-out");
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        if (ticket !== pending) return;
        select(data.window);  // first: the empty-window hint names the window's label
        render(data);
        select(data.window);
        refreshContext(data.window, ticket);
        if (!quiet) history.replaceState(null, "", "/home?window=" + encodeURIComponent(data.window));
        say("");
      })
      .catch(function (error) {
        if (ticket !== pending) return;
        // Arrow keys moved focus to the pill that failed to load: give it back to the selected one,
        // the only pill in the tab order.
        var focused = document.activeElement;
        if (!quiet && tabs.indexOf(focused) >= 0 && focused.getAttribute("aria-selected") !== "true") {
          tabs.forEach(function (t) { if (t.getAttribute("aria-selected") === "true") t.focus(); });
        }
        say(error.message === "signed-out"
          ? "You have been signed out; reload the page to sign in again."
          : "Could not update just now; showing the previous numbers.");
      })
      .finally(function () {
        if (ticket === pending) frame.removeAttribute("aria-busy");
      });
  }

  tabs.forEach(function (tab, index) {
    tab.tabIndex = tab.getAttribute("aria-selected") === "true" ? 0 : -1;
    tab.addEventListener("click", function (event) {
      event.preventDefault();
      load(tab.dataset.window, false);
    });
    // The tab pattern: arrows move between pills, Space activates like Enter does on a link.
    tab.addEventListener("keydown", function (event) {
      if (event.key === " ") {
        event.preventDefault();
        tab.click();
      } else if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
        event.preventDefault();
        var next = tabs[(index + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
        next.focus();
        next.click();
      }
    });
  });

  renderSync();
  setInterval(renderSync, TICK_MS);
  // New uploads and pulls move the numbers; refresh while the tab is visible.
  setInterval(function () {
    if (document.visibilityState === "visible") load(current, true);
  }, REFRESH_MS);
})();
