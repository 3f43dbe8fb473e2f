// ringcast.js: the browser and Node client of ringcast (ES module, no
// dependencies). Speaks ringcast.v1 over WebSocket, and falls back to
// Server-Sent Events, then to long-poll, with the same topics and
// positions. Reference: docs/protocol.md; usage: clients/js/README.md.

/** Reconnect delays: exponential with full jitter, in milliseconds. */
export const BACKOFF = Object.freeze({ base: 500, cap: 30000, stableAfter: 60000 });

/** Transports, in the order they are tried. */
export const TRANSPORTS = Object.freeze(['websocket', 'sse', 'poll']);

/**
 * The delay before reconnect attempt `attempt` (0 for the first): a
 * uniform draw in [0, min(cap, base * 2^attempt)) ("full jitter").
 */
export function backoff(attempt, random = Math.random, base = BACKOFF.base, cap = BACKOFF.cap) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** The SSE/long-poll position text: `TOPIC:OFFSET:EPOCH` joined by `;`. */
export function formatPositions(positions) {
  const items = [];
  for (const [topic, p] of positions) {
    if (p && p.epoch !== undefined) items.push(`${topic}:${p.offset}:${p.epoch}`);
  }
  return items.join(';');
}

/** Reads a position text back into a Map of topic -> {offset, epoch}. */
export function parsePositions(text) {
  const out = new Map();
  for (const item of (text || '').split(';')) {
    const epochAt = item.lastIndexOf(':');
    const offsetAt = item.lastIndexOf(':', epochAt - 1);
    if (offsetAt <= 0) continue;
    const offset = Number(item.slice(offsetAt + 1, epochAt));
    if (!Number.isSafeInteger(offset)) continue;
    out.set(item.slice(0, offsetAt), { offset, epoch: item.slice(epochAt + 1) });
  }
  return out;
}

/** Close codes with a fixed meaning to the client (RFC 6455 §7.4). */
export const CLOSE = Object.freeze({
  NORMAL: 1000, GOING_AWAY: 1001, ABNORMAL: 1006, TOKEN_EXPIRED: 4001, DISCONNECTED: 4003,
});

function decode(message) {
  if (message.b64data !== undefined) {
    const bin = atob(message.b64data);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }
  return message.data;
}

/**
 * A connection to ringcast that stays up: it reconnects with backoff,
 * resumes every topic from its last position, and falls back from
 * WebSocket to SSE to long-poll when a transport cannot connect.
 */
export class Ringcast {
  /**
   * @param {string} url the server's WebSocket listener, as http(s):// or
   *   ws(s):// (e.g. `http://127.0.0.1:8080`); a path is ignored.
   * @param {object} [options] see ringcast.d.ts
   */
  constructor(url, options = {}) {
    const u = new URL(url, globalThis.location?.href);
    u.protocol = u.protocol === 'wss:' || u.protocol === 'https:' ? 'https:' : 'http:';
    this.base = u.origin;
    this.options = options;
    this.token = options.token;
    this.random = options.random || Math.random;
    this.paths = { websocket: '/ws', sse: '/sse', poll: '/poll', ...(options.paths || {}) };
    this.transports = (options.transports || TRANSPORTS).filter((t) => TRANSPORTS.includes(t));
    this.fallbackAfter = options.fallbackAfter ?? 3;
    this.retryWebSocketAfter = options.retryWebSocketAfter ?? 300000;
    this.impl = {
      WebSocket: options.WebSocket || globalThis.WebSocket,
      EventSource: options.EventSource || globalThis.EventSource,
      fetch: options.fetch || globalThis.fetch?.bind(globalThis),
      setTimeout: options.setTimeout || globalThis.setTimeout.bind(globalThis),
      clearTimeout: options.clearTimeout || globalThis.clearTimeout.bind(globalThis),
      now: options.now || (() => Date.now()),
    };
    /** topic -> {handlers: Set, offset?, epoch?} */
    this.topics = new Map();
    this.listeners = new Map();
    this.pending = new Map();
    /** topic -> presence queries waiting for their answer, oldest first */
    this.asked = new Map();
    this.nextId = 1;
    this.state = 'connecting';
    this.transport = this.transports[0];
    this.attempt = 0;
    this.failures = 0;
    this.fallbackSince = 0;
    this.conn = null;
    this.timer = null;
    for (const topic of options.topics || []) this.subscribe(topic);
    this.impl.setTimeout(() => this.connect(), 0);
  }

