/* CryptoMarket dashboard: sign in, subscribe, live prices over EventSource, a history chart.
 *
 * Plain browser JavaScript, no build step. The page talks only to this service (same origin), so
 * the session cookie (HttpOnly, SameSite=Strict) goes along with every fetch and with the
 * EventSource; the page never sees it. All it keeps is the signed-in user id (localStorage), to
 * continue the session after a reload.
 */
(() => {
  "use strict";

  const STREAM_URL = "/api/v2/sse/connection";
  const USER_KEY = "cryptomarket.user";
  const PAGE_SIZE = 10000; // the largest page /api/v1/prices/by-date and /candles serve
  const MAX_POINTS = 100000; // drawn at most; the summary says so when a range holds more
  const MINUTE_MS = 60000;
  // Longer ranges are drawn from candles. The slack covers the seconds a datetime-local input
  // drops and the moment until "now" is read, so the "1 h" button still draws ticks.
  const TICKS_UP_TO_MS = 3600 * 1000 + 5000;
  const MAX_CANDLES = 2000; // the finest resolution that keeps a chart under this many points
  // Deribit's resolutions (minutes), as /api/v1/prices/candles takes them.
  const RESOLUTIONS = [
    ["1", 1], ["3", 3], ["5", 5], ["10", 10], ["15", 15], ["30", 30], ["60", 60],
    ["120", 120], ["180", 180], ["360", 360], ["720", 720], ["1D", 1440],
  ];
  const LOG_LINES = 40;
  const HEALTH_EVERY_MS = 30000; // while no stream reports the upstream state

  const $ = (id) => document.getElementById(id);
  const ui = {
    notice: $("notice"),
    upstream: $("upstream"),
    upstreamText: $("upstream-text"),
    stream: $("stream"),
    streamText: $("stream-text"),
    userBox: $("user-box"),
    userLabel: $("user-label"),
    signOut: $("sign-out"),
    signInCard: $("sign-in-card"),
    signInForm: $("sign-in-form"),
    signIn: $("sign-in"),
    continueSession: $("continue-session"),
    userId: $("user-id"),
    clientId: $("client-id"),
    clientSecret: $("client-secret"),
    liveCard: $("live-card"),
    subscribeForm: $("subscribe-form"),
    subscribe: $("subscribe"),
    subTicker: $("sub-ticker"),
    subTimer: $("sub-timer"),
    subs: $("subs"),
    subsEmpty: $("subs-empty"),
    priceCount: $("price-count"),
    cancelAll: $("cancel-all"),
    log: $("log"),
    tickerList: $("ticker-list"),
    accountCard: $("account-card"),
    accountSummary: $("account-summary"),
    balances: $("balances"),
    historyForm: $("history-form"),
    histTicker: $("hist-ticker"),
    histStart: $("hist-start"),
    histEnd: $("hist-end"),
    draw: $("draw"),
    histCsv: $("hist-csv"),
    historySummary: $("history-summary"),
    chart: $("chart"),
  };

  const state = {
    userId: null, // set while signed in
    source: null, // the EventSource
    defaultTimer: 60, // the stream's own timer, from its `connected` event
    subs: new Map(), // ticker -> {timer, row, updates, last}
    // Tickers cancelled on this page: a price already on its way when the cancel went through
    // must not bring the row back. Subscribing again removes the ticker from here.
    cancelled: new Set(),
    received: 0, // price events the stream delivered, shown or not
    reconnectDelay: 2000,
    reconnectTimer: null,
    healthTimer: null,
    chart: null,
    historyRun: 0, // a newer history request supersedes an older one still loading
  };

  // ---- formatting --------------------------------------------------------------------------

  const clock = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
  const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

  function formatPrice(price) {
    const digits = Math.abs(price) >= 1000 ? 2 : Math.abs(price) >= 1 ? 4 : 6;
    return price.toLocaleString(undefined, {
      minimumFractionDigits: Math.min(digits, 2),
      maximumFractionDigits: digits,
    });
  }

  function timerText(seconds) {
    return seconds === 0 ? "every tick" : `every ${seconds} s`;
  }

  /** "YYYY-MM-DDTHH:MM:SS" in local time, what a datetime-local input holds. */
  function toLocalInput(date) {
    const pad = (n) => String(n).padStart(2, "0");
    return (
      `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
      `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
    );
  }

  /** A datetime-local value (local time) as a Date, or null when empty or invalid. */
  function fromLocalInput(value) {
    if (!value) return null;
    const date = new Date(value); // a date-time without offset is read as local time
    return Number.isNaN(date.getTime()) ? null : date;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- messages ----------------------------------------------------------------------------

  function notify(text, kind = "info") {
    ui.notice.textContent = text;
    ui.notice.dataset.kind = kind;
    ui.notice.hidden = false;
  }

  function clearNotice() {
    ui.notice.hidden = true;
    ui.notice.textContent = "";
  }

  function log(text, kind = "info") {
    const line = element("li", "", `${clock.format(new Date())}  ${text}`);
    line.dataset.kind = kind;
    ui.log.prepend(line);
    while (ui.log.children.length > LOG_LINES) ui.log.lastElementChild.remove();
  }

  function setBadge(badge, label, value) {
    badge.dataset.state = value;
    label.textContent = value;
  }

  const setUpstream = (value) => setBadge(ui.upstream, ui.upstreamText, value);
  const setStream = (value) => setBadge(ui.stream, ui.streamText, value);

  // ---- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail, code) {
      super(detail);
      this.status = status;
      this.code = code;
    }
  }

  /** A JSON call to this service; errors carry the service's own sentence (`detail`). */
  async function api(method, path, body) {
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch {
      throw new ApiError(0, "the service cannot be reached", "network");
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = data && data.detail ? data.detail : `HTTP ${response.status}`;
      throw new ApiError(response.status, detail, data && data.code);
    }
    return data;
  }

  const marketPath = () => `/api/v1/market/${encodeURIComponent(state.userId)}`;

  /** A failed call on the user's behalf: a 401 means the session is gone. */
  function failed(what, error) {
    if (error.status === 401) {
      signedOut();
      notify(`Your session has ended (${error.message}). Sign in again.`, "error");
      return;
    }
    notify(`${what}: ${error.message}`, "error");
    log(`${what}: ${error.message}`, "error");
  }

  // ---- signing in and out ------------------------------------------------------------------

  function signedIn(userId, profile) {
    state.userId = userId;
    localStorage.setItem(USER_KEY, userId);
    ui.userLabel.textContent = userId;
    showProfile(profile);
    ui.signInCard.hidden = true;
    ui.liveCard.hidden = false;
    ui.userBox.hidden = false;
    stopHealthPolling();
  }

  function showProfile(profile) {
    if (!profile) return;
    const parts = [state.userId, `account ${profile.account_id}`];
    if (profile.type) parts.push(profile.type);
    ui.userLabel.textContent = parts.join(" · ");
    showAccount(profile);
  }

  /** The signed-in user's Deribit account data, as GET /api/v1/users/{id} gives it. */
  function showAccount(profile) {
    const who = [profile.username, profile.email].filter(Boolean).join(" · ");
    const fetched = profile.fetched_at ? new Date(profile.fetched_at) : null;
    ui.accountSummary.textContent =
      `Account ${profile.account_id}${profile.type ? ` (${profile.type})` : ""}` +
      (who ? `: ${who}` : "") +
      (fetched ? `. Fetched from Deribit at ${clock.format(fetched)}.` : ".");
    const rows = Object.entries(profile.balances || {}).map(([currency, balance]) => {
      const row = element("tr");
      row.dataset.currency = currency;
      row.append(element("th", null, currency));
      for (const key of ["balance", "equity", "available_funds"]) {
        const value = balance[key];
        row.append(element("td", null, value === null || value === undefined ? "—" : String(value)));
      }
      return row;
    });
    ui.balances.replaceChildren(...rows);
    ui.accountCard.hidden = false;
  }

  function signedOut() {
    closeStream();
    state.userId = null;
    localStorage.removeItem(USER_KEY);
    for (const ticker of [...state.subs.keys()]) removeRow(ticker);
    state.cancelled.clear();
    state.received = 0;
    showCount();
    ui.signInCard.hidden = false;
    ui.liveCard.hidden = true;
    ui.userBox.hidden = true;
    ui.accountCard.hidden = true;
    ui.balances.replaceChildren();
    setStream("off");
    startHealthPolling();
  }

  ui.signInForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    ui.signIn.disabled = true;
    try {
      const created = await api("POST", "/api/v1/sessions", {
        user_id: ui.userId.value.trim(),
        client_id: ui.clientId.value.trim(),
        client_secret: ui.clientSecret.value,
      });
      ui.clientSecret.value = "";
      clearNotice();
      signedIn(created.user_id, created.profile);
      log(`Signed in as ${created.user_id}`);
      connect();
    } catch (error) {
      notify(`Sign-in failed: ${error.message}`, "error");
    } finally {
      ui.signIn.disabled = false;
    }
  });

  // A session may already exist in this browser (signed in earlier, or through /docs): the
  // stream tells whose it is in its `connected` event.
  ui.continueSession.addEventListener("click", () => {
    clearNotice();
    connect();
  });

  ui.signOut.addEventListener("click", async () => {
    try {
      await api("DELETE", "/api/v1/sessions/current");
    } catch (error) {
      if (error.status !== 401) {
        notify(`Sign-out failed: ${error.message}`, "error");
        return;
      }
    }
    signedOut();
    notify("Signed out: the session no longer works anywhere.");
  });

  // ---- the live stream ---------------------------------------------------------------------

  function connect() {
    closeStream();
    setStream("connecting");
    const source = new EventSource(STREAM_URL);
    state.source = source;
    source.addEventListener("connected", (event) => onConnected(JSON.parse(event.data)));
    source.addEventListener("price", (event) => onPrice(JSON.parse(event.data)));
    source.addEventListener("status", (event) => onStatus(JSON.parse(event.data)));
    source.addEventListener("gap", (event) => onGap(JSON.parse(event.data)));
    source.addEventListener("expired", (event) => onExpired(JSON.parse(event.data)));
    source.addEventListener("error", () => {
      if (source !== state.source) return;
      if (source.readyState === EventSource.CLOSED) {
        explainRefusal(); // refused outright: EventSource will not retry by itself
      } else {
        setStream("reconnecting"); // EventSource retries, resuming from the last event id
      }
    });
  }

  function closeStream() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (state.source) {
      state.source.close();
      state.source = null;
    }
  }

  /** EventSource does not say why a stream was refused: ask once with fetch, for the status. */
  async function explainRefusal() {
    closeStream();
    setStream("closed");
    const abort = new AbortController();
    let response;
    try {
      response = await fetch(STREAM_URL, { credentials: "same-origin", signal: abort.signal });
    } catch {
      retryLater();
      return;
    }
    abort.abort(); // only the status was wanted; a 200 here is a stream we do not keep
    if (response.ok) {
      retryLater();
      return;
    }
    const data = await response.json().catch(() => null);
    const detail = data && data.detail ? data.detail : `HTTP ${response.status}`;
    if (response.status === 401) {
      const hadSession = state.userId !== null;
      signedOut();
      notify(
        hadSession
          ? `Your session has ended (${detail}). Sign in again.`
          : "No session in this browser: sign in with your Deribit key.",
        hadSession ? "error" : "info",
      );
      return;
    }
    notify(`The price stream was refused: ${detail}`, "error");
    retryLater();
  }

  function retryLater() {
    if (state.userId === null) return;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, state.reconnectDelay);
    state.reconnectDelay = Math.min(state.reconnectDelay * 2, 30000);
  }

  function onConnected(data) {
    state.reconnectDelay = 2000;
    state.defaultTimer = data.timer;
    if (state.userId !== data.user_id) {
      signedIn(data.user_id, null);
      log(`Continued the session of ${data.user_id}`);
      api("GET", `/api/v1/users/${encodeURIComponent(data.user_id)}`)
        .then((user) => showProfile(user.profile))
        .catch(() => {}); // the label without account data is fine
    }
    clearNotice();
    setStream("live");
    // The stream's list is the truth: it also holds changes made elsewhere meanwhile.
    const listed = new Map(data.subscriptions.map((sub) => [sub.ticker, sub.timer]));
    for (const ticker of [...state.subs.keys()]) {
      if (!listed.has(ticker)) removeRow(ticker);
    }
    for (const [ticker, timer] of listed) upsertRow(ticker, timer);
  }

  function onPrice(tick) {
    state.received += 1;
    showCount();
    let sub = state.subs.get(tick.ticker);
    if (!sub) {
      if (state.cancelled.has(tick.ticker)) return;
      sub = upsertRow(tick.ticker, null); // subscribed elsewhere (another tab, the API)
    }
    const previous = sub.last;
    const move = previous ? Math.sign(tick.price - previous.price) : 0;
    sub.last = tick;
    sub.updates += 1;
    const row = sub.row;
    row.dataset.move = move > 0 ? "up" : move < 0 ? "down" : "flat";
    row.dataset.updates = String(sub.updates);
    row.dataset.price = String(tick.price);
    row.dataset.timestamp = String(tick.timestamp);
    row.querySelector(".sub-price").textContent = formatPrice(tick.price);
    const time = row.querySelector(".sub-time");
    time.textContent = clock.format(new Date(tick.timestamp));
    time.dateTime = tick.datetime;
    if ("mark_price" in tick) showBook(row, tick);
    describeRow(sub);
  }

  /** An instrument's book beside its mark: bid / ask, and funding for a perpetual. */
  function showBook(row, tick) {
    const side = (price, amount) =>
      price === null || price === undefined || !amount ? "—" : formatPrice(price);
    const parts = [
      `bid ${side(tick.best_bid_price, tick.best_bid_amount)}`,
      `ask ${side(tick.best_ask_price, tick.best_ask_amount)}`,
      `mark ${formatPrice(tick.mark_price)}`,
    ];
    if (typeof tick.current_funding === "number") {
      parts.push(`funding ${(tick.current_funding * 100).toFixed(4)} %`);
    }
    if (typeof tick.mark_iv === "number") parts.push(`IV ${tick.mark_iv.toFixed(1)} %`);
    const book = row.querySelector(".sub-book");
    book.textContent = parts.join(" · ");
    book.hidden = false;
    row.dataset.bid = String(tick.best_bid_price);
    row.dataset.ask = String(tick.best_ask_price);
  }

  function onExpired(data) {
    const delivery = typeof data.delivery_price === "number"
      ? `, delivered at ${formatPrice(data.delivery_price)}`
      : "";
    log(`${data.ticker} expired${delivery}: its subscription ended`, "warn");
    state.cancelled.add(data.ticker); // a late price of it must not bring the row back
    removeRow(data.ticker);
  }

  function onStatus(data) {
    if (ui.upstream.dataset.state !== data.upstream) {
      log(`Deribit connection: ${data.upstream}`, data.upstream === "connected" ? "info" : "warn");
    }
    setUpstream(data.upstream);
  }

  function onGap(gap) {
    const from = clock.format(new Date(gap.from));
    const to = clock.format(new Date(gap.to));
    log(`${gap.ticker}: no prices from ${from} to ${to} (missed upstream)`, "warn");
  }

  function showCount() {
    ui.priceCount.textContent = number.format(state.received);
    ui.priceCount.dataset.count = String(state.received);
  }

  // ---- subscriptions -----------------------------------------------------------------------

  /** The row of a ticker, created when new; `timer` null keeps what is known. */
  function upsertRow(ticker, timer) {
    let sub = state.subs.get(ticker);
    if (!sub) {
      sub = { timer: null, row: buildRow(ticker), updates: 0, last: null };
      state.subs.set(ticker, sub);
      const after = [...ui.subs.children].find((row) => row.dataset.ticker > ticker);
      ui.subs.insertBefore(sub.row, after || null);
    }
    if (timer !== null && timer !== undefined) sub.timer = timer;
    describeRow(sub);
    showEmpty();
    return sub;
  }

  function buildRow(ticker) {
    const row = element("li", "sub");
    row.dataset.ticker = ticker;
    row.dataset.updates = "0";
    const cancel = element("button", "sub-cancel secondary danger", "Cancel");
    cancel.type = "button";
    cancel.setAttribute("aria-label", `Cancel ${ticker}`);
    cancel.addEventListener("click", () => cancelOne(ticker, cancel));
    const time = element("time", "sub-time", "waiting…");
    const book = element("span", "sub-book");
    book.hidden = true; // an instrument's bid / ask / mark, once its first price is in
    row.append(
      element("span", "sub-name", ticker),
      element("span", "sub-price", "—"),
      cancel,
      element("span", "sub-meta"),
      time,
      book,
    );
    return row;
  }

  function describeRow(sub) {
    const timer = sub.timer === null ? state.defaultTimer : sub.timer;
    const updates = sub.updates === 1 ? "1 update" : `${number.format(sub.updates)} updates`;
    sub.row.querySelector(".sub-meta").textContent = `${timerText(timer)} · ${updates}`;
  }

  function removeRow(ticker) {
    const sub = state.subs.get(ticker);
    if (!sub) return;
    sub.row.remove();
    state.subs.delete(ticker);
    showEmpty();
  }

  function showEmpty() {
    ui.subsEmpty.hidden = state.subs.size > 0;
    ui.cancelAll.disabled = state.subs.size === 0;
  }

  ui.subscribeForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const ticker = tickerName(ui.subTicker.value);
    const timer = ui.subTimer.value.trim();
    if (!ticker || state.userId === null) return;
    const query = timer === "" ? "" : `?timer=${encodeURIComponent(timer)}`;
    state.cancelled.delete(ticker); // its first price may come before the answer below
    ui.subscribe.disabled = true;
    try {
      const path = `${marketPath()}/create_order/${encodeURIComponent(ticker)}${query}`;
      const created = await api("POST", path);
      upsertRow(created.ticker, created.timer);
      const how = timerText(created.timer === null ? state.defaultTimer : created.timer);
      log(`${created.created ? "Subscribed to" : "Updated"} ${created.ticker}, ${how}`);
      clearNotice();
    } catch (error) {
      failed(`Subscribing to ${ticker} failed`, error);
    } finally {
      ui.subscribe.disabled = false;
    }
  });

  async function cancelOne(ticker, button) {
    button.disabled = true;
    state.cancelled.add(ticker);
    try {
      await api("POST", `${marketPath()}/cancel_order/${encodeURIComponent(ticker)}`);
      log(`Cancelled ${ticker}`);
    } catch (error) {
      if (error.status !== 404) {
        state.cancelled.delete(ticker);
        button.disabled = false;
        failed(`Cancelling ${ticker} failed`, error);
        return;
      }
      log(`${ticker} was not subscribed any more`, "warn");
    }
    removeRow(ticker);
  }

  ui.cancelAll.addEventListener("click", async () => {
    ui.cancelAll.disabled = true;
    const shown = [...state.subs.keys()];
    for (const ticker of shown) state.cancelled.add(ticker);
    try {
      const result = await api("POST", `${marketPath()}/cancel_all_orders`);
      for (const ticker of result.removed) state.cancelled.add(ticker);
      for (const ticker of shown) removeRow(ticker);
      log(result.removed.length ? `Cancelled ${result.removed.join(", ")}` : "Nothing to cancel");
    } catch (error) {
      for (const ticker of shown) state.cancelled.delete(ticker);
      showEmpty();
      failed("Cancelling all failed", error);
    }
  });

  // ---- upstream state while signed out -----------------------------------------------------

  async function checkHealth() {
    try {
      const health = await api("GET", "/health");
      setUpstream(health.upstream);
    } catch {
      setUpstream("down");
    }
  }

  function startHealthPolling() {
    stopHealthPolling();
    checkHealth();
    state.healthTimer = setInterval(checkHealth, HEALTH_EVERY_MS);
  }

  function stopHealthPolling() {
    clearInterval(state.healthTimer);
    state.healthTimer = null;
  }

  // ---- tickers -----------------------------------------------------------------------------

  /** What was typed, as a ticker: instrument names are upper case, index names lower case, so
   * "BTC_USD" means the index btc_usd unless an instrument is called so. */
  function tickerName(value) {
    const typed = value.trim();
    const listed = (name) => ui.tickerList.querySelector(`option[value="${CSS.escape(name)}"]`);
    if (listed(typed)) return typed;
    if (listed(typed.toLowerCase())) return typed.toLowerCase();
    return typed === typed.toUpperCase() && /[A-Z]/.test(typed) ? typed : typed.toLowerCase();
  }

  /** Index names and instruments in one list the ticker inputs search as you type. */
  async function loadTickers() {
    const option = (name, label) => {
      const node = document.createElement("option");
      node.value = name;
      if (label) node.label = label;
      return node;
    };
    const [indexes, instruments] = await Promise.allSettled([
      api("GET", "/api/v1/tickers"),
      api("GET", "/api/v1/instruments"),
    ]);
    const options = [];
    if (indexes.status === "fulfilled") {
      options.push(...indexes.value.tickers.map((name) => option(name, "index")));
    } else {
      log(`The index list is unavailable: ${indexes.reason.message}`, "warn");
    }
    if (instruments.status === "fulfilled") {
      for (const item of instruments.value.instruments) {
        const label = item.strike ? `${item.family} ${item.option_type}` : item.family;
        options.push(option(item.instrument_name, label));
      }
    } else {
      log(`The instrument list is unavailable: ${instruments.reason.message}`, "warn");
    }
    ui.tickerList.replaceChildren(...options);
  }

  // ---- history chart -----------------------------------------------------------------------

  ui.historyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    drawHistory();
  });

  ui.historyForm.addEventListener("input", () => showDownload(historyRequest()));

  for (const button of ui.historyForm.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => {
      const seconds = Number(button.dataset.range);
      ui.histStart.value = toLocalInput(new Date(Date.now() - seconds * 1000));
      ui.histEnd.value = "";
      drawHistory();
    });
  }

  /** The smallest resolution that keeps a range under MAX_CANDLES candles, else a day. */
  function resolutionFor(rangeMs) {
    const minutes = rangeMs / MINUTE_MS;
    const fits = RESOLUTIONS.find(([, width]) => minutes / width <= MAX_CANDLES);
    return fits || RESOLUTIONS[RESOLUTIONS.length - 1];
  }

  function resolutionLabel(width) {
    if (width >= 1440) return "daily";
    return width >= 60 ? `${width / 60}-hour` : `${width}-minute`;
  }

  /** What the form asks for: {ticker, start, end, resolution: null for ticks}, or {problem}. */
  function historyRequest() {
    const ticker = tickerName(ui.histTicker.value);
    const start = fromLocalInput(ui.histStart.value);
    const end = fromLocalInput(ui.histEnd.value);
    if (!ticker || !start) return { problem: "Pick a ticker and a start time." };
    if (end && start > end) return { problem: "The start is after the end." };
    const rangeMs = (end || new Date()) - start;
    const resolution = rangeMs <= TICKS_UP_TO_MS ? null : resolutionFor(rangeMs);
    return { ticker, start, end, resolution };
  }

  function historyParams(request) {
    const params = new URLSearchParams({ ticker: request.ticker });
    if (request.resolution) params.set("resolution", request.resolution[0]);
    params.set("start_date", request.start.toISOString());
    if (request.end) params.set("end_date", request.end.toISOString());
    return params;
  }

  const historyPath = (request) =>
    request.resolution ? "/api/v1/prices/candles" : "/api/v1/prices/by-date";

  /** The CSV of what the chart would draw: ticks, or candles of the same resolution. */
  function showDownload(request) {
    ui.histCsv.hidden = Boolean(request.problem);
    if (request.problem) return;
    const params = historyParams(request);
    params.set("format", "csv");
    ui.histCsv.href = `${historyPath(request)}?${params}`;
  }

  async function drawHistory() {
    delete ui.chart.dataset.drawMs; // a reader waits for this draw's figure, not the last one's
    const request = historyRequest();
    showDownload(request);
    if (request.problem) {
      ui.historySummary.textContent = request.problem;
      return;
    }
    const { ticker, resolution } = request;
    const run = ++state.historyRun;
    const params = historyParams(request);
    params.set("limit", String(PAGE_SIZE));
    ui.historySummary.textContent = `Loading ${ticker}…`;
    ui.draw.disabled = true;
    const series = resolution ? candleSeries(resolution[1] * MINUTE_MS) : tickSeries();
    let cursor = null;
    let arrived = 0; // when the latest page's answer was in (parsed); the last one's counts
    try {
      do {
        const page = await api("GET", `${historyPath(request)}?${params}`);
        arrived = performance.now();
        if (run !== state.historyRun) return; // a newer request took over
        for (const item of page.items) series.add(item);
        // Later pages use the range the first one settled (its end defaults to "now").
        params.set("end_date", page.end_date);
        cursor = page.next_cursor;
        if (cursor) params.set("cursor", cursor);
      } while (cursor && series.xs.length < MAX_POINTS);
    } catch (error) {
      if (run === state.historyRun) {
        clearChart();
        ui.historySummary.textContent = error.message;
      }
      return;
    } finally {
      if (run === state.historyRun) ui.draw.disabled = false;
    }
    renderChart(ticker, resolution, series, Boolean(cursor));
    // data-draw-ms (bench/bench_dashboard.py reads it): from the last page's answer to the next
    // frame, so that page's series, renderChart and uPlot's drawing (a microtask) are in it.
    requestAnimationFrame(() => {
      if (run === state.historyRun) {
        ui.chart.dataset.drawMs = String(Math.round(performance.now() - arrived));
      }
    });
  }

  /** Raw ticks: one point each. */
  function tickSeries() {
    const series = { xs: [], ys: [], count: 0, low: Infinity, high: -Infinity };
    series.add = (item) => {
      series.xs.push(item.timestamp / 1000); // seconds, as uPlot's time scale takes them
      series.ys.push(item.price);
      series.count += 1;
      series.low = Math.min(series.low, item.price);
      series.high = Math.max(series.high, item.price);
    };
    return series;
  }

  /** Candles drawn by their close at their start. A null point breaks the line (spanGaps is
   * off) across a bucket a recorded gap touched, and across buckets without ticks. */
  function candleSeries(widthMs) {
    const series = { xs: [], ys: [], count: 0, low: Infinity, high: -Infinity };
    let previous = null;
    series.add = (candle) => {
      if (previous && (previous.gap || candle.start - previous.start > widthMs)) {
        series.xs.push((previous.start + widthMs / 2) / 1000); // inside the broken stretch
        series.ys.push(null);
      }
      series.xs.push(candle.start / 1000);
      series.ys.push(candle.close);
      series.count += 1;
      series.low = Math.min(series.low, candle.low);
      series.high = Math.max(series.high, candle.high);
      previous = candle;
    };
    return series;
  }

  function clearChart() {
    if (state.chart) {
      state.chart.destroy();
      state.chart = null;
    }
    delete ui.chart.dataset.points;
    delete ui.chart.dataset.ticker;
    delete ui.chart.dataset.resolution;
  }

  /** `resolution`: [name, minutes] of the candles drawn, null for ticks. */
  function renderChart(ticker, resolution, series, cut) {
    const { xs, ys } = series;
    clearChart();
    ui.chart.dataset.points = String(xs.length); // null break points included
    ui.chart.dataset.ticker = ticker;
    ui.chart.dataset.resolution = resolution ? resolution[0] : "ticks";
    if (xs.length === 0) {
      ui.historySummary.textContent = `No stored prices of ${ticker} in this range.`;
      return;
    }
    const what = resolution
      ? `${resolutionLabel(resolution[1])} candle${series.count === 1 ? "" : "s"}`
      : "prices";
    ui.historySummary.textContent =
      `${number.format(series.count)} ${what} of ${ticker} · low ${formatPrice(series.low)}` +
      ` · high ${formatPrice(series.high)}` +
      (cut ? ` · the first ${number.format(MAX_POINTS)} only: narrow the range for the rest` : "");
    const options = {
      width: chartWidth(),
      height: chartHeight(),
      scales: { x: { time: true } },
      series: [
        {},
        {
          label: ticker,
          stroke: "#2563eb",
          width: 1.5,
          fill: "rgba(37, 99, 235, 0.08)",
          spanGaps: false,
          points: { show: xs.length < 60 },
          value: (chart, value) => (value === null ? "—" : formatPrice(value)),
        },
      ],
      axes: [
        { stroke: "#5f6b7a", grid: { stroke: "#eef1f5" }, ticks: { stroke: "#dde3ea" } },
        {
          stroke: "#5f6b7a",
          grid: { stroke: "#eef1f5" },
          ticks: { stroke: "#dde3ea" },
          // As many decimals as the step between labels needs, and room for the longest label.
          values: (chart, splits, axis, space, step) => splits.map((v) => axisLabel(v, step)),
          size: (chart, labels) => (labels ? 18 + 7.5 * longest(labels) : 60),
        },
      ],
      cursor: { drag: { x: true, y: false } },
    };
    state.chart = new uPlot(options, [xs, ys], ui.chart);
  }

  function axisLabel(value, step) {
    const decimals = Math.min(8, Math.max(0, -Math.floor(Math.log10(step || 1))));
    return value.toLocaleString(undefined, {
      minimumFractionDigits: decimals,
      maximumFractionDigits: decimals,
    });
  }

  const longest = (labels) => labels.reduce((most, label) => Math.max(most, label.length), 0);

  const chartWidth = () => Math.max(ui.chart.clientWidth, 200);
  const chartHeight = () => (window.innerWidth < 600 ? 220 : 300);

  new ResizeObserver(() => {
    if (state.chart) state.chart.setSize({ width: chartWidth(), height: chartHeight() });
  }).observe(ui.chart.parentElement);

  // ---- start -------------------------------------------------------------------------------

  ui.histStart.value = toLocalInput(new Date(Date.now() - 3600 * 1000));
  showDownload(historyRequest());
  loadTickers();
  startHealthPolling();
  const remembered = localStorage.getItem(USER_KEY);
  if (remembered) {
    ui.userId.value = remembered;
    notify(`Continuing the session of ${remembered}…`);
    connect();
  }
})();
