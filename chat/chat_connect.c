/* chat: connect (with server-side subscriptions) and refresh. */
#include "chat/chat_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "chat"

/* ---- connect ---- */

/* A connect waiting for the answers of its server-side subscriptions. */
struct connect_op {
    chat_op_t base;
    uint32_t pending;
    /* The subscriptions answered so far, in answer order, with copies of what they borrowed. */
    chat_connect_sub_t *subs;
    uint32_t nsubs;
    uint64_t *tops; /* per channel top and epoch, in the order of `channels` */
    char (*epochs)[CLU_EPOCH_MAX];
    char **channels;
    uint64_t *gens;
    uint32_t nchannels;
};

static void connect_finish(connect_op_t *co);

static void connect_op_free(connect_op_t *co) {
    for (uint32_t i = 0; i < co->nsubs; i++) {
        chat_subscribe_result_t *r = &co->subs[i].result;
        for (size_t k = 0; k < r->npubs; k++) {
            free((char *)r->pubs[k].data);
            free((char *)r->pubs[k].info);
        }
        free((clu_pub_t *)r->pubs);
        free((char *)r->epoch);
    }
    free(co->subs);
    for (uint32_t i = 0; i < co->nchannels; i++)
        free(co->channels[i]);
    free(co->channels);
    free(co->tops);
    free(co->epochs);
    free(co->gens);
    free(co);
}

/* The result outlives the broker's answer it points into: its strings and publications are
 * copied. The channel name is the op's own. */
static void sub_result_copy(chat_subscribe_result_t *dst, const chat_subscribe_result_t *src) {
    *dst = *src;
    dst->epoch = src->epoch ? core_strdup(src->epoch) : NULL;
    if (src->npubs) {
        clu_pub_t *pubs = core_calloc(src->npubs, sizeof *pubs);
        for (size_t k = 0; k < src->npubs; k++) {
            const clu_pub_t *p = &src->pubs[k];
            pubs[k].offset = p->offset;
            pubs[k].data = core_strndup(p->data, p->data_len);
            pubs[k].data_len = p->data_len;
            if (p->info) {
                pubs[k].info = core_strndup(p->info, p->info_len);
                pubs[k].info_len = p->info_len;
            }
        }
        dst->pubs = pubs;
    } else {
        dst->pubs = NULL;
    }
}

void chat__connect_sub_done(connect_op_t *co, const char *channel,
                            const chat_subscribe_result_t *res, uint64_t top, const char *epoch,
                            bool later) {
    if (res) {
        for (uint32_t i = 0; i < co->nchannels; i++)
            if (strcmp(co->channels[i], channel) == 0) {
                co->tops[i] = top;
                snprintf(co->epochs[i], CLU_EPOCH_MAX, "%s", epoch);
                /* Each channel answers once, so nsubs stays within nchannels. */
                chat_connect_sub_t *e = &co->subs[co->nsubs++];
                e->channel = co->channels[i];
                sub_result_copy(&e->result, res);
                break;
            }
    }
    if (later && --co->pending == 0)
        connect_finish(co);
}

/* The ttl of a token expiring at exp, never negative. */
static int64_t ttl_of(int64_t exp) {
    int64_t ttl = exp - core_wall_s();
    return ttl > 0 ? ttl : 0;
}

static void connect_finish(connect_op_t *co) {
    chat_node_t *n = co->base.node;
    chat_client_t *c = chat__client_lookup(n, co->base.client);
    if (!c || c->state != CL_CONNECTING) {
        connect_op_free(co);
        return;
    }
    chat_reply_t r = {.id = co->base.cmd_id, .method = CHAT_M_CONNECT};
    r.connect = (chat_connect_result_t){.client = c->id,
                                        .version = n->cfg.version,
                                        .expires = c->has_exp,
                                        .ttl = c->has_exp ? ttl_of(c->exp) : 0,
                                        .ping = n->cfg.ping_interval_s,
                                        .pong = true,
                                        .node = n->cfg.node_id,
                                        .subs = co->subs,
                                        .nsubs = co->nsubs};
    c->state = CL_CONNECTED;
    c->counted = true;
    n->st.connections++;
    uint64_t now = core_now_ms();
    c->next_ping_ms = chat__first_due(n, now, (uint64_t)n->cfg.ping_interval_s * 1000);
    c->presence_due_ms = chat__first_due(n, now, chat__presence_refresh_ms(n));
    chat__reply(c, &r);
    for (uint32_t i = 0; i < co->nchannels; i++) {
        chat_sub_t *sub = chat__sub_lookup(n, c->id, co->channels[i], co->gens[i]);
        if (sub)
            chat__sub_activate(sub, co->tops[i], co->epochs[i]);
    }
    connect_op_free(co);
    chat__client_release_held(c);
}

