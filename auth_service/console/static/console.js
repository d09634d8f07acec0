// tokenlife console. No framework, no build step, no inline code (the page's CSP forbids it).
//
// Tokens live in this closure's memory only: page scripts of other origins cannot read them, nothing is
// written to storage, and a reload signs out (see docs/architecture.md). The DOM is built with textContent,
// never innerHTML, so nothing a server or a user agent string says can become markup.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 20; // how often the refusal watch asks the resource service
  const WATCH_LIMIT_MS = 15000;

  const state = {
    config: { resource_url: null, client_id: "tokenlife-console" },
    access: null, // current access token
    refresh: null, // current refresh token
    claims: null,
    expiresAt: 0, // local clock, from expires_in
    lifetime: 1,
    lastAccess: null, // the last access token, kept after a sign-out to show its refusal
    signedIn: false,
    refreshing: null,
    timers: { refresh: 0, countdown: 0 },
    feed: { controller: null, after: null, running: false },
    live: null, // the open WebSocket to the resource service: { socket, closedAt }
    signOutAt: null, // when the auth service's answer to the last sign-out arrived (performance.now())
    sessionsReload: 0,
  };

  // --- words for errors and events ------------------------------------------------------------------

  function waitInWords(seconds) {
    const s = Math.max(1, Math.ceil(seconds));
    if (s < 90) return `${s} second${s === 1 ? "" : "s"}`;
    const m = Math.ceil(s / 60);
    return `${m} minute${m === 1 ? "" : "s"}`;
  }

  class Problem extends Error {
    constructor(message, status = 0, code = "") {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function problemFrom(response, what) {
    let code = "";
    try {
      code = (await response.json()).error || "";
    } catch {
      // not JSON: the status speaks
    }
    const s = response.status;
    if (s === 429) {
      const wait = Number(response.headers.get("Retry-After")) || 60;
      return new Problem(`Too many attempts. Try again in ${waitInWords(wait)}.`, s, code);
    }
    if (what === "password" && code === "invalid_grant") {
      return new Problem("Wrong email or password.", s, code);
    }
    if (what === "refresh" && code === "invalid_grant") {
      return new Problem("Your session has ended. Sign in again.", s, code);
    }
    if (s === 401) return new Problem("Your session has expired. Sign in again.", s, code);
    if (s === 503) return new Problem("The service is busy. Try again in a moment.", s, code);
    if (s === 404) return new Problem("That session no longer exists.", s, code);
    if (s === 400) return new Problem("The request was refused as invalid.", s, code);
    return new Problem(`The auth service answered with an error (HTTP ${s}).`, s, code);
  }

  function short(id) {
    return id ? String(id).slice(0, 8) : "?";
  }

  function eventInWords(e) {
    const sid = e.session_id ? `session ${short(e.session_id)}` : "";
    switch (e.type) {
      case "session.started":
        return [`Signed in: new ${sid}${e.client_address ? ` from ${e.client_address}` : ""}`, false];
      case "token.issued":
        return [`Access token issued (${e.cause === "refresh" ? "silent refresh" : "sign-in"}) in ${sid}`, false];
      case "token.revoked":
        return [`Access token ${short(e.jti)} revoked (${e.reason})`, true];
      case "session.revoked":
        return [`Signed out: ${sid} (${reasonInWords(e.reason)})`, true];
      case "user.revoked":
        return [`Signed out everywhere: every token issued until now (${reasonInWords(e.reason)})`, true];
      case "key.revoked":
        return [`Signing key ${e.kid} revoked: its tokens are refused`, true];
      case "global.revoked":
        return ["Every token of every user revoked", true];
      default:
        return [`Event ${e.type}`, false];
    }
  }

  function reasonInWords(reason) {
    const words = {
      logout_session: "sign-out",
      logout_others: "signed out from another device",
      logout_all: "sign out everywhere",
      password_change: "password changed",
      refresh_token_reuse: "refresh token reuse detected",
      refresh_token_revoked: "refresh token revoked",
      ended_by_user: "ended from the sessions list",
      operator: "by an operator",
    };
    return words[reason] || String(reason || "").replaceAll("_", " ");
  }

  function clock(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString();
  }

  function when(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? "never" : d.toLocaleString();
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // --- talking to the auth service ------------------------------------------------------------------

  async function tokenRequest(fields, what) {
    const body = new URLSearchParams({ ...fields, client_id: state.config.client_id });
    let response;
    try {
      response = await fetch("/oauth/token", { method: "POST", body, cache: "no-store" });
    } catch {
      throw new Problem("Cannot reach the auth service. Check your connection and try again.");
    }
    if (!response.ok) throw await problemFrom(response, what);
    return response.json();
  }

  async function api(path, options = {}, retried = false) {
    if (!state.signedIn) throw new Problem("You are signed out.");
    const headers = { Authorization: `Bearer ${state.access}`, ...(options.headers || {}) };
    let response;
    try {
      response = await fetch(path, { ...options, headers, cache: "no-store" });
    } catch {
      throw new Problem("Cannot reach the auth service.");
    }
    if (response.status === 401 && !retried) {
      // The access token may have just expired or been revoked: the refresh grant decides which.
      await refreshNow();
      return api(path, options, true);
    }
    if (!response.ok) throw await problemFrom(response, "api");
    return response;
  }

  function applyTokens(tokens) {
    state.access = tokens.access_token;
    state.lastAccess = tokens.access_token;
    if (tokens.refresh_token) state.refresh = tokens.refresh_token;
    state.claims = decodeClaims(tokens.access_token);
    state.lifetime = Number(tokens.expires_in) || 300;
    state.expiresAt = Date.now() + state.lifetime * 1000;
    renderClaims();
    scheduleRefresh();
  }

  function decodeClaims(jwt) {
    // For display only: the services verify the signature, this page just shows what the token says.
    const part = jwt.split(".")[1].replaceAll("-", "+").replaceAll("_", "/");
    const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  }

  function scheduleRefresh() {
    clearTimeout(state.timers.refresh);
    // Refresh a fifth of the lifetime before expiry (2 to 30 seconds): early enough to ride out a slow network.
    const margin = Math.min(30, Math.max(2, state.lifetime / 5)) * 1000;
    const delay = Math.max(0, state.expiresAt - Date.now() - margin);
    state.timers.refresh = setTimeout(() => {
      refreshNow().catch(() => {});
    }, delay);
  }

  function refreshNow() {
    if (!state.refreshing) {
      state.refreshing = (async () => {
        try {
          const tokens = await tokenRequest({ grant_type: "refresh_token", refresh_token: state.refresh }, "refresh");
          if (!state.signedIn) return;
          applyTokens(tokens);
          $("refresh-status").textContent = `Refreshed silently at ${new Date().toLocaleTimeString()}.`;
        } catch (problem) {
          if (problem.code === "invalid_grant") {
            endedElsewhere();
          } else {
            $("refresh-status").textContent = `Could not refresh: ${problem.message}`;
            state.timers.refresh = setTimeout(() => refreshNow().catch(() => {}), 2000);
          }
          throw problem;
        } finally {
          state.refreshing = null;
        }
      })();
    }
    return state.refreshing;
  }

  // --- signing in and out ---------------------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    const email = $("email").value.trim();
    const password = $("password").value;
    const error = $("signin-error");
    if (!email || !password) {
      error.textContent = "Enter your email and your password.";
      (email ? $("password") : $("email")).focus();
      return;
    }
    error.textContent = "";
    $("signin-submit").disabled = true;
    try {
      const tokens = await tokenRequest({ grant_type: "password", username: email, password }, "password");
      $("password").value = "";
      startSession(tokens, email);
    } catch (problem) {
      error.textContent = problem.message;
      $("password").focus();
    } finally {
      $("signin-submit").disabled = false;
    }
  }

  function startSession(tokens, email) {
    state.signedIn = true;
    applyTokens(tokens);
    $("who-sub").textContent = email;
    show(true);
    $("notice").hidden = true;
    $("refusal").textContent = "No sign-out yet.";
    $("refusal").className = "result line";
    $("call-result").textContent = "";
    clearInterval(state.timers.countdown);
    state.timers.countdown = setInterval(renderCountdown, 250);
    renderCountdown();
    $("feed-list").replaceChildren();
    $("timeline-list").replaceChildren();
    loadSessions();
    startFeed();
    state.signOutAt = null;
    openSocket();
    $("token-title").focus();
  }

  function show(signedIn) {
    $("signin").hidden = signedIn;
    for (const id of ["who", "signout", "token", "sessions", "timeline"]) $(id).hidden = !signedIn;
    // The resource card and the feed stay after a sign-out: they show the token being refused. The call
    // button and its last answer do not: a "200 OK" of the ended session beside the refusal contradicts it.
    const seen = signedIn || state.lastAccess !== null;
    $("resource").hidden = !seen || !state.config.resource_url;
    $("feed").hidden = !seen;
    $("call").hidden = !signedIn;
    if (!signedIn) {
      $("call-result").className = "result line";
      $("call-result").textContent = "";
    }
  }

  function stopSession(message) {
    state.signedIn = false;
    state.access = null;
    state.refresh = null;
    clearTimeout(state.timers.refresh);
    clearInterval(state.timers.countdown);
    show(false);
    const notice = $("notice");
    notice.textContent = message;
    notice.hidden = false;
  }

  async function signOut(scope) {
    const t0 = performance.now();
    let response;
    try {
      response = await api("/v1/auth/logout", {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ scope }),
      });
    } catch (problem) {
      $("sessions-status").textContent = problem.message;
      return;
    }
    const result = await response.json();
    const committed = performance.now();
    const traceId = traceOf(response);
    if (scope === "others") {
      $("sessions-status").textContent = `Signed out ${result.revoked} other session${result.revoked === 1 ? "" : "s"}.`;
      loadSessions();
      return;
    }
    const token = state.lastAccess;
    state.signOutAt = committed;
    reportSocketClose();
    stopSession(
      scope === "all"
        ? "You signed out everywhere: every session of yours has ended."
        : "You signed out of this device.",
    );
    $("password").focus(); // the button pressed is gone: keep keyboard users in the form, email kept
    watchRefusal(token, committed, `after the auth service confirmed the sign-out (${Math.round(committed - t0)} ms round trip)`, traceId);
  }

  // With tracing on, the auth service names the request's trace (W3C traceresponse): the sign-out's trace
  // holds the commit, the publish and each resource instance's apply and first refusal.
  function traceOf(response) {
    const match = /^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(response.headers.get("traceresponse") || "");
    return match ? match[1] : null;
  }

  function endedElsewhere() {
    if (!state.signedIn) return;
    const token = state.lastAccess;
    stopSession(
      "This device was signed out: its session was ended from another device, or has expired. Sign in again to continue.",
    );
    watchRefusal(token, performance.now(), "after this page learned of the sign-out");
  }

  // --- the resource service -------------------------------------------------------------------------

  async function whoami(token) {
    const response = await fetch(`${state.config.resource_url}/v1/whoami`, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      // no body worth showing
    }
    return { status: response.status, body, challenge: response.headers.get("WWW-Authenticate") };
  }

  function refusalInWords(answer) {
    const said = answer.body && (answer.body.error_description || answer.body.detail);
    const reason = typeof said === "string" ? said : "the token is not accepted";
    if (answer.status === 401) return `401 Unauthorized: refused, ${reason}.`;
    if (answer.status === 403) return `403 Forbidden: ${reason}.`;
    if (answer.status === 503) return "503: the resource service cannot confirm its revocation state right now.";
    return `HTTP ${answer.status}: ${reason}.`;
  }

  async function callResource() {
    const out = $("call-result");
    const token = state.signedIn ? state.access : state.lastAccess;
    if (!token) return;
    out.className = "result line";
    out.textContent = "Calling…";
    try {
      const answer = await whoami(token);
      if (answer.status === 200) {
        out.className = "result line ok";
        out.textContent = `200 OK: accepted. User ${answer.body.sub}, session ${short(answer.body.sid)}, scopes: ${(answer.body.scopes || []).join(" ") || "none"}.`;
      } else {
        out.className = "result line refused";
        out.textContent = refusalInWords(answer);
        if (answer.status === 401 && state.signedIn) {
          // Refused while we think we are signed in: ask the auth service whether the session still lives.
          refreshNow().catch(() => {});
        }
      }
    } catch {
      out.className = "result line refused";
      out.textContent = "Cannot reach the resource service.";
    }
  }

  async function watchRefusal(token, since, label, traceId = null) {
    const out = $("refusal");
    if (!state.config.resource_url || !token) return;
    out.className = "result line";
    out.textContent = "Watching the resource service refuse the token…";
    while (performance.now() - since < WATCH_LIMIT_MS) {
      try {
        const answer = await whoami(token);
        if (answer.status === 401) {
          const ms = Math.max(0, Math.round(performance.now() - since));
          out.className = "result line refused";
          out.dataset.delayMs = String(ms);
          out.textContent = `The resource service refused the token ${ms} ms ${label}.`;
          if (traceId) {
            out.dataset.traceId = traceId;
            out.textContent += ` Trace ${traceId}.`;
          }
          return;
        }
      } catch {
        // keep asking until the limit
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    out.textContent = `The resource service still accepted the token ${WATCH_LIMIT_MS / 1000} s later.`;
  }

  // --- the live socket: the resource service closes it when the token ends -------------------------

  function socketUrl() {
    return `${state.config.resource_url.replace(/^http/, "ws")}/v1/ticks`;
  }

  function openSocket() {
    if (!state.config.resource_url || !state.access) return;
    if (state.live && state.live.closedAt === null) state.live.socket.close(1000, "replaced");
    // A browser cannot set the Authorization header on a WebSocket: the token goes in the subprotocol
    // list (never the URL), and the server selects "tokenlife", so it is not echoed back.
    const socket = new WebSocket(socketUrl(), ["tokenlife", `tokenlife.bearer.${state.access}`]);
    const live = { socket, closedAt: null, event: null };
    state.live = live;
    const status = $("socket-status");
    status.className = "result line";
    status.textContent = "Connecting…";
    delete status.dataset.closeCode;
    delete status.dataset.delayMs;
    socket.addEventListener("open", () => {
      if (state.live === live) status.textContent = "Open: a tick every second, while the token holds.";
    });
    socket.addEventListener("message", (event) => {
      if (state.live !== live) return;
      const tick = JSON.parse(event.data);
      $("socket-tick").textContent = `Tick ${tick.tick} at ${new Date(tick.at * 1000).toLocaleTimeString()}`;
    });
    socket.addEventListener("close", (event) => {
      if (state.live !== live) return;
      live.closedAt = performance.now();
      live.event = event;
      reportSocketClose();
      // An expired token is not a revoked one: open again with the current (refreshed) token.
      if (event.reason === "token expired" && state.signedIn) openSocket();
    });
  }

  function reportSocketClose() {
    const live = state.live;
    if (!live || live.closedAt === null) return;
    const { code, reason } = live.event;
    const status = $("socket-status");
    status.className = "result line refused";
    status.dataset.closeCode = String(code);
    let words = `Closed by the resource service: ${code} "${reason || "no reason given"}"`;
    if (state.signOutAt !== null) {
      const ms = Math.round(live.closedAt - state.signOutAt);
      status.dataset.delayMs = String(ms);
      words +=
        ms >= 0
          ? `, ${ms} ms after the auth service's answer to the sign-out.`
          : `, ${-ms} ms before the auth service's answer to the sign-out reached this page.`;
    } else {
      words += ".";
    }
    status.textContent = words;
  }

  // --- sessions and timelines -----------------------------------------------------------------------

  async function loadSessions() {
    const list = $("session-list");
    try {
      const { sessions } = await (await api("/v1/sessions")).json();
      list.replaceChildren(...sessions.map(sessionItem));
      if (!sessions.length) list.append(el("li", "No live sessions."));
    } catch (problem) {
      $("sessions-status").textContent = problem.message;
    }
  }

  function sessionItem(s) {
    const li = el("li");
    li.dataset.sessionId = s.session_id;
    const title = el("p", "", "");
    title.append(el("span", `Session ${short(s.session_id)}`, "mono"));
    if (s.current) title.append(" ", el("span", "(this device)", "this"));
    const meta = el(
      "p",
      `Created ${when(s.created_at)} · last used ${s.last_refreshed_at ? when(s.last_refreshed_at) : when(s.created_at)} · from ${s.client_address || "unknown address"} · ${s.user_agent || "unknown browser"}`,
      "meta",
    );
    const buttons = el("div", undefined, "buttons");
    const end = el("button", "Sign out");
    end.type = "button";
    end.setAttribute("aria-label", `Sign out session ${short(s.session_id)}${s.current ? " (this device)" : ""}`);
    end.addEventListener("click", () => (s.current ? signOut("session") : endSession(s.session_id)));
    const timeline = el("button", "Timeline", "quiet");
    timeline.type = "button";
    timeline.setAttribute("aria-label", `Timeline of session ${short(s.session_id)}`);
    timeline.addEventListener("click", () => loadTimeline(s.session_id));
    buttons.append(end, timeline);
    li.append(title, meta, buttons);
    return li;
  }

  async function endSession(sid) {
    try {
      await api(`/v1/sessions/${encodeURIComponent(sid)}`, { method: "DELETE" });
      $("sessions-status").textContent = `Signed out session ${short(sid)}.`;
    } catch (problem) {
      $("sessions-status").textContent = problem.message;
    }
    loadSessions();
  }

  async function loadTimeline(sid) {
    const list = $("timeline-list");
    $("timeline-sid").textContent = `Session ${short(sid)}, from the log:`;
    try {
      const { events } = await (await api(`/v1/sessions/${encodeURIComponent(sid)}/events`)).json();
      list.replaceChildren(...events.map(eventItem));
      $("timeline-title").scrollIntoView({ block: "nearest" });
    } catch (problem) {
      $("timeline-sid").textContent = problem.message;
    }
  }

  function eventItem(e) {
    const [words, revocation] = eventInWords(e);
    const li = el("li");
    li.dataset.type = e.type;
    const time = el("time", clock(e.occurred_at));
    time.dateTime = e.occurred_at;
    li.append(time, el("span", words, revocation ? "revoke" : undefined));
    return li;
  }

  // --- the live feed: fetch + a stream reader, because EventSource cannot send the bearer header ------

  function startFeed() {
    if (state.feed.running) return;
    state.feed.running = true;
    runFeed().finally(() => {
      state.feed.running = false;
    });
  }

  async function runFeed() {
    const status = $("feed-status");
    let failures = 0;
    while (state.signedIn) {
      const query = state.feed.after === null ? "" : `?after=${state.feed.after}`;
      let ended = null;
      try {
        const response = await fetch(`/v1/me/events/stream${query}`, {
          headers: { Authorization: `Bearer ${state.access}`, Accept: "text/event-stream" },
          cache: "no-store",
        });
        if (response.status === 401) {
          await refreshNow();
          continue;
        }
        if (!response.ok || !response.body) throw new Problem(`HTTP ${response.status}`);
        status.textContent = "Connected: each event appears at the top of the list below as it is committed.";
        failures = 0;
        ended = await readStream(response.body.getReader());
      } catch {
        if (!state.signedIn) break;
        failures += 1;
        status.textContent = "Disconnected; reconnecting…";
        await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * failures)));
        continue;
      }
      if (ended === "token_revoked") {
        // The batch that ended this token was delivered already; the refresh grant says if the session lives.
        if (state.signedIn) await refreshNow().catch(() => {});
      } else if (ended === "token_expired" && state.signedIn && Date.now() >= state.expiresAt - 1000) {
        await refreshNow().catch(() => {});
      }
    }
    status.textContent = "Stopped: signed out. The events below stay for reference.";
  }

  async function readStream(reader) {
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "closed";
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const ended = handleFrame(frame);
        if (ended) {
          reader.cancel().catch(() => {});
          return ended;
        }
      }
    }
  }

  function handleFrame(frame) {
    let type = "message";
    let data = "";
    let id = null;
    for (const line of frame.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") type = value;
      else if (field === "data") data += value;
      else if (field === "id") id = value;
    }
    if (!data) return null;
    const payload = JSON.parse(data);
    if (type === "end") return payload.reason;
    if (id !== null) state.feed.after = Number(id);
    $("feed-list").prepend(eventItem(payload));
    if (state.signedIn && type.startsWith("session.")) {
      clearTimeout(state.sessionsReload);
      state.sessionsReload = setTimeout(loadSessions, 100);
    }
    return null;
  }

  // --- the countdown and the claims -----------------------------------------------------------------

  function renderCountdown() {
    const left = Math.max(0, state.expiresAt - Date.now());
    const seconds = Math.ceil(left / 1000);
    $("countdown").textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
    const bar = $("ttl");
    bar.max = state.lifetime;
    bar.value = left / 1000;
  }

  function renderClaims() {
    const list = $("claims");
    const rows = [];
    for (const name of ["sub", "sid", "jti", "scope", "client_id", "iss", "aud", "iat", "exp"]) {
      if (!(name in state.claims)) continue;
      let value = state.claims[name];
      if (name === "iat" || name === "exp") value = `${value} (${new Date(value * 1000).toLocaleTimeString()})`;
      const dt = el("dt", name);
      const dd = el("dd", Array.isArray(value) ? value.join(" ") : String(value));
      dd.dataset.claim = name;
      rows.push(dt, dd);
    }
    list.replaceChildren(...rows);
  }

  // --- start ----------------------------------------------------------------------------------------

  async function boot() {
    try {
      const response = await fetch("/console/config.json", { cache: "no-store" });
      if (response.ok) state.config = { ...state.config, ...(await response.json()) };
    } catch {
      // defaults: no resource service
    }
    $("resource-url").textContent = state.config.resource_url || "";
    $("socket-url").textContent = state.config.resource_url ? socketUrl().replace(/\/v1\/ticks$/, "") : "";
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", () => signOut("session"));
    $("signout-others").addEventListener("click", () => signOut("others"));
    $("signout-all").addEventListener("click", () => signOut("all"));
    $("reload-sessions").addEventListener("click", loadSessions);
    $("call").addEventListener("click", callResource);
    document.body.dataset.ready = "true";
  }

  boot();
})();
