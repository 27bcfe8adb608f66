// rtis.js: the browser client for rtis's /ws protocol. An ES module, no build step.
//
//   import { connect } from "/rtis.js";
//   const client = connect({ token, onState: (state, info) => ... });
//   const sub = client.subscribe("small_orders", {
//     since: 0, where: "region = 'eu'",
//     onEvents: (events) => { for (const e of events) console.log(e.offset, e.data); },
//   });
//
// It reconnects by itself (exponential backoff with jitter) and resumes every
// subscription from the last offset it delivered, so across reconnects and
// server restarts each message reaches onEvents exactly once, in offset order.
// See docs/browser.md.

const DEFAULTS = {
  url: null, // default: /ws on the server this module was loaded from
  token: null, // string, or a function returning a string or a Promise of one
  minDelay: 500, // first reconnect delay (ms); doubles per failed attempt ...
  maxDelay: 30000, // ... up to this; each delay is jittered between 50% and 100%
  pingInterval: 20000, // send {"op":"ping"} this often (ms) ...
  pongTimeout: 10000, // ... and reconnect if no pong comes back within this
  onState: null, // (state, info) => void; see STATES
  onError: null, // (error) => void; errors not tied to one subscription
};

// Close codes after which reconnecting cannot help: the client must change
// something (its token, its messages) first. Call client.reconnect() then.
const FATAL = new Map([
  [4400, "bad message"],
  [4401, "unauthenticated"],
  [4403, "forbidden"],
]);

/** The states passed to onState: "connecting", "open", "reconnecting", "closed". */
export const STATES = Object.freeze(["connecting", "open", "reconnecting", "closed"]);

/** Open a client; it connects at once and keeps reconnecting until close(). */
export function connect(options = {}) {
  return new Client(options);
}

/** The default /ws URL: the server this module was served by. */
export function defaultUrl(base = import.meta.url) {
  const url = new URL("/ws", base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** The delay before reconnect attempt ``attempt`` (0-based), in ms. */
export function backoff(attempt, minDelay = DEFAULTS.minDelay, maxDelay = DEFAULTS.maxDelay, random = Math.random) {
  const ceiling = Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

export class Client {
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options };
    this.url = this.options.url ? new URL(this.options.url, globalThis.location?.href).href : defaultUrl();
    this.state = "connecting";
    this.attempt = 0; // failed attempts since the last good connection
    this._subs = new Map(); // topic -> Subscription
    this._byId = new Map(); // request id -> Subscription awaiting its reply
    this._nextId = 1;
    this._listeners = new Set(this.options.onState ? [this.options.onState] : []);
    this._ws = null;
    this._retryTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._closed = false;
    this._onOnline = () => {
      if (this.state === "reconnecting") this.reconnect();
    };
    globalThis.addEventListener?.("online", this._onOnline);
    this._open();
  }

  /** Call ``listener(state, info)`` on every state change; returns an unsubscribe function. */
  onState(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  /**
   * Subscribe to ``topic``. Options: ``since`` (offset: replay what follows it,
   * then go live; omitted: live only), ``where`` (a SQL condition), and the
   * callbacks ``onEvents(events, sub)``, ``onSubscribed(reply, sub)``, ``onError(error, sub)``.
   */
  subscribe(topic, options = {}) {
    if (this._closed) throw new Error("rtis: the client is closed");
    if (this._subs.has(topic)) throw new Error(`rtis: already subscribed to ${JSON.stringify(topic)}`);
    const sub = new Subscription(this, topic, options);
    this._subs.set(topic, sub);
    if (this.state === "open") this._sendSubscribe(sub);
    return sub;
  }

  /** Connect again now (after a fatal close such as 4401, or to skip a backoff wait). */
  reconnect() {
    if (this._closed) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this.attempt = 0;
    this._drop();
    this._open();
  }

  /** Close for good: no more reconnects or callbacks. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._retryTimer);
    globalThis.removeEventListener?.("online", this._onOnline);
    this._drop(1000, "client closed");
    this._setState("closed", { code: 1000, reason: "client closed" });
  }

  // -- internals ---------------------------------------------------------------

  _setState(state, info = {}) {
    this.state = state;
    for (const listener of this._listeners) {
      try {
        listener(state, { attempt: this.attempt, ...info });
      } catch (e) {
        console.error("rtis: onState listener failed", e);
      }
    }
  }

  _open() {
    this._setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this._closedWith(1006, String(e));
      return;
    }
    this._ws = ws;
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (e) => this._onMessage(e.data);
    ws.onclose = (e) => {
      if (this._ws === ws) this._closedWith(e.code, e.reason);
    };
  }

  async _onOpen(ws) {
    let token = this.options.token;
    if (typeof token === "function") {
      try {
        token = await token();
      } catch (e) {
        this._fail({ code: "token_failed", message: `the token function failed: ${e}` });
        token = null;
      }
    }
    if (this._ws !== ws || ws.readyState !== WebSocket.OPEN) return;
    // Frames are handled in order: auth first, then every subscription.
    if (token) this._send({ op: "auth", token });
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    this._setState("open");
    this._pingTimer = setInterval(() => this._ping(), this.options.pingInterval);
  }

  _ping() {
    if (this._pongTimer !== null) return;
    this._send({ op: "ping" });
    this._pongTimer = setTimeout(() => {
      // The server or the path to it is gone without a close: do not wait for
      // the TCP timeout.
      this._pongTimer = null;
      this._closedWith(4000, "no pong from the server");
    }, this.options.pongTimeout);
  }

  _send(frame) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(frame));
  }

  _sendSubscribe(sub) {
    const id = this._nextId++;
    this._byId.set(id, sub);
    sub._active = false;
    const frame = { op: "subscribe", topic: sub.topic, id };
    const since = sub.lastOffset ?? sub.options.since;
    if (since !== undefined && since !== null) frame.since = since;
    if (sub.options.where) frame.where = sub.options.where;
    sub._sentSince = frame.since;
    this._send(frame);
  }

  _onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    this.attempt = 0; // the server answers: this connection is good
    switch (msg.op) {
      case "events": {
        const sub = this._subs.get(msg.topic);
        if (sub) sub._deliver(msg.events);
        break;
      }
      case "subscribed": {
        const sub = this._byId.get(msg.id);
        this._byId.delete(msg.id);
        if (sub && this._subs.get(sub.topic) === sub) sub._subscribed(msg);
        break;
      }
      case "pong":
        clearTimeout(this._pongTimer);
        this._pongTimer = null;
        break;
      case "error": {
        const sub = msg.id !== undefined ? this._byId.get(msg.id) : undefined;
        const error = { code: msg.code, message: msg.message };
        if (sub) {
          this._byId.delete(msg.id);
          if (this._subs.get(sub.topic) === sub) this._subs.delete(sub.topic);
          sub.failed = error;
          sub._call("onError", error);
        } else {
          this._fail(error);
        }
        break;
      }
      default:
        break; // "authenticated", "unsubscribed", and ops added later
    }
  }

  _fail(error) {
    if (this.options.onError) this.options.onError(error);
    else console.warn(`rtis: ${error.code}: ${error.message}`);
  }

  _drop(code = 1000, reason = "") {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    this._pingTimer = this._pongTimer = null;
    const ws = this._ws;
    this._ws = null;
    this._byId.clear();
    for (const sub of this._subs.values()) sub._active = false;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(code, reason);
      } catch {
        /* already closed */
      }
    }
  }

  _closedWith(code, reason) {
    this._drop(code >= 3000 ? code : 1000);
    if (this._closed) return;
    if (FATAL.has(code)) {
      this._setState("closed", { code, reason: reason || FATAL.get(code), fatal: true });
      return;
    }
    const delay = backoff(this.attempt, this.options.minDelay, this.options.maxDelay);
    this.attempt += 1;
    this._setState("reconnecting", { code, reason, delay });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._open();
    }, delay);
  }
}

