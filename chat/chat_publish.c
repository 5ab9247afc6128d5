/* chat: publish: checks, dedupe, rate limits (local and shared), the broker call, and RPC routing.
 */
#include "chat/chat_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "chat"

/* ---- publish ---- */

typedef struct {
    chat_op_t base;
    char *user;
    uint64_t dedupe;
    chat_method_t method;
} pubop_t;

static void pubop_done(int status, uint64_t offset, const char *epoch, void *ud) {
    pubop_t *op = ud;
    (void)offset;
    (void)epoch;
    chat_node_t *n = op->base.node;
    if (status != 0 && op->dedupe) {
        chat_user_t *u = core_map_get(n->users, op->user);
        if (u)
            chat__dedupe_forget(u, op->dedupe);
    }
    if (status == 0)
        n->st.publications_in++;
    chat_client_t *c = chat__op_client(&op->base);
    if (c) {
        if (status == 0 && op->method == CHAT_M_RPC)
            /* An RPC that publishes (typing) answers with empty data. */
            chat__reply(
                c, &(chat_reply_t){.id = op->base.cmd_id, .method = CHAT_M_RPC, .rpc = {"{}", 2}});
        else if (status == 0)
            chat__reply_empty(c, op->base.cmd_id, op->method);
        else
            chat__reply_broker_error(c, op->base.cmd_id, status);
    }
    free(op->user);
    free(op);
}

static void rate_limited(chat_client_t *c, uint32_t id, int64_t wait_ms) {
    char msg[96];
    snprintf(msg, sizeof msg, "too many requests: retry_after_ms=%" PRId64, wait_ms);
    c->node->st.rate_limited++;
    chat__reply_error(c, id, CORE_REPLY_RATE_LIMITED, msg);
}

static void do_publish(chat_client_t *c, uint32_t cmd_id, chat_method_t method, const char *channel,
                       const chat_ns_t *ns, const char *data, size_t len, const chat_sub_t *s,
                       uint64_t dedupe) {
    chat_node_t *n = c->node;
    pubop_t *op = core_calloc(1, sizeof *op);
    chat__op_init(&op->base, c, cmd_id);
    op->user = core_strdup(c->user->name);
    op->dedupe = dedupe;
    op->method = method;
    size_t info_len = 0;
    /* A subscriber's own record, built once for presence and join/leave, carries its
     * channel info; subscriptions in namespaces without those keep none. */
    char *info = s && s->info ? NULL : chat__client_info(c, NULL, &info_len);
    clu_pub_t p = {0,
                   data,
                   len,
                   info ? info : s->info,
                   info ? info_len : s->info_len,
                   auth_plan_name(c->plan)};
    clu_chan_opts_t o = chat__chan_opts(n, ns);
    int rc = clu_publish(n->broker, channel, &p, &o, pubop_done, op);
    free(info);
    if (rc != 0)
        pubop_done(rc, 0, "", op);
}

/* ---- rate limits ---- */

/* A publication that passed every check but the rate limit. The limit is the user's across the
 * cluster when the broker can share it (one token bucket in Redis for all nodes) and this
 * node's own takes, which can only be stricter; while the shared one is unreachable the node's
 * own decides, counted, because refusing every publish for a Redis hiccup would be worse than a
 * looser limit. */

/* A safety bound on the publishes one client may have waiting for the shared limiter. The
 * local limiter already refuses a flood before it reaches Redis (a node never asks for more
 * tokens than the user's limit gives), so this only matters with huge configured bursts. */
#define LIMITS_WAITING_MAX 1024

typedef struct {
    chat_op_t base;
    char *user;
    chat_method_t method;
    chat_limit_kind_t kind;
    char *channel;
    const chat_ns_t *ns;
    char *data;
    size_t len;
    uint64_t dedupe;
} limitop_t;

static const chat_rate_t *limit_rate(chat_client_t *c, chat_limit_kind_t kind) {
    return kind == LIMIT_PUB ? &c->node->cfg.plan_rate[c->plan] : &c->node->cfg.typing_rate;
}

static int64_t limit_take_local(chat_client_t *c, chat_limit_kind_t kind) {
    core_gcra_t *g = kind == LIMIT_PUB ? &c->user->pub_gcra : &c->user->typing_gcra;
    return core_gcra_take(g, (double)core_now_ms(), limit_rate(c, kind));
}

/* Publishes once the limit allowed it. A publish is tied to an active subscription, which may
 * have gone while the shared limiter answered. */
