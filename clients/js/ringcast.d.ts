// Types of ringcast.js (see README.md beside it).

/** Connection states, in the order a connection goes through them. */
export type State = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Transports, tried in this order: WebSocket (ringcast.v1), SSE, long-poll. */
export type Transport = 'websocket' | 'sse' | 'poll';

/** A topic's position: the offset of the last message received, in its epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** A ringcast.v1 delivery as the server sent it. */
export interface Delivery {
  op: 'message' | 'broadcast';
  topic?: string;
  offset?: number;
  epoch?: string;
  data?: unknown;
  b64data?: string;
}

/** A member of a topic with presence: one connection (WebSocket or SSE). */
export interface Member {
  /** The connection's id, unique across the cluster (opaque, e.g. "3f9a01bc.17"). */
  client: string;
  /** The JWT `sub` or the connect hook's `user`; null for an anonymous client. */
  user: string | null;
  /** The JWT `info` claim or the connect hook's `info`. */
  info: unknown | null;
}

/** A connection joined a topic (subscribe with `joinLeave`; never one's own join). */
export interface Join extends Member {
  op: 'join';
  topic: string;
  /** The user's first connection on the topic (cluster-wide); always true for an anonymous member. */
  first: boolean;
}

/** A connection left a topic. */
export interface Leave {
  op: 'leave';
  topic: string;
  client: string;
  user: string | null;
  /** The user's last connection on the topic left (fully offline there); always true for an anonymous member. */
  last: boolean;
}

/** Answer of `presence()`. */
export interface Presence {
  /** At most 1000 members; the HTTP API (`GET /presence`) pages the rest. */
  clients: Member[];
  /** More than 1000 members: `clients` is not all of them. */
  truncated: boolean;
}

/** Answer of `presenceStats()`. */
export interface PresenceStats {
  /** Members (connections). */
  clients: number;
  /** Distinct non-null users among them. */
  users: number;
}

export interface SubscribeOptions {
  /**
   * Ask for the topic's join and leave events (`"join_leave":true`, sent
   * again on every resubscribe). Implied by `onJoin` or `onLeave`.
   */
  joinLeave?: boolean;
  onJoin?: (join: Join) => void;
  onLeave?: (leave: Leave) => void;
}

/** Why the client closed: a WebSocket close code (4003 disconnected, 1000 by close()). */
export interface CloseInfo {
  code: number;
  reason?: string;
}

export interface Options {
  /** Token sent as the `token` query parameter (or use the `ringcast_token` cookie). */
  token?: string;
  /** Called after a 4001 (token expired) for a fresh token; the client then reconnects with it. */
  getToken?: () => string | Promise<string>;
  /** Topics subscribed from the start. */
  topics?: string[];
  /** Transports to try, in order (default all three). */
  transports?: Transport[];
  /** Endpoint paths (defaults /ws, /sse, /poll). */
  paths?: Partial<Record<Transport, string>>;
  /** Failed opens in a row before moving to the next transport (default 3). */
  fallbackAfter?: number;
  /** Milliseconds on a fallback transport before WebSocket is tried again (default 300000). */
  retryWebSocketAfter?: number;
  /** Random source in [0, 1) for the backoff's jitter (default Math.random). */
  random?: () => number;
  /** Clock in milliseconds (default Date.now). */
  now?: () => number;
  /** Implementations to use instead of the globals (Node: the `ws` package). */
  WebSocket?: unknown;
  EventSource?: unknown;
  fetch?: typeof fetch;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (timer: unknown) => void;
}

export interface Events {
  state: (state: State) => void;
  transport: (transport: Transport) => void;
  /** Every delivery: topic messages, messages to the user, broadcasts. */
  message: (data: unknown, message: Delivery) => void;
  /** The server took a subscription (also after each reconnect): a time to (re)load presence. */
  subscribed: (topic: string, reply: { op: 'subscribed'; topic: string; offset?: number; epoch?: string; recovered?: boolean }) => void;
  /** A join on any topic subscribed with `joinLeave`. */
  join: (join: Join) => void;
  /** A leave on any topic subscribed with `joinLeave`. */
  leave: (leave: Leave) => void;
  /** A topic could not be recovered after a reconnect (recovered:false): reload it. */
  reset: (topic: string) => void;
  close: (why: CloseInfo) => void;
  error: (error: Error) => void;
}

/** Reconnect delays in milliseconds: base 500, cap 30000, attempts reset after 60000 of stable connection. */
export const BACKOFF: Readonly<{ base: number; cap: number; stableAfter: number }>;
export const TRANSPORTS: readonly Transport[];
export const CLOSE: Readonly<{
  NORMAL: 1000; GOING_AWAY: 1001; ABNORMAL: 1006; TOKEN_EXPIRED: 4001; DISCONNECTED: 4003;
}>;

/** Full-jitter delay before attempt `attempt` (0-based): uniform in [0, min(cap, base * 2^attempt)). */
export function backoff(attempt: number, random?: () => number, base?: number, cap?: number): number;
/** `TOPIC:OFFSET:EPOCH` items joined by `;` (SSE ids, poll positions). */
export function formatPositions(positions: Map<string, Position>): string;
export function parsePositions(text: string): Map<string, Position>;

export class Ringcast {
  /** `url`: the server's WebSocket listener as http(s):// or ws(s)://. Connects at once. */
  constructor(url: string, options?: Options);
  readonly state: State;
  readonly transport: Transport;
  on<E extends keyof Events>(event: E, handler: Events[E]): () => void;
  /**
   * Subscribes; each delivery reaches `onMessage` once, in order; with
   * `joinLeave`, joins and leaves reach `onJoin`/`onLeave`. Returns a
   * function that removes these handlers (and unsubscribes when none is left).
   */
  subscribe(
    topic: string,
    onMessage?: ((data: unknown, message: Delivery) => void) | null,
    options?: SubscribeOptions,
  ): () => void;
  /** Client publish (WebSocket only; the server must allow it). Resolves with the offset. */
  publish(topic: string, data: unknown): Promise<number | undefined>;
  /** Calls the server's RPC hook (WebSocket only). Resolves with the result's data. */
  rpc(method: string, data?: unknown): Promise<unknown>;
  /**
   * The members of a subscribed topic with presence (WebSocket only).
   * Rejects with the server's reason: `forbidden` (not subscribed),
   * `presence is off for this topic`, `broker unavailable`.
   */
  presence(topic: string): Promise<Presence>;
  /** Members and distinct users of a subscribed topic with presence (WebSocket only); rejects as `presence`. */
  presenceStats(topic: string): Promise<PresenceStats>;
  /** The positions held, by topic. */
  positions(): Map<string, Position>;
  /** Closes for good (no reconnect). */
  close(): void;
}