bool chat__has_control(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return true;
        /* U+0080..U+009F (C1 controls), UTF-8 encoded: input is valid UTF-8 (the codec checks
         * it), so 0xC2 always starts a two-byte character here. */
        if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
            return true;
    }
    return false;
}

const char *chat__channel_problem(const char *ch) {
    if (!ch || !*ch)
        return "bad request: channel required";
    if (strlen(ch) > CHAT_MAX_CHANNEL_BYTES)
        return "bad request: channel name too long (at most 255 bytes)";
    if (chat__has_control(ch))
        return "bad request: channel name contains control characters";
    return NULL;
}

/* Why a token's user id cannot be served, or NULL. The id becomes part of channel names (the
 * personal channel "personal:#<id>", the owner lists "#u1,u2" of user-limited channels) and of
 * log lines: a '#' or ',' in it would let one user id name another user's channel, and control
 * characters have no business in an identifier. */
static const char *user_id_problem(const char *id) {
    if (strpbrk(id, "#,"))
        return "invalid token: user id contains '#' or ','";
    if (chat__has_control(id))
        return "invalid token: user id contains control characters";
    return NULL;
}

void chat__handle_connect(chat_client_t *c, const chat_req_t *cmd) {
    chat_node_t *n = c->node;
    if (c->state != CL_NEW) {
        chat__client_close(c, CORE_DISCONNECT_BAD_REQUEST);
        return;
    }
    const char *token = cmd->connect.token;
    if (!token || !*token) {
        chat__client_close(c, CORE_DISCONNECT_INVALID_TOKEN);
        return;
    }
    auth_verify_opts_t vo = {n->cfg.audience, n->cfg.issuer, n->cfg.jwt_leeway_s, 0};
    auth_claims_t cl;
    int rc = auth_verify_connection(n->cfg.keys, token, strlen(token), &vo, &cl);
    if (rc == AUTH_E_EXPIRED) {
        chat__reply_error(c, cmd->id, CORE_REPLY_TOKEN_EXPIRED, NULL);
        return;
    }
    if (rc != 0) {
        char peer[64];
        CORE_LOGD(MOD, "connect refused", "client=%s remote=%s why=\"%s\"", c->id,
                  chat__client_peer(c, peer, sizeof peer), auth_strerror(rc));
        chat__client_close(c, CORE_DISCONNECT_INVALID_TOKEN);
        return;
    }
    const char *bad_id = user_id_problem(cl.sub);
    if (bad_id) {
        /* A token whose user id cannot be used is an invalid token: 3500, no reconnect, with
         * the reason saying why. */
        char peer[64];
        CORE_LOGD(MOD, "connect refused", "client=%s remote=%s user=%s why=\"%s\"", c->id,
                  chat__client_peer(c, peer, sizeof peer), cl.sub, bad_id);
        auth_claims_clear(&cl);
        chat__client_close_reason(c, CORE_DISCONNECT_INVALID_TOKEN, bad_id);
        return;
    }
    chat_user_t *u = chat__user_get(n, cl.sub);
    if (u->nconns >= n->cfg.max_conns_per_user) {
        auth_claims_clear(&cl);
        chat__client_close(c, CORE_DISCONNECT_CONNECTION_LIMIT);
        return;
    }
    /* Server-side subscriptions: the token's channels plus the user's personal channel. */
    size_t nclaim = cl.channels ? json_array_size(cl.channels) : 0;
    char personal[CHAT_MAX_CHANNEL_BYTES + 16];
    bool has_personal = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, "personal:") &&
                        strlen(cl.sub) + 10 <= CHAT_MAX_CHANNEL_BYTES;
    snprintf(personal, sizeof personal, "personal:#%s", cl.sub);
    if (nclaim + has_personal > n->cfg.max_channels_per_conn) {
        auth_claims_clear(&cl);
        chat__client_close(c, CORE_DISCONNECT_CHANNEL_LIMIT);
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
    chat__op_init(&co->base, c, cmd->id);
    co->channels = core_calloc(nclaim + 1, sizeof *co->channels);
    co->tops = core_calloc(nclaim + 1, sizeof *co->tops);
    co->epochs = core_calloc(nclaim + 1, sizeof *co->epochs);
    co->gens = core_calloc(nclaim + 1, sizeof *co->gens);
    co->subs = core_calloc(nclaim + 1, sizeof *co->subs);
    for (size_t i = 0; i <= nclaim; i++) {
        const char *ch = i < nclaim ? json_string_value(json_array_get(cl.channels, i))
                                    : (has_personal ? personal : NULL);
        if (!ch || chat__client_find_sub(c, ch))
            continue;
        const char *bad = chat__channel_problem(ch);
        if (bad) {
            CORE_LOGW(MOD, "token channel refused", "channel=%s why=\"%s\"", ch, bad);
            continue;
        }
        const chat_ns_t *ns = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, ch);
        if (!ns) {
            CORE_LOGW(MOD, "token channel in unknown namespace", "channel=%s", ch);
            continue;
        }
        chat_sub_t *s = chat__sub_new(c, ch, ns, NULL);
        s->server_side = true;
        s->join_leave = ns->join_leave;
        co->channels[co->nchannels] = core_strdup(ch);
        co->gens[co->nchannels] = s->gen;
        co->nchannels++;
    }
    auth_claims_clear(&cl);
    for (uint32_t i = 0; i < co->nchannels; i++) {
        chat_sub_t *s = chat__client_find_sub(c, co->channels[i]);
        const chat_recover_req_t *r = NULL;
        for (size_t k = 0; k < cmd->connect.nsubs && !r; k++)
            if (strcmp(cmd->connect.subs[k].channel, co->channels[i]) == 0)
                r = &cmd->connect.subs[k];
        subop_t *op = core_calloc(1, sizeof *op);
        op->kind = SUBOP_CONNECT;
        op->conn = co;
        if (chat__sub_start(s, op, r && r->recover, r ? r->offset : 0, r ? r->epoch : NULL))
            co->pending++;
    }
    if (co->pending == 0)
        connect_finish(co);
}