static void publish_allowed(chat_client_t *c, uint32_t cmd_id, chat_method_t method,
                            const char *channel, const chat_ns_t *ns, const char *data, size_t len,
                            uint64_t dedupe) {
    const chat_sub_t *s = NULL;
    if (method == CHAT_M_PUBLISH) {
        s = chat__client_find_sub(c, channel);
        if (!s || s->state != SUB_ACTIVE) {
            if (dedupe)
                chat__dedupe_forget(c->user, dedupe);
            chat__reply_error(c, cmd_id, CORE_REPLY_PERMISSION_DENIED, NULL);
            return;
        }
    }
    do_publish(c, cmd_id, method, channel, ns, data, len, s, dedupe);
}

static void limit_refused(chat_client_t *c, uint32_t cmd_id, uint64_t dedupe, int64_t wait) {
    if (dedupe)
        chat__dedupe_forget(c->user, dedupe);
    rate_limited(c, cmd_id, wait);
}

static void limit_done(int status, int64_t wait, void *ud) {
    limitop_t *op = ud;
    chat_node_t *n = op->base.node;
    chat_client_t *c = chat__client_lookup(n, op->base.client);
    if (c && c->limits_waiting > 0)
        c->limits_waiting--;
    if (!c || c->state != CL_CONNECTED) {
        /* Gone before the answer: nothing was published, so a retry must not be taken for a
         * duplicate (the user may live on through another connection). */
        chat_user_t *u = op->dedupe ? core_map_get(n->users, op->user) : NULL;
        if (u)
            chat__dedupe_forget(u, op->dedupe);
    } else {
        if (status != 0) {
            /* The local token was taken before asking: the local limit alone decides. */
            n->st.rate_limit_fallbacks++;
            wait = 0;
        }
        if (wait > 0)
            limit_refused(c, op->base.cmd_id, op->dedupe, wait);
        else
            publish_allowed(c, op->base.cmd_id, op->method, op->channel, op->ns, op->data, op->len,
                            op->dedupe);
    }
    free(op->channel);
    free(op->data);
    free(op->user);
    free(op);
}

void chat__gated_publish(chat_client_t *c, uint32_t cmd_id, chat_method_t method,
                         chat_limit_kind_t kind, const char *channel, const chat_ns_t *ns,
                         const char *data, size_t len, uint64_t dedupe) {
    chat_node_t *n = c->node;
    const chat_rate_t *rate = limit_rate(c, kind);
    /* This node's own takes: when they alone exceed the limit the shared bucket would refuse
     * too, so a flood is refused here without a round trip to Redis. */
    int64_t wait = limit_take_local(c, kind);
    if (wait > 0) {
        limit_refused(c, cmd_id, dedupe, wait);
        return;
    }
    if (rate->rate > 0 && clu_has_shared_limits(n->broker)) {
        if (c->limits_waiting >= LIMITS_WAITING_MAX) {
            limit_refused(c, cmd_id, dedupe, 1);
            return;
        }
        c->limits_waiting++;
        limitop_t *op = core_calloc(1, sizeof *op);
        chat__op_init(&op->base, c, cmd_id);
        op->user = core_strdup(c->user->name);
        op->method = method;
        op->kind = kind;
        op->channel = core_strdup(channel);
        op->ns = ns;
        op->data = core_strndup(data, len);
        op->len = len;
        op->dedupe = dedupe;
        core_str_t key = {0};
        core_str_appends(&key, kind == LIMIT_PUB ? "pub:" : "typing:");
        core_str_appends(&key, c->user->name);
        int rc = clu_rate_take(n->broker, key.ptr, core_gcra_interval_us(rate),
                               rate->burst ? rate->burst : 1, limit_done, op);
        core_str_free(&key);
        if (rc != 0)
            limit_done(rc, 0, op);
        return;
    }
    publish_allowed(c, cmd_id, method, channel, ns, data, len, dedupe);
}

/* A take of the user's limit for something other than a publish (an RPC such as llm.ask). */
typedef struct {
    chat_op_t base;
    void (*done)(void *ud, bool allowed);
    void *ud;
} takeop_t;

static void take_done(int status, int64_t wait, void *ud) {
    takeop_t *op = ud;
    chat_node_t *n = op->base.node;
    chat_client_t *c = chat__op_client(&op->base);
    if (c && c->limits_waiting > 0)
        c->limits_waiting--;
    bool allowed = false;
    if (c) {
        if (status != 0) {
            n->st.rate_limit_fallbacks++; /* the local token decided */
            wait = 0;
        }
        if (wait > 0)
            rate_limited(c, op->base.cmd_id, wait);
        else
            allowed = true;
    }
    op->done(op->ud, allowed);
    free(op);
}

