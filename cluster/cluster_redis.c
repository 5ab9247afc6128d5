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
 * CORE_EAGAIN and both reconnect. */
#include "cluster/cluster.h"

#include "core/core_limit.h"

#include <stdlib.h>
#include <string.h>

#include "cluster/cluster_envelope.h"
#include "cluster/cluster_redis_lua.h"
#include "cluster/cluster_redis_uv.h"

#define MOD "cluster"

#define CONNECT_TIMEOUT_MS 2000
#define BACKOFF_MIN_MS 50
/* Low enough that a node is back within a couple of seconds of Redis returning, high enough
 * that a dead Redis sees at most one attempt per node every two seconds. */
#define BACKOFF_MAX_MS 2000
#define CMD_TIMEOUT_MS 3000
#define WATCHDOG_MS 250
#define MAX_ARGS 16

enum {
    SCRIPT_PUBLISH,
    SCRIPT_HISTORY,
    SCRIPT_PRES_ADD,
    SCRIPT_PRES_GET,
    SCRIPT_HEARTBEAT,
    SCRIPT_RATE,
    SCRIPT_SEM_ACQUIRE,
    SCRIPT_SEM_RENEW,
    SCRIPT_SEM_RELEASE,
    SCRIPT_COUNTER,
    SCRIPT_DEADLINE_RAISE,
    SCRIPT_DEADLINE_GET,
    SCRIPT_COUNT
};

static const char *const script_src[SCRIPT_COUNT] = {
    clu_redis_lua_publish,      clu_redis_lua_history,        clu_redis_lua_presence_add,
    clu_redis_lua_presence_get, clu_redis_lua_heartbeat,      clu_redis_lua_rate,
    clu_redis_lua_sem_acquire,  clu_redis_lua_sem_renew,      clu_redis_lua_sem_release,
    clu_redis_lua_counter,      clu_redis_lua_deadline_raise, clu_redis_lua_deadline_get,
};

typedef struct redis_broker rb_t;

/* One connection and its reconnect state. */
typedef struct {
    rb_t *rb;
    bool is_sub;
    redisAsyncContext *ac; /* non-NULL from the connect attempt until it is gone */
    bool connected;
    core_backoff_t backoff; /* reconnect pacing; reset by a successful connect */
    uv_timer_t retry;
} rconn_t;

struct redis_broker {
    clu_broker_t base;
    uv_loop_t *loop;
    clu_redis_addr_t addr;
    char *node_id;
    uint32_t max_history_limit;
    rconn_t cmd, sub;
    core_map_t *subs; /* chat channel -> (void *)1, the channels the node subscribed to */
    /* Channels re-subscribed by the current pub/sub connection's (re)connect whose SUBSCRIBE is
     * not confirmed yet: their feed is not live, publishes into them fail. Channels subscribed
     * later on a live connection are not here: their first subscribe answer and the resync on
     * confirmation cover what they miss meanwhile, in the same epoch. */
    core_map_t *resub;
    char sha[SCRIPT_COUNT][41]; /* "" until SCRIPT LOAD answered on this connection */
    clu_stats_t st;
    /* Commands with a reply callback awaiting their reply on the command connection, and when
     * the connection last made progress (a reply, or the first command after an idle spell). */
    uint32_t inflight;
    uint64_t progress_ms;
    uv_timer_t watchdog;
    /* Calls that failed before anything was sent (Redis away): their callbacks run from the
     * loop, never before the call that started them returned. */
    struct call *failed, *failed_tail;
    uv_idle_t fail_idle;
    uint64_t script_error_logged_ms;
    bool closing;
    int open_timers;
    void (*close_done)(void *);
    void *close_ud;
};

/* ---- small helpers ------------------------------------------------------------------------- */

static void key_of(core_str_t *s, const char *prefix, const char *channel) {
    s->len = 0;
    core_str_appends(s, prefix);
    core_str_appends(s, "{");
    core_str_appends(s, channel);
    core_str_appends(s, "}");
}

/* ---- script calls -------------------------------------------------------------------------- */

typedef struct call call_t;
/* Runs once per call with the reply (borrowed) or NULL when the connection failed or was lost
 * before an answer; status then says why. */
typedef void (*call_done_fn)(call_t *c, redisReply *r, int status);

