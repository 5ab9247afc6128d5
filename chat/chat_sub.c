/* chat: subscriptions: the subscribe flow shared by the subscribe command and server-side
 * subscriptions, unsubscribe, sub_refresh. */
#include "chat/chat_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "chat"

/* Whichever list is shorter is walked: a publisher in a thousand rooms finds its subscription
 * among the room's few members by pointer, and a member of a crowded room among its own few
 * subscriptions by name. */
chat_sub_t *chat__client_find_sub(chat_client_t *c, const char *channel) {
    if (c->nsubs > 4) {
        const chat_channel_t *ch = core_map_get(c->node->channels, channel);
        if (!ch)
            return NULL;
        if (ch->n < c->nsubs) {
            for (uint32_t i = 0; i < ch->n; i++)
                if (ch->subs[i]->c == c)
                    return ch->subs[i];
            return NULL;
        }
    }
    for (chat_sub_t *s = c->subs; s; s = s->next)
        if (strcmp(s->ch->name, channel) == 0)
            return s;
    return NULL;
}

char *chat__client_info(const chat_client_t *c, const char *chan_info, size_t *len) {
    chat_client_info_t ci = {c->user->name, c->id, c->conn_info, chan_info};
    return chat__client_info_record(&ci, len);
}

chat_sub_t *chat__sub_new(chat_client_t *c, const char *channel, const chat_ns_t *ns,
                          const char *chan_info) {
    chat_node_t *n = c->node;
    chat_sub_t *s = core_calloc(1, sizeof *s);
    s->c = c;
    s->gen = ++n->next_gen;
    /* The ClientInfo record is what presence and join/leave events show: namespaces without
     * them keep none per subscription (a publication builds its own), unless the subscription
     * token gave channel info, which only this record keeps. */
    if (ns->presence || ns->join_leave || chan_info)
        s->info = chat__client_info(c, chan_info, &s->info_len);
    chat__channel_add(chat__channel_get(n, channel, ns), s);
    s->next = c->subs;
    c->subs = s;
    c->nsubs++;
    return s;
}

static void sub_drop_pending(chat_sub_t *s) {
    for (uint32_t i = 0; i < s->npending; i++)
        chat__out_unref(s->pending[i].out);
    free(s->pending);
    s->pending = NULL;
    s->npending = s->cap_pending = 0;
}

static void leave_free(chat_leave_t *l) {
    free(l->channel);
    free(l->info);
    free(l);
}

void chat__leaves_flush(chat_client_t *c, uint64_t now, bool all) {
    while (c->leaves && (all || c->leaves->due_ms <= now)) {
        chat_leave_t *l = c->leaves;
        c->leaves = l->next;
        c->nleaves--;
        clu_leave(c->node->broker, l->channel, l->info, l->info_len);
        leave_free(l);
    }
}

/* Holds back the leave event of an unsubscribe; takes channel and info. */
static void leave_defer(chat_client_t *c, char *channel, char *info, size_t info_len) {
    if (c->nleaves >= CHAT_LEAVES_WAITING_MAX) {
        /* Past the bound the oldest goes out now: memory stays bounded per client. */
        chat_leave_t *old = c->leaves;
        c->leaves = old->next;
        c->nleaves--;
        clu_leave(c->node->broker, old->channel, old->info, old->info_len);
        leave_free(old);
    }
    chat_leave_t *l = core_calloc(1, sizeof *l);
    l->channel = channel;
    l->info = info;
    l->info_len = info_len;
    l->due_ms = core_now_ms() + CHAT_LEAVE_DELAY_MS;
    chat_leave_t **pp = &c->leaves;
    while (*pp)
        pp = &(*pp)->next;
    *pp = l;
    c->nleaves++;
}

/* A subscription of c to channel with this info goes live: a leave of the same client and
 * channel still held back is cancelled and so is the join (returns true), because the
 * channel's members saw neither. A held leave with other info (a new subscription token's
 * chan_info) goes out now, before the join. */
