/* cluster: the Redis broker. Two hiredis connections on the node's loop: one for commands (Lua
 * scripts for publish, history and presence), one in pub/sub mode for the channels this node
 * has local subscribers in. Each connection is a small state machine: connect with a timeout,
 * on failure or loss retry with jittered exponential backoff, and (pub/sub) re-subscribe.
 *
 * After a (re)subscribe it raises on_resync so that the node fills what it missed from the
 * history stream.
 *
 * A publication into a channel the node has local subscribers in is acknowledged only while the
 * node's feed of that channel is live: the pub/sub connection is up and, after a reconnect, the
 * channel's SUBSCRIBE is confirmed. Otherwise it fails with CORE_EAGAIN. Acknowledging it earlier
 * would promise the node's own subscribers a publication they cannot get: after Redis restarted
 * empty it exists only in the new epoch's history, which they are never given (they are told
 * their position is lost, recovered:false, and go on from the newest offset).
 *
 * Timeouts are the node's own timers: connects give up after CONNECT_TIMEOUT_MS, and a command
 * connection that leaves a command unanswered for CMD_TIMEOUT_MS (Redis hung, a network that
 * drops packets without resetting) is dropped with the pub/sub one, so waiting calls fail with
 * CORE_EAGAIN and both reconnect.
 *
 * This file holds the connections, the pub/sub feed and the lifecycle; script calls are in
 * cluster_redis_call.c, the operations in cluster_redis_ops.c and cluster_redis_coord.c. */
#include "cluster/cluster_redis_int.h"

#include <stdlib.h>
#include <string.h>

#include "cluster/cluster_envelope.h"

#define MOD "cluster"

#define CONNECT_TIMEOUT_MS 2000
#define BACKOFF_MIN_MS 50
/* Low enough that a node is back within a couple of seconds of Redis returning, high enough
 * that a dead Redis sees at most one attempt per node every two seconds. */
#define BACKOFF_MAX_MS 2000
#define CMD_TIMEOUT_MS 3000
#define WATCHDOG_MS 250

/* ---- connections --------------------------------------------------------------------------- */

static void conn_start(rconn_t *cn);

static void on_retry(uv_timer_t *t) {
    rconn_t *cn = t->data;
    if (!cn->rb->closing)
        conn_start(cn);
}

static void conn_schedule(rconn_t *cn) {
    if (cn->rb->closing)
        return;
    /* Half fixed, half random: nodes that lost Redis together do not return in lockstep. */
    uv_timer_start(&cn->retry, on_retry, core_backoff_next(&cn->backoff), 0);
}

static void on_sub_message(redisAsyncContext *ac, void *reply, void *priv);

static void send_subscribe(rb_t *rb, const char *channel, bool on) {
    core_str_t k = {0};
    clu__rb_key_of(&k, "chat.pub.", channel);
    /* hiredis keeps the callback per pub/sub channel and calls it for every message. */
    redisAsyncCommand(rb->sub.ac, on_sub_message, rb, on ? "SUBSCRIBE %b" : "UNSUBSCRIBE %b", k.ptr,
                      k.len);
    core_str_free(&k);
}

static void on_conn_connect(redisAsyncContext *ac, int status, void *ud) {
    rconn_t *cn = ud;
    rb_t *rb = cn->rb;
    if (status != 0) {
        cn->ac = NULL;
        if (!rb->closing)
            CORE_LOGD(MOD, "redis connect failed", "conn=%s err=%s", cn->is_sub ? "sub" : "cmd",
                      core_strerror(status));
        conn_schedule(cn);
        return;
    }
    cn->connected = true;
    core_backoff_reset(&cn->backoff);
    ac->data = rb;
    /* A quiet connection (pub/sub above all) that a NAT or firewall dropped without a reset
     * would otherwise look alive forever: with hiredis 0.14's settings the kernel probes it
     * after 15 s of silence and drops it after three probes 5 s apart go unanswered. */
    redisEnableKeepAlive(&ac->c);
    CORE_LOGI(MOD, "redis connected", "conn=%s node=%s", cn->is_sub ? "sub" : "cmd", rb->node_id);
    if (cn->is_sub) {
        core_map_free(rb->resub);
        rb->resub = core_map_new();
        core_map_iter_t it = 0;
        const char *ch;
        while (core_map_next(rb->subs, &it, &ch, NULL)) {
            core_map_put(rb->resub, ch, (void *)1);
            send_subscribe(rb, ch, true);
        }
    } else {
        /* A restarted Redis has an empty script cache; learn the SHAs again. */
        rb->inflight = 0; /* whatever was waiting went with the old connection */
        for (size_t i = 0; i < SCRIPT_COUNT; i++) {
            rb->sha[i][0] = '\0';
            if (redisAsyncCommand(ac, clu__rb_on_script_loaded, (void *)(uintptr_t)i,
                                  "SCRIPT LOAD %s", clu__rb_script_src[i]) == REDIS_OK)
                clu__rb_cmd_sent(rb);
        }
        clu__rb_persist_connected(rb);
        /* Publications may have been missed while commands could not run (the pub/sub
         * connection may have been back first, and its resyncs were skipped then). A channel
         * whose subscription is still being confirmed resyncs again on the confirmation. */
        if (rb->sub.connected && rb->base.events.on_resync) {
            core_map_iter_t it = 0;
            const char *ch;
            while (core_map_next(rb->subs, &it, &ch, NULL))
                rb->base.events.on_resync(rb->base.events_ud, ch);
        }
    }
}