struct call {
    rb_t *rb;
    int script;
    bool retried;
    int argc; /* including the two leading slots for EVALSHA/EVAL and sha/body */
    char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    call_done_fn done;
    int status; /* of a call that failed before it was sent, while it waits in rb->failed */
    call_t *next;
    void *cb;
    void *ud;
    char *channel;
};

static call_t *call_new(rb_t *rb, int script, call_done_fn done, void *cb, void *ud) {
    call_t *c = core_calloc(1, sizeof *c);
    c->rb = rb;
    c->script = script;
    c->done = done;
    c->cb = cb;
    c->ud = ud;
    c->argc = 2;
    return c;
}

static void call_arg(call_t *c, const char *p, size_t n) {
    if (c->argc >= MAX_ARGS)
        abort(); /* a programming error: every call site passes a fixed count */
    c->argv[c->argc] = core_malloc(n + 1);
    if (n)
        memcpy(c->argv[c->argc], p, n);
    c->argv[c->argc][n] = '\0';
    c->lens[c->argc] = n;
    c->argc++;
}

static void call_args(call_t *c, const char *z) {
    call_arg(c, z, strlen(z));
}

static void call_argu(call_t *c, uint64_t v) {
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    call_arg(c, buf, (size_t)n);
}

/* The script's KEYS: two keys of one channel, both with its hash tag, so one Redis Cluster
 * slot holds them and one script may touch both. */
static void channel_keys(call_t *c, const char *channel, const char *prefix1, const char *prefix2) {
    core_str_t k = {0};
    call_args(c, "2");
    key_of(&k, prefix1, channel);
    call_arg(c, k.ptr, k.len);
    key_of(&k, prefix2, channel);
    call_arg(c, k.ptr, k.len);
    core_str_free(&k);
}

static void call_free(call_t *c) {
    for (int i = 2; i < c->argc; i++)
        free(c->argv[i]);
    free(c->channel);
    free(c);
}

static void on_call_reply(redisAsyncContext *ac, void *reply, void *priv);
static void on_script_loaded(redisAsyncContext *ac, void *reply, void *priv);

/* Bookkeeping of the command timeout, for every command sent with a reply callback. */
static void cmd_sent(rb_t *rb) {
    if (rb->inflight++ == 0)
        rb->progress_ms = core_now_ms();
}

static void cmd_answered(rb_t *rb) {
    if (rb->inflight > 0)
        rb->inflight--;
    rb->progress_ms = core_now_ms();
}

static int call_send(call_t *c) {
    rb_t *rb = c->rb;
    const char *sha = rb->sha[c->script];
    /* EVALSHA once the script is known to be loaded on this connection's server; the full
     * body before that (and after NOSCRIPT: a SCRIPT FLUSH, or a failover to a server that
     * never saw it), which also caches it there. */
    if (sha[0] && !c->retried) {
        c->argv[0] = "EVALSHA";
        c->argv[1] = (char *)sha;
        c->lens[1] = 40;
    } else {
        c->argv[0] = "EVAL";
        c->argv[1] = (char *)script_src[c->script];
        c->lens[1] = strlen(script_src[c->script]);
    }
    c->lens[0] = strlen(c->argv[0]);
    if (redisAsyncCommandArgv(rb->cmd.ac, on_call_reply, c, c->argc, (const char **)c->argv,
                              c->lens) != REDIS_OK)
        return CORE_EAGAIN;
    cmd_sent(rb);
    return 0;
}

/* Runs the failed calls queued so far (those their callbacks queue wait for the next turn). */
static void failed_drain(rb_t *rb) {
    call_t *c = rb->failed;
    rb->failed = rb->failed_tail = NULL;
    while (c) {
        call_t *next = c->next;
        c->done(c, NULL, c->status);
        call_free(c);
        c = next;
    }
}

static void on_fail_idle(uv_idle_t *h) {
    rb_t *rb = ((rconn_t *)h->data)->rb;
    failed_drain(rb);
    if (!rb->failed)
        uv_idle_stop(&rb->fail_idle);
}

