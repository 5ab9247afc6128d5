/* chat: the client: frames in, dispatch, replies and closes, creation and release. */
#include "chat/chat_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "chat"

/* ---- output helpers ---- */

void chat__op_init(chat_op_t *op, chat_client_t *c, uint32_t cmd_id) {
    op->node = c->node;
    memcpy(op->client, c->id, sizeof op->client);
    op->cmd_id = cmd_id;
}

chat_client_t *chat__client_lookup(chat_node_t *n, const char *id) {
    return core_map_get(n->clients, id);
}

chat_client_t *chat__op_client(const chat_op_t *op) {
    chat_client_t *c = chat__client_lookup(op->node, op->client);
    return c && c->state == CL_CONNECTED ? c : NULL;
}

void chat__send_str(chat_client_t *c, core_str_t *s) {
    core_buf_t *b = core_buf_from(0, s->ptr, s->len);
    c->t->send(c->tctx, b);
    core_buf_unref(b);
}

void chat__client_close_reason(chat_client_t *c, int code, const char *reason) {
    if (c->state == CL_CLOSING)
        return;
    c->state = CL_CLOSING;
    c->t->close(c->tctx, code, reason);
}

void chat__client_close(chat_client_t *c, int code) {
    chat__client_close_reason(c, code, core_disconnect_reason(code));
}

void chat__reply_error(chat_client_t *c, uint32_t id, int code, const char *message) {
    bool temporary = core_reply_error_temporary(code);
    if (!message)
        message = core_reply_error_message(code);
    c->node->st.errors[core_reply_error_slot(code)]++;
    /* A client that keeps sending what cannot succeed is broken or hostile: stop serving it.
     * Temporary errors (rate limits, unavailable backends) are the server's doing and do not
     * count. */
    if (!temporary)
        chat__error_window(c, core_now_ms());
    if (!temporary && c->node->cfg.max_errors && ++c->errors > c->node->cfg.max_errors) {
        chat__client_close(c, CORE_DISCONNECT_TOO_MANY_ERRORS);
        return;
    }
    core_str_t s = {0};
    c->codec->error(&s, id, code, message, temporary);
    chat__send_str(c, &s);
    core_str_free(&s);
}

void chat__reply_broker_error(chat_client_t *c, uint32_t id, int status) {
    /* Redis away, or a command it left unanswered: the client retries later (the code is
     * temporary). Anything else is the broker failing a call it got. */
    const char *msg = status == CORE_EAGAIN || status == CORE_ETIMEDOUT
                          ? "broker unavailable"
                          : "internal error: broker call failed";
    chat__reply_error(c, id, CORE_REPLY_INTERNAL, msg);
}

void chat__reply(chat_client_t *c, const chat_reply_t *r) {
    core_str_t s = {0};
    c->codec->reply(&s, r);
    chat__send_str(c, &s);
    core_str_free(&s);
}

void chat__reply_empty(chat_client_t *c, uint32_t id, chat_method_t m) {
    chat__reply(c, &(chat_reply_t){.id = id, .method = m});
}

/* ---- frames ---- */

/* subscribe and unsubscribe under the connection's command rate: each one makes join and leave
 * events for every member of a room and broker work, so a flood of them is refused (111,
 * temporary), and a client that keeps flooding after being told is closed with 3013. */
static bool command_allowed(chat_client_t *c, const chat_req_t *cmd) {
    chat_node_t *n = c->node;
    uint64_t now = core_now_ms();
    int64_t wait = core_gcra_take(&c->cmd_gcra, (double)now, &n->cfg.command_rate);
    if (wait == 0)
        return true;
    n->st.rate_limited++;
    chat__error_window(c, now);
    if (n->cfg.max_errors && ++c->limited > n->cfg.max_errors) {
        chat__client_close(c, CORE_DISCONNECT_TOO_MANY_REQUESTS);
        return false;
    }
    char msg[96];
    snprintf(msg, sizeof msg, "too many requests: retry_after_ms=%" PRId64, wait);
    chat__reply_error(c, cmd->id, CORE_REPLY_TOO_MANY_REQUESTS, msg);
    return false;
}

static void dispatch_traced(chat_client_t *c, const chat_req_t *cmd);

static void dispatch(chat_client_t *c, const chat_req_t *cmd) {
    chat_node_t *n = c->node;
    n->st.commands[cmd->method]++;
    if (cmd->method == CHAT_M_PING) {
        c->pong_deadline_ms = 0;
        return;
    }
    /* Every line this command causes, here and in the broker and LLM work it starts, carries
     * one trace id. */
    core_log_ctx_t prev = core_log_ctx_enter((core_log_ctx_t){
        .trace = core_trace_new(),
        .conn = c->id,
        .user = c->user ? c->user->name : NULL,
        .method = chat_method_name(cmd->method),
    });
    CORE_LOGD(MOD, "command", "id=%" PRIu32, cmd->id);
    dispatch_traced(c, cmd);
    core_log_ctx_leave(prev);
}

