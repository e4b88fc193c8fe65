// One WebSocket to /ws (SPEC section 5), reconnected with backoff; each
// subscription resumes where it left off (since_seq + epoch) after a reconnect.

const MIN_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 5000;

export class Live {
  /**
   * @param {() => string} url  the /ws URL (read at every connect: the token may change)
   * @param {(state: string) => void} onState  "connecting", "open", "closed"
   */
  constructor(url, onState) {
    this.url = url;
    this.onState = onState;
    this.subs = new Map(); // topic -> subscription (one per topic: the page never needs two)
    this.ws = null;
    this.backoff = MIN_BACKOFF_MS;
    this.timer = null;
    this.stopped = true;
    this.nextId = 1;
    this.connects = 0;
  }

  start() {
    this.stopped = false;
    if (!this.ws) this.connect();
  }

  /** Close the socket and stay closed until start() (the token prompt is up). */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close();
    }
    this.onState("closed");
  }

  /** Reconnect now (a new token). */
  restart() {
    this.stop();
    this.start();
  }

  connect() {
    clearTimeout(this.timer);
    this.onState("connecting");
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.backoff = MIN_BACKOFF_MS;
      this.connects += 1;
      this.onState("open");
      for (const sub of this.subs.values()) {
        this.sendSubscribe(sub);
        if (this.connects > 1) sub.handlers.onReconnect?.();
      }
    };
    ws.onmessage = (event) => {
      if (this.ws === ws) this.dispatch(event.data);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onState("closed");
      if (this.stopped) return;
      this.timer = setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    };
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  /**
   * Subscribe to `topic` (only `key`). With `resume`, the first subscribe asks
   * for the records after `sinceSeq` and every reconnect for those after the
   * last seq seen, under the epoch the server named.
   * Handlers: onRecords(records), onReset(epoch), onGap(message), onError(text),
   * onReconnect() (subscribed again after the socket was lost).
   */
  subscribe({ topic, key, policy, resume = false, sinceSeq = null, ...handlers }) {
    const previous = this.subs.get(topic);
    if (previous) this.unsubscribe(previous);
    const sub = { topic, key, policy, resume, lastSeq: sinceSeq, epoch: null, id: this.nextId++, handlers };
    this.subs.set(topic, sub);
    this.sendSubscribe(sub);
    return sub;
  }

  unsubscribe(sub) {
    if (this.subs.get(sub.topic) !== sub) return;
    this.subs.delete(sub.topic);
    this.send({ action: "unsubscribe", topic: sub.topic, key: sub.key });
  }

  sendSubscribe(sub) {
    const message = { action: "subscribe", topic: sub.topic, id: sub.id };
    if (sub.key) message.key = sub.key;
    if (sub.policy) message.policy = sub.policy;
    if (sub.resume && sub.lastSeq !== null) {
      message.since_seq = sub.lastSeq;
      if (sub.epoch) message.epoch = sub.epoch;
    }
    this.send(message);
  }

  dispatch(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    const sub = this.subs.get(message.topic);
    if (message.type === "error") {
      for (const s of this.subs.values()) if (s.id === message.id) s.handlers.onError?.(message.error);
      return;
    }
    if (!sub) return;
    switch (message.type) {
      case "subscribed":
        if (message.id === sub.id) sub.epoch = message.epoch;
        break;
      case "reset":
        // The topic's sequence restarted: the server replays from its oldest record.
        sub.epoch = message.epoch;
        sub.lastSeq = 0;
        sub.handlers.onReset?.(message.epoch);
        break;
      case "gap":
        if (!message.key || message.key === sub.key) sub.handlers.onGap?.(message);
        break;
      case "records": {
        // Pushes of a subscription just replaced (another key) may still arrive: filter.
        const records = sub.key ? message.records.filter((r) => r.key === sub.key) : message.records;
        for (const r of records) if (r.seq > (sub.lastSeq ?? 0)) sub.lastSeq = r.seq;
        if (records.length) sub.handlers.onRecords?.(records);
        break;
      }
      default:
        break;
    }
  }
}