/** One topic's subscription; ``lastOffset`` is the last offset delivered (or the start). */
export class Subscription {
  constructor(client, topic, options) {
    this.client = client;
    this.topic = topic;
    this.options = options;
    this.lastOffset = null; // set by the first "subscribed" reply, then by every event
    this.recovered = null; // false: part of the history asked for is no longer retained
    this.failed = null; // the server's error, if it refused this subscription
    this._active = false; // events count only after our "subscribed" reply
    this._sentSince = undefined;
  }

  /** Stop receiving; the client forgets this subscription. */
  unsubscribe() {
    if (this.client._subs.get(this.topic) !== this) return;
    this.client._subs.delete(this.topic);
    this._active = false;
    this.client._send({ op: "unsubscribe", topic: this.topic });
  }

  _call(name, ...args) {
    const fn = this.options[name];
    if (!fn) return;
    try {
      fn(...args, this);
    } catch (e) {
      console.error(`rtis: ${name} callback for ${this.topic} failed`, e);
    }
  }

  _subscribed(reply) {
    if (this.lastOffset === null) {
      this.lastOffset = this._sentSince ?? reply.offset;
    } else if (reply.offset < this.lastOffset) {
      // The topic restarted below what we saw (a new database): follow it.
      this.lastOffset = reply.offset;
    }
    this.recovered = reply.recovered;
    this._active = true;
    this._call("onSubscribed", reply);
  }

  _deliver(events) {
    // Frames queued for an earlier subscription to this topic (before an
    // unsubscribe or a reconnect) arrive before our "subscribed": skip them.
    if (!this._active) return;
    const last = this.lastOffset ?? 0;
    const fresh = events[0]?.offset > last ? events : events.filter((e) => e.offset > last);
    if (fresh.length === 0) return;
    this.lastOffset = fresh[fresh.length - 1].offset;
    this._call("onEvents", fresh);
  }
}
