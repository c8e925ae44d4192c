// Live pages: an element with data-live polls that JSON address every half second, shows
// the fields it names (data-field) and reloads the page when the state changes, so the
// timeline the server renders appears. No data is kept in the browser.
"use strict";
(function () {
  const live = document.querySelector("[data-live]");
  if (!live || live.dataset.final === "true") {
    return;
  }
  const shown = live.dataset.state;
  async function poll() {
    let doc;
    try {
      const response = await fetch(live.dataset.live, {credentials: "same-origin"});
      if (!response.ok) {
        return;
      }
      doc = await response.json();
    } catch (e) {
      return;
    }
    for (const el of document.querySelectorAll("[data-field]")) {
      const value = doc[el.dataset.field];
      if (value !== undefined && value !== null) {
        el.textContent = String(value);
      }
    }
    if (doc.state !== shown || doc.final || doc.done) {
      window.location.reload();
    }
  }
  window.setInterval(poll, 500);
})();
