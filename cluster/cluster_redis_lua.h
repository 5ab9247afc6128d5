/* cluster_redis_lua: the Lua scripts of the Redis broker (cluster_redis_call.c), kept apart so the
 * C reads as C. Every script touches only keys carrying the channel's hash tag, so a channel stays
 * on one Redis Cluster slot.
 *
 * Keys of one channel C:
 *   chat.meta.{C}      hash  epoch, top (offset of the newest publication in this epoch)
 *   chat.history.{C}   stream, entry id 0-<offset>, fields d (data) and i (info, optional)
 *   chat.presence.{C}  hash  client id -> user NUL info
 *   chat.presexp.{C}   zset  client id scored by its expiry time in ms (+inf: never)
 * Pub/sub channel: chat.pub.{C}.
 *
 * Keys of the cluster as a whole:
 *   {chat}.nodes       hash  node id -> the node's info JSON
 *   {chat}.nodes.exp   zset  node id scored by its expiry time in ms
 *   chat.rate.{K}      string  the GCRA theoretical arrival time (µs) of limiter K, named by
 *                      the node as "<limit>:<user>" */
#ifndef CLUSTER_CLUSTER_REDIS_LUA_H
#define CLUSTER_CLUSTER_REDIS_LUA_H

/* KEYS: meta, history, persist stream. ARGV: history_size, ttl_ms (0 = none), epoch candidate,
 * pub/sub channel, chat channel, data, info, has_info ('1'/'0'), persist cap (0 = persistence
 * off), the publisher's plan ('' = none). Returns {offset, epoch}, or the error PERSISTFULL while
 * the persist stream holds cap entries (checked first: a refused publish leaves no trace). With
 * persistence on the meta hash never expires: the database keeps history past the stream, and a new
 * epoch would hide it. The epoch candidate comes from the caller because the script must not depend
 * on Lua's PRNG. A missing meta hash means the channel's history is gone (expired, flushed, Redis
 * restarted without persistence): a fresh epoch tells readers their positions are meaningless now,
 * and any stray stream is dropped so offsets can restart at 1 without XADD refusing smaller ids.
 * MAXLEN is exact, not ~: history_size is a promise to clients (the memory broker keeps exactly
 * that many), and exact trimming of a small stream costs little. The envelope is built here
 * with cmsgpack because offset and epoch are only known inside the script. The offset is made a
 * string once, as an integer: Lua's own number-to-string conversion formats a double (%.14g),
 * which cost a tenth of the script's time. */
static const char clu_redis_lua_publish[] =
    "local cap = tonumber(ARGV[9])\n"
    "if cap > 0 and redis.call('XLEN', KEYS[3]) >= cap then\n"
    "  return redis.error_reply('PERSISTFULL persist stream full')\n"
    "end\n"
    "local epoch = redis.call('HGET', KEYS[1], 'epoch')\n"
    "if not epoch then\n"
    "  epoch = ARGV[3]\n"
    "  redis.call('DEL', KEYS[2])\n"
    "  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)\n"
    "end\n"
    "local off = redis.call('HINCRBY', KEYS[1], 'top', 1)\n"
    "local offs = string.format('%d', off)\n"
    "local id = '0-' .. offs\n"
    "if ARGV[8] == '1' then\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], id, 'd', ARGV[6], 'i', ARGV[7])\n"
    "else\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], id, 'd', ARGV[6])\n"
    "end\n"
    "local ttl = tonumber(ARGV[2])\n"
    "if ttl > 0 then\n"
    "  if cap == 0 then redis.call('PEXPIRE', KEYS[1], ttl) end\n"
    "  redis.call('PEXPIRE', KEYS[2], ttl)\n"
    "end\n"
    "if cap > 0 then\n"
    "  redis.call('PERSIST', KEYS[1])\n"
    "  if ARGV[8] == '1' then\n"
    "    redis.call('XADD', KEYS[3], '*', 'c', ARGV[5], 'e', epoch, 'o', offs, 'd', ARGV[6],\n"
    "               'p', ARGV[10], 'i', ARGV[7])\n"
    "  else\n"
    "    redis.call('XADD', KEYS[3], '*', 'c', ARGV[5], 'e', epoch, 'o', offs, 'd', ARGV[6],\n"
    "               'p', ARGV[10])\n"
    "  end\n"
    "end\n"
    "local env = {v = 1, type = 'pub', channel = ARGV[5], offset = off, epoch = epoch,\n"
    "             data = ARGV[6]}\n"
    "if ARGV[8] == '1' then env.info = ARGV[7] end\n"
    "redis.call('PUBLISH', ARGV[4], cmsgpack.pack(env))\n"
    "return {off, epoch}\n";

