/* cluster: script calls of the Redis broker on its command connection. A call collects its
 * arguments, goes out as EVALSHA (EVAL until the script's SHA is known on this connection, and
 * again after NOSCRIPT), and completes once: with the reply, or with CORE_EAGAIN from the loop
 * when Redis is away. Counts what is in flight for the command timeout (cluster_redis.c). */
#include "cluster/cluster_redis_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/cluster_redis_lua.h"

#define MOD "cluster"

const char *const clu__rb_script_src[SCRIPT_COUNT] = {
    clu_redis_lua_publish,        clu_redis_lua_history,        clu_redis_lua_presence_add,
    clu_redis_lua_presence_get,   clu_redis_lua_heartbeat,      clu_redis_lua_rate,
    clu_redis_lua_sem_acquire,    clu_redis_lua_sem_renew,      clu_redis_lua_sem_release,
    clu_redis_lua_counter,        clu_redis_lua_deadline_raise, clu_redis_lua_deadline_get,
    clu_redis_lua_deadline_clear, clu_redis_lua_history_remove, clu_redis_lua_persist_info,
};

const char *const clu__rb_script_names[SCRIPT_COUNT] = {
    "publish",        "history",      "presence_add",   "presence_get",   "heartbeat",
    "rate",           "sem_acquire",  "sem_renew",      "sem_release",    "counter",
    "deadline_raise", "deadline_get", "deadline_clear", "history_remove", "persist_info"};

/* Completes c under the trace of the work that made it. */
static void call_complete(call_t *c, redisReply *r, int status) {
    core_log_ctx_t prev = core_log_ctx_enter((core_log_ctx_t){.trace = c->trace});
    CORE_LOGD(MOD, "redis call", "op=%s status=%d us=%" PRIu64, clu__rb_script_names[c->script],
              status, c->sent_us ? core_now_us() - c->sent_us : 0);
    c->done(c, r, status);
    core_log_ctx_leave(prev);
}

/* ---- small helpers ------------------------------------------------------------------------- */

void clu__rb_key_of(core_str_t *s, const char *prefix, const char *channel) {
    s->len = 0;
    core_str_appends(s, prefix);
    core_str_appends(s, "{");
    core_str_appends(s, channel);
    core_str_appends(s, "}");
}

/* ---- script calls -------------------------------------------------------------------------- */

call_t *clu__rb_call_new(rb_t *rb, int script, call_done_fn done, void *cb, void *ud) {
    call_t *c = core_calloc(1, sizeof *c);
    c->rb = rb;
    c->script = script;
    c->done = done;
    c->cb = cb;
    c->ud = ud;
    c->argc = 2;
    c->trace = core_log_trace();
    return c;
}

void clu__rb_call_arg(call_t *c, const char *p, size_t n) {
    if (c->argc >= MAX_ARGS)
        abort(); /* a programming error: every call site passes a fixed count */
    c->argv[c->argc] = core_malloc(n + 1);
    if (n)
        memcpy(c->argv[c->argc], p, n);
    c->argv[c->argc][n] = '\0';
    c->lens[c->argc] = n;
    c->argc++;
}

void clu__rb_call_args(call_t *c, const char *z) {
    clu__rb_call_arg(c, z, strlen(z));
}

void clu__rb_call_argu(call_t *c, uint64_t v) {
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    clu__rb_call_arg(c, buf, (size_t)n);
}

/* The script's KEYS: two keys of one channel, both with its hash tag, so one Redis Cluster
 * slot holds them and one script may touch both. */
void clu__rb_channel_keys(call_t *c, const char *channel, const char *prefix1,
                          const char *prefix2) {
    core_str_t k = {0};
    clu__rb_call_args(c, "2");
    clu__rb_key_of(&k, prefix1, channel);
    clu__rb_call_arg(c, k.ptr, k.len);
    clu__rb_key_of(&k, prefix2, channel);
    clu__rb_call_arg(c, k.ptr, k.len);
    core_str_free(&k);
}

