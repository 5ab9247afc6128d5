/* chat: the node, its clients and channels, and the command handlers. */
#include "chat/chat_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "chat"
#define MAX_CHANNEL_BYTES 255

const int chat_error_codes[16] = {100, 101, 102, 103, 104, 105, 106, 107,
                                  108, 109, 110, 111, 112, 429, 402, 0};

static int error_slot(int code) {
    for (int i = 0; i < 15; i++)
        if (chat_error_codes[i] == code)
            return i;
    return 15;
}

/* ---- output helpers ---- */

static void client_send_str(chat_client_t *c, core_str_t *s) {
    core_buf_t *b = core_buf_from(0, s->ptr, s->len);
    c->t->send(c->tctx, b);
    core_buf_unref(b);
}

static void client_close(chat_client_t *c, int code, const char *reason) {
    if (c->state == CL_CLOSING)
        return;
    c->state = CL_CLOSING;
    c->t->close(c->tctx, code, reason);
}

static void reply_error(chat_client_t *c, uint32_t id, int code, const char *message,
                        bool temporary) {
    c->node->st.errors[error_slot(code)]++;
    /* A client that keeps sending what cannot succeed is broken or hostile: stop serving it.
     * Temporary errors (rate limits, unavailable backends) are the server's doing and do not
     * count. */
    if (!temporary && c->node->cfg.max_errors && ++c->errors > c->node->cfg.max_errors) {
        client_close(c, 3509, "too many errors");
        return;
    }
    core_str_t s = {0};
    core_str_appendf(&s, "{\"id\":%u,\"error\":{\"code\":%d,\"message\":", id, code);
    core_str_append_json_string(&s, message, strlen(message));
    if (temporary)
        core_str_appends(&s, ",\"temporary\":true");
    core_str_appends(&s, "}}");
    client_send_str(c, &s);
    core_str_free(&s);
}

/* Sends {"id":N,"<method>":<result text>}. */
static void reply_raw(chat_client_t *c, uint32_t id, chat_method_t m, const char *result,
                      size_t len) {
    core_str_t s = {0};
    core_str_reserve(&s, len + 48);
    core_str_appendf(&s, "{\"id\":%u,\"%s\":", id, chat_method_name(m));
    core_str_append(&s, result, len);
    core_str_appends(&s, "}");
    client_send_str(c, &s);
    core_str_free(&s);
}

/* Appends {"data":...,"offset":N,"info":...} for a publication. */
static void append_pub(core_str_t *s, const clu_pub_t *p) {
    core_str_appends(s, "{\"data\":");
    core_str_append(s, p->data, p->data_len);
    if (p->offset)
        core_str_appendf(s, ",\"offset\":%" PRIu64, p->offset);
    if (p->info && p->info_len) {
        core_str_appends(s, ",\"info\":");
        core_str_append(s, p->info, p->info_len);
    }
    core_str_appends(s, "}");
}

static const char *json_str(const json_t *obj, const char *key) {
    return json_string_value(json_object_get(obj, key));
}

/* ---- users ---- */

static chat_user_t *user_get(chat_node_t *n, const char *name) {
    chat_user_t *u = core_map_get(n->users, name);
    if (!u) {
        u = core_calloc(1, sizeof *u);
        u->name = core_strdup(name);
        core_map_put(n->users, name, u);
    }
    return u;
}

static void user_free(chat_user_t *u) {
    free(u->dedupe);
    free(u->name);
    free(u);
}

/* A user with no connection is kept until its limiter state has drained, so reconnecting does
 * not reset a rate limit. */
static void user_maybe_free(chat_node_t *n, chat_user_t *u, double now_ms) {
    int64_t now_us = (int64_t)(now_ms * 1000.0);
    if (u->nconns == 0 && u->pub_gcra.tat_us <= now_us && u->typing_gcra.tat_us <= now_us) {
        core_map_del(n->users, u->name);
        user_free(u);
    }
}

static uint64_t dedupe_key(const char *channel, const char *msg_id) {
    core_str_t s = {0};
    core_str_appends(&s, channel);
    core_str_append(&s, "\n", 1);
    core_str_appends(&s, msg_id);
    uint64_t h = core_hash(s.ptr, s.len);
    core_str_free(&s);
    return h ? h : 1;
}

static bool dedupe_seen(chat_node_t *n, chat_user_t *u, uint64_t key, uint64_t now) {
    if (!u->dedupe)
        return false;
    uint64_t window = (uint64_t)n->cfg.dedupe_window_s * 1000;
    for (int i = 0; i < CHAT_DEDUPE_SLOTS; i++)
        if (u->dedupe[i].key == key && now - u->dedupe[i].at_ms <= window)
            return true;
    return false;
}

static void dedupe_remember(chat_user_t *u, uint64_t key, uint64_t now) {
    if (!u->dedupe)
        u->dedupe = core_calloc(CHAT_DEDUPE_SLOTS, sizeof *u->dedupe);
    u->dedupe[u->dedupe_next] = (chat_dedupe_slot_t){key, now};
    u->dedupe_next = (u->dedupe_next + 1) % CHAT_DEDUPE_SLOTS;
}

static void dedupe_forget(chat_user_t *u, uint64_t key) {
    if (!u->dedupe)
        return;
    for (int i = 0; i < CHAT_DEDUPE_SLOTS; i++)
        if (u->dedupe[i].key == key)
            u->dedupe[i].key = 0;
}

/* ---- channels and subscriptions ---- */

static chat_channel_t *channel_get(chat_node_t *n, const char *name, const chat_ns_t *ns) {
    chat_channel_t *ch = core_map_get(n->channels, name);
    if (!ch) {
        ch = core_calloc(1, sizeof *ch);
        ch->name = core_strdup(name);
        ch->ns = ns;
        core_map_put(n->channels, name, ch);
        n->st.channels++;
        clu_subscribe(n->broker, name);
    }
    return ch;
}

static void channel_add(chat_channel_t *ch, chat_sub_t *s) {
    if (ch->n == ch->cap) {
        ch->cap = ch->cap ? ch->cap * 2 : 4;
        ch->subs = core_realloc(ch->subs, ch->cap * sizeof *ch->subs);
    }
    s->idx = ch->n;
    ch->subs[ch->n++] = s;
    s->ch = ch;
}

static void channel_drop_held(chat_channel_t *ch);

static void channel_remove(chat_node_t *n, chat_sub_t *s) {
    chat_channel_t *ch = s->ch;
    chat_sub_t *last = ch->subs[--ch->n];
    ch->subs[s->idx] = last;
    last->idx = s->idx;
    if (ch->n == 0) {
        clu_unsubscribe(n->broker, ch->name);
        core_map_del(n->channels, ch->name);
        n->st.channels--;
        if (ch->stalled)
            n->stalled--;
        channel_drop_held(ch);
        free(ch->subs);
        free(ch->name);
        free(ch);
    }
}

static chat_sub_t *client_find_sub(chat_client_t *c, const char *channel) {
    for (chat_sub_t *s = c->subs; s; s = s->next)
        if (strcmp(s->ch->name, channel) == 0)
            return s;
    return NULL;
}

static clu_chan_opts_t chan_opts(const chat_node_t *n, const chat_ns_t *ns) {
    return (clu_chan_opts_t){ns->history_size, ns->history_ttl_s, n->cfg.presence_ttl_s,
                             ns->join_leave};
}

/* ClientInfo JSON: {"user","client","conn_info","chan_info"}. */
static char *client_info_json(const chat_client_t *c, const char *chan_info, size_t *len) {
    core_str_t s = {0};
    core_str_appends(&s, "{\"user\":");
    core_str_append_json_string(&s, c->user->name, strlen(c->user->name));
    core_str_appends(&s, ",\"client\":");
    core_str_append_json_string(&s, c->id, strlen(c->id));
    if (c->conn_info) {
        core_str_appends(&s, ",\"conn_info\":");
        core_str_appends(&s, c->conn_info);
    }
    if (chan_info) {
        core_str_appends(&s, ",\"chan_info\":");
        core_str_appends(&s, chan_info);
    }
    core_str_appends(&s, "}");
    *len = s.len;
    return s.ptr;
}