/* KEYS: meta, history. ARGV: has_since, since_offset, since_epoch, limit (capped, >= 0), reverse,
 * epoch candidate, ttl_ms. Returns {status (0 ok, 1 unrecoverable), top, epoch,
 * then offset, data, info-or-nil per publication}. One script so the epoch, the window and the
 * entries are read atomically. A channel without meta gets its epoch here (with the history
 * TTL), so a reader that saw an empty channel can still recover once publications start. */
static const char clu_redis_lua_history[] =
    "local epoch = redis.call('HGET', KEYS[1], 'epoch')\n"
    "local top = 0\n"
    "if not epoch then\n"
    "  epoch = ARGV[6]\n"
    "  redis.call('DEL', KEYS[2])\n"
    "  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0)\n"
    "  local ttl = tonumber(ARGV[7])\n"
    "  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end\n"
    "else\n"
    "  top = tonumber(redis.call('HGET', KEYS[1], 'top'))\n"
    "end\n"
    "local first = top + 1\n"
    "local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)\n"
    "if #head > 0 then first = tonumber(string.sub(head[1][1], 3)) end\n"
    "local has = ARGV[1] == '1'\n"
    "local since = tonumber(ARGV[2])\n"
    "local limit = tonumber(ARGV[4])\n"
    "local rev = ARGV[5] == '1'\n"
    "local res = {0, top, epoch}\n"
    "if has and (ARGV[3] ~= epoch or (not rev and since + 1 < first) or since > top) then\n"
    "  res[1] = 1\n"
    "  return res\n"
    "end\n"
    "if limit == 0 then return res end\n"
    "local entries\n"
    "if rev then\n"
    "  local hi = '+'\n"
    "  if has then\n"
    "    if since <= 1 then return res end\n"
    "    hi = '0-' .. (since - 1)\n"
    "  end\n"
    "  entries = redis.call('XREVRANGE', KEYS[2], hi, '-', 'COUNT', limit)\n"
    "else\n"
    "  local lo = '-'\n"
    "  if has then lo = '0-' .. (since + 1) end\n"
    "  entries = redis.call('XRANGE', KEYS[2], lo, '+', 'COUNT', limit)\n"
    "end\n"
    "for _, e in ipairs(entries) do\n"
    "  local d, i = '', false\n"
    "  local f = e[2]\n"
    "  for k = 1, #f, 2 do\n"
    "    if f[k] == 'd' then d = f[k + 1] elseif f[k] == 'i' then i = f[k + 1] end\n"
    "  end\n"
    "  table.insert(res, tonumber(string.sub(e[1], 3)))\n"
    "  table.insert(res, d)\n"
    "  table.insert(res, i)\n"
    "end\n"
    "return res\n";

/* KEYS: presence hash, expiry zset. ARGV: client, value, ttl_ms (0 = never expires), pub/sub
 * channel, chat channel, join_leave ('1'/'0'). Server TIME rather than the node's clock, so
 * nodes with skewed clocks agree on expiry. The keys themselves expire with the newest entry so
 * an abandoned channel leaves nothing behind. Entries that expired (their node died) are removed
 * here, each by exactly one refresh, which announces its leave to every node. */