  /**
   * Adds `handler` for `event`: state, transport, message, subscribed,
   * join, leave, reset, close, error.
   */
  on(event, handler) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(handler);
    return () => this.listeners.get(event).delete(handler);
  }

  emit(event, ...args) {
    for (const handler of this.listeners.get(event) || []) {
      try {
        handler(...args);
      } catch (e) {
        if (event !== 'error') this.emit('error', e);
      }
    }
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  /** The position the client holds on each topic: Map topic -> {offset, epoch}. */
  positions() {
    const out = new Map();
    for (const [topic, sub] of this.topics) {
      if (sub.epoch !== undefined) out.set(topic, { offset: sub.offset, epoch: sub.epoch });
    }
    return out;
  }

  /**
   * Subscribes to `topic`; `onMessage(data, message)` gets each delivery
   * once, in order. `options.joinLeave` (implied by `onJoin`/`onLeave`)
   * asks the server for the topic's join and leave events (a topic with
   * presence); `onJoin(join)` and `onLeave(leave)` get them. Returns a
   * function that removes these handlers (and unsubscribes when none is
   * left).
   */
  subscribe(topic, onMessage, options = {}) {
    const joinLeave = Boolean(options.joinLeave || options.onJoin || options.onLeave);
    let sub = this.topics.get(topic);
    if (!sub) {
      sub = { handlers: new Set(), joins: new Set(), leaves: new Set(), joinLeave };
      this.topics.set(topic, sub);
      this.conn?.subscribe?.(topic);
    } else if (joinLeave && !sub.joinLeave) {
      // A subscribe to a held topic changes nothing on the server: take
      // the topic again, with join_leave (and its position, if any).
      sub.joinLeave = true;
      this.conn?.resubscribe?.(topic);
    }
    if (onMessage) sub.handlers.add(onMessage);
    if (options.onJoin) sub.joins.add(options.onJoin);
    if (options.onLeave) sub.leaves.add(options.onLeave);
    return () => {
      if (onMessage) sub.handlers.delete(onMessage);
      if (options.onJoin) sub.joins.delete(options.onJoin);
      if (options.onLeave) sub.leaves.delete(options.onLeave);
      const unused = sub.handlers.size + sub.joins.size + sub.leaves.size === 0;
      if (unused && this.topics.get(topic) === sub) {
        this.topics.delete(topic);
        this.conn?.unsubscribe?.(topic);
      }
    };
  }

  /**
   * Who is on `topic` (a topic with presence this client is subscribed
   * to; WebSocket only): resolves with `{clients, truncated}`, `clients`
   * the members `{client, user, info}` (at most 1000; `truncated` when
   * there are more). Rejects with the server's reason (`forbidden`,
   * `presence is off for this topic`, `broker unavailable`).
   */
  presence(topic) {
    return this.ask('presence', topic, (reply) => ({ clients: reply.clients, truncated: reply.truncated === true }));
  }

  /** Resolves with `{clients, users}`: members and distinct non-null users on `topic`; as presence(). */
  presenceStats(topic) {
    return this.ask('presence_stats', topic, (reply) => ({ clients: reply.clients, users: reply.users }));
  }

  /** Publishes `data` (JSON) to `topic` from this client (WebSocket only). Resolves with the offset. */
  publish(topic, data) {
    return this.request({ op: 'publish', topic, data }, (reply) => reply.offset);
  }

  /** Calls `method` on the server's RPC hook (WebSocket only). Resolves with the result's data. */
  rpc(method, data) {
    return this.request({ op: 'rpc', method, data }, (reply) => reply.data);
  }

  request(body, pick) {
    if (this.state !== 'open' || this.transport !== 'websocket' || !this.conn?.send) {
      return Promise.reject(new Error(`${body.op} needs an open WebSocket (transport: ${this.transport}, ${this.state})`));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: (reply) => resolve(pick(reply)), reject });
      this.conn.send({ ...body, id });
    });
  }

  /**
   * A presence query: its answer carries the topic and no id, so the
   * answers of a topic are matched to the queries in the order sent.
   */
  ask(op, topic, pick) {
    if (this.state !== 'open' || this.transport !== 'websocket' || !this.conn?.send) {
      return Promise.reject(new Error(`${op} needs an open WebSocket (transport: ${this.transport}, ${this.state})`));
    }
    return new Promise((resolve, reject) => {
      if (!this.asked.has(topic)) this.asked.set(topic, []);
      this.asked.get(topic).push({ op, resolve: (reply) => resolve(pick(reply)), reject });
      this.conn.send({ op, topic });
    });
  }

  /** The oldest query on `topic` waiting for `op` (any op when undefined), taken off its queue. */
  answered(topic, op) {
    const queue = this.asked.get(topic);
    const at = queue ? queue.findIndex((q) => op === undefined || q.op === op) : -1;
    if (at < 0) return undefined;
    const [query] = queue.splice(at, 1);
    if (queue.length === 0) this.asked.delete(topic);
    return query;
  }

  /** Closes for good (code 1000); no reconnect. */
  close() {
    this.stop({ code: CLOSE.NORMAL, reason: 'closed by the client' });
  }

  stop(why) {
    if (this.state === 'closed') return;
    this.impl.clearTimeout(this.timer);
    this.timer = null;
    this.impl.clearTimeout(this.conn?.probe);
    this.conn?.close();
    this.conn = null;
    this.failPending(why.reason);
    this.setState('closed');
    this.emit('close', why);
  }

  failPending(reason) {
    for (const { reject } of this.pending.values()) reject(new Error(reason || 'connection lost'));
    this.pending.clear();
    for (const queue of this.asked.values()) {
      for (const { reject } of queue) reject(new Error(reason || 'connection lost'));
    }
    this.asked.clear();
  }

  // --- connection life -------------------------------------------------

  connect() {
    if (this.state === 'closed') return;
    if (this.transport !== this.transports[0]
      && this.impl.now() - this.fallbackSince >= this.retryWebSocketAfter) {
      this.transport = this.transports[0];
      this.failures = 0;
      this.emit('transport', this.transport);
    }
    const make = { websocket: openWebSocket, sse: openSse, poll: openPoll }[this.transport];
    const conn = make(this);
    this.conn = conn;
    conn.opened = false;
  }

  /** The transport is up: subscriptions are (being) made. */
  opened(conn) {
    if (conn !== this.conn) return;
    conn.opened = true;
    conn.openedAt = this.impl.now();
    this.failures = 0;
    if (this.transport !== this.transports[0]) {
      // On a fallback: end it after a while to try WebSocket again.
      const left = Math.max(0, this.retryWebSocketAfter - (conn.openedAt - this.fallbackSince));
      conn.probe = this.impl.setTimeout(() => this.ended(conn, CLOSE.GOING_AWAY, 'retrying WebSocket'), left);
    }
    this.setState('open');
  }

  /** The transport ended with `code` (WebSocket close codes; 1006 for a network error). */
  ended(conn, code, reason) {
    if (conn !== this.conn || this.state === 'closed') return;
    this.conn = null;
    this.impl.clearTimeout(conn.probe);
    conn.close();
    this.failPending(reason);
    if (code === CLOSE.DISCONNECTED) {
      this.stop({ code, reason });
      return;
    }
    const stable = conn.opened && this.impl.now() - conn.openedAt >= BACKOFF.stableAfter;
    if (stable) this.attempt = 0;
    if (!conn.opened) {
      this.failures += 1;
      const at = this.transports.indexOf(this.transport);
      if (this.failures >= this.fallbackAfter && at + 1 < this.transports.length) {
        this.transport = this.transports[at + 1];
        this.failures = 0;
        this.attempt = 0;
        this.fallbackSince = this.impl.now();
        this.emit('transport', this.transport);
      }
    }
    this.setState('reconnecting');
    const delay = backoff(this.attempt++, this.random);
    this.timer = this.impl.setTimeout(async () => {
      if (code === CLOSE.TOKEN_EXPIRED && this.options.getToken) {
        try {
          this.token = await this.options.getToken();
        } catch (e) {
          this.emit('error', e);
        }
      }
      this.connect();
    }, delay);
  }

  /** A `ringcast.v1` message from any transport. */
  received(message) {
    switch (message.op) {
      case 'message': {
        const sub = this.topics.get(message.topic);
        if (message.topic === undefined) {
          this.emit('message', decode(message), message);
          return;
        }
        if (!sub) return;
        if (message.offset !== undefined) {
          if (sub.epoch === message.epoch && message.offset <= sub.offset) return; // seen
          sub.offset = message.offset;
          sub.epoch = message.epoch;
        }
        const data = decode(message);
        for (const handler of sub.handlers) handler(data, message);
        this.emit('message', data, message);
        return;
      }
      case 'broadcast':
        this.emit('message', decode(message), message);
        return;
      case 'subscribed': {
        const sub = this.topics.get(message.topic);
        if (!sub) return;
        if (message.recovered === false) this.emit('reset', message.topic);
        if (message.offset !== undefined && (message.recovered !== true || sub.epoch === undefined)) {
          sub.offset = message.offset;
          sub.epoch = message.epoch;
        }
        this.emit('subscribed', message.topic, message);
        return;
      }
      case 'join':
      case 'leave': {
        const sub = this.topics.get(message.topic);
        if (!sub || !sub.joinLeave) return;
        for (const handler of message.op === 'join' ? sub.joins : sub.leaves) handler(message);
        this.emit(message.op, message);
        return;
      }
      case 'presence':
      case 'presence_stats':
        this.answered(message.topic, message.op)?.resolve(message);
        return;
      case 'published':
      case 'rpc_result':
      case 'error': {
        const waiting = message.id !== undefined && this.pending.get(message.id);
        // An error with a topic and no id answers the oldest presence
        // query of that topic, if one waits.
        const query = !waiting && message.op === 'error' && message.id === undefined
          && message.topic !== undefined && this.answered(message.topic);
        if (waiting) {
          this.pending.delete(message.id);
          if (message.op === 'error') waiting.reject(new Error(message.reason));
          else waiting.resolve(message);
        } else if (query) {
          query.reject(new Error(message.reason || 'error'));
        } else if (message.op === 'error') {
          this.emit('error', new Error(message.reason || 'error'));
        }
        return;
      }
      default:
    }
  }

  /** Query parameters every HTTP transport sends: topics and token. */
  query(extra = {}) {
    const q = new URLSearchParams();
    for (const topic of this.topics.keys()) q.append('topic', topic);
    if (this.token) q.set('token', this.token);
    for (const [k, v] of Object.entries(extra)) if (v) q.set(k, v);
    return q;
  }
}

