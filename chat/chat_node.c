/* chat: the node: configuration, the broker, the sweep (pings, pongs, stale sockets, expiry,
 * presence refresh, spread over time) and statistics. */
#include "chat/chat_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "chat"

/* ---- the sweep: pings, pongs, stale sockets, expiry, presence refresh ---- */

/* Every client is visited once per round, a slice of them per tick, so that no pass of the
 * loop pays for the whole population: at 19,000 connections a tick visits 380. Pings and
 * presence refreshes are due at jittered times from the connect on, so clients that connected
 * together (a node restart, a load balancer failover) do not all fall due in the same tick. */
#define SWEEP_TICK_MS 20
#define SWEEP_ROUND_MS 1000
#define TICKS_PER_ROUND (SWEEP_ROUND_MS / SWEEP_TICK_MS)
/* Users whose limiter state has decayed are freed over this period. */
#define USERS_ROUND_MS 10000
/* A client's error and rate-limit counts (CHAT_MAX_ERRORS) are per window of this length. */
#define ERROR_WINDOW_MS 10000

static uint64_t node_rand(chat_node_t *n) {
    /* xorshift64: spreading due times needs no secrecy. */
    uint64_t x = n->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return n->rng = x;
}

uint64_t chat__first_due(chat_node_t *n, uint64_t now, uint64_t period_ms) {
    /* Uniform in (period/2, period]: early is harmless for a ping or a refresh, late is not. */
    return now + period_ms - node_rand(n) % (period_ms / 2 + 1);
}

uint64_t chat__presence_refresh_ms(const chat_node_t *n) {
    /* Presence entries in a shared broker expire unless their node refreshes them, so the users
     * of a node that died disappear on their own: three refreshes per TTL. */
    uint64_t ms = (uint64_t)n->cfg.presence_ttl_s * 1000 / 3;
    return ms ? ms : 1000;
}

bool chat__error_window(chat_client_t *c, uint64_t now) {
    if (now - c->window_ms >= ERROR_WINDOW_MS) {
        c->window_ms = now;
        c->errors = 0;
        c->limited = 0;
        return true;
    }
    return false;
}

static void presence_refresh(chat_node_t *n, chat_client_t *c) {
    for (chat_sub_t *s = c->subs; s; s = s->next) {
        if (!s->presence_added)
            continue;
        clu_chan_opts_t o = chat__chan_opts(n, s->ch->ns);
        clu_presence_t e = {c->id, c->user->name, s->info, s->info_len};
        clu_presence_add(n->broker, s->ch->name, &o, &e);
    }
}

static void sweep_client(chat_node_t *n, chat_client_t *c, uint64_t now, int64_t wall) {
    if (c->leaves)
        chat__leaves_flush(c, now, false);
    if (c->state == CL_CLOSING)
        return;
    if (c->state != CL_CONNECTED) {
        if (now - c->created_ms >= (uint64_t)n->cfg.stale_timeout_s * 1000)
            chat__client_close(c, CORE_DISCONNECT_STALE);
        return;
    }
    if (c->has_exp && wall > c->exp) {
        chat__client_close(c, CORE_DISCONNECT_EXPIRED);
        return;
    }
    for (chat_sub_t *s = c->subs; s; s = s->next)
        if (s->exp && wall > s->exp) {
            chat__client_close(c, CORE_DISCONNECT_SUB_EXPIRED);
            return;
        }
    if (c->pong_deadline_ms && now >= c->pong_deadline_ms) {
        chat__client_close(c, CORE_DISCONNECT_NO_PONG);
        return;
    }
    if (now >= c->next_ping_ms) {
        c->t->send(c->tctx, n->ping[c->codec->index]);
        c->next_ping_ms = now + (uint64_t)n->cfg.ping_interval_s * 1000;
        if (!c->pong_deadline_ms)
            c->pong_deadline_ms = now + (uint64_t)n->cfg.pong_timeout_s * 1000;
    }
    if (now >= c->presence_due_ms) {
        presence_refresh(n, c);
        /* From the due time, not from this visit: a visit comes up to a round late, and the
         * lateness must not add up against the TTL. */
        uint64_t period = chat__presence_refresh_ms(n);
        c->presence_due_ms += period;
        if (c->presence_due_ms <= now)
            c->presence_due_ms = now + period;
    }
}