void clu__rb_call_free(call_t *c) {
    for (int i = 2; i < c->argc; i++)
        free(c->argv[i]);
    free(c->channel);
    free(c);
}

static void on_call_reply(redisAsyncContext *ac, void *reply, void *priv);

/* Bookkeeping of the command timeout, for every command sent with a reply callback. */
void clu__rb_cmd_sent(rb_t *rb) {
    if (rb->inflight++ == 0)
        rb->progress_ms = core_now_ms();
}

void clu__rb_cmd_answered(rb_t *rb) {
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
        c->argv[1] = (char *)clu__rb_script_src[c->script];
        c->lens[1] = strlen(clu__rb_script_src[c->script]);
    }
    c->lens[0] = strlen(c->argv[0]);
    c->sent_us = core_now_us();
    if (redisAsyncCommandArgv(rb->cmd.ac, on_call_reply, c, c->argc, (const char **)c->argv,
                              c->lens) != REDIS_OK)
        return CORE_EAGAIN;
    clu__rb_cmd_sent(rb);
    return 0;
}

/* Runs the failed calls queued so far (those their callbacks queue wait for the next turn). */
void clu__rb_failed_drain(rb_t *rb) {
    call_t *c = rb->failed;
    rb->failed = rb->failed_tail = NULL;
    while (c) {
        call_t *next = c->next;
        call_complete(c, NULL, c->status);
        clu__rb_call_free(c);
        c = next;
    }
}

static void on_fail_idle(uv_idle_t *h) {
    rb_t *rb = ((rconn_t *)h->data)->rb;
    clu__rb_failed_drain(rb);
    if (!rb->failed)
        uv_idle_stop(&rb->fail_idle);
}

/* Completes c with status from the loop. */
void clu__rb_call_fail_later(call_t *c, int status) {
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
void clu__rb_call_start(call_t *c) {
    if (c->rb->cmd.connected && call_send(c) == 0)
        return;
    clu__rb_call_fail_later(c, CORE_EAGAIN);
}

static void on_call_reply(redisAsyncContext *ac, void *reply, void *priv) {
    (void)ac;
    call_t *c = priv;
    redisReply *r = reply;
    clu__rb_cmd_answered(c->rb);
    if (r != NULL)
        core_hist_observe(&c->rb->latency[c->script], (double)(core_now_us() - c->sent_us) / 1e6);
    if (r != NULL && r->type == REDIS_REPLY_ERROR && !c->retried && r->str != NULL &&
        strncmp(r->str, "NOSCRIPT", 8) == 0) {
        c->retried = true;
        c->rb->sha[c->script][0] = '\0';
        /* Learn the SHA again so later calls go back to EVALSHA instead of sending the body. */
        if (c->rb->cmd.connected &&
            redisAsyncCommand(c->rb->cmd.ac, clu__rb_on_script_loaded, (void *)(uintptr_t)c->script,
                              "SCRIPT LOAD %s", clu__rb_script_src[c->script]) == REDIS_OK)
            clu__rb_cmd_sent(c->rb);
        if (c->rb->cmd.connected && call_send(c) == 0)
            return;
        r = NULL;
    }
    int status = 0;
    if (r == NULL) {
        status = CORE_EAGAIN; /* the connection went away; the outcome is unknown */
    } else if (r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "PERSISTFULL", 11) == 0) {
        /* The database is behind by the stream's whole cap: refused, temporarily. */
        status = CORE_EAGAIN;
        r = NULL;
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
    call_complete(c, r, status);
    clu__rb_call_free(c);
}

void clu__rb_on_script_loaded(redisAsyncContext *ac, void *reply, void *priv) {
    rb_t *rb = ac->data;
    redisReply *r = reply;
    size_t i = (size_t)(uintptr_t)priv;
    if (rb != NULL)
        clu__rb_cmd_answered(rb);
    if (rb != NULL && r != NULL && r->type == REDIS_REPLY_STRING && r->len == 40)
        memcpy(rb->sha[i], r->str, 41);
}