static const char clu_redis_lua_presence_add[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local ttl = tonumber(ARGV[3])\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "if ttl > 0 then\n"
    "  redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])\n"
    "  local cur = redis.call('PTTL', KEYS[1])\n"
    "  if (cur == -1 and redis.call('HLEN', KEYS[1]) == 1) or (cur >= 0 and cur < ttl) then\n"
    "    redis.call('PEXPIRE', KEYS[1], ttl)\n"
    "    redis.call('PEXPIRE', KEYS[2], ttl)\n"
    "  end\n"
    "else\n"
    "  redis.call('ZADD', KEYS[2], '+inf', ARGV[1])\n"
    "  redis.call('PERSIST', KEYS[1])\n"
    "  redis.call('PERSIST', KEYS[2])\n"
    "end\n"
    "local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)\n"
    "for _, c in ipairs(gone) do\n"
    "  local v = redis.call('HGET', KEYS[1], c)\n"
    "  redis.call('HDEL', KEYS[1], c)\n"
    "  redis.call('ZREM', KEYS[2], c)\n"
    "  local nul = v and string.find(v, '\\0', 1, true)\n"
    "  if ARGV[6] == '1' and nul then\n"
    "    redis.call('PUBLISH', ARGV[4], cmsgpack.pack({v = 1, type = 'leave', channel = ARGV[5],\n"
    "                                                 info = string.sub(v, nul + 1)}))\n"
    "  end\n"
    "end\n"
    "return 1\n";

/* KEYS: presence hash, expiry zset. Returns HGETALL of the entries that have not expired.
 * Expired ones are left for a refresh (presence_add) to remove, which also announces their
 * leave: a read must not take that away. */
static const char clu_redis_lua_presence_get[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "local res = {}\n"
    "for i = 1, #all, 2 do\n"
    "  local exp = redis.call('ZSCORE', KEYS[2], all[i])\n"
    "  if not exp or exp == 'inf' or tonumber(exp) > now then\n"
    "    res[#res + 1] = all[i]\n"
    "    res[#res + 1] = all[i + 1]\n"
    "  end\n"
    "end\n"
    "return res\n";

/* KEYS: nodes hash, expiry zset. ARGV: node id, info JSON, ttl_ms (0: the node leaves).
 * Announces the node, drops nodes whose announcement expired and returns HGETALL of the live
 * ones. Redis's clock, not the nodes': expiry must not depend on how well the nodes' clocks
 * agree. */
static const char clu_redis_lua_heartbeat[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "if tonumber(ARGV[3]) == 0 then\n"
    "  redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "  redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "else\n"
    "  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])\n"
    "end\n"
    "local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)\n"
    "for _, n in ipairs(gone) do redis.call('HDEL', KEYS[1], n) end\n"
    "if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end\n"
    "return redis.call('HGETALL', KEYS[1])\n";

/* KEYS: the limiter's key. ARGV: interval_us, burst. GCRA as core_gcra_take does it locally:
 * returns 0 (allowed, token taken) or the microseconds until a token is available. Times are
 * Redis's clock in microseconds; Lua numbers are doubles, exact up to 2^53 µs (285 years), and
 * written with %.0f because Lua 5.1's tostring keeps only 14 digits. The key expires when the
 * bucket is full again, so idle users cost nothing. */
static const char clu_redis_lua_rate[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local interval = tonumber(ARGV[1])\n"
    "local burst = tonumber(ARGV[2])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0\n"
    "if tat < now then tat = now end\n"
    "local allow_at = tat + interval - interval * burst\n"
    "if now < allow_at then return allow_at - now end\n"
    "local new = tat + interval\n"
    "redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX',\n"
    "           math.floor((new - now) / 1000) + 1)\n"
    "return 0\n";

/* KEYS: semaphores (sorted sets: lease -> expiry in ms on Redis's clock). ARGV: lease, ttl_ms,
 * then one limit per key. Expired leases are dropped first, so a killed node's slots come back
 * within the TTL. All or none: returns 1 when the lease now holds a slot in every key (a lease
 * that already holds one is extended), 0 when any key is full. */
static const char clu_redis_lua_sem_acquire[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local lease, ttl = ARGV[1], tonumber(ARGV[2])\n"
    "for i, k in ipairs(KEYS) do redis.call('ZREMRANGEBYSCORE', k, '-inf', now) end\n"
    "for i, k in ipairs(KEYS) do\n"
    "  if not redis.call('ZSCORE', k, lease) and\n"
    "     redis.call('ZCARD', k) >= tonumber(ARGV[2 + i]) then return 0 end\n"
    "end\n"
    "for i, k in ipairs(KEYS) do\n"
    "  redis.call('ZADD', k, string.format('%.0f', now + ttl), lease)\n"
    "  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end\n"
    "end\n"
    "return 1\n";

/* KEYS: semaphores. ARGV: lease, ttl_ms. Extends the lease where it still holds a slot;
 * returns 0 when it had expired anywhere (its slot may be someone else's now). */
static const char clu_redis_lua_sem_renew[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local lease, ttl = ARGV[1], tonumber(ARGV[2])\n"
    "local held = 1\n"
    "for i, k in ipairs(KEYS) do\n"
    "  local s = redis.call('ZSCORE', k, lease)\n"
    "  if not s or tonumber(s) <= now then\n"
    "    held = 0\n"
    "    redis.call('ZREM', k, lease)\n"
    "  else\n"
    "    redis.call('ZADD', k, string.format('%.0f', now + ttl), lease)\n"
    "    if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end\n"
    "  end\n"
    "end\n"
    "return held\n";

/* KEYS: semaphores. ARGV: lease. Idempotent. */
static const char clu_redis_lua_sem_release[] =
    "for i, k in ipairs(KEYS) do redis.call('ZREM', KEYS[i], ARGV[1]) end\n"
    "return 1\n";

/* KEYS: one allowance counter. ARGV: amount, limit (<= 0: unchecked), expire_at (Unix s).
 * Returns {allowed, value}: a positive amount that would take the counter past the limit is
 * refused (nothing added); a refund never takes it below 0. */
static const char clu_redis_lua_counter[] =
    "local amount, limit = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local v = tonumber(redis.call('GET', KEYS[1]) or '0') or 0\n"
    "if amount > 0 and limit > 0 and v + amount > limit then return {0, v} end\n"
    "v = v + amount\n"
    "if v < 0 then v = 0 end\n"
    "redis.call('SET', KEYS[1], string.format('%.0f', v))\n"
    "redis.call('EXPIREAT', KEYS[1], ARGV[3])\n"
    "return {1, v}\n";

/* KEYS: one shared deadline. ARGV: until (Unix ms). Raises it, never lowers it; it expires
 * when it passes. */
static const char clu_redis_lua_deadline_raise[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local u = tonumber(ARGV[1])\n"
    "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0\n"
    "if u > cur and u > now then\n"
    "  redis.call('SET', KEYS[1], string.format('%.0f', u), 'PX', u - now)\n"
    "end\n"
    "return 1\n";

/* KEYS: one shared deadline. Removes it. */
static const char clu_redis_lua_deadline_clear[] = "redis.call('DEL', KEYS[1])\n"
                                                   "return 1\n";

/* KEYS: shared deadlines. Returns their values, 0 for none. */
static const char clu_redis_lua_deadline_get[] =
    "local out = {}\n"
    "for i, k in ipairs(KEYS) do out[i] = tonumber(redis.call('GET', k) or '0') or 0 end\n"
    "return out\n";

/* KEYS: meta hash, history stream. Drops the stored publications and keeps the position: returns
 * {top, epoch} ({0, ""} for a channel never published to). */
static const char clu_redis_lua_history_remove[] =
    "redis.call('DEL', KEYS[2])\n"
    "local m = redis.call('HMGET', KEYS[1], 'top', 'epoch')\n"
    "return {tonumber(m[1] or 0), m[2] or ''}\n";

/* KEYS: persist stream. Returns {length, id of the oldest entry or '', server time in ms}. */
static const char clu_redis_lua_persist_info[] =
    "local n = redis.call('XLEN', KEYS[1])\n"
    "local h = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)\n"
    "local t = redis.call('TIME')\n"
    "local first = ''\n"
    "if #h > 0 then first = h[1][1] end\n"
    "return {n, first, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}\n";

#endif
