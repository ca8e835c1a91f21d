// A3Mailer dashboard glue: the live alert feed over /ws/alerts/ and small UI helpers.
// Plain ES2020, no build step beyond copying into static/ (see frontend/build.mjs).
(function () {
  "use strict";

  const MAX_FEED_ITEMS = 50;
  const LEVELS = new Set(["info", "warning", "error", "critical"]);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text; // never innerHTML: alert text is data
    return node;
  }

  function formatTime(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    const pad = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
      `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  function feedItem(alert) {
    const level = LEVELS.has(alert.level) ? alert.level : "info";
    const li = el("li", `alert-item level-${level} is-new`);
    li.dataset.alertId = String(alert.id);
    li.append(el("span", `level-pill level-${level}`, level));
    li.append(el("span", "alert-message", alert.message));
    const time = el("time", "", formatTime(alert.created_at));
    time.setAttribute("datetime", alert.created_at);
    li.append(time);
    return li;
  }

  function addToFeed(alert) {
    const feed = document.getElementById("alert-feed");
    if (!feed) return;
    if (feed.querySelector(`[data-alert-id="${CSS.escape(String(alert.id))}"]`)) return;
    const empty = document.getElementById("alert-empty");
    if (empty) empty.remove();
    feed.prepend(feedItem(alert));
    while (feed.children.length > MAX_FEED_ITEMS) feed.lastElementChild.remove();
  }

  function bumpBadge() {
    const badge = document.getElementById("alert-badge");
    const count = document.getElementById("alert-badge-count");
    if (!badge || !count) return;
    const next = Number(badge.dataset.count || "0") + 1;
    badge.dataset.count = String(next);
    count.textContent = String(next);
  }

  function toast(alert) {
    const toasts = document.getElementById("toasts");
    if (!toasts || document.getElementById("alert-feed")) return; // the feed shows it already
    const level = LEVELS.has(alert.level) ? alert.level : "info";
    const node = el("div", `toast level-${level}`, alert.message);
    node.setAttribute("role", "status");
    toasts.append(node);
    setTimeout(() => node.remove(), 8000);
  }

  function setStatus(state, text) {
    const status = document.getElementById("live-status");
    if (!status) return;
    status.dataset.state = state;
    status.textContent = text;
  }

  function connect(url, attempt) {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${window.location.host}${url}`);
    socket.addEventListener("open", () => {
      attempt = 0;
      setStatus("live", "live");
    });
    socket.addEventListener("message", (event) => {
      let alert;
      try {
        alert = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (!alert || typeof alert.id !== "number" || typeof alert.message !== "string") return;
      addToFeed(alert);
      bumpBadge();
      toast(alert);
      document.dispatchEvent(new CustomEvent("a3:alert", { detail: alert }));
    });
    socket.addEventListener("close", (event) => {
      if (event.code === 4401 || event.code === 4403) {
        setStatus("off", "not available");
        return; // not allowed: retrying will not help
      }
      setStatus("reconnecting", "reconnecting…");
      const delay = Math.min(30000, 1000 * 2 ** Math.min(attempt, 5));
      setTimeout(() => connect(url, attempt + 1), delay);
    });
  }

  // Webmail: picking a folder in "Move to…" moves the message at once; the Move button
  // is the no-JS fallback and is hidden (via the .js class) when this runs.
  document.documentElement.classList.add("js");
  document.addEventListener("change", (event) => {
    const select = event.target;
    if (!(select instanceof HTMLSelectElement) || !select.hasAttribute("data-autosubmit")) return;
    if (select.value && select.form) select.form.requestSubmit();
  });

  // Quarantine: a threats alert (something held, a release requested) tells the list to
  // refresh itself (hx-trigger="a3:quarantine-changed from:body").
  document.addEventListener("a3:alert", (event) => {
    const kind = event.detail && event.detail.kind;
    if (typeof kind === "string" && kind.startsWith("threats.")) {
      document.body.dispatchEvent(new CustomEvent("a3:quarantine-changed", { detail: { kind } }));
    }
  });

  // A list that refreshes itself must not throw away what the reader has ticked: skip
  // the refresh of a [data-keep-selection] container while any of its boxes is checked.
  document.addEventListener("htmx:beforeRequest", (event) => {
    const source = event.detail && event.detail.elt;
    if (!(source instanceof Element) || !source.hasAttribute("data-keep-selection")) return;
    if (source.querySelector("input[type=checkbox]:checked")) event.preventDefault();
  });

  document.addEventListener("DOMContentLoaded", () => {
    const source = document.getElementById("toasts");
    if (source && source.dataset.wsUrl && "WebSocket" in window) {
      connect(source.dataset.wsUrl, 0);
    }
    // Close the mobile menu after navigating within the page.
    document.querySelectorAll(".sidebar a").forEach((link) =>
      link.addEventListener("click", () => {
        const toggle = document.getElementById("nav-toggle");
        if (toggle) toggle.checked = false;
      })
    );
  });
})();