static bool leave_cancel(chat_client_t *c, const char *channel, const char *info, size_t info_len) {
    for (chat_leave_t **pp = &c->leaves; *pp; pp = &(*pp)->next) {
        chat_leave_t *l = *pp;
        if (strcmp(l->channel, channel) != 0)
            continue;
        *pp = l->next;
        c->nleaves--;
        bool same = l->info_len == info_len && memcmp(l->info, info, info_len) == 0;
        if (!same)
            clu_leave(c->node->broker, l->channel, l->info, l->info_len);
        leave_free(l);
        return same;
    }
    return false;
}

/* Removes the subscription: presence, leave event (now, or held back with defer_leave), channel
 * membership. */
static void sub_remove(chat_sub_t *s, bool defer_leave) {
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
    chat__channel_remove(n, s);
    if (leave && defer_leave) {
        leave_defer(c, name, s->info, s->info_len);
        s->info = NULL;
    } else if (leave) {
        clu_leave(n->broker, name, s->info, s->info_len);
        free(name);
    }
    sub_drop_pending(s);
    free(s->info);
    free(s);
}

void chat__sub_remove(chat_sub_t *s) {
    sub_remove(s, false);
}

void chat__sub_unsubscribe(chat_sub_t *s) {
    sub_remove(s, true);
}

/* Makes a subscription live: buffered publications newer than what the subscribe answer
 * carried go out in order, then presence and the join event. */