/* Completes c with status from the loop. */
static void call_fail_later(call_t *c, int status) {
    rb_t *rb = c->rb;
    c->status = status;
    c->next = NULL;
    if (rb->failed_tail)
        rb->failed_tail->next = c;
    else
        rb->failed = c;
    rb->failed_tail = c;
    if (!uv_is_active((uv_handle_t *)&rb->fail_idle))
        uv_idle_start(&rb->fail_idle, on_fail_idle);
}

/* Sends c or, when the command connection is down, completes it with CORE_EAGAIN on the next
 * loop turn: callers must learn quickly that Redis is away rather than queue behind a dead
 * socket. */
static void call_start(call_t *c) {
    if (c->rb->cmd.connected && call_send(c) == 0)
        return;
    call_fail_later(c, CORE_EAGAIN);
}

static void on_call_reply(redisAsyncContext *ac, void *reply, void *priv) {
    (void)ac;
    call_t *c = priv;
    redisReply *r = reply;
    cmd_answered(c->rb);
    if (r != NULL && r->type == REDIS_REPLY_ERROR && !c->retried && r->str != NULL &&
        strncmp(r->str, "NOSCRIPT", 8) == 0) {
        c->retried = true;
        c->rb->sha[c->script][0] = '\0';
        /* Learn the SHA again so later calls go back to EVALSHA instead of sending the body. */
        if (c->rb->cmd.connected &&
            redisAsyncCommand(c->rb->cmd.ac, on_script_loaded, (void *)(uintptr_t)c->script,
                              "SCRIPT LOAD %s", script_src[c->script]) == REDIS_OK)
            cmd_sent(c->rb);
        if (c->rb->cmd.connected && call_send(c) == 0)
            return;
        r = NULL;
    }
    int status = 0;
    if (r == NULL) {
        status = CORE_EAGAIN; /* the connection went away; the outcome is unknown */
    } else if (r->type == REDIS_REPLY_ERROR) {
        /* Every publish runs scripts: one line a second at most, however many fail. */
        uint64_t now = core_now_ms();
        if (now - c->rb->script_error_logged_ms >= 1000) {
            c->rb->script_error_logged_ms = now;
            CORE_LOGW(MOD, "redis script failed", "reply=\"%.120s\"", r->str ? r->str : "");
        }
        status = UV_EIO;
        r = NULL;
    }
    c->done(c, r, status);
    call_free(c);
}

static void on_script_loaded(redisAsyncContext *ac, void *reply, void *priv) {
    rb_t *rb = ac->data;
    redisReply *r = reply;
    size_t i = (size_t)(uintptr_t)priv;
    if (rb != NULL)
        cmd_answered(rb);
    if (rb != NULL && r != NULL && r->type == REDIS_REPLY_STRING && r->len == 40)
        memcpy(rb->sha[i], r->str, 41);
}

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
    key_of(&k, "chat.pub.", channel);
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
            if (redisAsyncCommand(ac, on_script_loaded, (void *)(uintptr_t)i, "SCRIPT LOAD %s",
                                  script_src[i]) == REDIS_OK)
                cmd_sent(rb);
        }
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
            clu_pub_t p = {e.offset, e.data, e.data_len, e.info, e.info_len};
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

/* ---- operations ---------------------------------------------------------------------------- */

static void publish_done(call_t *c, redisReply *r, int status) {
    rb_t *rb = c->rb;
    clu_publish_cb cb = (clu_publish_cb)c->cb;
    uint64_t off = 0;
    char epoch[CLU_EPOCH_MAX] = "";
    /* r is NULL on success for a plain PUBLISH: unstored, no offset, no epoch. */
    if (status == 0 && r != NULL) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_INTEGER &&
            r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->len < CLU_EPOCH_MAX) {
            off = (uint64_t)r->element[0]->integer;
            memcpy(epoch, r->element[1]->str, r->element[1]->len);
            epoch[r->element[1]->len] = '\0';
        } else {
            status = CORE_EPROTO;
        }
    }
    if (status == 0)
        rb->st.publishes++;
    else
        rb->st.publish_errors++;
    if (cb)
        cb(status, off, epoch, c->ud);
}

static void on_plain_publish(redisAsyncContext *ac, void *reply, void *priv) {
    (void)ac;
    call_t *c = priv;
    redisReply *r = reply;
    cmd_answered(c->rb);
    int status = r == NULL ? CORE_EAGAIN : r->type == REDIS_REPLY_ERROR ? UV_EIO : 0;
    publish_done(c, NULL, status);
    call_free(c);
}

