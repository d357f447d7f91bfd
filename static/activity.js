// /activity: remember the browser's time zone for the analyst's days when none is stored yet, then
// show the page in it. Everything else on the page works without this script.
(function () {
  "use strict";
  var head = document.querySelector("[data-activity]");
  if (!head || head.getAttribute("data-zone-stored") === "true") return;
  var zone;
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { return; }
  if (!zone || zone === "UTC") return;
  fetch("/api/me/timezone", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": head.getAttribute("data-csrf")},
    body: JSON.stringify({tz: zone})
  }).then(function (resp) {
    if (resp.ok && !/[?&]tz=/.test(location.search)) location.reload();
  }).catch(function () {});
})();