void chat__limit_take(chat_client_t *c, uint32_t cmd_id, chat_limit_kind_t kind,
                      void (*done)(void *ud, bool allowed), void *ud) {
    chat_node_t *n = c->node;
    const chat_rate_t *rate = limit_rate(c, kind);
    int64_t wait = limit_take_local(c, kind);
    if (wait > 0 || (rate->rate > 0 && clu_has_shared_limits(n->broker) &&
                     c->limits_waiting >= LIMITS_WAITING_MAX)) {
        rate_limited(c, cmd_id, wait > 0 ? wait : 1);
        done(ud, false);
        return;
    }
    if (rate->rate <= 0 || !clu_has_shared_limits(n->broker)) {
        done(ud, true);
        return;
    }
    c->limits_waiting++;
    takeop_t *op = core_calloc(1, sizeof *op);
    chat__op_init(&op->base, c, cmd_id);
    op->done = done;
    op->ud = ud;
    core_str_t key = {0};
    core_str_appends(&key, kind == LIMIT_PUB ? "pub:" : "typing:");
    core_str_appends(&key, c->user->name);
    int rc = clu_rate_take(n->broker, key.ptr, core_gcra_interval_us(rate),
                           rate->burst ? rate->burst : 1, take_done, op);
    core_str_free(&key);
    if (rc != 0)
        take_done(rc, 0, op);
}

void chat__handle_publish(chat_client_t *c, const chat_req_t *cmd) {
    chat_node_t *n = c->node;
    const char *channel = cmd->publish.channel;
    const char *data = cmd->publish.data;
    const json_t *doc = cmd->publish.doc;
    if (!channel || (!data && !doc)) {
        chat__reply_error(c, cmd->id, CORE_REPLY_BAD_REQUEST,
                          "bad request: channel and data required");
        return;
    }
    const char *bad = chat__channel_problem(channel);
    if (bad) {
        chat__reply_error(c, cmd->id, CORE_REPLY_BAD_REQUEST, bad);
        return;
    }
    const chat_ns_t *ns = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, channel);
    if (!ns) {
        chat__reply_error(c, cmd->id, CORE_REPLY_UNKNOWN_CHANNEL, NULL);
        return;
    }
    chat_sub_t *s = chat__client_find_sub(c, channel);
    if (!ns->allow_publish || !s || s->state != SUB_ACTIVE) {
        chat__reply_error(c, cmd->id, CORE_REPLY_PERMISSION_DENIED, NULL);
        return;
    }
    char err[128];
    char msg_id[65] = "";
    char *txt;
    if (ns->schema == CHAT_SCHEMA_CHAT) {
        /* The data is JSON in every codec; the chat schema checks its fields. */
        json_t *parsed =
            doc ? NULL : json_loadb(data, cmd->publish.data_len, JSON_DECODE_ANY, NULL);
        const json_t *d = doc ? doc : parsed;
        txt = d ? chat_message_normalize(d, ns->max_message_bytes, core_wall_ms(), msg_id, err,
                                         sizeof err)
                : NULL;
        if (!d)
            snprintf(err, sizeof err, "message must be an object");
        json_decref(parsed);
    } else if (doc) {
        txt = json_dumps(doc, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!txt)
            snprintf(err, sizeof err, "bad request: data cannot be encoded");
    } else {
        txt = core_strndup(data, cmd->publish.data_len);
    }
    if (!txt) {
        chat__reply_error(c, cmd->id, CORE_REPLY_BAD_REQUEST, err);
        return;
    }
    size_t len = strlen(txt);
    if (len > (size_t)ns->max_message_bytes + 256) {
        free(txt);
        chat__reply_error(c, cmd->id, CORE_REPLY_BAD_REQUEST, "message too large");
        return;
    }
    uint64_t now = core_now_ms();
    uint64_t key = 0;
    if (msg_id[0]) {
        key = chat__dedupe_key(channel, msg_id);
        if (chat__dedupe_seen(n, c->user, key, now)) {
            /* A retried send: the first one is (or is being) published; answer as it was. */
            n->st.dedupe_hits++;
            free(txt);
            chat__reply_empty(c, cmd->id, CHAT_M_PUBLISH);
            return;
        }
    }
    if (key)
        chat__dedupe_remember(c->user, key, now);
    chat__gated_publish(c, cmd->id, CHAT_M_PUBLISH, LIMIT_PUB, channel, ns, txt, len, key);
    free(txt);
}