static chat_sub_t *sub_new(chat_client_t *c, const char *channel, const chat_ns_t *ns,
                           const char *chan_info) {
    chat_node_t *n = c->node;
    chat_sub_t *s = core_calloc(1, sizeof *s);
    s->c = c;
    s->gen = ++n->next_gen;
    s->info = client_info_json(c, chan_info, &s->info_len);
    channel_add(channel_get(n, channel, ns), s);
    s->next = c->subs;
    c->subs = s;
    c->nsubs++;
    return s;
}

static void sub_drop_pending(chat_sub_t *s) {
    for (uint32_t i = 0; i < s->npending; i++)
        core_buf_unref(s->pending[i].buf);
    free(s->pending);
    s->pending = NULL;
    s->npending = s->cap_pending = 0;
}

/* Removes the subscription: presence, leave event, channel membership. */
static void sub_remove(chat_sub_t *s) {
    chat_client_t *c = s->c;
    chat_node_t *n = c->node;
    chat_channel_t *ch = s->ch;
    bool leave = s->presence_added && ch->ns->join_leave;
    char *name = leave ? core_strdup(ch->name) : NULL;
    if (s->presence_added)
        clu_presence_remove(n->broker, ch->name, c->id);
    for (chat_sub_t **pp = &c->subs; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    c->nsubs--;
    /* Out of the channel first: the leaving client does not get its own leave event, and the
     * channel (and its name) may be freed here when it was the last subscriber. */
    channel_remove(n, s);
    if (leave) {
        clu_leave(n->broker, name, s->info, s->info_len);
        free(name);
    }
    sub_drop_pending(s);
    free(s->info);
    free(s);
}

/* Makes a subscription live: buffered publications newer than what the subscribe answer
 * carried go out in order, then presence and the join event. */
static void channel_release_held(chat_node_t *n, chat_channel_t *ch);
static void channel_fill(chat_node_t *n, chat_channel_t *ch);
static void channel_fanout(chat_node_t *n, chat_channel_t *ch, core_buf_t *b, uint64_t offset);

static void sub_activate(chat_sub_t *s, uint64_t top, const char *epoch) {
    chat_client_t *c = s->c;
    chat_node_t *n = c->node;
    chat_channel_t *ch = s->ch;
    s->state = SUB_ACTIVE;
    s->floor = top;
    for (uint32_t i = 0; i < s->npending; i++) {
        chat_pending_pub_t *p = &s->pending[i];
        if (p->offset == 0 || p->offset > top) {
            c->t->send(c->tctx, p->buf);
            n->st.publications_out++;
        }
    }
    sub_drop_pending(s);
    if (ch->ns->history_size && !ch->positioned) {
        /* The first answer tells where the channel's feed starts for this node; what was held
         * meanwhile goes out in order, gaps filled from history. */
        ch->positioned = true;
        ch->last = top;
        snprintf(ch->epoch, sizeof ch->epoch, "%s", epoch);
        /* Held publications this answer covered may be newer than what another subscription
         * still waiting for its own answer will cover: they go to those pending lists (this
         * subscription skips them by its floor), then out of the channel. */
        for (uint32_t i = 0; i < ch->nheld && ch->held[i].offset <= top; i++)
            channel_fanout(n, ch, ch->held[i].buf, ch->held[i].offset);
        channel_release_held(n, ch);
        if (ch->resync_wanted) {
            ch->resync_wanted = false;
            channel_fill(n, ch);
        }
    }
    const chat_ns_t *ns = s->ch->ns;
    if (ns->presence || ns->join_leave) {
        clu_presence_t e = {c->id, c->user->name, s->info, s->info_len};
        clu_chan_opts_t o = chan_opts(n, ns);
        clu_presence_add(n->broker, s->ch->name, &o, &e);
        s->presence_added = true;
        if (ns->join_leave)
            clu_join(n->broker, s->ch->name, s->info, s->info_len);
    }
}

/* ---- subscribe flow shared by the subscribe command and server-side subscriptions ---- */

typedef enum { SUBOP_COMMAND, SUBOP_CONNECT } subop_kind_t;

typedef struct connect_op connect_op_t;

typedef struct {
    chat_node_t *node;
    char client[CHAT_CLIENT_ID_LEN + 1];
    char *channel;
    uint64_t gen;
    subop_kind_t kind;
    uint32_t cmd_id;
    bool recovering;
    uint64_t since;
    int64_t sub_exp; /* subscription token expiry for the answer, 0 = none */
    connect_op_t *conn;
} subop_t;

struct connect_op {
    chat_node_t *node;
    char client[CHAT_CLIENT_ID_LEN + 1];
    uint32_t cmd_id;
    uint32_t pending;
    core_str_t subs; /* "\"channel\":{...},..." */
    uint64_t *tops;  /* per channel top and epoch, in the order of `channels` */
    char (*epochs)[CLU_EPOCH_MAX];
    char **channels;
    uint64_t *gens;
    uint32_t nchannels;
};

static chat_client_t *client_lookup(chat_node_t *n, const char *id) {
    return core_map_get(n->clients, id);
}

static chat_sub_t *sub_lookup(chat_node_t *n, const char *client, const char *channel,
                              uint64_t gen) {
    chat_client_t *c = client_lookup(n, client);
    if (!c || c->state == CL_CLOSING)
        return NULL;
    chat_sub_t *s = client_find_sub(c, channel);
    return s && s->gen == gen ? s : NULL;
}

/* Builds the SubscribeResult text for a history answer. */
static void subscribe_result(core_str_t *out, const chat_ns_t *ns, const subop_t *op, int status,
                             const clu_pub_t *pubs, size_t n, uint64_t top, const char *epoch) {
    core_str_appends(out, "{");
    bool first = true;
#define SEP() (first ? (first = false, "") : ",")
    if (ns->history_size > 0) {
        core_str_appendf(out, "%s\"recoverable\":true,\"positioned\":true", SEP());
        core_str_appendf(out, ",\"epoch\":");
        core_str_append_json_string(out, epoch, strlen(epoch));
        core_str_appendf(out, ",\"offset\":%" PRIu64, top);
    }
    if (op->recovering) {
        bool ok = chat_recovery_complete(status, pubs, n, op->since, top);
        core_str_appendf(out, "%s\"was_recovering\":true", SEP());
        if (ok) {
            core_str_appends(out, ",\"recovered\":true");
            if (n > 0) {
                core_str_appends(out, ",\"publications\":[");
                for (size_t i = 0; i < n; i++) {
                    if (i)
                        core_str_appends(out, ",");
                    append_pub(out, &pubs[i]);
                }
                core_str_appends(out, "]");
            }
        }
    }
    if (op->sub_exp > 0) {
        int64_t ttl = op->sub_exp - core_wall_s();
        core_str_appendf(out, "%s\"expires\":true,\"ttl\":%" PRId64, SEP(), ttl > 0 ? ttl : 0);
    }
#undef SEP
    core_str_appends(out, "}");
}

static void connect_finish(connect_op_t *co);

static void subop_done(int status, const clu_pub_t *pubs, size_t n, uint64_t top, const char *epoch,
                       void *ud) {
    subop_t *op = ud;
    chat_node_t *node = op->node;
    chat_sub_t *s = sub_lookup(node, op->client, op->channel, op->gen);
    if (s) {
        if (status != 0 && status != CORE_EUNRECOVERABLE) {
            /* The broker could not answer: the subscribe fails as a whole. */
            chat_client_t *c = s->c;
            sub_remove(s);
            /* A server-side subscription that failed is left out of the connect answer. */
            if (op->kind == SUBOP_COMMAND)
                reply_error(c, op->cmd_id, 100, "internal error", true);
        } else {
            core_str_t res = {0};
            subscribe_result(&res, s->ch->ns, op, status, pubs, n, top, epoch);
            if (op->kind == SUBOP_COMMAND) {
                reply_raw(s->c, op->cmd_id, CHAT_M_SUBSCRIBE, res.ptr, res.len);
                sub_activate(s, top, epoch);
            } else {
                connect_op_t *co = op->conn;
                if (co->subs.len)
                    core_str_appends(&co->subs, ",");
                core_str_append_json_string(&co->subs, op->channel, strlen(op->channel));
                core_str_appends(&co->subs, ":");
                core_str_append(&co->subs, res.ptr, res.len);
                for (uint32_t i = 0; i < co->nchannels; i++)
                    if (strcmp(co->channels[i], op->channel) == 0) {
                        co->tops[i] = top;
                        snprintf(co->epochs[i], CLU_EPOCH_MAX, "%s", epoch);
                    }
            }
            core_str_free(&res);
        }
    }
    if (op->kind == SUBOP_CONNECT) {
        connect_op_t *co = op->conn;
        if (--co->pending == 0)
            connect_finish(co);
    }
    free(op->channel);
    free(op);
}

/* Starts a subscription: registers it (pending) so no publication is missed, then asks the
 * broker for the channel position or the publications to recover. */
static void sub_start(chat_sub_t *s, subop_t *op, bool recover, uint64_t offset,
                      const char *epoch) {
    chat_node_t *n = s->c->node;
    const chat_ns_t *ns = s->ch->ns;
    op->node = n;
    memcpy(op->client, s->c->id, sizeof op->client);
    op->channel = core_strdup(s->ch->name);
    op->gen = s->gen;
    if (ns->history_size == 0) {
        subop_done(0, NULL, 0, 0, "", op);
        return;
    }
    clu_history_req_t req = {0};
    if (recover) {
        op->recovering = true;
        op->since = offset;
        req.has_since = true;
        req.since_offset = offset;
        req.since_epoch = epoch ? epoch : "";
        req.limit = (int32_t)n->cfg.max_recover;
    }
    clu_chan_opts_t o = chan_opts(n, ns);
    int rc = clu_history(n->broker, s->ch->name, &o, &req, subop_done, op);
    if (rc != 0)
        subop_done(rc, NULL, 0, 0, "", op);
}

/* ---- connect ---- */

static void connect_op_free(connect_op_t *co) {
    for (uint32_t i = 0; i < co->nchannels; i++)
        free(co->channels[i]);
    free(co->channels);
    free(co->tops);
    free(co->epochs);
    free(co->gens);
    core_str_free(&co->subs);
    free(co);
}

/* Opens a connect or refresh result: {"client","version" and, with a token exp, "expires",
 * "ttl" (the caller closes the object). */
static void append_identity(core_str_t *s, const chat_client_t *c) {
    core_str_appends(s, "{\"client\":");
    core_str_append_json_string(s, c->id, strlen(c->id));
    core_str_appends(s, ",\"version\":");
    core_str_append_json_string(s, c->node->cfg.version, strlen(c->node->cfg.version));
    if (c->has_exp) {
        int64_t ttl = c->exp - core_wall_s();
        core_str_appendf(s, ",\"expires\":true,\"ttl\":%" PRId64, ttl > 0 ? ttl : 0);
    }
}

static void connect_finish(connect_op_t *co) {
    chat_node_t *n = co->node;
    chat_client_t *c = client_lookup(n, co->client);
    if (!c || c->state != CL_CONNECTING) {
        connect_op_free(co);
        return;
    }
    core_str_t s = {0};
    append_identity(&s, c);
    core_str_appendf(&s, ",\"ping\":%u,\"pong\":true", n->cfg.ping_interval_s);
    core_str_appends(&s, ",\"node\":");
    core_str_append_json_string(&s, n->cfg.node_id, strlen(n->cfg.node_id));
    if (co->subs.len) {
        core_str_appends(&s, ",\"subs\":{");
        core_str_append(&s, co->subs.ptr, co->subs.len);
        core_str_appends(&s, "}");
    }
    core_str_appends(&s, "}");
    c->state = CL_CONNECTED;
    c->counted = true;
    n->st.connections++;
    uint64_t now = core_now_ms();
    c->next_ping_ms = now + (uint64_t)n->cfg.ping_interval_s * 1000;
    reply_raw(c, co->cmd_id, CHAT_M_CONNECT, s.ptr, s.len);
    core_str_free(&s);
    for (uint32_t i = 0; i < co->nchannels; i++) {
        chat_sub_t *sub = sub_lookup(n, c->id, co->channels[i], co->gens[i]);
        if (sub)
            sub_activate(sub, co->tops[i], co->epochs[i]);
    }
    connect_op_free(co);
    if (c->held.len) {
        core_str_t held = c->held;
        c->held = (core_str_t){0};
        chat_client_on_frame(c, held.ptr, held.len);
        core_str_free(&held);
    }
}

static bool channel_name_ok(const char *ch) {
    size_t len = strlen(ch);
    return len > 0 && len <= MAX_CHANNEL_BYTES;
}

static void handle_connect(chat_client_t *c, const chat_cmd_t *cmd) {
    chat_node_t *n = c->node;
    if (c->state != CL_NEW) {
        client_close(c, 3501, "bad request");
        return;
    }
    const char *token = json_str(cmd->params, "token");
    if (!token || !*token) {
        client_close(c, 3500, "invalid token");
        return;
    }
    auth_verify_opts_t vo = {n->cfg.audience, n->cfg.issuer, n->cfg.jwt_leeway_s, 0};
    auth_claims_t cl;
    int rc = auth_verify_connection(n->cfg.keys, token, strlen(token), &vo, &cl);
    if (rc == AUTH_E_EXPIRED) {
        reply_error(c, cmd->id, 109, "token expired", false);
        return;
    }
    if (rc != 0) {
        CORE_LOGD(MOD, "connect refused", "client=%s remote=%s why=\"%s\"", c->id, c->remote,
                  auth_strerror(rc));
        client_close(c, 3500, "invalid token");
        return;
    }
    chat_user_t *u = user_get(n, cl.sub);
    if (u->nconns >= n->cfg.max_conns_per_user) {
        auth_claims_clear(&cl);
        client_close(c, 3504, "connection limit");
        return;
    }
    /* Server-side subscriptions: the token's channels plus the user's personal channel. */
    size_t nclaim = cl.channels ? json_array_size(cl.channels) : 0;
    char personal[MAX_CHANNEL_BYTES + 16];
    bool has_personal = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, "personal:") &&
                        strlen(cl.sub) + 10 <= MAX_CHANNEL_BYTES && !strchr(cl.sub, ',');
    snprintf(personal, sizeof personal, "personal:#%s", cl.sub);
    if (nclaim + has_personal > n->cfg.max_channels_per_conn) {
        auth_claims_clear(&cl);
        client_close(c, 3505, "channel limit");
        return;
    }
    c->user = u;
    u->nconns++;
    c->plan = cl.plan;
    c->has_exp = cl.has_exp;
    c->exp = cl.exp;
    if (cl.info)
        c->conn_info = json_dumps(cl.info, JSON_COMPACT | JSON_ENCODE_ANY);
    c->state = CL_CONNECTING;

    connect_op_t *co = core_calloc(1, sizeof *co);
    co->node = n;
    memcpy(co->client, c->id, sizeof co->client);
    co->cmd_id = cmd->id;
    co->channels = core_calloc(nclaim + 1, sizeof *co->channels);
    co->tops = core_calloc(nclaim + 1, sizeof *co->tops);
    co->epochs = core_calloc(nclaim + 1, sizeof *co->epochs);
    co->gens = core_calloc(nclaim + 1, sizeof *co->gens);
    json_t *recover = json_object_get(cmd->params, "subs");
    for (size_t i = 0; i <= nclaim; i++) {
        const char *ch = i < nclaim ? json_string_value(json_array_get(cl.channels, i))
                                    : (has_personal ? personal : NULL);
        if (!ch || !channel_name_ok(ch) || client_find_sub(c, ch))
            continue;
        const chat_ns_t *ns = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, ch);
        if (!ns) {
            CORE_LOGW(MOD, "token channel in unknown namespace", "channel=%s", ch);
            continue;
        }
        chat_sub_t *s = sub_new(c, ch, ns, NULL);
        s->server_side = true;
        s->join_leave = ns->join_leave;
        co->channels[co->nchannels] = core_strdup(ch);
        co->gens[co->nchannels] = s->gen;
        co->nchannels++;
    }
    auth_claims_clear(&cl);
    /* Count every pending subscription before starting any: a broker that answers
     * synchronously would otherwise finish the connect after the first. */
    co->pending = co->nchannels + 1;
    for (uint32_t i = 0; i < co->nchannels; i++) {
        chat_sub_t *s = client_find_sub(c, co->channels[i]);
        json_t *r = json_object_get(recover, co->channels[i]);
        bool rec = json_is_true(json_object_get(r, "recover"));
        json_int_t off = json_integer_value(json_object_get(r, "offset"));
        subop_t *op = core_calloc(1, sizeof *op);
        op->kind = SUBOP_CONNECT;
        op->conn = co;
        sub_start(s, op, rec, off > 0 ? (uint64_t)off : 0, json_str(r, "epoch"));
    }
    if (--co->pending == 0)
        connect_finish(co);
}

