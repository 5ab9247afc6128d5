/* cluster: the Redis broker's channel operations: publish (acknowledged only while the node's
 * feed of the channel is live, see cluster_redis.c), history, join/leave and presence. */
#include "cluster/cluster_redis_int.h"

#include <stdlib.h>
#include <string.h>

#include "cluster/cluster_envelope.h"

/* ---- operations ---------------------------------------------------------------------------- */

/* A script's {offset, epoch} answer (publish, history_remove). Returns 0 or CORE_EPROTO. */
static int reply_position(const redisReply *r, uint64_t *off, char epoch[CLU_EPOCH_MAX]) {
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_STRING ||
        r->element[1]->len >= CLU_EPOCH_MAX)
        return CORE_EPROTO;
    *off = (uint64_t)r->element[0]->integer;
    memcpy(epoch, r->element[1]->str, r->element[1]->len);
    epoch[r->element[1]->len] = '\0';
    return 0;
}

static void publish_done(call_t *c, redisReply *r, int status) {
    rb_t *rb = c->rb;
    clu_publish_cb cb = (clu_publish_cb)c->cb;
    uint64_t off = 0;
    char epoch[CLU_EPOCH_MAX] = "";
    /* r is NULL on success for a plain PUBLISH: unstored, no offset, no epoch. */
    if (status == 0 && r != NULL)
        status = reply_position(r, &off, epoch);
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
    clu__rb_cmd_answered(c->rb);
    int status = r == NULL ? CORE_EAGAIN : r->type == REDIS_REPLY_ERROR ? UV_EIO : 0;
    publish_done(c, NULL, status);
    clu__rb_call_free(c);
}