// --- transports: each returns {close, subscribe?, unsubscribe?, send?} ---

function openWebSocket(rc) {
  const url = new URL(rc.paths.websocket, rc.base);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  if (rc.token) url.searchParams.set('token', rc.token);
  const ws = new rc.impl.WebSocket(url.href, 'ringcast.v1');
  let done = false;
  const send = (body) => {
    if (ws.readyState === 1) ws.send(JSON.stringify(body));
  };
  const subscribe = (topic) => {
    const sub = rc.topics.get(topic);
    const body = { op: 'subscribe', topic };
    if (sub && sub.epoch !== undefined) body.since = { offset: sub.offset, epoch: sub.epoch };
    if (sub?.joinLeave) body.join_leave = true;
    send(body);
  };
  const conn = {
    send,
    subscribe,
    unsubscribe: (topic) => send({ op: 'unsubscribe', topic }),
    resubscribe: (topic) => {
      send({ op: 'unsubscribe', topic });
      subscribe(topic);
    },
    close: () => {
      done = true;
      if (ws.readyState <= 1) ws.close(1000);
    },
  };
  ws.onopen = () => {
    if (done) return;
    if (ws.protocol !== 'ringcast.v1') {
      conn.close();
      rc.ended(conn, CLOSE.ABNORMAL, 'the server did not accept ringcast.v1');
      return;
    }
    rc.opened(conn);
    for (const topic of rc.topics.keys()) subscribe(topic);
  };
  ws.onmessage = (event) => {
    if (done || typeof event.data !== 'string') return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    rc.received(message);
  };
  // A close event always follows an error (and Node's `ws` throws an
  // error nobody listens to).
  ws.onerror = () => {};
  ws.onclose = (event) => {
    if (!done) rc.ended(conn, event.code || CLOSE.ABNORMAL, event.reason);
  };
  return conn;
}