/* ---- subscribe / unsubscribe ---- */

static void handle_subscribe(chat_client_t *c, const chat_cmd_t *cmd) {
    chat_node_t *n = c->node;
    const char *channel = json_str(cmd->params, "channel");
    if (!channel || !channel_name_ok(channel)) {
        reply_error(c, cmd->id, 107, "bad request: channel required", false);
        return;
    }
    const chat_ns_t *ns = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, channel);
    if (!ns) {
        reply_error(c, cmd->id, 102, "unknown channel", false);
        return;
    }
    if (client_find_sub(c, channel)) {
        reply_error(c, cmd->id, 105, "already subscribed", false);
        return;
    }
    if (c->nsubs >= n->cfg.max_channels_per_conn) {
        reply_error(c, cmd->id, 106, "limit exceeded: too many channels", false);
        return;
    }
    const char *token = json_str(cmd->params, "token");
    char *chan_info = NULL;
    int64_t sub_exp = 0;
    int limited = auth_user_limited_allows(channel, c->user->name);
    if (token && *token) {
        auth_verify_opts_t vo = {n->cfg.audience, n->cfg.issuer, n->cfg.jwt_leeway_s, 0};
        auth_claims_t cl;
        int rc = auth_verify_subscription(n->cfg.keys, token, strlen(token), &vo, c->user->name,
                                          channel, &cl);
        if (rc == AUTH_E_EXPIRED) {
            reply_error(c, cmd->id, 109, "token expired", false);
            return;
        }
        if (rc != 0 || limited == 0) {
            if (rc == 0)
                auth_claims_clear(&cl);
            reply_error(c, cmd->id, 103, "permission denied", false);
            return;
        }
        if (cl.info)
            chan_info = json_dumps(cl.info, JSON_COMPACT | JSON_ENCODE_ANY);
        sub_exp = cl.has_exp ? cl.exp : 0;
        auth_claims_clear(&cl);
    } else if (limited == 0 || (limited < 0 && !ns->allow_subscribe)) {
        reply_error(c, cmd->id, 103, "permission denied", false);
        return;
    }
    chat_sub_t *s = sub_new(c, channel, ns, chan_info);
    free(chan_info);
    s->exp = sub_exp;
    s->join_leave = ns->join_leave && json_is_true(json_object_get(cmd->params, "join_leave"));
    subop_t *op = core_calloc(1, sizeof *op);
    op->kind = SUBOP_COMMAND;
    op->cmd_id = cmd->id;
    op->sub_exp = sub_exp;
    bool recover = json_is_true(json_object_get(cmd->params, "recover"));
    json_int_t off = json_integer_value(json_object_get(cmd->params, "offset"));
    sub_start(s, op, recover, off > 0 ? (uint64_t)off : 0, json_str(cmd->params, "epoch"));
}

