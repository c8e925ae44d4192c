// Live pages, polling JSON state every half second; no data is kept in the browser.
//
// A detail page: an element with data-live polls that address, shows the fields it names
// (data-field) and reloads the page when the state changes or the stream ends, so the
// timeline the server renders appears.
//
// The transfer list: each running stream's cell (data-pid) is refreshed from the progress
// of all running streams (data-from); the page reloads when one of them ends.
"use strict";
(function () {
  async function fetchJson(address) {
    try {
      const response = await fetch(address, {credentials: "same-origin"});
      return response.ok ? await response.json() : null;
    } catch (e) {
      return null;
    }
  }

  const live = document.querySelector("[data-live]");
  if (live && live.dataset.final !== "true") {
    const shown = live.dataset.state;
    const done = live.dataset.done === "true";
    const kind = live.dataset.kind || "";
    window.setInterval(async function () {
      const doc = await fetchJson(live.dataset.live);
      if (doc === null) {
        return;
      }
      for (const el of document.querySelectorAll("[data-field]")) {
        const value = doc[el.dataset.field];
        if (value !== undefined && value !== null) {
          el.textContent = String(value);
        }
      }
      if (doc.state !== shown || doc.final || (doc.kind || "") !== kind
          || (doc.done !== undefined && doc.done !== done)) {
        window.location.reload();
      }
    }, 500);
  }

  const running = Array.from(document.querySelectorAll("[data-pid][data-done='false']"));
  if (running.length > 0) {
    const address = running[0].dataset.from;
    window.setInterval(async function () {
      const doc = await fetchJson(address);
      if (doc === null) {
        return;
      }
      for (const cell of running) {
        const progress = doc[cell.dataset.pid];
        if (progress === undefined) {
          window.location.reload();  // it ended: show its final state
          return;
        }
        for (const part of cell.querySelectorAll("[data-part]")) {
          part.textContent = String(progress[part.dataset.part]);
        }
      }
    }, 500);
  }
})();
