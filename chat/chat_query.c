/* chat: presence, presence_stats and history. */
#include "chat/chat_int.h"

#include <stdlib.h>

#define MOD "chat"

/* ---- presence and history ---- */

static chat_op_t *queryop_new(chat_client_t *c, uint32_t id) {
    chat_op_t *op = core_calloc(1, sizeof *op);
    chat__op_init(op, c, id);
    return op;
}

static void presence_done(int status, const clu_presence_t *e, size_t n, void *ud) {
    chat_op_t *op = ud;
    chat_client_t *c = chat__op_client(op);
    if (c) {
        if (status != 0) {
            chat__reply_broker_error(c, op->cmd_id, status);
        } else {
            chat__reply(c, &(chat_reply_t){
                               .id = op->cmd_id, .method = CHAT_M_PRESENCE, .presence = {e, n}});
        }
    }
    free(op);
}

static void presence_stats_done(int status, uint32_t clients, uint32_t users, void *ud) {
    chat_op_t *op = ud;
    chat_client_t *c = chat__op_client(op);
    if (c) {
        if (status != 0) {
            chat__reply_broker_error(c, op->cmd_id, status);
        } else {
            chat__reply(c, &(chat_reply_t){.id = op->cmd_id,
                                           .method = CHAT_M_PRESENCE_STATS,
                                           .presence_stats = {clients, users}});
        }
    }
    free(op);
}

/* Checks channel, namespace feature and subscription for presence and history; replies with
 * the error itself and returns NULL when the call is not allowed. */
static const chat_ns_t *query_check(chat_client_t *c, const chat_req_t *cmd, bool history) {
    chat_node_t *n = c->node;
    const char *channel = history ? cmd->history.channel : cmd->simple.channel;
    const char *bad = chat__channel_problem(channel);
    if (bad) {
        chat__reply_error(c, cmd->id, CORE_REPLY_BAD_REQUEST, bad);
        return NULL;
    }
    const chat_ns_t *ns = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, channel);
    if (!ns) {
        chat__reply_error(c, cmd->id, CORE_REPLY_UNKNOWN_CHANNEL, NULL);
        return NULL;
    }
    if (history ? ns->history_size == 0 : !(ns->presence || ns->join_leave)) {
        chat__reply_error(c, cmd->id, CORE_REPLY_NOT_AVAILABLE, NULL);
        return NULL;
    }
    chat_sub_t *s = chat__client_find_sub(c, channel);
    if (!s || s->state != SUB_ACTIVE) {
        chat__reply_error(c, cmd->id, CORE_REPLY_PERMISSION_DENIED, NULL);
        return NULL;
    }
    return ns;
}

void chat__handle_presence(chat_client_t *c, const chat_req_t *cmd, bool stats) {
    if (!query_check(c, cmd, false))
        return;
    const char *channel = cmd->simple.channel;
    chat_op_t *op = queryop_new(c, cmd->id);
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
    chat_op_t *op = ud;
    chat_client_t *c = chat__op_client(op);
    if (c) {
        if (status == CORE_EUNRECOVERABLE) {
            chat__reply_error(c, op->cmd_id, CORE_REPLY_UNRECOVERABLE_POSITION, NULL);
        } else if (status != 0) {
            chat__reply_broker_error(c, op->cmd_id, status);
        } else {
            chat__reply(c, &(chat_reply_t){.id = op->cmd_id,
                                           .method = CHAT_M_HISTORY,
                                           .history = {pubs, n, epoch, top}});
        }
    }
    free(op);
}

void chat__handle_history(chat_client_t *c, const chat_req_t *cmd) {
    const chat_ns_t *ns = query_check(c, cmd, true);
    if (!ns)
        return;
    const char *channel = cmd->history.channel;
    if (cmd->invalid) {
        chat__reply_error(c, cmd->id, CORE_REPLY_BAD_REQUEST, cmd->invalid);
        return;
    }
    clu_history_req_t req = {.has_since = cmd->history.has_since,
                             .since_offset = cmd->history.since_offset,
                             .since_epoch = cmd->history.since_epoch,
                             .limit = cmd->history.limit,
                             .reverse = cmd->history.reverse};
    chat_op_t *op = queryop_new(c, cmd->id);
    clu_chan_opts_t o = chat__chan_opts(c->node, ns);
    int rc = clu_history(c->node->broker, channel, &o, &req, history_done, op);
    if (rc != 0)
        history_done(rc, NULL, 0, 0, "", op);
}
