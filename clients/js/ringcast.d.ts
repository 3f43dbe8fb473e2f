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
  /** Subscribes; each delivery reaches `onMessage` once, in order. Returns an unsubscribe function. */
  subscribe(topic: string, onMessage?: (data: unknown, message: Delivery) => void): () => void;
  /** Client publish (WebSocket only; the server must allow it). Resolves with the offset. */
  publish(topic: string, data: unknown): Promise<number | undefined>;
  /** Calls the server's RPC hook (WebSocket only). Resolves with the result's data. */
  rpc(method: string, data?: unknown): Promise<unknown>;
  /** The positions held, by topic. */
  positions(): Map<string, Position>;
  /** Closes for good (no reconnect). */
  close(): void;
}