function openSse(rc) {
  const url = new URL(rc.paths.sse, rc.base);
  const joinLeave = [...rc.topics.values()].some((sub) => sub.joinLeave);
  url.search = rc.query({ last_event_id: formatPositions(rc.positions()), join_leave: joinLeave && '1' }).toString();
  const es = new rc.impl.EventSource(url.href, { withCredentials: true });
  let done = false;
  const conn = {
    close: () => {
      done = true;
      es.close();
    },
    // A stream's topics are fixed: open another with the new set.
    subscribe: () => rc.ended(conn, CLOSE.GOING_AWAY, 'topics changed'),
    unsubscribe: () => rc.ended(conn, CLOSE.GOING_AWAY, 'topics changed'),
    resubscribe: () => rc.ended(conn, CLOSE.GOING_AWAY, 'join_leave asked'),
  };
  const json = (handler) => (event) => {
    if (done) return;
    try {
      handler(JSON.parse(event.data));
    } catch {
      // not JSON: ignored
    }
  };
  es.onopen = () => !done && rc.opened(conn);
  es.onmessage = json((message) => rc.received(message));
  es.addEventListener('subscribed', json((message) => rc.received(message)));
  // join_leave=1: presence events arrive as `event: join` / `event: leave`.
  for (const op of ['join', 'leave']) es.addEventListener(op, json((message) => rc.received({ ...message, op })));
  es.addEventListener('close', json((why) => rc.ended(conn, why.code, why.reason)));
  // EventSource retries by itself; the client's own backoff decides instead.
  es.onerror = () => !done && rc.ended(conn, CLOSE.ABNORMAL, 'stream failed');
  return conn;
}