/* PUBLISH of a C-built envelope: unstored publications and join/leave. */
static int publish_envelope(rb_t *rb, const char *channel, const clu_envelope_t *e, call_t *c) {
    char *buf;
    size_t len;
    int rc = clu_env_encode_alloc(e, &buf, &len);
    if (rc != 0)
        return rc;
    core_str_t k = {0};
    key_of(&k, "chat.pub.", channel);
    rc = CORE_EAGAIN;
    if (rb->cmd.connected &&
        redisAsyncCommand(rb->cmd.ac, c ? on_plain_publish : NULL, c, "PUBLISH %b %b", k.ptr, k.len,
                          buf, len) == REDIS_OK) {
        rc = 0;
        if (c)
            cmd_sent(rb);
    }
    core_str_free(&k);
    free(buf);
    return rc;
}

/* True when the node's own subscribers of channel, if it has any, would get a publication
 * through the feed: the pub/sub connection is up and the channel is not waiting for its
 * re-subscription to be confirmed. */
static bool feed_live(const rb_t *rb, const char *channel) {
    if (!core_map_get(rb->subs, channel))
        return true;
    return rb->sub.connected && !core_map_get(rb->resub, channel);
}

static int rb_publish(clu_broker_t *b, const char *channel, const clu_pub_t *pub,
                      const clu_chan_opts_t *opts, clu_publish_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    if (!feed_live(rb, channel)) {
        /* Not sent: it would be acknowledged while this node's subscribers cannot get it. The
         * caller retries once the feed is back, as after any temporary failure. */
        call_fail_later(call_new(rb, 0, publish_done, (void *)cb, ud), CORE_EAGAIN);
        return 0;
    }
    if (opts->history_size == 0) {
        clu_envelope_t e = {.type = CLU_ENV_PUB,
                            .channel = channel,
                            .channel_len = strlen(channel),
                            .data = pub->data,
                            .data_len = pub->data_len,
                            .info = pub->info,
                            .info_len = pub->info_len};
        call_t *c = call_new(rb, 0, publish_done, (void *)cb, ud);
        int rc = publish_envelope(rb, channel, &e, c);
        if (rc != 0)
            call_fail_later(c, rc);
        return 0;
    }
    call_t *c = call_new(rb, SCRIPT_PUBLISH, publish_done, (void *)cb, ud);
    core_str_t k = {0};
    channel_keys(c, channel, "chat.meta.", "chat.history.");
    call_argu(c, opts->history_size);
    call_argu(c, (uint64_t)opts->history_ttl_s * 1000);
    char epoch[9];
    core_random_id(epoch, 8);
    call_args(c, epoch);
    key_of(&k, "chat.pub.", channel);
    call_arg(c, k.ptr, k.len);
    call_args(c, channel);
    call_arg(c, pub->data, pub->data_len);
    call_arg(c, pub->info ? pub->info : "", pub->info ? pub->info_len : 0);
    call_args(c, pub->info ? "1" : "0");
    core_str_free(&k);
    call_start(c);
    return 0;
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

static void history_done(call_t *c, redisReply *r, int status) {
    clu_history_cb cb = (clu_history_cb)c->cb;
    char epoch[CLU_EPOCH_MAX] = "";
    uint64_t top = 0;
    if (status == 0) {
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || (r->elements - 3) % 3 != 0 ||
            r->element[0]->type != REDIS_REPLY_INTEGER ||
            r->element[1]->type != REDIS_REPLY_INTEGER ||
            r->element[2]->type != REDIS_REPLY_STRING || r->element[2]->len >= CLU_EPOCH_MAX) {
            status = CORE_EPROTO;
        } else {
            top = (uint64_t)r->element[1]->integer;
            memcpy(epoch, r->element[2]->str, r->element[2]->len);
            epoch[r->element[2]->len] = '\0';
            if (r->element[0]->integer != 0)
                status = CORE_EUNRECOVERABLE;
        }
    }
    if (status != 0) {
        cb(status, NULL, 0, top, epoch, c->ud);
        return;
    }
    size_t n = (r->elements - 3) / 3;
    clu_pub_t *pubs = core_calloc(n ? n : 1, sizeof *pubs);
    for (size_t i = 0; i < n; i++) {
        redisReply **e = &r->element[3 + 3 * i];
        if (e[0]->type != REDIS_REPLY_INTEGER || e[1]->type != REDIS_REPLY_STRING) {
            free(pubs);
            cb(CORE_EPROTO, NULL, 0, top, epoch, c->ud);
            return;
        }
        pubs[i].offset = (uint64_t)e[0]->integer;
        pubs[i].data = e[1]->str;
        pubs[i].data_len = e[1]->len;
        if (e[2]->type == REDIS_REPLY_STRING) {
            pubs[i].info = e[2]->str;
            pubs[i].info_len = e[2]->len;
        }
    }
    cb(0, pubs, n, top, epoch, c->ud);
    free(pubs);
}