static void on_conn_disconnect(int status, void *ud) {
    rconn_t *cn = ud;
    /* hiredis frees the context after this callback: its error text (a server's error reply
     * that ended the connection, e.g. a refused SUBSCRIBE) is still readable here. */
    const char *reason = cn->ac != NULL && cn->ac->c.err ? cn->ac->c.errstr : "";
    cn->ac = NULL;
    cn->connected = false;
    if (!cn->rb->closing) {
        /* core_strerror, not uv_strerror: the codes include the core's own, for which
         * uv_strerror would allocate a text that is never freed. */
        CORE_LOGW(MOD, "redis connection lost", "conn=%s err=%s reason=\"%.120s\"",
                  cn->is_sub ? "sub" : "cmd", status ? core_strerror(status) : "none", reason);
        conn_schedule(cn);
    }
}

static void conn_start(rconn_t *cn) {
    rb_t *rb = cn->rb;
    clu_redis_connect_opts_t o = {.ip = rb->addr.host,
                                  .port = rb->addr.port,
                                  .db = rb->addr.db,
                                  .timeout_ms = CONNECT_TIMEOUT_MS,
                                  .on_connect = on_conn_connect,
                                  .on_disconnect = on_conn_disconnect,
                                  .ud = cn};
    redisAsyncContext *ac = NULL;
    int rc = clu_redis_connect(rb->loop, &o, &ac);
    if (rc != 0) {
        conn_schedule(cn);
        return;
    }
    cn->ac = ac;
}

/* A command connection that stopped answering is as good as lost: free both contexts (pending
 * calls fail with CORE_EAGAIN, the disconnect callbacks schedule the reconnects). The pub/sub
 * connection goes too because it talks to the same server, and its silence is normal. */
static void on_watchdog(uv_timer_t *t) {
    rb_t *rb = ((rconn_t *)t->data)->rb;
    if (rb->closing || !rb->cmd.connected || rb->inflight == 0 ||
        core_now_ms() - rb->progress_ms < CMD_TIMEOUT_MS)
        return;
    CORE_LOGW(MOD, "redis command timeout", "node=%s waiting=%u timeout_ms=%d", rb->node_id,
              rb->inflight, CMD_TIMEOUT_MS);
    rb->st.timeouts++;
    rconn_t *conns[2] = {&rb->cmd, &rb->sub};
    for (int i = 0; i < 2; i++)
        if (conns[i]->connected && conns[i]->ac != NULL)
            redisAsyncFree(conns[i]->ac); /* on the loop: frees now, runs the callbacks */
}

/* ---- pub/sub ------------------------------------------------------------------------------- */

static void deliver(rb_t *rb, const char *buf, size_t len) {
    clu_envelope_t e;
    if (clu_env_decode(buf, len, &e) != 0) {
        rb->st.undecodable++;
        return;
    }
    char channel[CLU_ENV_MAX_CHANNEL + 1];
    memcpy(channel, e.channel, e.channel_len);
    channel[e.channel_len] = '\0';
    /* Messages still in flight after an UNSUBSCRIBE, or an envelope naming a channel other
     * than the one it came on, are not this node's business. */
    if (!core_map_get(rb->subs, channel))
        return;
    clu_broker_t *b = &rb->base;
    switch (e.type) {
    case CLU_ENV_PUB:
        if (b->events.on_pub) {
            clu_pub_t p = {e.offset, e.data, e.data_len, e.info, e.info_len, NULL};
            rb->st.delivered++;
            b->events.on_pub(b->events_ud, channel, &p, e.epoch);
        }
        break;
    case CLU_ENV_JOIN:
        if (b->events.on_join)
            b->events.on_join(b->events_ud, channel, e.info, e.info_len);
        break;
    case CLU_ENV_LEAVE:
        if (b->events.on_leave)
            b->events.on_leave(b->events_ud, channel, e.info, e.info_len);
        break;
    }
}