static void handle_unsubscribe(chat_client_t *c, const chat_cmd_t *cmd) {
    const char *channel = json_str(cmd->params, "channel");
    if (!channel) {
        reply_error(c, cmd->id, 107, "bad request: channel required", false);
        return;
    }
    chat_sub_t *s = client_find_sub(c, channel);
    if (s && !s->server_side)
        sub_remove(s);
    reply_raw(c, cmd->id, CHAT_M_UNSUBSCRIBE, "{}", 2);
}

/* ---- publish ---- */

typedef struct {
    chat_node_t *node;
    char client[CHAT_CLIENT_ID_LEN + 1];
    char *user;
    uint32_t cmd_id;
    uint64_t dedupe;
    chat_method_t method;
} pubop_t;

static void pubop_done(int status, uint64_t offset, const char *epoch, void *ud) {
    pubop_t *op = ud;
    (void)offset;
    (void)epoch;
    chat_node_t *n = op->node;
    if (status != 0 && op->dedupe) {
        chat_user_t *u = core_map_get(n->users, op->user);
        if (u)
            dedupe_forget(u, op->dedupe);
    }
    if (status == 0)
        n->st.publications_in++;
    chat_client_t *c = client_lookup(n, op->client);
    if (c && c->state == CL_CONNECTED) {
        if (status == 0)
            reply_raw(c, op->cmd_id, op->method, op->method == CHAT_M_RPC ? "{\"data\":{}}" : "{}",
                      op->method == CHAT_M_RPC ? 11 : 2);
        else
            reply_error(c, op->cmd_id, 100, "internal error", true);
    }
    free(op->user);
    free(op);
}

static void rate_limited(chat_client_t *c, uint32_t id, int64_t wait_ms) {
    char msg[96];
    snprintf(msg, sizeof msg, "too many requests: retry_after_ms=%" PRId64, wait_ms);
    c->node->st.rate_limited++;
    reply_error(c, id, 429, msg, true);
}

static void do_publish(chat_client_t *c, uint32_t cmd_id, chat_method_t method, const char *channel,
                       const chat_ns_t *ns, const char *data, size_t len, const chat_sub_t *s,
                       uint64_t dedupe) {
    chat_node_t *n = c->node;
    pubop_t *op = core_calloc(1, sizeof *op);
    op->node = n;
    memcpy(op->client, c->id, sizeof op->client);
    op->user = core_strdup(c->user->name);
    op->cmd_id = cmd_id;
    op->dedupe = dedupe;
    op->method = method;
    size_t info_len = 0;
    char *info = s ? NULL : client_info_json(c, NULL, &info_len);
    clu_pub_t p = {0, data, len, s ? s->info : info, s ? s->info_len : info_len};
    clu_chan_opts_t o = chan_opts(n, ns);
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
typedef enum { LIMIT_PUB, LIMIT_TYPING } limit_kind_t;

/* A safety bound on the publishes one client may have waiting for the shared limiter. The
 * local limiter already refuses a flood before it reaches Redis (a node never asks for more
 * tokens than the user's limit gives), so this only matters with huge configured bursts. */
#define LIMITS_WAITING_MAX 1024

typedef struct {
    chat_node_t *node;
    char client[CHAT_CLIENT_ID_LEN + 1];
    char *user;
    uint32_t cmd_id;
    chat_method_t method;
    limit_kind_t kind;
    char *channel;
    const chat_ns_t *ns;
    char *data;
    size_t len;
    uint64_t dedupe;
} limitop_t;

static const chat_rate_t *limit_rate(chat_client_t *c, limit_kind_t kind) {
    return kind == LIMIT_PUB ? &c->node->cfg.plan_rate[c->plan] : &c->node->cfg.typing_rate;
}

static int64_t limit_take_local(chat_client_t *c, limit_kind_t kind) {
    chat_gcra_t *g = kind == LIMIT_PUB ? &c->user->pub_gcra : &c->user->typing_gcra;
    return chat_gcra_take(g, (double)core_now_ms(), limit_rate(c, kind));
}

/* Publishes once the limit allowed it. A publish is tied to an active subscription, which may
 * have gone while the shared limiter answered. */
static void publish_allowed(chat_client_t *c, uint32_t cmd_id, chat_method_t method,
                            const char *channel, const chat_ns_t *ns, const char *data, size_t len,
                            uint64_t dedupe) {
    const chat_sub_t *s = NULL;
    if (method == CHAT_M_PUBLISH) {
        s = client_find_sub(c, channel);
        if (!s || s->state != SUB_ACTIVE) {
            if (dedupe)
                dedupe_forget(c->user, dedupe);
            reply_error(c, cmd_id, 103, "permission denied", false);
            return;
        }
    }
    do_publish(c, cmd_id, method, channel, ns, data, len, s, dedupe);
}

static void limit_refused(chat_client_t *c, uint32_t cmd_id, uint64_t dedupe, int64_t wait) {
    if (dedupe)
        dedupe_forget(c->user, dedupe);
    rate_limited(c, cmd_id, wait);
}

static void limit_done(int status, int64_t wait, void *ud) {
    limitop_t *op = ud;
    chat_node_t *n = op->node;
    chat_client_t *c = client_lookup(n, op->client);
    if (c && c->limits_waiting > 0)
        c->limits_waiting--;
    if (!c || c->state != CL_CONNECTED) {
        /* Gone before the answer: nothing was published, so a retry must not be taken for a
         * duplicate (the user may live on through another connection). */
        chat_user_t *u = op->dedupe ? core_map_get(n->users, op->user) : NULL;
        if (u)
            dedupe_forget(u, op->dedupe);
    } else {
        if (status != 0) {
            /* The local token was taken before asking: the local limit alone decides. */
            n->st.rate_limit_fallbacks++;
            wait = 0;
        }
        if (wait > 0)
            limit_refused(c, op->cmd_id, op->dedupe, wait);
        else
            publish_allowed(c, op->cmd_id, op->method, op->channel, op->ns, op->data, op->len,
                            op->dedupe);
    }
    free(op->channel);
    free(op->data);
    free(op->user);
    free(op);
}

static void gated_publish(chat_client_t *c, uint32_t cmd_id, chat_method_t method,
                          limit_kind_t kind, const char *channel, const chat_ns_t *ns,
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
        op->node = n;
        memcpy(op->client, c->id, sizeof op->client);
        op->user = core_strdup(c->user->name);
        op->cmd_id = cmd_id;
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
        int rc = clu_rate_take(n->broker, key.ptr, chat_gcra_interval_us(rate),
                               rate->burst ? rate->burst : 1, limit_done, op);
        core_str_free(&key);
        if (rc != 0)
            limit_done(rc, 0, op);
        return;
    }
    publish_allowed(c, cmd_id, method, channel, ns, data, len, dedupe);
}