static void dispatch_traced(chat_client_t *c, const chat_req_t *cmd) {
    if (c->state != CL_CONNECTED && cmd->method != CHAT_M_CONNECT) {
        /* The first command must be connect; a client that gets this wrong is broken. */
        chat__client_close(c, CORE_DISCONNECT_BAD_REQUEST);
        return;
    }
    switch (cmd->method) {
    case CHAT_M_CONNECT:
        chat__handle_connect(c, cmd);
        break;
    case CHAT_M_SUBSCRIBE:
        if (command_allowed(c, cmd))
            chat__handle_subscribe(c, cmd);
        break;
    case CHAT_M_UNSUBSCRIBE:
        if (command_allowed(c, cmd))
            chat__handle_unsubscribe(c, cmd);
        break;
    case CHAT_M_PUBLISH:
        chat__handle_publish(c, cmd);
        break;
    case CHAT_M_PRESENCE:
        chat__handle_presence(c, cmd, false);
        break;
    case CHAT_M_PRESENCE_STATS:
        chat__handle_presence(c, cmd, true);
        break;
    case CHAT_M_HISTORY:
        chat__handle_history(c, cmd);
        break;
    case CHAT_M_RPC:
        chat__handle_rpc(c, cmd);
        break;
    case CHAT_M_REFRESH:
        chat__handle_refresh(c, cmd);
        break;
    case CHAT_M_SUB_REFRESH:
        chat__handle_sub_refresh(c, cmd);
        break;
    case CHAT_M_SEND:
        break; /* no application handler for async messages */
    default:
        chat__reply_error(c, cmd->id, CORE_REPLY_METHOD_NOT_FOUND, NULL);
        break;
    }
}

void chat__client_on_data(chat_client_t *c, const char *data, size_t len) {
    size_t pos = 0;
    /* Any traffic proves the client alive. */
    c->pong_deadline_ms = 0;
    while (c->state != CL_CLOSING && pos < len) {
        if (c->state == CL_CONNECTING || c->blocked) {
            /* SDKs send their subscribe commands in the same frame as connect, and may publish
             * right after a subscribe. While a connect or a subscribe waits for the broker, the
             * client's later commands are held (bounded) and run after it, in order. */
            size_t rest = len - pos;
            const chat_framing_t *fr = &c->codec->framing;
            if (c->held.len + fr->join_size(rest, c->held.len == 0) > CHAT_HELD_MAX) {
                chat__client_close(c, CORE_DISCONNECT_BAD_REQUEST);
                return;
            }
            fr->join_append(&c->held, data + pos, rest, c->held.len == 0);
            return;
        }
        chat_req_t req;
        int rc = c->codec->next(data, len, &pos, &req);
        if (rc == 0)
            return;
        if (rc < 0) {
            chat__client_close(c, CORE_DISCONNECT_BAD_REQUEST);
            return;
        }
        dispatch(c, &req);
        c->codec->req_clear(&req);
    }
}

void chat__client_release_held(chat_client_t *c) {
    if (!c->held.len || c->blocked || c->state != CL_CONNECTED)
        return;
    core_str_t held = c->held;
    c->held = (core_str_t){0};
    chat__client_on_data(c, held.ptr, held.len);
    core_str_free(&held);
}

void chat__client_unblock(chat_client_t *c) {
    CORE_ASSERT(c->blocked > 0);
    c->blocked--;
    chat__client_release_held(c);
}

void chat_client_on_frame(chat_client_t *c, bool binary, const char *data, size_t len) {
    if (binary != (c->codec->framing.ws_opcode == 2)) {
        chat__client_close_reason(c, CORE_DISCONNECT_BAD_REQUEST,
                                  binary ? "binary frames are not supported"
                                         : "text frames are not supported");
        return;
    }
    chat__client_on_data(c, data, len);
}

const char *chat__client_peer(const chat_client_t *c, char *buf, size_t len) {
    buf[0] = '\0';
    if (c->t->peer)
        c->t->peer(c->tctx, buf, len);
    return buf;
}

const chat_framing_t *chat_client_framing(const chat_client_t *c) {
    return &c->codec->framing;
}

int chat_client_set_protocol(chat_client_t *c, const char *name) {
    if (!name || strcmp(name, "json") == 0)
        c->codec = &chat__codec_json;
    else if (strcmp(name, "protobuf") == 0)
        c->codec = &chat__codec_pb;
    else
        return CORE_EINVAL;
    return 0;
}

chat_client_t *chat_client_new(chat_node_t *n, const chat_transport_t *t, void *tctx) {
    chat_client_t *c = core_calloc(1, sizeof *c);
    c->node = n;
    c->codec = &chat__codec_json;
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
    c->created_ms = core_now_ms();
    core_map_put(n->clients, c->id, c);
    core_list_insert_tail(&n->all, &c->link);
    n->nall++;
    n->st.sessions++;
    return c;
}

void chat_client_free(chat_client_t *c) {
    chat_node_t *n = c->node;
    if (c->user) {
        /* Out of the client map first: a handler that answers its calls from client_gone
         * finds the client gone and its answers are dropped. */
        core_map_del(n->clients, c->id);
        chat__rpc_client_gone(c);
    }
    while (c->subs)
        chat__sub_remove(c->subs);
    /* Nothing can cancel them any more: the leaves held back go out now. */
    chat__leaves_flush(c, 0, true);
    if (c->user) {
        c->user->nconns--;
        chat__user_maybe_free(n, c->user, (double)core_now_ms());
    }
    if (c->counted)
        n->st.connections--;
    core_map_del(n->clients, c->id);
    if (n->sweep_at == &c->link)
        n->sweep_at = c->link.next;
    core_list_remove(&c->link);
    n->nall--;
    n->st.sessions--;
    core_str_free(&c->held);
    free(c->conn_info);
    free(c);
}