static void on_sub_message(redisAsyncContext *ac, void *reply, void *priv) {
    (void)ac;
    rb_t *rb = priv;
    redisReply *r = reply;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 3)
        return; /* the connection is going away */
    redisReply *kind = r->element[0], *payload = r->element[2];
    if (kind->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(kind->str, "subscribe") == 0) {
        /* From here on the channel's publications arrive; what was published while this
         * connection was down (or before it subscribed) is for the node to fetch. */
        redisReply *name = r->element[1];
        size_t plen = strlen("chat.pub.{");
        if (name->type != REDIS_REPLY_STRING || name->len <= plen + 1 ||
            name->len - plen - 1 > CLU_ENV_MAX_CHANNEL)
            return;
        char channel[CLU_ENV_MAX_CHANNEL + 1];
        memcpy(channel, name->str + plen, name->len - plen - 1);
        channel[name->len - plen - 1] = '\0';
        /* The channel's feed is live again: publishes into it are acknowledged from here on. */
        core_map_del(rb->resub, channel);
        /* Without the command connection the node could not read history now; it resyncs
         * every channel when that connection is back (on_conn_connect). */
        if (rb->base.events.on_resync && rb->cmd.connected && core_map_get(rb->subs, channel))
            rb->base.events.on_resync(rb->base.events_ud, channel);
        return;
    }
    if (strcmp(kind->str, "message") != 0)
        return;
    if (payload->type != REDIS_REPLY_STRING) {
        rb->st.undecodable++;
        return;
    }
    deliver(rb, payload->str, payload->len);
}

static int rb_subscribe(clu_broker_t *b, const char *channel) {
    rb_t *rb = (rb_t *)b;
    if (core_map_get(rb->subs, channel))
        return 0;
    core_map_put(rb->subs, channel, (void *)1);
    /* While disconnected the map is the record; on_conn_connect subscribes to all of it. */
    if (rb->sub.connected)
        send_subscribe(rb, channel, true);
    return 0;
}

static int rb_unsubscribe(clu_broker_t *b, const char *channel) {
    rb_t *rb = (rb_t *)b;
    if (!core_map_del(rb->subs, channel))
        return 0;
    core_map_del(rb->resub, channel);
    if (rb->sub.connected)
        send_subscribe(rb, channel, false);
    return 0;
}

/* Both connections, and the channels re-subscribed: without its feed the node would accept
 * clients it cannot feed. */
static bool rb_ready(clu_broker_t *b) {
    rb_t *rb = (rb_t *)b;
    return rb->cmd.connected && rb->sub.connected && core_map_size(rb->resub) == 0;
}

static void rb_stats(clu_broker_t *b, clu_stats_t *out) {
    rb_t *rb = (rb_t *)b;
    *out = rb->st;
    out->latency = rb->latency;
    out->latency_ops = clu__rb_script_names;
    out->nlatency = SCRIPT_COUNT;
    out->node_subscriptions = core_map_size(rb->subs);
    out->channels = out->node_subscriptions;
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h) {
    rb_t *rb = ((rconn_t *)h->data)->rb;
    if (--rb->open_timers > 0)
        return;
    void (*done)(void *) = rb->close_done;
    void *ud = rb->close_ud;
    core_map_free(rb->subs);
    core_map_free(rb->resub);
    free(rb->node_id);
    free(rb);
    if (done)
        done(ud);
}

/* Runs from the loop, never from inside a hiredis callback, so redisAsyncFree frees at once
 * (inside a callback hiredis defers it and would call us back after the broker is gone). Pending
 * commands complete with NULL replies from inside the free, while the broker still exists. */
