// The SDK form the integration tests speak: centrifuge-js with JSON (default), or its
// build/protobuf bundle when CHAT_TEST_PROTOCOL=protobuf, so that the SDK suite runs twice
// (scripts/test). The Protobuf SDK carries data as bytes; chatd puts JSON text in them (what a
// JSON client sends and gets), so the adapter below encodes the tests' objects to JSON bytes on
// the way out and decodes bytes on the way in, and the tests read the same values in both forms.
// Nothing else is changed: commands, replies and pushes go through the SDK's own Protobuf codec.
import { Centrifuge as CentrifugeJson } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';

export const PROTOCOL = process.env.CHAT_TEST_PROTOCOL === 'protobuf' ? 'protobuf' : 'json';

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

/** A test's value as the bytes the Protobuf SDK sends: JSON text. */
export function toBytes(v) {
  if (v === undefined || v instanceof Uint8Array) return v;
  return enc.encode(JSON.stringify(v));
}

/** Bytes from the Protobuf SDK as the value a JSON client reads: parsed JSON text. */
export function fromBytes(v) {
  if (!(v instanceof Uint8Array)) return v;
  if (v.length === 0) return undefined;
  const text = dec.decode(v);
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function info(i) {
  if (!i) return i;
  return { ...i, connInfo: fromBytes(i.connInfo), chanInfo: fromBytes(i.chanInfo) };
}

function pub(p) {
  return p ? { ...p, data: fromBytes(p.data), info: info(p.info) } : p;
}

/** An event context as a JSON client gets it. */
function eventCtx(ev, ctx) {
  if (!ctx || typeof ctx !== 'object') return ctx;
  if (ev === 'publication') return pub(ctx);
  if (ev === 'join' || ev === 'leave') return { ...ctx, info: info(ctx.info) };
  if ((ev === 'subscribed' || ev === 'connected') && ctx.data instanceof Uint8Array) return { ...ctx, data: fromBytes(ctx.data) };
  return ctx;
}

function wrapEmit(obj) {
  const emit = obj.emit.bind(obj);
  obj.emit = (ev, ctx, ...rest) => emit(ev, eventCtx(ev, ctx), ...rest);
}

function historyResult(r) {
  return r && { ...r, publications: (r.publications || []).map(pub) };
}

function presenceResult(r) {
  if (!r || !r.clients) return r;
  const clients = {};
  for (const [k, v] of Object.entries(r.clients)) clients[k] = info(v);
  return { ...r, clients };
}

function wrapSub(sub) {
  wrapEmit(sub);
  const publish = sub.publish.bind(sub);
  sub.publish = (data) => publish(toBytes(data));
  const history = sub.history.bind(sub);
  sub.history = (opts) => history(opts).then(historyResult);
  const presence = sub.presence.bind(sub);
  sub.presence = () => presence().then(presenceResult);
  return sub;
}

/** A client of the run's form (or of `protocol`); with Protobuf, its data in and out as JSON
 * values. */
export function makeClient(url, config, protocol = PROTOCOL) {
  if (protocol === 'json') return new CentrifugeJson(url, config);
  const client = new CentrifugeProtobuf(url, config);
  wrapEmit(client);
  const publish = client.publish.bind(client);
  client.publish = (channel, data) => publish(channel, toBytes(data));
  const rpc = client.rpc.bind(client);
  client.rpc = (method, data) => rpc(method, toBytes(data)).then((r) => r && { ...r, data: fromBytes(r.data) });
  const history = client.history.bind(client);
  client.history = (channel, opts) => history(channel, opts).then(historyResult);
  const presence = client.presence.bind(client);
  client.presence = (channel) => presence(channel).then(presenceResult);
  const newSubscription = client.newSubscription.bind(client);
  client.newSubscription = (channel, opts) => wrapSub(newSubscription(channel, opts && opts.data !== undefined ? { ...opts, data: toBytes(opts.data) } : opts));
  return client;
}

/** The varint-length-delimited messages of a Protobuf frame, as Buffers. */
export function splitDelimited(frame) {
  const b = Buffer.from(frame);
  const out = [];
  for (let i = 0; i < b.length;) {
    let len = 0;
    let shift = 0;
    for (;;) {
      const x = b[i++];
      len |= (x & 0x7f) << shift;
      if (!(x & 0x80)) break;
      shift += 7;
    }
    out.push(b.subarray(i, i + len));
    i += len;
  }
  return out;
}

/** Server pings in one WebSocket message: `{}` lines (JSON), empty Replies (Protobuf, a zero
 * length prefix). */
export function countPings(data, isBinary) {
  if (!isBinary) return data.toString().split('\n').filter((l) => l.trim() === '{}').length;
  return splitDelimited(data).filter((m) => m.length === 0).length;
}

export { CentrifugeJson as Centrifuge };