static void handle_publish(chat_client_t *c, const chat_cmd_t *cmd) {
    chat_node_t *n = c->node;
    const char *channel = json_str(cmd->params, "channel");
    json_t *data = json_object_get(cmd->params, "data");
    if (!channel || !data) {
        reply_error(c, cmd->id, 107, "bad request: channel and data required", false);
        return;
    }
    const chat_ns_t *ns = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, channel);
    if (!ns) {
        reply_error(c, cmd->id, 102, "unknown channel", false);
        return;
    }
    chat_sub_t *s = client_find_sub(c, channel);
    if (!ns->allow_publish || !s || s->state != SUB_ACTIVE) {
        reply_error(c, cmd->id, 103, "permission denied", false);
        return;
    }
    char err[128];
    char msg_id[65] = "";
    char *txt;
    if (ns->schema == CHAT_SCHEMA_CHAT)
        txt = chat_message_normalize(data, ns->max_message_bytes, msg_id, err, sizeof err);
    else
        txt = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!txt) {
        reply_error(c, cmd->id, 107, err, false);
        return;
    }
    size_t len = strlen(txt);
    if (len > (size_t)ns->max_message_bytes + 256) {
        free(txt);
        reply_error(c, cmd->id, 107, "message too large", false);
        return;
    }
    uint64_t now = core_now_ms();
    uint64_t key = 0;
    if (msg_id[0]) {
        key = dedupe_key(channel, msg_id);
        if (dedupe_seen(n, c->user, key, now)) {
            /* A retried send: the first one is (or is being) published; answer as it was. */
            n->st.dedupe_hits++;
            free(txt);
            reply_raw(c, cmd->id, CHAT_M_PUBLISH, "{}", 2);
            return;
        }
    }
    if (key)
        dedupe_remember(c->user, key, now);
    gated_publish(c, cmd->id, CHAT_M_PUBLISH, LIMIT_PUB, channel, ns, txt, len, key);
    free(txt);
}

/* ---- presence and history ---- */

typedef struct {
    chat_node_t *node;
    char client[CHAT_CLIENT_ID_LEN + 1];
    uint32_t cmd_id;
} queryop_t;

static queryop_t *queryop_new(chat_client_t *c, uint32_t id) {
    queryop_t *op = core_calloc(1, sizeof *op);
    op->node = c->node;
    memcpy(op->client, c->id, sizeof op->client);
    op->cmd_id = id;
    return op;
}

static void presence_done(int status, const clu_presence_t *e, size_t n, void *ud) {
    queryop_t *op = ud;
    chat_client_t *c = client_lookup(op->node, op->client);
    if (c && c->state == CL_CONNECTED) {
        if (status != 0) {
            reply_error(c, op->cmd_id, 100, "internal error", true);
        } else {
            core_str_t s = {0};
            core_str_appends(&s, "{\"presence\":{");
            for (size_t i = 0; i < n; i++) {
                if (i)
                    core_str_appends(&s, ",");
                core_str_append_json_string(&s, e[i].client, strlen(e[i].client));
                core_str_appends(&s, ":");
                core_str_append(&s, e[i].info, e[i].info_len);
            }
            core_str_appends(&s, "}}");
            reply_raw(c, op->cmd_id, CHAT_M_PRESENCE, s.ptr, s.len);
            core_str_free(&s);
        }
    }
    free(op);
}

static void presence_stats_done(int status, uint32_t clients, uint32_t users, void *ud) {
    queryop_t *op = ud;
    chat_client_t *c = client_lookup(op->node, op->client);
    if (c && c->state == CL_CONNECTED) {
        if (status != 0) {
            reply_error(c, op->cmd_id, 100, "internal error", true);
        } else {
            char buf[96];
            int len =
                snprintf(buf, sizeof buf, "{\"num_clients\":%u,\"num_users\":%u}", clients, users);
            reply_raw(c, op->cmd_id, CHAT_M_PRESENCE_STATS, buf, (size_t)len);
        }
    }
    free(op);
}

/* Checks channel, namespace feature and subscription for presence and history; replies with
 * the error itself and returns NULL when the call is not allowed. */
static const chat_ns_t *query_check(chat_client_t *c, const chat_cmd_t *cmd, bool history) {
    chat_node_t *n = c->node;
    const char *channel = json_str(cmd->params, "channel");
    if (!channel) {
        reply_error(c, cmd->id, 107, "bad request: channel required", false);
        return NULL;
    }
    const chat_ns_t *ns = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, channel);
    if (!ns) {
        reply_error(c, cmd->id, 102, "unknown channel", false);
        return NULL;
    }
    if (history ? ns->history_size == 0 : !(ns->presence || ns->join_leave)) {
        reply_error(c, cmd->id, 108, "not available", false);
        return NULL;
    }
    chat_sub_t *s = client_find_sub(c, channel);
    if (!s || s->state != SUB_ACTIVE) {
        reply_error(c, cmd->id, 103, "permission denied", false);
        return NULL;
    }
    return ns;
}

static void handle_presence(chat_client_t *c, const chat_cmd_t *cmd, bool stats) {
    if (!query_check(c, cmd, false))
        return;
    const char *channel = json_str(cmd->params, "channel");
    queryop_t *op = queryop_new(c, cmd->id);
    int rc = stats ? clu_presence_stats(c->node->broker, channel, presence_stats_done, op)
                   : clu_presence(c->node->broker, channel, presence_done, op);
    if (rc != 0) {
        if (stats)
            presence_stats_done(rc, 0, 0, op);
        else
            presence_done(rc, NULL, 0, op);
    }
}