void chat__sweep_step(chat_node_t *n, uint64_t now, int64_t wall) {
    /* ceil(clients / ticks): a round visits everyone even as the population changes. */
    uint32_t quota = (n->nall + TICKS_PER_ROUND - 1) / TICKS_PER_ROUND;
    while (quota-- > 0) {
        if (n->sweep_at == &n->all)
            n->sweep_at = n->all.next;
        if (n->sweep_at == &n->all)
            break;
        core_list_t *it = n->sweep_at;
        /* The cursor moves first: a client closed by its visit may be freed. */
        n->sweep_at = it->next;
        sweep_client(n, CORE_CONTAINER_OF(it, chat_client_t, link), now, wall);
    }
    if (++n->sweep_ticks % TICKS_PER_ROUND == 0 && n->stalled > 0) {
        /* Fills that failed for a passing reason (a script error, Redis busy) while nothing
         * else would start them again: once a round until they get through. Only channels
         * whose fill failed are touched, which is rare. */
        core_map_iter_t it = 0;
        void *v;
        while (core_map_next(n->channels, &it, NULL, &v)) {
            chat_channel_t *ch = v;
            if (ch->stalled)
                chat__channel_fill(n, ch);
        }
    }
    /* Users left without connections keep their limiter state until it has decayed. */
    size_t users_quota = (core_map_size(n->users) + USERS_ROUND_MS / SWEEP_TICK_MS - 1) /
                         (USERS_ROUND_MS / SWEEP_TICK_MS);
    void *v;
    while (users_quota-- > 0) {
        if (!core_map_next(n->users, &n->users_at, NULL, &v)) {
            n->users_at = 0;
            break;
        }
        chat__user_maybe_free(n, v, (double)now);
    }
}

static void sweep_cb(uv_timer_t *t) {
    chat__sweep_step(t->data, core_now_ms(), core_wall_s());
}

/* ---- node ---- */

chat_node_t *chat_node_new(uv_loop_t *loop, const chat_config_t *cfg) {
    chat_node_t *n = core_calloc(1, sizeof *n);
    n->loop = loop;
    n->cfg = *cfg;
    /* Keyed by the client's id, the user's and the channel's name, which live in the values. */
    n->clients = core_map_new_borrowed();
    n->users = core_map_new_borrowed();
    n->channels = core_map_new_borrowed();
    n->surveys = core_map_new_borrowed();
    core_list_init(&n->all);
    n->sweep_at = &n->all;
    core_random(&n->rng, sizeof n->rng);
    n->rng |= 1; /* xorshift's state must not be 0 */
    const chat_codec_t *codecs[CHAT_CODEC_COUNT] = {&chat__codec_json, &chat__codec_pb};
    for (int i = 0; i < CHAT_CODEC_COUNT; i++) {
        core_str_t ping = {0};
        codecs[i]->ping(&ping);
        n->ping[i] = core_buf_from(0, ping.ptr, ping.len);
        core_str_free(&ping);
    }
    uv_timer_init(loop, &n->sweep);
    n->sweep.data = n;
    uv_timer_start(&n->sweep, sweep_cb, SWEEP_TICK_MS, SWEEP_TICK_MS);
    chat__rpc_init(n);
    return n;
}

void chat_node_set_max_conns_per_user(chat_node_t *n, uint32_t max) {
    n->cfg.max_conns_per_user = max;
}

void chat_node_set_cluster_size(chat_node_t *n, uint32_t nodes) {
    n->cluster_nodes = nodes;
}

uint32_t chat_node_max_conns_per_user(const chat_node_t *n) {
    return n->cfg.max_conns_per_user;
}

void chat_node_set_broker(chat_node_t *n, clu_broker_t *b) {
    n->broker = b;
    /* The server API's acts on users reach every node through this channel. */
    if (b)
        clu_subscribe(b, CHAT_CONTROL_CHANNEL);
}

void chat_node_close_all(chat_node_t *n, int code, const char *reason) {
    for (core_list_t *it = n->all.next; it != &n->all; it = it->next)
        chat__client_close_reason(CORE_CONTAINER_OF(it, chat_client_t, link), code, reason);
}

size_t chat_node_close_some(chat_node_t *n, size_t max, int code, const char *reason) {
    size_t closed = 0;
    for (core_list_t *it = n->all.next, *next; it != &n->all && closed < max; it = next) {
        next = it->next;
        chat_client_t *c = CORE_CONTAINER_OF(it, chat_client_t, link);
        if (c->state == CL_CLOSING)
            continue;
        chat__client_close_reason(c, code, reason);
        closed++;
    }
    return closed;
}

static void node_timer_closed(uv_handle_t *h) {
    chat_node_t *n = h->data;
    core_map_iter_t it = 0;
    void *v;
    while (core_map_next(n->users, &it, NULL, &v))
        chat__user_free(v);
    core_map_free(n->users);
    core_map_free(n->clients);
    core_map_free(n->channels);
    core_map_free(n->surveys);
    chat__rpc_free(n);
    for (int i = 0; i < CHAT_CODEC_COUNT; i++)
        core_buf_unref(n->ping[i]);
    void (*done)(void *) = n->close_done;
    void *ud = n->close_ud;
    free(n);
    if (done)
        done(ud);
}

void chat_node_close(chat_node_t *n, void (*done)(void *), void *ud) {
    /* RPC handlers answer every call before the node goes (their owners close first); a call
     * left over would be answered into freed memory. */
    CORE_ASSERT(n->rpc_calls == 0);
    n->close_done = done;
    n->close_ud = ud;
    chat__surveys_close(n);
    uv_close((uv_handle_t *)&n->sweep, node_timer_closed);
}

void chat_node_stats(const chat_node_t *n, chat_stats_t *out) {
    *out = n->st;
}