/* ---- refresh ---- */

void chat__handle_refresh(chat_client_t *c, const chat_req_t *cmd) {
    chat_node_t *n = c->node;
    const char *token = cmd->simple.token;
    if (!token) {
        chat__reply_error(c, cmd->id, CORE_REPLY_BAD_REQUEST, "bad request: token required");
        return;
    }
    auth_verify_opts_t vo = {n->cfg.audience, n->cfg.issuer, n->cfg.jwt_leeway_s, 0};
    auth_claims_t cl;
    int rc = auth_verify_connection(n->cfg.keys, token, strlen(token), &vo, &cl);
    if (rc == AUTH_E_EXPIRED) {
        chat__reply_error(c, cmd->id, CORE_REPLY_TOKEN_EXPIRED, NULL);
        return;
    }
    if (rc != 0 || strcmp(cl.sub, c->user->name) != 0) {
        if (rc == 0)
            auth_claims_clear(&cl);
        chat__client_close(c, CORE_DISCONNECT_INVALID_TOKEN);
        return;
    }
    c->has_exp = cl.has_exp;
    c->exp = cl.exp;
    auth_claims_clear(&cl);
    chat_reply_t r = {.id = cmd->id, .method = CHAT_M_REFRESH};
    r.refresh = (chat_refresh_result_t){.client = c->id,
                                        .version = n->cfg.version,
                                        .expires = c->has_exp,
                                        .ttl = c->has_exp ? ttl_of(c->exp) : 0};
    chat__reply(c, &r);
}