static int rb_history(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                      const clu_history_req_t *req, clu_history_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || cb == NULL)
        return CORE_EINVAL;
    uint32_t limit = req->limit < 0 ? rb->max_history_limit : (uint32_t)req->limit;
    if (limit > rb->max_history_limit)
        limit = rb->max_history_limit;
    call_t *c = call_new(rb, SCRIPT_HISTORY, history_done, (void *)cb, ud);
    channel_keys(c, channel, "chat.meta.", "chat.history.");
    call_args(c, req->has_since ? "1" : "0");
    call_argu(c, req->since_offset);
    call_args(c, req->has_since && req->since_epoch ? req->since_epoch : "");
    call_argu(c, limit);
    call_args(c, req->reverse ? "1" : "0");
    char epoch[9];
    core_random_id(epoch, 8);
    call_args(c, epoch);
    call_argu(c, opts ? (uint64_t)opts->history_ttl_s * 1000 : 0);
    call_start(c);
    return 0;
}

static int rb_join_leave(rb_t *rb, const char *channel, const char *info, size_t len, bool join) {
    if (rb->closing)
        return CORE_EINVAL;
    clu_envelope_t e = {.type = join ? CLU_ENV_JOIN : CLU_ENV_LEAVE,
                        .channel = channel,
                        .channel_len = strlen(channel),
                        .info = info,
                        .info_len = len};
    return publish_envelope(rb, channel, &e, NULL);
}

static int rb_join(clu_broker_t *b, const char *channel, const char *info, size_t len) {
    return rb_join_leave((rb_t *)b, channel, info, len, true);
}

static int rb_leave(clu_broker_t *b, const char *channel, const char *info, size_t len) {
    return rb_join_leave((rb_t *)b, channel, info, len, false);
}

static void ignore_done(call_t *c, redisReply *r, int status) {
    (void)c, (void)r, (void)status;
}

static int rb_presence_add(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                           const clu_presence_t *e) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    if (!rb->cmd.connected)
        return CORE_EAGAIN;
    call_t *c = call_new(rb, SCRIPT_PRES_ADD, ignore_done, NULL, NULL);
    channel_keys(c, channel, "chat.presence.", "chat.presexp.");
    call_args(c, e->client);
    /* user NUL info: user ids never contain NUL, and one field keeps add/remove atomic. */
    core_str_t v = {0};
    core_str_append(&v, e->user, strlen(e->user) + 1);
    core_str_append(&v, e->info ? e->info : "", e->info ? e->info_len : 0);
    call_arg(c, v.ptr, v.len);
    core_str_free(&v);
    call_argu(c, opts ? (uint64_t)opts->presence_ttl_s * 1000 : 0);
    core_str_t k = {0};
    key_of(&k, "chat.pub.", channel);
    call_arg(c, k.ptr, k.len);
    core_str_free(&k);
    call_args(c, channel);
    call_args(c, opts && opts->join_leave ? "1" : "0");
    call_start(c);
    return 0;
}