/* PUBLISH of a C-built envelope: unstored publications and join/leave. */
static int publish_envelope(rb_t *rb, const char *channel, const clu_envelope_t *e, call_t *c) {
    char *buf;
    size_t len;
    int rc = clu_env_encode_alloc(e, &buf, &len);
    if (rc != 0)
        return rc;
    core_str_t k = {0};
    clu__rb_key_of(&k, "chat.pub.", channel);
    rc = CORE_EAGAIN;
    if (rb->cmd.connected &&
        redisAsyncCommand(rb->cmd.ac, c ? on_plain_publish : NULL, c, "PUBLISH %b %b", k.ptr, k.len,
                          buf, len) == REDIS_OK) {
        rc = 0;
        if (c)
            clu__rb_cmd_sent(rb);
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

int clu__rb_publish(clu_broker_t *b, const char *channel, const clu_pub_t *pub,
                    const clu_chan_opts_t *opts, clu_publish_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    if (!feed_live(rb, channel)) {
        /* Not sent: it would be acknowledged while this node's subscribers cannot get it. The
         * caller retries once the feed is back, as after any temporary failure. */
        clu__rb_call_fail_later(clu__rb_call_new(rb, 0, publish_done, (void *)cb, ud), CORE_EAGAIN);
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
        call_t *c = clu__rb_call_new(rb, 0, publish_done, (void *)cb, ud);
        int rc = publish_envelope(rb, channel, &e, c);
        if (rc != 0)
            clu__rb_call_fail_later(c, rc);
        return 0;
    }
    call_t *c = clu__rb_call_new(rb, SCRIPT_PUBLISH, publish_done, (void *)cb, ud);
    core_str_t k = {0};
    clu__rb_call_args(c, "3");
    clu__rb_key_of(&k, "chat.meta.", channel);
    clu__rb_call_arg(c, k.ptr, k.len);
    clu__rb_key_of(&k, "chat.history.", channel);
    clu__rb_call_arg(c, k.ptr, k.len);
    /* One stream for the whole cluster: a Redis Cluster deployment would need one per slot
     * range (not built). */
    clu__rb_call_args(c, CLU_PERSIST_KEY);
    clu__rb_call_argu(c, opts->history_size);
    clu__rb_call_argu(c, (uint64_t)opts->history_ttl_s * 1000);
    char epoch[9];
    core_random_id(epoch, 8);
    clu__rb_call_args(c, epoch);
    clu__rb_key_of(&k, "chat.pub.", channel);
    clu__rb_call_arg(c, k.ptr, k.len);
    clu__rb_call_args(c, channel);
    clu__rb_call_arg(c, pub->data, pub->data_len);
    clu__rb_call_arg(c, pub->info ? pub->info : "", pub->info ? pub->info_len : 0);
    clu__rb_call_args(c, pub->info ? "1" : "0");
    clu__rb_call_argu(c, rb->persist_cap);
    clu__rb_call_args(c, pub->plan ? pub->plan : "");
    core_str_free(&k);
    clu__rb_call_start(c);
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

int clu__rb_history(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                    const clu_history_req_t *req, clu_history_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || cb == NULL)
        return CORE_EINVAL;
    uint32_t limit = req->limit < 0 ? rb->max_history_limit : (uint32_t)req->limit;
    if (limit > rb->max_history_limit)
        limit = rb->max_history_limit;
    call_t *c = clu__rb_call_new(rb, SCRIPT_HISTORY, history_done, (void *)cb, ud);
    clu__rb_channel_keys(c, channel, "chat.meta.", "chat.history.");
    clu__rb_call_args(c, req->has_since ? "1" : "0");
    clu__rb_call_argu(c, req->since_offset);
    clu__rb_call_args(c, req->has_since && req->since_epoch ? req->since_epoch : "");
    clu__rb_call_argu(c, limit);
    clu__rb_call_args(c, req->reverse ? "1" : "0");
    char epoch[9];
    core_random_id(epoch, 8);
    clu__rb_call_args(c, epoch);
    clu__rb_call_argu(c, opts ? (uint64_t)opts->history_ttl_s * 1000 : 0);
    clu__rb_call_start(c);
    return 0;
}

static void history_removed(call_t *c, redisReply *r, int status) {
    clu_publish_cb cb = (clu_publish_cb)c->cb;
    uint64_t top = 0;
    char epoch[CLU_EPOCH_MAX] = "";
    if (status == 0)
        status = reply_position(r, &top, epoch);
    cb(status, top, epoch, c->ud);
}

int clu__rb_history_remove(clu_broker_t *b, const char *channel, clu_publish_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || cb == NULL)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_HISTORY_REMOVE, history_removed, (void *)cb, ud);
    clu__rb_channel_keys(c, channel, "chat.meta.", "chat.history.");
    clu__rb_call_start(c);
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

int clu__rb_join(clu_broker_t *b, const char *channel, const char *info, size_t len) {
    return rb_join_leave((rb_t *)b, channel, info, len, true);
}

int clu__rb_leave(clu_broker_t *b, const char *channel, const char *info, size_t len) {
    return rb_join_leave((rb_t *)b, channel, info, len, false);
}

static void ignore_done(call_t *c, redisReply *r, int status) {
    (void)c, (void)r, (void)status;
}

int clu__rb_presence_add(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                         const clu_presence_t *e) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    if (!rb->cmd.connected)
        return CORE_EAGAIN;
    call_t *c = clu__rb_call_new(rb, SCRIPT_PRES_ADD, ignore_done, NULL, NULL);
    clu__rb_channel_keys(c, channel, "chat.presence.", "chat.presexp.");
    clu__rb_call_args(c, e->client);
    /* user NUL info: user ids never contain NUL, and one field keeps add/remove atomic. */
    core_str_t v = {0};
    core_str_append(&v, e->user, strlen(e->user) + 1);
    core_str_append(&v, e->info ? e->info : "", e->info ? e->info_len : 0);
    clu__rb_call_arg(c, v.ptr, v.len);
    core_str_free(&v);
    clu__rb_call_argu(c, opts ? (uint64_t)opts->presence_ttl_s * 1000 : 0);
    core_str_t k = {0};
    clu__rb_key_of(&k, "chat.pub.", channel);
    clu__rb_call_arg(c, k.ptr, k.len);
    core_str_free(&k);
    clu__rb_call_args(c, channel);
    clu__rb_call_args(c, opts && opts->join_leave ? "1" : "0");
    clu__rb_call_start(c);
    return 0;
}

int clu__rb_presence_remove(clu_broker_t *b, const char *channel, const char *client) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing)
        return CORE_EINVAL;
    if (!rb->cmd.connected)
        return CORE_EAGAIN;
    core_str_t k = {0};
    /* Two commands on one connection run in order; a reader between them sees an entry
     * without expiry score, which it returns as present: harmless for a moment. */
    clu__rb_key_of(&k, "chat.presence.", channel);
    redisAsyncCommand(rb->cmd.ac, NULL, NULL, "HDEL %b %s", k.ptr, k.len, client);
    clu__rb_key_of(&k, "chat.presexp.", channel);
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

int clu__rb_presence(clu_broker_t *b, const char *channel, clu_presence_cb cb, void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || cb == NULL)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_PRES_GET, presence_done, (void *)cb, ud);
    clu__rb_channel_keys(c, channel, "chat.presence.", "chat.presexp.");
    clu__rb_call_start(c);
    return 0;
}

int clu__rb_presence_stats(clu_broker_t *b, const char *channel, clu_presence_stats_cb cb,
                           void *ud) {
    rb_t *rb = (rb_t *)b;
    if (rb->closing || cb == NULL)
        return CORE_EINVAL;
    call_t *c = clu__rb_call_new(rb, SCRIPT_PRES_GET, presence_stats_done, (void *)cb, ud);
    clu__rb_channel_keys(c, channel, "chat.presence.", "chat.presexp.");
    clu__rb_call_start(c);
    return 0;
}