static void history_done(int status, const clu_pub_t *pubs, size_t n, uint64_t top,
                         const char *epoch, void *ud) {
    queryop_t *op = ud;
    chat_client_t *c = client_lookup(op->node, op->client);
    if (c && c->state == CL_CONNECTED) {
        if (status == CORE_EUNRECOVERABLE) {
            reply_error(c, op->cmd_id, 112, "unrecoverable position", false);
        } else if (status != 0) {
            reply_error(c, op->cmd_id, 100, "internal error", true);
        } else {
            core_str_t s = {0};
            core_str_appends(&s, "{\"publications\":[");
            for (size_t i = 0; i < n; i++) {
                if (i)
                    core_str_appends(&s, ",");
                append_pub(&s, &pubs[i]);
            }
            core_str_appends(&s, "],\"epoch\":");
            core_str_append_json_string(&s, epoch, strlen(epoch));
            core_str_appendf(&s, ",\"offset\":%" PRIu64 "}", top);
            reply_raw(c, op->cmd_id, CHAT_M_HISTORY, s.ptr, s.len);
            core_str_free(&s);
        }
    }
    free(op);
}

static void handle_history(chat_client_t *c, const chat_cmd_t *cmd) {
    const chat_ns_t *ns = query_check(c, cmd, true);
    if (!ns)
        return;
    const char *channel = json_str(cmd->params, "channel");
    clu_history_req_t req = {0};
    json_t *limit = json_object_get(cmd->params, "limit");
    if (limit && !json_is_integer(limit)) {
        reply_error(c, cmd->id, 107, "bad request: limit must be an integer", false);
        return;
    }
    json_int_t lim = json_integer_value(limit);
    req.limit = lim < 0 ? -1 : (lim > INT32_MAX ? INT32_MAX : (int32_t)lim);
    req.reverse = json_is_true(json_object_get(cmd->params, "reverse"));
    json_t *since = json_object_get(cmd->params, "since");
    if (since) {
        if (!json_is_object(since)) {
            reply_error(c, cmd->id, 107, "bad request: since must be an object", false);
            return;
        }
        json_int_t off = json_integer_value(json_object_get(since, "offset"));
        req.has_since = true;
        req.since_offset = off > 0 ? (uint64_t)off : 0;
        req.since_epoch = json_str(since, "epoch");
        if (!req.since_epoch)
            req.since_epoch = "";
    }
    queryop_t *op = queryop_new(c, cmd->id);
    clu_chan_opts_t o = chan_opts(c->node, ns);
    int rc = clu_history(c->node->broker, channel, &o, &req, history_done, op);
    if (rc != 0)
        history_done(rc, NULL, 0, 0, "", op);
}

/* ---- refresh ---- */

static void handle_refresh(chat_client_t *c, const chat_cmd_t *cmd) {
    chat_node_t *n = c->node;
    const char *token = json_str(cmd->params, "token");
    if (!token) {
        reply_error(c, cmd->id, 107, "bad request: token required", false);
        return;
    }
    auth_verify_opts_t vo = {n->cfg.audience, n->cfg.issuer, n->cfg.jwt_leeway_s, 0};
    auth_claims_t cl;
    int rc = auth_verify_connection(n->cfg.keys, token, strlen(token), &vo, &cl);
    if (rc == AUTH_E_EXPIRED) {
        reply_error(c, cmd->id, 109, "token expired", false);
        return;
    }
    if (rc != 0 || strcmp(cl.sub, c->user->name) != 0) {
        if (rc == 0)
            auth_claims_clear(&cl);
        client_close(c, 3500, "invalid token");
        return;
    }
    c->has_exp = cl.has_exp;
    c->exp = cl.exp;
    auth_claims_clear(&cl);
    core_str_t s = {0};
    append_identity(&s, c);
    core_str_appends(&s, "}");
    reply_raw(c, cmd->id, CHAT_M_REFRESH, s.ptr, s.len);
    core_str_free(&s);
}

static void handle_sub_refresh(chat_client_t *c, const chat_cmd_t *cmd) {
    chat_node_t *n = c->node;
    const char *channel = json_str(cmd->params, "channel");
    const char *token = json_str(cmd->params, "token");
    if (!channel || !token) {
        reply_error(c, cmd->id, 107, "bad request: channel and token required", false);
        return;
    }
    chat_sub_t *s = client_find_sub(c, channel);
    if (!s) {
        reply_error(c, cmd->id, 103, "permission denied", false);
        return;
    }
    auth_verify_opts_t vo = {n->cfg.audience, n->cfg.issuer, n->cfg.jwt_leeway_s, 0};
    auth_claims_t cl;
    int rc = auth_verify_subscription(n->cfg.keys, token, strlen(token), &vo, c->user->name,
                                      channel, &cl);
    if (rc == AUTH_E_EXPIRED) {
        reply_error(c, cmd->id, 109, "token expired", false);
        return;
    }
    if (rc != 0) {
        reply_error(c, cmd->id, 103, "permission denied", false);
        return;
    }
    s->exp = cl.has_exp ? cl.exp : 0;
    auth_claims_clear(&cl);
    char buf[96];
    int len;
    if (s->exp) {
        int64_t ttl = s->exp - core_wall_s();
        len =
            snprintf(buf, sizeof buf, "{\"expires\":true,\"ttl\":%" PRId64 "}", ttl > 0 ? ttl : 0);
    } else {
        len = snprintf(buf, sizeof buf, "{}");
    }
    reply_raw(c, cmd->id, CHAT_M_SUB_REFRESH, buf, (size_t)len);
}

/* ---- rpc ---- */

static void handle_rpc(chat_client_t *c, const chat_cmd_t *cmd) {
    chat_node_t *n = c->node;
    const char *method = json_str(cmd->params, "method");
    if (!method) {
        reply_error(c, cmd->id, 107, "bad request: method required", false);
        return;
    }
    if (strcmp(method, "typing") != 0) {
        reply_error(c, cmd->id, 104, "method not found", false);
        return;
    }
    json_t *data = json_object_get(cmd->params, "data");
    const char *room = json_str(data, "channel");
    if (!room) {
        reply_error(c, cmd->id, 107, "bad request: data.channel required", false);
        return;
    }
    chat_sub_t *s = client_find_sub(c, room);
    const char *colon = strchr(room, ':');
    const chat_ns_t *tns = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, "typing:");
    if (!s || s->state != SUB_ACTIVE || !tns) {
        reply_error(c, cmd->id, 103, "permission denied", false);
        return;
    }
    char channel[MAX_CHANNEL_BYTES + 8];
    snprintf(channel, sizeof channel, "typing:%s", colon ? colon + 1 : room);
    core_str_t d = {0};
    core_str_appends(&d, "{\"type\":\"typing\",\"user\":");
    core_str_append_json_string(&d, c->user->name, strlen(c->user->name));
    core_str_appends(&d, "}");
    gated_publish(c, cmd->id, CHAT_M_RPC, LIMIT_TYPING, channel, tns, d.ptr, d.len, 0);
    core_str_free(&d);
}

/* ---- frames ---- */

static void dispatch(chat_client_t *c, const chat_cmd_t *cmd) {
    chat_node_t *n = c->node;
    n->st.commands[cmd->method]++;
    if (cmd->method == CHAT_M_PING) {
        c->pong_deadline_ms = 0;
        return;
    }
    if (c->state != CL_CONNECTED && cmd->method != CHAT_M_CONNECT) {
        /* The first command must be connect; a client that gets this wrong is broken. */
        client_close(c, 3501, "bad request");
        return;
    }
    switch (cmd->method) {
    case CHAT_M_CONNECT:
        handle_connect(c, cmd);
        break;
    case CHAT_M_SUBSCRIBE:
        handle_subscribe(c, cmd);
        break;
    case CHAT_M_UNSUBSCRIBE:
        handle_unsubscribe(c, cmd);
        break;
    case CHAT_M_PUBLISH:
        handle_publish(c, cmd);
        break;
    case CHAT_M_PRESENCE:
        handle_presence(c, cmd, false);
        break;
    case CHAT_M_PRESENCE_STATS:
        handle_presence(c, cmd, true);
        break;
    case CHAT_M_HISTORY:
        handle_history(c, cmd);
        break;
    case CHAT_M_RPC:
        handle_rpc(c, cmd);
        break;
    case CHAT_M_REFRESH:
        handle_refresh(c, cmd);
        break;
    case CHAT_M_SUB_REFRESH:
        handle_sub_refresh(c, cmd);
        break;
    case CHAT_M_SEND:
        break; /* no application handler for async messages */
    default:
        reply_error(c, cmd->id, 104, "method not found", false);
        break;
    }
}