static int rb_presence_remove(clu_broker_t *b, const char *channel, const char *client) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    if (!rb->cmd.connected)
        return CORE_EAGAIN;
    core_str_t k = {0};
    /* Two commands on one connection run in order; a reader between them sees an entry
     * without expiry score, which it returns as present: harmless for a moment. */
    key_of(&k, "chat.presence.", channel);
    redisAsyncCommand(rb->cmd.ac, NULL, NULL, "HDEL %b %s", k.ptr, k.len, client);
    key_of(&k, "chat.presexp.", channel);
    redisAsyncCommand(rb->cmd.ac, NULL, NULL, "ZREM %b %s", k.ptr, k.len, client);
    core_str_free(&k);
    return 0;
}

typedef struct {
    char *client;
    char *user;
} pres_copy_t;

/* Parses an HGETALL of the presence hash into entries whose strings are NUL-terminated copies
 * (client and user) or borrowed from r (info). Returns the count; malformed fields are skipped. */
static size_t presence_parse(redisReply *r, clu_presence_t **out, pres_copy_t **copies) {
    size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements / 2 : 0;
    clu_presence_t *e = core_calloc(n ? n : 1, sizeof *e);
    pres_copy_t *cp = core_calloc(n ? n : 1, sizeof *cp);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        redisReply *cl = r->element[2 * i], *val = r->element[2 * i + 1];
        if (cl->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING)
            continue;
        const char *nul = memchr(val->str, '\0', val->len);
        if (nul == NULL)
            continue;
        cp[k].client = core_strndup(cl->str, cl->len);
        cp[k].user = core_strndup(val->str, (size_t)(nul - val->str));
        e[k] = (clu_presence_t){cp[k].client, cp[k].user, nul + 1,
                                val->len - (size_t)(nul + 1 - val->str)};
        k++;
    }
    *out = e;
    *copies = cp;
    return k;
}

static void presence_free(clu_presence_t *e, pres_copy_t *cp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(cp[i].client);
        free(cp[i].user);
    }
    free(cp);
    free(e);
}

static void presence_done(call_t *c, redisReply *r, int status) {
    clu_presence_cb cb = (clu_presence_cb)c->cb;
    if (status != 0) {
        cb(status, NULL, 0, c->ud);
        return;
    }
    clu_presence_t *e;
    pres_copy_t *cp;
    size_t n = presence_parse(r, &e, &cp);
    cb(0, e, n, c->ud);
    presence_free(e, cp, n);
}

static void presence_stats_done(call_t *c, redisReply *r, int status) {
    clu_presence_stats_cb cb = (clu_presence_stats_cb)c->cb;
    if (status != 0) {
        cb(status, 0, 0, c->ud);
        return;
    }
    clu_presence_t *e;
    pres_copy_t *cp;
    size_t n = presence_parse(r, &e, &cp);
    core_map_t *seen = core_map_new();
    uint32_t users = 0;
    for (size_t i = 0; i < n; i++)
        if (!core_map_put(seen, e[i].user, (void *)1))
            users++;
    core_map_free(seen);
    cb(0, (uint32_t)n, users, c->ud);
    presence_free(e, cp, n);
}

static int rb_presence(clu_broker_t *b, const char *channel, clu_presence_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || cb == NULL)
        return CORE_EINVAL;
    call_t *c = call_new(rb, SCRIPT_PRES_GET, presence_done, (void *)cb, ud);
    channel_keys(c, channel, "chat.presence.", "chat.presexp.");
    call_start(c);
    return 0;
}

static int rb_presence_stats(clu_broker_t *b, const char *channel, clu_presence_stats_cb cb,
                             void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || cb == NULL)
        return CORE_EINVAL;
    call_t *c = call_new(rb, SCRIPT_PRES_GET, presence_stats_done, (void *)cb, ud);
    channel_keys(c, channel, "chat.presence.", "chat.presexp.");
    call_start(c);
    return 0;
}

static void heartbeat_done(call_t *c, redisReply *r, int status) {
    clu_nodes_cb cb = (clu_nodes_cb)c->cb;
    if (cb == NULL)
        return;
    if (status != 0 || r->type != REDIS_REPLY_ARRAY) {
        cb(status ? status : CORE_EPROTO, NULL, 0, c->ud);
        return;
    }
    size_t n = r->elements / 2, k = 0;
    clu_node_t *nodes = core_calloc(n ? n : 1, sizeof *nodes);
    for (size_t i = 0; i < n; i++) {
        redisReply *id = r->element[2 * i], *info = r->element[2 * i + 1];
        if (id->type != REDIS_REPLY_STRING || info->type != REDIS_REPLY_STRING)
            continue;
        /* hiredis NUL-terminates string replies, so the id is a C string as it is. */
        nodes[k++] = (clu_node_t){id->str, info->str, info->len};
    }
    cb(0, nodes, k, c->ud);
    free(nodes);
}

