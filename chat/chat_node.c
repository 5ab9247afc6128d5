/* chat: the node: configuration, the broker, the sweep timer (pings, pongs, stale sockets, expiry,
 * presence refresh) and statistics. */
#include "chat/chat_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "chat"

/* ---- timers: pings, pongs, stale sockets, expiry ---- */

static void sweep_cb(uv_timer_t *t) {
    chat_node_t *n = t->data;
    uint64_t now = core_now_ms();
    int64_t wall = core_wall_s();
    uint64_t stale = (uint64_t)n->cfg.stale_timeout_s * 1000;
    /* Error counts are per 10 s window (CHAT_MAX_ERRORS). */
    bool new_window = ++n->sweep_ticks % 10 == 0;
    for (core_list_t *it = n->all.next; it != &n->all; it = it->next) {
        chat_client_t *c = CORE_CONTAINER_OF(it, chat_client_t, link);
        if (new_window) {
            c->errors = 0;
            c->limited = 0;
        }
        if (c->leaves)
            chat__leaves_flush(c, now, false);
        if (c->state == CL_CLOSING)
            continue;
        if (c->state != CL_CONNECTED) {
            if (now - c->created_ms >= stale)
                chat__client_close(c, CORE_DISCONNECT_STALE);
            continue;
        }
        if (c->has_exp && wall > c->exp) {
            chat__client_close(c, CORE_DISCONNECT_EXPIRED);
            continue;
        }
        bool sub_expired = false;
        for (chat_sub_t *s = c->subs; s; s = s->next)
            if (s->exp && wall > s->exp)
                sub_expired = true;
        if (sub_expired) {
            chat__client_close(c, CORE_DISCONNECT_SUB_EXPIRED);
            continue;
        }
        if (c->pong_deadline_ms && now >= c->pong_deadline_ms) {
            chat__client_close(c, CORE_DISCONNECT_NO_PONG);
            continue;
        }
        if (now >= c->next_ping_ms) {
            c->t->send(c->tctx, n->ping);
            c->next_ping_ms = now + (uint64_t)n->cfg.ping_interval_s * 1000;
            if (!c->pong_deadline_ms)
                c->pong_deadline_ms = now + (uint64_t)n->cfg.pong_timeout_s * 1000;
        }
    }
    if (n->stalled > 0) {
        /* Fills that failed for a passing reason (a script error, Redis busy) while nothing
         * else would start them again: once a second until they get through. */
        core_map_iter_t it = 0;
        void *v;
        while (core_map_next(n->channels, &it, NULL, &v)) {
            chat_channel_t *ch = v;
            if (ch->stalled)
                chat__channel_fill(n, ch);
        }
    }
    uint32_t refresh = n->cfg.presence_ttl_s / 3 ? n->cfg.presence_ttl_s / 3 : 1;
    if (n->sweep_ticks % refresh == 0) {
        /* Presence entries in a shared broker expire unless their node refreshes them, so the
         * users of a node that died disappear on their own. */
        core_map_iter_t it = 0;
        void *v;
        while (core_map_next(n->channels, &it, NULL, &v)) {
            chat_channel_t *ch = v;
            clu_chan_opts_t o = chat__chan_opts(n, ch->ns);
            for (uint32_t i = 0; i < ch->n; i++) {
                chat_sub_t *sub = ch->subs[i];
                if (!sub->presence_added)
                    continue;
                clu_presence_t e = {sub->c->id, sub->c->user->name, sub->info, sub->info_len};
                clu_presence_add(n->broker, ch->name, &o, &e);
            }
        }
    }
    if (new_window) {
        core_map_iter_t it = 0;
        void *v;
        while (core_map_next(n->users, &it, NULL, &v))
            chat__user_maybe_free(n, v, (double)now);
    }
}

/* ---- node ---- */

chat_node_t *chat_node_new(uv_loop_t *loop, const chat_config_t *cfg) {
    chat_node_t *n = core_calloc(1, sizeof *n);
    n->loop = loop;
    n->cfg = *cfg;
    n->clients = core_map_new();
    n->users = core_map_new();
    n->channels = core_map_new();
    core_list_init(&n->all);
    core_str_t ping = {0};
    chat__codec_json.ping(&ping);
    n->ping = core_buf_from(0, ping.ptr, ping.len);
    core_str_free(&ping);
    uv_timer_init(loop, &n->sweep);
    n->sweep.data = n;
    uv_timer_start(&n->sweep, sweep_cb, 1000, 1000);
    chat__rpc_init(n);
    return n;
}

void chat_node_set_broker(chat_node_t *n, clu_broker_t *b) {
    n->broker = b;
}

void chat_node_close_all(chat_node_t *n, int code, const char *reason) {
    for (core_list_t *it = n->all.next; it != &n->all; it = it->next)
        chat__client_close_reason(CORE_CONTAINER_OF(it, chat_client_t, link), code, reason);
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
    chat__rpc_free(n);
    core_buf_unref(n->ping);
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
    uv_close((uv_handle_t *)&n->sweep, node_timer_closed);
}

void chat_node_stats(const chat_node_t *n, chat_stats_t *out) {
    *out = n->st;
}