void chat_client_on_frame(chat_client_t *c, const char *data, size_t len) {
    size_t pos = 0;
    const char *line;
    size_t llen;
    /* Any traffic proves the client alive. */
    c->pong_deadline_ms = 0;
    while (c->state != CL_CLOSING && chat_frame_next(data, len, &pos, &line, &llen)) {
        if (c->state == CL_CONNECTING) {
            /* SDKs send their subscribe commands in the same frame as connect. While the
             * connect waits for the broker, the rest is held (bounded) and runs after it. */
            size_t rest = len - (size_t)(line - data);
            if (c->held.len + rest + 1 > CHAT_HELD_MAX) {
                client_close(c, 3501, "bad request");
                return;
            }
            core_str_append(&c->held, line, rest);
            core_str_append(&c->held, "\n", 1);
            return;
        }
        chat_cmd_t cmd;
        if (chat_cmd_decode(line, llen, &cmd) != 0) {
            client_close(c, 3501, "bad request");
            return;
        }
        dispatch(c, &cmd);
        chat_cmd_clear(&cmd);
    }
}

/* ---- broker events ---- */

/* The push for a publication, serialised once: every subscriber's queue references the same
 * bytes. */
static core_buf_t *pub_push(const char *channel, const clu_pub_t *pub) {
    core_str_t s = {0};
    core_str_reserve(&s, pub->data_len + pub->info_len + strlen(channel) + 64);
    core_str_appends(&s, "{\"push\":{\"channel\":");
    core_str_append_json_string(&s, channel, strlen(channel));
    core_str_appends(&s, ",\"pub\":");
    append_pub(&s, pub);
    core_str_appends(&s, "}}");
    core_buf_t *b = core_buf_from(0, s.ptr, s.len);
    core_str_free(&s);
    return b;
}

static void channel_fanout(chat_node_t *n, chat_channel_t *ch, core_buf_t *b, uint64_t offset) {
    uint64_t out = 0;
    for (uint32_t i = 0; i < ch->n; i++) {
        chat_sub_t *sub = ch->subs[i];
        if (sub->c->state == CL_CLOSING)
            continue;
        if (sub->state == SUB_ACTIVE) {
            if (offset && offset <= sub->floor)
                continue; /* in its subscribe answer already */
            sub->c->t->send(sub->c->tctx, b);
            out++;
        } else if (sub->npending < 4096) {
            if (sub->npending == sub->cap_pending) {
                sub->cap_pending = sub->cap_pending ? sub->cap_pending * 2 : 8;
                sub->pending = core_realloc(sub->pending, sub->cap_pending * sizeof *sub->pending);
            }
            sub->pending[sub->npending++] = (chat_pending_pub_t){core_buf_ref(b), offset};
        } else {
            /* Too much arrived before the subscribe could finish: the client resynchronises. */
            client_close(sub->c, 3010, "insufficient state");
        }
    }
    n->st.publications_out += out;
}

static void channel_drop_held(chat_channel_t *ch) {
    for (uint32_t i = 0; i < ch->nheld; i++)
        core_buf_unref(ch->held[i].buf);
    free(ch->held);
    ch->held = NULL;
    ch->nheld = ch->cap_held = 0;
}

/* The channel's history is gone or its gap cannot be filled: every local subscriber reconnects
 * and recovers what it can (recovered:false tells it to reload). */
static void channel_state_lost(chat_node_t *n, chat_channel_t *ch) {
    n->st.state_lost++;
    channel_drop_held(ch);
    ch->filling = false;
    ch->resync_wanted = false;
    if (ch->stalled) {
        ch->stalled = false;
        n->stalled--;
    }
    for (uint32_t i = 0; i < ch->n; i++)
        client_close(ch->subs[i]->c, 3010, "insufficient state");
}

static void channel_fill(chat_node_t *n, chat_channel_t *ch);

/* Delivers held publications that continue the sequence. */
static void channel_deliver_held(chat_node_t *n, chat_channel_t *ch) {
    uint32_t i = 0;
    while (i < ch->nheld && ch->held[i].offset <= ch->last + 1) {
        if (ch->held[i].offset == ch->last + 1) {
            ch->last++;
            channel_fanout(n, ch, ch->held[i].buf, ch->held[i].offset);
        }
        core_buf_unref(ch->held[i].buf);
        i++;
    }
    if (i > 0 && i < ch->nheld)
        memmove(ch->held, ch->held + i, (ch->nheld - i) * sizeof *ch->held);
    ch->nheld -= i;
}

/* The same, then a fill when a gap remains. */
static void channel_release_held(chat_node_t *n, chat_channel_t *ch) {
    channel_deliver_held(n, ch);
    if (ch->nheld > 0)
        channel_fill(n, ch);
}

static void channel_set_stalled(chat_node_t *n, chat_channel_t *ch, bool stalled) {
    if (ch->stalled == stalled)
        return;
    ch->stalled = stalled;
    if (stalled)
        n->stalled++;
    else
        n->stalled--;
}

typedef struct {
    chat_node_t *node;
    char *channel;
} fillop_t;

static void fill_done(int status, const clu_pub_t *pubs, size_t np, uint64_t top, const char *epoch,
                      void *ud) {
    fillop_t *op = ud;
    chat_node_t *n = op->node;
    chat_channel_t *ch = core_map_get(n->channels, op->channel);
    if (ch && ch->filling) {
        ch->filling = false;
        if (status != 0 && status != CORE_EUNRECOVERABLE) {
            /* The broker could not answer (Redis away, not lost): the position stands. The
             * fill runs again when the broker resyncs the channel or a publication shows the
             * gap again. */
            CORE_LOGD(MOD, "gap fill deferred", "channel=%s last=%" PRIu64 " err=%s", ch->name,
                      ch->last, uv_strerror(status));
            channel_deliver_held(n, ch);
            channel_set_stalled(n, ch, true);
            free(op->channel);
            free(op);
            return;
        }
        channel_set_stalled(n, ch, false);
        bool contiguous = status == 0 && strcmp(epoch, ch->epoch) == 0 &&
                          (np == 0 || pubs[0].offset == ch->last + 1);
        if (!contiguous) {
            CORE_LOGW(MOD, "gap not recoverable", "channel=%s last=%" PRIu64 " top=%" PRIu64,
                      ch->name, ch->last, top);
            channel_state_lost(n, ch);
            ch->last = top;
            snprintf(ch->epoch, sizeof ch->epoch, "%s", epoch);
        } else {
            for (size_t i = 0; i < np; i++) {
                if (pubs[i].offset != ch->last + 1)
                    break;
                core_buf_t *b = pub_push(ch->name, &pubs[i]);
                ch->last++;
                channel_fanout(n, ch, b, pubs[i].offset);
                core_buf_unref(b);
            }
            channel_release_held(n, ch);
        }
        if (ch->resync_wanted && !ch->filling) {
            /* Asked for while this fill was in flight, which may have read history before
             * the feed was back. */
            ch->resync_wanted = false;
            channel_fill(n, ch);
        }
    }
    free(op->channel);
    free(op);
}

/* Reads what follows `last` from history, so that the channel's subscribers see every
 * publication, in order, even when the feed from the broker skipped some. */
static void channel_fill(chat_node_t *n, chat_channel_t *ch) {
    if (!ch->positioned || ch->filling) {
        ch->resync_wanted = true;
        return;
    }
    ch->filling = true;
    fillop_t *op = core_calloc(1, sizeof *op);
    op->node = n;
    op->channel = core_strdup(ch->name);
    clu_history_req_t req = {.has_since = true,
                             .since_offset = ch->last,
                             .since_epoch = ch->epoch,
                             .limit = (int32_t)n->cfg.max_recover};
    clu_chan_opts_t o = chan_opts(n, ch->ns);
    int rc = clu_history(n->broker, ch->name, &o, &req, fill_done, op);
    if (rc != 0)
        fill_done(rc, NULL, 0, ch->last, ch->epoch, op);
}