static int rb_heartbeat(clu_broker_t *b, const char *node_id, const char *info, size_t len,
                        uint32_t ttl_ms, clu_nodes_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    call_t *c = call_new(rb, SCRIPT_HEARTBEAT, heartbeat_done, (void *)cb, ud);
    call_args(c, "2");
    call_args(c, "{chat}.nodes");
    call_args(c, "{chat}.nodes.exp");
    call_args(c, node_id);
    call_arg(c, info, len);
    call_argu(c, ttl_ms);
    call_start(c);
    return 0;
}

static void rate_done(call_t *c, redisReply *r, int status) {
    clu_rate_cb cb = (clu_rate_cb)c->cb;
    int64_t wait_ms = 0;
    if (status == 0) {
        if (r->type == REDIS_REPLY_INTEGER && r->integer >= 0)
            wait_ms = (r->integer + 999) / 1000;
        else
            status = CORE_EPROTO;
    }
    cb(status, wait_ms, c->ud);
}

static int rb_rate_take(clu_broker_t *b, const char *key, int64_t interval_us, int64_t burst,
                        clu_rate_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || cb == NULL)
        return CORE_EINVAL;
    call_t *c = call_new(rb, SCRIPT_RATE, rate_done, (void *)cb, ud);
    call_args(c, "1");
    core_str_t k = {0};
    key_of(&k, "chat.rate.", key);
    call_arg(c, k.ptr, k.len);
    core_str_free(&k);
    call_argu(c, (uint64_t)(interval_us > 0 ? interval_us : 1));
    call_argu(c, (uint64_t)(burst > 0 ? burst : 1));
    call_start(c);
    return 0;
}

/* ---- semaphores, counters, deadlines ------------------------------------------------------- */

/* Semaphores and deadlines of the dispatcher share one hash tag: a multi-key script needs all
 * its keys on one Redis Cluster slot, and these keys are few and small. */
static void coord_key(call_t *c, const char *prefix, const char *key) {
    core_str_t k = {0};
    core_str_appends(&k, prefix);
    core_str_appends(&k, "{coord}.");
    core_str_appends(&k, key);
    call_arg(c, k.ptr, k.len);
    core_str_free(&k);
}

static void coord_keys(call_t *c, const char *prefix, const char *const *keys, size_t n) {
    call_argu(c, n);
    for (size_t i = 0; i < n; i++)
        coord_key(c, prefix, keys[i]);
}

static void sem_done(call_t *c, redisReply *r, int status) {
    if (!c->cb)
        return;
    bool granted = false;
    if (status == 0) {
        if (r->type == REDIS_REPLY_INTEGER)
            granted = r->integer == 1;
        else
            status = CORE_EPROTO;
    }
    ((clu_sem_cb)c->cb)(status, granted, c->ud);
}

/* Leaves room in argv for EVALSHA, the SHA, the key count, and one lease and TTL. */
#define COORD_MAX_KEYS ((MAX_ARGS - 5) / 2)

static int rb_sem_acquire(clu_broker_t *b, const char *const *keys, const uint32_t *limits,
                          size_t n, const char *lease, uint32_t ttl_ms, clu_sem_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || !cb || n == 0 || n > COORD_MAX_KEYS)
        return CORE_EINVAL;
    call_t *c = call_new(rb, SCRIPT_SEM_ACQUIRE, sem_done, (void *)cb, ud);
    coord_keys(c, "chat.sem.", keys, n);
    call_args(c, lease);
    call_argu(c, ttl_ms);
    for (size_t i = 0; i < n; i++)
        call_argu(c, limits[i]);
    call_start(c);
    return 0;
}

static int rb_sem_renew(clu_broker_t *b, const char *const *keys, size_t n, const char *lease,
                        uint32_t ttl_ms, clu_sem_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || n == 0 || n > COORD_MAX_KEYS)
        return CORE_EINVAL;
    call_t *c = call_new(rb, SCRIPT_SEM_RENEW, sem_done, (void *)cb, ud);
    coord_keys(c, "chat.sem.", keys, n);
    call_args(c, lease);
    call_argu(c, ttl_ms);
    call_start(c);
    return 0;
}