static void on_close_tick(uv_timer_t *t) {
    rb_t *rb = ((rconn_t *)t->data)->rb;
    while (rb->failed)
        clu__rb_failed_drain(rb);
    rconn_t *conns[2] = {&rb->cmd, &rb->sub};
    for (int i = 0; i < 2; i++) {
        if (conns[i]->ac != NULL) {
            redisAsyncContext *ac = conns[i]->ac;
            conns[i]->ac = NULL;
            conns[i]->connected = false;
            redisAsyncFree(ac);
        }
    }
    for (int i = 0; i < 2; i++)
        uv_close((uv_handle_t *)&conns[i]->retry, on_timer_closed);
    uv_close((uv_handle_t *)&rb->watchdog, on_timer_closed);
    uv_close((uv_handle_t *)&rb->fail_idle, on_timer_closed);
}

static void rb_close(clu_broker_t *b, void (*done)(void *), void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return; /* closing twice would free twice */
    rb->closing = true;
    rb->close_done = done;
    rb->close_ud = ud;
    uv_timer_stop(&rb->sub.retry);
    uv_timer_stop(&rb->watchdog);
    uv_timer_start(&rb->cmd.retry, on_close_tick, 0, 0);
}

static const clu_ops_t redis_ops = {
    .publish = clu__rb_publish,
    .subscribe = rb_subscribe,
    .unsubscribe = rb_unsubscribe,
    .history = clu__rb_history,
    .join = clu__rb_join,
    .leave = clu__rb_leave,
    .presence_add = clu__rb_presence_add,
    .presence_remove = clu__rb_presence_remove,
    .presence = clu__rb_presence,
    .presence_stats = clu__rb_presence_stats,
    .history_remove = clu__rb_history_remove,
    .heartbeat = clu__rb_heartbeat,
    .rate_take = clu__rb_rate_take,
    .sem_acquire = clu__rb_sem_acquire,
    .sem_renew = clu__rb_sem_renew,
    .sem_release = clu__rb_sem_release,
    .counter_add = clu__rb_counter_add,
    .deadline_raise = clu__rb_deadline_raise,
    .deadline_clear = clu__rb_deadline_clear,
    .deadline_get = clu__rb_deadline_get,
    .persist_read = clu__rb_persist_read,
    .persist_ack = clu__rb_persist_ack,
    .persist_info = clu__rb_persist_info,
    .ready = rb_ready,
    .stats = rb_stats,
    .close = rb_close,
};

static void conn_init(rb_t *rb, rconn_t *cn, bool is_sub) {
    cn->rb = rb;
    cn->is_sub = is_sub;
    core_backoff_init(&cn->backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS, 0);
    uv_timer_init(rb->loop, &cn->retry);
    cn->retry.data = cn;
    rb->open_timers++;
}

clu_broker_t *clu_redis_new(uv_loop_t *loop, const clu_events_t *events, void *ud,
                            const char *redis_url, const char *node_id,
                            uint32_t max_history_limit) {
    clu_redis_addr_t addr;
    if (loop == NULL || events == NULL || clu_redis_parse_url(redis_url, &addr) != 0) {
        CORE_LOGE(MOD, "bad REDIS_URL", "url=\"%s\"", redis_url ? redis_url : "");
        return NULL;
    }
    rb_t *rb = core_calloc(1, sizeof *rb);
    rb->base.ops = &redis_ops;
    rb->base.name = "redis";
    rb->base.events = *events;
    rb->base.events_ud = ud;
    rb->loop = loop;
    rb->addr = addr;
    /* A healthy Redis on the same network answers a script in well under a millisecond. */
    static const double bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                    0.01,   0.025,   0.05,   0.1,   0.25,   1.0};
    for (int i = 0; i < SCRIPT_COUNT; i++)
        core_hist_init(&rb->latency[i], bounds, sizeof bounds / sizeof bounds[0]);
    rb->node_id = core_strdup(node_id ? node_id : "");
    rb->max_history_limit = max_history_limit ? max_history_limit : 1000;
    rb->subs = core_map_new();
    rb->resub = core_map_new();
    conn_init(rb, &rb->cmd, false);
    conn_init(rb, &rb->sub, true);
    uv_timer_init(loop, &rb->watchdog);
    rb->watchdog.data = &rb->cmd;
    rb->open_timers++;
    uv_timer_start(&rb->watchdog, on_watchdog, WATCHDOG_MS, WATCHDOG_MS);
    uv_idle_init(loop, &rb->fail_idle);
    rb->fail_idle.data = &rb->cmd;
    rb->open_timers++;
    conn_start(&rb->cmd);
    conn_start(&rb->sub);
    return &rb->base;
}