static void channel_hold(chat_channel_t *ch, core_buf_t *b, uint64_t offset) {
    if (ch->nheld == ch->cap_held) {
        ch->cap_held = ch->cap_held ? ch->cap_held * 2 : 16;
        ch->held = core_realloc(ch->held, ch->cap_held * sizeof *ch->held);
    }
    /* Kept sorted by offset: the feed is ordered, but fills interleave with it. */
    uint32_t i = ch->nheld;
    while (i > 0 && ch->held[i - 1].offset > offset)
        i--;
    if (i > 0 && ch->held[i - 1].offset == offset)
        return; /* already held */
    memmove(ch->held + i + 1, ch->held + i, (ch->nheld - i) * sizeof *ch->held);
    ch->held[i] = (chat_pending_pub_t){core_buf_ref(b), offset};
    ch->nheld++;
}

static void on_pub(void *ud, const char *channel, const clu_pub_t *pub, const char *epoch) {
    chat_node_t *n = ud;
    chat_channel_t *ch = core_map_get(n->channels, channel);
    if (!ch)
        return;
    if (pub->offset == 0) {
        core_buf_t *b = pub_push(channel, pub);
        channel_fanout(n, ch, b, 0);
        core_buf_unref(b);
        return;
    }
    if (!ch->positioned) {
        /* Held until the first subscribe answer says where this node's feed starts. Past the
         * bound the rest is read from history then. */
        if (ch->nheld < n->cfg.max_recover) {
            core_buf_t *b = pub_push(channel, pub);
            channel_hold(ch, b, pub->offset);
            core_buf_unref(b);
        } else {
            ch->resync_wanted = true; /* what did not fit is read from history then */
        }
        return;
    }
    if (strcmp(ch->epoch, epoch) != 0) {
        /* The channel's history was lost (Redis restarted empty, the stream expired): offsets
         * start over in the new epoch and nothing before can be recovered. */
        channel_state_lost(n, ch);
        ch->last = 0;
        snprintf(ch->epoch, sizeof ch->epoch, "%s", epoch);
    }
    if (pub->offset <= ch->last)
        return; /* delivered already (a fill got it first) */
    core_buf_t *b = pub_push(channel, pub);
    if (ch->filling || pub->offset > ch->last + 1) {
        if (ch->nheld >= n->cfg.max_recover) {
            channel_state_lost(n, ch);
            ch->last = pub->offset;
        } else {
            channel_hold(ch, b, pub->offset);
            channel_fill(n, ch);
        }
    } else {
        ch->last = pub->offset;
        channel_fanout(n, ch, b, pub->offset);
    }
    core_buf_unref(b);
}

static void on_resync(void *ud, const char *channel) {
    chat_node_t *n = ud;
    chat_channel_t *ch = core_map_get(n->channels, channel);
    if (ch)
        channel_fill(n, ch);
}

static void on_join_leave(chat_node_t *n, const char *channel, const char *info, size_t len,
                          const char *kind) {
    chat_channel_t *ch = core_map_get(n->channels, channel);
    if (!ch)
        return;
    core_str_t s = {0};
    core_str_appends(&s, "{\"push\":{\"channel\":");
    core_str_append_json_string(&s, channel, strlen(channel));
    core_str_appendf(&s, ",\"%s\":{\"info\":", kind);
    core_str_append(&s, info, len);
    core_str_appends(&s, "}}}");
    core_buf_t *b = core_buf_from(0, s.ptr, s.len);
    core_str_free(&s);
    for (uint32_t i = 0; i < ch->n; i++) {
        chat_sub_t *sub = ch->subs[i];
        if (sub->join_leave && sub->state == SUB_ACTIVE && sub->c->state == CL_CONNECTED)
            sub->c->t->send(sub->c->tctx, b);
    }
    core_buf_unref(b);
}

static void on_join(void *ud, const char *channel, const char *info, size_t len) {
    on_join_leave(ud, channel, info, len, "join");
}

static void on_leave(void *ud, const char *channel, const char *info, size_t len) {
    on_join_leave(ud, channel, info, len, "leave");
}

static const clu_events_t broker_events = {on_pub, on_join, on_leave, on_resync};

const clu_events_t *chat_node_broker_events(void) {
    return &broker_events;
}

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
        if (new_window)
            c->errors = 0;
        if (c->state == CL_CLOSING)
            continue;
        if (c->state != CL_CONNECTED) {
            if (now - c->created_ms >= stale)
                client_close(c, 3502, "stale");
            continue;
        }
        if (c->has_exp && wall > c->exp) {
            client_close(c, 3005, "connection expired");
            continue;
        }
        bool sub_expired = false;
        for (chat_sub_t *s = c->subs; s; s = s->next)
            if (s->exp && wall > s->exp)
                sub_expired = true;
        if (sub_expired) {
            client_close(c, 3006, "subscription expired");
            continue;
        }
        if (c->pong_deadline_ms && now >= c->pong_deadline_ms) {
            client_close(c, 3012, "no pong");
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
                channel_fill(n, ch);
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
            clu_chan_opts_t o = chan_opts(n, ch->ns);
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
            user_maybe_free(n, v, (double)now);
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
    n->ping = core_buf_from(0, "{}", 2);
    uv_timer_init(loop, &n->sweep);
    n->sweep.data = n;
    uv_timer_start(&n->sweep, sweep_cb, 1000, 1000);
    return n;
}

void chat_node_set_broker(chat_node_t *n, clu_broker_t *b) {
    n->broker = b;
}

void chat_node_close_all(chat_node_t *n, int code, const char *reason) {
    for (core_list_t *it = n->all.next; it != &n->all; it = it->next)
        client_close(CORE_CONTAINER_OF(it, chat_client_t, link), code, reason);
}

static void node_timer_closed(uv_handle_t *h) {
    chat_node_t *n = h->data;
    core_map_iter_t it = 0;
    void *v;
    while (core_map_next(n->users, &it, NULL, &v))
        user_free(v);
    core_map_free(n->users);
    core_map_free(n->clients);
    core_map_free(n->channels);
    core_buf_unref(n->ping);
    void (*done)(void *) = n->close_done;
    void *ud = n->close_ud;
    free(n);
    if (done)
        done(ud);
}

void chat_node_close(chat_node_t *n, void (*done)(void *), void *ud) {
    n->close_done = done;
    n->close_ud = ud;
    uv_close((uv_handle_t *)&n->sweep, node_timer_closed);
}

void chat_node_stats(const chat_node_t *n, chat_stats_t *out) {
    *out = n->st;
}

chat_client_t *chat_client_new(chat_node_t *n, const chat_transport_t *t, void *tctx,
                               const char *remote) {
    chat_client_t *c = core_calloc(1, sizeof *c);
    c->node = n;
    c->t = t;
    c->tctx = tctx;
    uint8_t r[16];
    core_random(r, sizeof r);
    r[6] = (r[6] & 0x0f) | 0x40; /* UUID version 4 */
    r[8] = (r[8] & 0x3f) | 0x80;
    snprintf(c->id, sizeof c->id,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1],
             r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14],
             r[15]);
    snprintf(c->remote, sizeof c->remote, "%s", remote ? remote : "");
    c->created_ms = core_now_ms();
    core_map_put(n->clients, c->id, c);
    core_list_insert_tail(&n->all, &c->link);
    n->st.sessions++;
    return c;
}

void chat_client_free(chat_client_t *c) {
    chat_node_t *n = c->node;
    while (c->subs)
        sub_remove(c->subs);
    if (c->user) {
        c->user->nconns--;
        user_maybe_free(n, c->user, (double)core_now_ms());
    }
    if (c->counted)
        n->st.connections--;
    core_map_del(n->clients, c->id);
    core_list_remove(&c->link);
    n->st.sessions--;
    core_str_free(&c->held);
    free(c->conn_info);
    free(c);
}