static int rb_sem_release(clu_broker_t *b, const char *const *keys, size_t n, const char *lease) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || n == 0 || n > COORD_MAX_KEYS)
        return CORE_EINVAL;
    call_t *c = call_new(rb, SCRIPT_SEM_RELEASE, sem_done, NULL, NULL);
    coord_keys(c, "chat.sem.", keys, n);
    call_args(c, lease);
    call_start(c);
    return 0;
}

static void counter_done(call_t *c, redisReply *r, int status) {
    if (!c->cb)
        return;
    bool allowed = false;
    int64_t value = 0;
    if (status == 0) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            r->element[0]->type == REDIS_REPLY_INTEGER &&
            r->element[1]->type == REDIS_REPLY_INTEGER) {
            allowed = r->element[0]->integer == 1;
            value = r->element[1]->integer;
        } else
            status = CORE_EPROTO;
    }
    ((clu_counter_cb)c->cb)(status, allowed, value, c->ud);
}

static void call_argi(call_t *c, int64_t v) {
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
    call_arg(c, buf, (size_t)n);
}

static int rb_counter_add(clu_broker_t *b, const char *key, int64_t amount, int64_t limit,
                          int64_t expire_at_s, clu_counter_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    call_t *c = call_new(rb, SCRIPT_COUNTER, counter_done, (void *)cb, ud);
    core_str_t k = {0};
    call_args(c, "1");
    key_of(&k, "chat.ctr.", key);
    call_arg(c, k.ptr, k.len);
    core_str_free(&k);
    call_argi(c, amount);
    call_argi(c, limit);
    call_argi(c, expire_at_s);
    call_start(c);
    return 0;
}

static void deadline_raised(call_t *c, redisReply *r, int status) {
    (void)c;
    (void)r;
    (void)status;
}

static int rb_deadline_raise(clu_broker_t *b, const char *key, int64_t until_ms) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    call_t *c = call_new(rb, SCRIPT_DEADLINE_RAISE, deadline_raised, NULL, NULL);
    call_args(c, "1");
    coord_key(c, "chat.dl.", key);
    call_argi(c, until_ms);
    call_start(c);
    return 0;
}

static void deadlines_done(call_t *c, redisReply *r, int status) {
    int64_t values[COORD_MAX_KEYS * 2] = {0};
    size_t n = 0;
    if (status == 0) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements <= sizeof values / sizeof *values) {
            for (n = 0; n < r->elements; n++)
                values[n] = r->element[n]->type == REDIS_REPLY_INTEGER ? r->element[n]->integer : 0;
        } else
            status = CORE_EPROTO;
    }
    ((clu_deadlines_cb)c->cb)(status, values, n, c->ud);
}

static int rb_deadline_get(clu_broker_t *b, const char *const *keys, size_t n, clu_deadlines_cb cb,
                           void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || !cb || n == 0 || n > MAX_ARGS - 3)
        return CORE_EINVAL;
    call_t *c = call_new(rb, SCRIPT_DEADLINE_GET, deadlines_done, (void *)cb, ud);
    call_argu(c, n);
    for (size_t i = 0; i < n; i++)
        coord_key(c, "chat.dl.", keys[i]);
    call_start(c);
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
        failed_drain(rb);
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
    .publish = rb_publish,
    .subscribe = rb_subscribe,
    .unsubscribe = rb_unsubscribe,
    .history = rb_history,
    .join = rb_join,
    .leave = rb_leave,
    .presence_add = rb_presence_add,
    .presence_remove = rb_presence_remove,
    .presence = rb_presence,
    .presence_stats = rb_presence_stats,
    .heartbeat = rb_heartbeat,
    .rate_take = rb_rate_take,
    .sem_acquire = rb_sem_acquire,
    .sem_renew = rb_sem_renew,
    .sem_release = rb_sem_release,
    .counter_add = rb_counter_add,
    .deadline_raise = rb_deadline_raise,
    .deadline_get = rb_deadline_get,
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