function openPoll(rc) {
  let done = false;
  let controller = null;
  const conn = {
    close: () => {
      done = true;
      controller?.abort();
    },
    subscribe: () => controller?.abort(),
    unsubscribe: () => controller?.abort(),
  };
  (async () => {
    let opened = false;
    while (!done) {
      controller = new AbortController();
      const url = new URL(rc.paths.poll, rc.base);
      url.search = rc.query({ since: formatPositions(rc.positions()) }).toString();
      let body;
      try {
        const response = await rc.impl.fetch(url.href, {
          signal: controller.signal,
          credentials: 'include',
          cache: 'no-store',
        });
        if (response.status === 401) return rc.ended(conn, CLOSE.TOKEN_EXPIRED, 'unauthorized');
        if (response.status === 403) return rc.ended(conn, CLOSE.DISCONNECTED, 'forbidden');
        if (!response.ok) return rc.ended(conn, CLOSE.ABNORMAL, `HTTP ${response.status}`);
        body = await response.json();
      } catch (e) {
        if (done) return undefined;
        if (e.name === 'AbortError') continue; // topics changed
        return rc.ended(conn, CLOSE.ABNORMAL, String(e));
      }
      if (done) return undefined;
      if (!opened) {
        opened = true;
        rc.opened(conn);
      }
      for (const topic of body.reset || []) rc.emit('reset', topic);
      for (const message of body.messages || []) rc.received(message);
      for (const [topic, p] of parsePositions(body.next)) {
        const sub = rc.topics.get(topic);
        if (sub && (sub.epoch !== p.epoch || sub.offset < p.offset)) {
          sub.offset = p.offset;
          sub.epoch = p.epoch;
        }
      }
    }
    return undefined;
  })();
  return conn;
}
