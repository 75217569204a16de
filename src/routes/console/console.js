// The agent console: look a caller up, show the context card, and keep it
// current from the profile's live event stream. Talks to this service only.
"use strict";

const TOKEN_KEY = "anamnesis.token";
const $ = (id) => document.getElementById(id);
let current = null;      // customer id on screen
let stream = null;       // AbortController of the live stream
let refreshing = null;   // pending refresh timer
let latest = 0;          // number of the newest card request: older replies are dropped
let retryDelay = 1000;   // live stream reconnect delay, doubled up to 30 s

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function say(text, error) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function ago(when) {
  const s = Math.max(0, (Date.now() - Date.parse(when)) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function text(v) { return typeof v === "string" ? v : JSON.stringify(v); }

// What was typed, as the query that finds the card.
function cardPath(q) {
  q = q.trim();
  if (/^cus_[0-9A-Za-z]{26}$/.test(q)) return "/v1/profiles/" + encodeURIComponent(q) + "/context?limit=15";
  const type = q.includes("@") ? "email" : "phone";
  return "/v1/context?limit=15&type=" + type + "&value=" + encodeURIComponent(q);
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    const e = new Error((body && body.error && body.error.message) || ("HTTP " + r.status));
    e.code = body && body.error && body.error.code;
    throw e;
  }
  return body;
}

function section(title, content) {
  const s = el("section", { "aria-label": title }, el("h2", {}, title));
  s.append(content);
  return s;
}

function render(card) {
  const t = card.traits || {};
  const name = t.full_name || [t.first_name, t.last_name].filter(Boolean).join(" ") || "Unnamed customer";
  const main = $("card");
  main.replaceChildren();
  main.append(el("p", { class: "name", id: "customer-name" }, text(name)));
  main.append(el("p", { class: "meta" }, card.customer_id, " · journey: ",
    el("strong", { id: "journey-stage" }, card.journey_stage || "unknown"),
    card.last_channel ? " · last contact: " + card.last_channel : ""));

  const traits = el("dl", { id: "traits" });
  for (const [k, v] of Object.entries(t)) traits.append(el("dt", {}, k), el("dd", {}, text(v)));
  main.append(section("Traits", Object.keys(t).length ? traits : el("p", {}, "None yet.")));

  const ids = el("ul", { id: "identifiers" });
  for (const i of card.identifiers || []) ids.append(el("li", {}, el("span", { class: "badge" }, i.type), i.value));
  main.append(section("Identifiers", ids));

  const answers = el("dl", { id: "answers" });
  for (const [k, a] of Object.entries(card.answers || {})) {
    answers.append(el("dt", {}, a.question || k),
      el("dd", { class: Date.now() - Date.parse(a.captured_at) < 600000 ? "fresh" : "" },
        text(a.value), " — ", a.channel, ", ", ago(a.captured_at)));
  }
  main.append(section("Already told us", Object.keys(card.answers || {}).length ? answers
    : el("p", {}, "Nothing captured that is still fresh.")));

  const episodes = el("ul", { id: "episodes" });
  for (const e of card.open_episodes || []) {
    episodes.append(el("li", {}, el("strong", {}, e.title || e.id), " — ", e.status.replaceAll("_", " "),
      e.public_status ? " — “" + e.public_status + "”" : "", " (", e.channels.join(", "), "; last touch ",
      ago(e.updated_at), ")"));
  }
  main.append(section("Open episodes", episodes.children.length ? episodes : el("p", {}, "None open.")));

  const due = (card.follow_ups || []);
  if (due.length) {
    const list = el("ul", { id: "follow-ups" });
    for (const f of due) {
      const late = Date.parse(f.due_at) <= Date.now();
      list.append(el("li", { class: late ? "due" : "" }, (f.title || f.episode_id) + ": ",
        late ? "follow-up due — ask how it went" : "follow-up due " + new Date(f.due_at).toLocaleString()));
    }
    main.append(section("Follow-ups", list));
  }

  const timeline = el("ol", { id: "timeline", reversed: "" });
  for (const i of card.recent_interactions || []) {
    timeline.append(el("li", {}, el("span", { class: "badge" }, i.channel), i.type,
      i.summary ? ": " + i.summary : "", " — ", ago(i.occurred_at)));
  }
  main.append(section("Recent, all channels", timeline.children.length ? timeline : el("p", {}, "No interactions yet.")));
}

async function load(path) {
  const mine = ++latest;
  $("card").setAttribute("aria-busy", "true");
  try {
    const card = await api(path);
    if (mine !== latest) return; // a newer lookup or update owns the screen
    render(card);
    say("Showing " + card.customer_id + " (updated " + new Date().toLocaleTimeString() + ")");
    if (card.customer_id !== current) follow(card.customer_id);
  } catch (e) {
    if (mine !== latest) return;
    say(e.code === "profile_not_found" ? "Nobody with that number, email or id yet." : e.message, true);
    if (e.code === "profile_not_found") { $("card").replaceChildren(); stopFollowing(); }
  } finally {
    $("card").setAttribute("aria-busy", "false");
  }
}

function stopFollowing() {
  if (stream) stream.abort();
  stream = null;
  current = null;
}

// Server-Sent Events over fetch (EventSource cannot send the token).
async function follow(id) {
  stopFollowing();
  current = id;
  const ctl = new AbortController();
  stream = ctl;
  try {
    const r = await fetch("/v1/profiles/" + encodeURIComponent(id) + "/events",
      { headers: { Authorization: "Bearer " + token(), Accept: "text/event-stream" }, signal: ctl.signal });
    if (!r.ok || !r.body) {
      // Refused (a token without access, an expired token): say so, and
      // do not knock again.
      if (r.status === 401 || r.status === 403) {
        say("Live updates are off: the token may not follow this customer (" + r.status + ").", true);
        return;
      }
      throw new Error("HTTP " + r.status);
    }
    retryDelay = 1000;
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replaceAll("\r\n", "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (/^event: /m.test(block)) changed();
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
    say("Live updates interrupted; reconnecting…", true);
  }
  // The stream ended (the service closes long streams, or the network
  // failed): follow again after a pause that grows while it keeps failing,
  // and reload the card, since changes in the gap sent no event here.
  if (current === id && stream === ctl) {
    const wait = retryDelay * (0.75 + Math.random() / 2);
    retryDelay = Math.min(retryDelay * 2, 30000);
    setTimeout(() => {
      if (current === id && stream === ctl) { changed(); follow(id); }
    }, wait);
  }
}

function changed() {
  clearTimeout(refreshing);
  refreshing = setTimeout(() => { if (current) load("/v1/profiles/" + current + "/context?limit=15"); }, 100);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    say("Token kept for this tab.");
    $("lookup").focus();
  });
  $("lookup-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearTimeout(refreshing);
    if (!token()) { say("Paste an access token first.", true); $("token").focus(); return; }
    const q = $("lookup").value;
    if (!q.trim()) { say("Type a phone number, an email or a customer id.", true); return; }
    load(cardPath(q));
  });
  if (token()) { say("Token kept for this tab."); $("lookup").focus(); } else { $("token").focus(); }
});