void chat__sub_activate(chat_sub_t *s, uint64_t top, const char *epoch) {
    chat_client_t *c = s->c;
    chat_node_t *n = c->node;
    chat_channel_t *ch = s->ch;
    s->state = SUB_ACTIVE;
    s->floor = top;
    for (uint32_t i = 0; i < s->npending; i++) {
        chat_pending_pub_t *p = &s->pending[i];
        if (p->offset == 0 || p->offset > top) {
            c->t->send(c->tctx, chat__out_buf(p->out, c->codec));
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
            chat__channel_fanout(n, ch, ch->held[i].out, ch->held[i].offset);
        chat__channel_release_held(n, ch);
        if (ch->resync_wanted) {
            ch->resync_wanted = false;
            chat__channel_fill(n, ch);
        }
    }
    const chat_ns_t *ns = s->ch->ns;
    if (ns->presence || ns->join_leave) {
        clu_presence_t e = {c->id, c->user->name, s->info, s->info_len};
        clu_chan_opts_t o = chat__chan_opts(n, ns);
        clu_presence_add(n->broker, s->ch->name, &o, &e);
        s->presence_added = true;
        if (ns->join_leave && !leave_cancel(c, s->ch->name, s->info, s->info_len))
            clu_join(n->broker, s->ch->name, s->info, s->info_len);
    }
}

chat_sub_t *chat__sub_lookup(chat_node_t *n, const char *client, const char *channel,
                             uint64_t gen) {
    chat_client_t *c = chat__client_lookup(n, client);
    if (!c || c->state == CL_CLOSING)
        return NULL;
    chat_sub_t *s = chat__client_find_sub(c, channel);
    return s && s->gen == gen ? s : NULL;
}

/* The SubscribeResult of a history answer (pointing into it). */
static chat_subscribe_result_t subscribe_result(const chat_ns_t *ns, const subop_t *op, int status,
                                                const clu_pub_t *pubs, size_t n, uint64_t top,
                                                const char *epoch) {
    chat_subscribe_result_t r = {0};
    if (ns->history_size > 0) {
        r.recoverable = true;
        r.positioned = true;
        r.epoch = epoch;
        r.offset = top;
    }
    if (op->recovering) {
        r.was_recovering = true;
        r.recovered = chat_recovery_complete(status, pubs, n, op->since, top);
        if (r.recovered) {
            r.pubs = pubs;
            r.npubs = n;
        }
    }
    if (op->sub_exp > 0) {
        int64_t ttl = op->sub_exp - core_wall_s();
        r.expires = true;
        r.ttl = ttl > 0 ? ttl : 0;
    }
    return r;
}

void chat__subop_done(int status, const clu_pub_t *pubs, size_t n, uint64_t top, const char *epoch,
                      void *ud) {
    subop_t *op = ud;
    chat_node_t *node = op->base.node;
    chat_sub_t *s = chat__sub_lookup(node, op->base.client, op->channel, op->gen);
    chat_subscribe_result_t res = {0};
    bool ok = false;
    if (s) {
        if (status != 0 && status != CORE_EUNRECOVERABLE) {
            /* The broker could not answer: the subscribe fails as a whole. */
            chat_client_t *c = s->c;
            chat__sub_remove(s);
            /* A server-side subscription that failed is left out of the connect answer. */
            if (op->kind == SUBOP_COMMAND)
                chat__reply_broker_error(c, op->base.cmd_id, status);
        } else {
            ok = true;
            res = subscribe_result(s->ch->ns, op, status, pubs, n, top, epoch);
            if (op->kind == SUBOP_COMMAND) {
                chat__reply(s->c, &(chat_reply_t){.id = op->base.cmd_id,
                                                  .method = CHAT_M_SUBSCRIBE,
                                                  .subscribe = res});
                chat__sub_activate(s, top, epoch);
            } else if (op->kind == SUBOP_SERVER) {
                /* The push goes out before any publication of the channel, which activation
                 * releases: the SDK learns the subscription first. */
                core_str_t m = {0};
                s->c->codec->push(&m, &(chat_push_t){.channel = s->ch->name,
                                                     .kind = CHAT_PUSH_SUBSCRIBE,
                                                     .sub = &res});
                chat__send_str(s->c, &m);
                core_str_free(&m);
                chat__sub_activate(s, top, epoch);
            }
        }
    }
    if (op->kind == SUBOP_CONNECT) {
        chat__connect_sub_done(op->conn, op->channel, ok ? &res : NULL, top, epoch, op->later);
    } else if (op->kind == SUBOP_SERVER) {
        if (!ok)
            CORE_LOGW(MOD, "server subscribe failed", "channel=%s status=%d", op->channel, status);
    } else if (op->later) {
        chat_client_t *c = chat__client_lookup(node, op->base.client);
        if (c)
            chat__client_unblock(c);
    }
    free(op->channel);
    free(op);
}

/* Starts a subscription: registers it (pending) so no publication is missed, then asks the
 * broker for the channel position or the publications to recover. */
bool chat__sub_start(chat_sub_t *s, subop_t *op, bool recover, uint64_t offset, const char *epoch) {
    chat_node_t *n = s->c->node;
    const chat_ns_t *ns = s->ch->ns;
    op->base.node = n;
    memcpy(op->base.client, s->c->id, sizeof op->base.client);
    op->channel = core_strdup(s->ch->name);
    op->gen = s->gen;
    if (ns->history_size == 0) {
        chat__subop_done(0, NULL, 0, 0, "", op);
        return false;
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
    clu_chan_opts_t o = chat__chan_opts(n, ns);
    int rc = clu_history(n->broker, s->ch->name, &o, &req, chat__subop_done, op);
    if (rc != 0) {
        chat__subop_done(rc, NULL, 0, 0, "", op);
        return false;
    }
    /* The broker answers from the loop, never before clu_history returned. */
    op->later = true;
    return true;
}

/* ---- subscribe / unsubscribe ---- */

void chat__handle_subscribe(chat_client_t *c, const chat_req_t *cmd) {
    chat_node_t *n = c->node;
    const char *channel = cmd->subscribe.channel;
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
    if (chat__client_find_sub(c, channel)) {
        chat__reply_error(c, cmd->id, CORE_REPLY_ALREADY_SUBSCRIBED, NULL);
        return;
    }
    if (c->nsubs >= n->cfg.max_channels_per_conn) {
        chat__reply_error(c, cmd->id, CORE_REPLY_LIMIT_EXCEEDED,
                          "limit exceeded: too many channels");
        return;
    }
    const char *token = cmd->subscribe.token;
    char *chan_info = NULL;
    int64_t sub_exp = 0;
    int limited = auth_user_limited_allows(channel, c->user->name);
    if (token && *token) {
        auth_verify_opts_t vo = {n->cfg.audience, n->cfg.issuer, n->cfg.jwt_leeway_s, 0};
        auth_claims_t cl;
        int rc = auth_verify_subscription(n->cfg.keys, token, strlen(token), &vo, c->user->name,
                                          channel, &cl);
        if (rc == AUTH_E_EXPIRED) {
            chat__reply_error(c, cmd->id, CORE_REPLY_TOKEN_EXPIRED, NULL);
            return;
        }
        if (rc != 0 || limited == 0) {
            if (rc == 0)
                auth_claims_clear(&cl);
            chat__reply_error(c, cmd->id, CORE_REPLY_PERMISSION_DENIED, NULL);
            return;
        }
        if (cl.info)
            chan_info = json_dumps(cl.info, JSON_COMPACT | JSON_ENCODE_ANY);
        sub_exp = cl.has_exp ? cl.exp : 0;
        auth_claims_clear(&cl);
    } else if (limited == 0 || (limited < 0 && !ns->allow_subscribe)) {
        chat__reply_error(c, cmd->id, CORE_REPLY_PERMISSION_DENIED, NULL);
        return;
    }
    chat_sub_t *s = chat__sub_new(c, channel, ns, chan_info);
    free(chan_info);
    s->exp = sub_exp;
    s->join_leave = ns->join_leave && cmd->subscribe.join_leave;
    subop_t *op = core_calloc(1, sizeof *op);
    op->kind = SUBOP_COMMAND;
    op->base.cmd_id = cmd->id;
    op->sub_exp = sub_exp;
    /* Commands after a subscribe may depend on it (a publish into the channel in the same
     * frame): the client's next commands wait for its answer. */
    if (chat__sub_start(s, op, cmd->subscribe.recover, cmd->subscribe.offset, cmd->subscribe.epoch))
        c->blocked++;
}

void chat__handle_unsubscribe(chat_client_t *c, const chat_req_t *cmd) {
    const char *channel = cmd->simple.channel;
    if (!channel) {
        chat__reply_error(c, cmd->id, CORE_REPLY_BAD_REQUEST, "bad request: channel required");
        return;
    }
    chat_sub_t *s = chat__client_find_sub(c, channel);
    if (s && !s->server_side)
        chat__sub_unsubscribe(s);
    chat__reply_empty(c, cmd->id, CHAT_M_UNSUBSCRIBE);
}

void chat__handle_sub_refresh(chat_client_t *c, const chat_req_t *cmd) {
    chat_node_t *n = c->node;
    const char *channel = cmd->simple.channel;
    const char *token = cmd->simple.token;
    if (!channel || !token) {
        chat__reply_error(c, cmd->id, CORE_REPLY_BAD_REQUEST,
                          "bad request: channel and token required");
        return;
    }
    chat_sub_t *s = chat__client_find_sub(c, channel);
    if (!s) {
        chat__reply_error(c, cmd->id, CORE_REPLY_PERMISSION_DENIED, NULL);
        return;
    }
    auth_verify_opts_t vo = {n->cfg.audience, n->cfg.issuer, n->cfg.jwt_leeway_s, 0};
    auth_claims_t cl;
    int rc = auth_verify_subscription(n->cfg.keys, token, strlen(token), &vo, c->user->name,
                                      channel, &cl);
    if (rc == AUTH_E_EXPIRED) {
        chat__reply_error(c, cmd->id, CORE_REPLY_TOKEN_EXPIRED, NULL);
        return;
    }
    if (rc != 0) {
        chat__reply_error(c, cmd->id, CORE_REPLY_PERMISSION_DENIED, NULL);
        return;
    }
    s->exp = cl.has_exp ? cl.exp : 0;
    auth_claims_clear(&cl);
    chat_reply_t r = {.id = cmd->id, .method = CHAT_M_SUB_REFRESH};
    if (s->exp) {
        int64_t ttl = s->exp - core_wall_s();
        r.sub_refresh = (chat_sub_refresh_result_t){true, ttl > 0 ? ttl : 0};
    }
    chat__reply(c, &r);
}

/* ---- recovery ---- */

bool chat_recovery_complete(int status, const clu_pub_t *pubs, size_t n, uint64_t since,
                            uint64_t top) {
    if (status != 0 || top < since)
        return false;
    if ((uint64_t)n != top - since)
        return false;
    for (size_t i = 0; i < n; i++)
        if (pubs[i].offset != since + 1 + i)
            return false;
    return true;
}
