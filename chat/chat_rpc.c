/* chat: RPC routing. `rpc` commands go to the handler registered for their method: modules above
 * chat (the LLM dispatcher) register through chat_node_set_rpc, and chat registers its own
 * "typing" method the same way, so chat never depends on them. */
#include "chat/chat_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct chat_rpc_call {
    chat_op_t base; /* node, client id, command id: the client may be gone at the answer */
    char *user;
    auth_plan_t plan;
    char *data; /* NULL when absent */
    size_t data_len;
    chat_rpc_entry_t *entry;
};

int chat_node_set_rpc(chat_node_t *n, const chat_rpc_handler_t *h, void *ud) {
    for (uint32_t i = 0; i < n->nrpc; i++)
        if (strcmp(n->rpc[i].method, h->method) == 0)
            return CORE_EEXIST;
    if (n->nrpc == CHAT_RPC_MAX_HANDLERS)
        return CORE_ELIMIT;
    chat_rpc_entry_t *e = &n->rpc[n->nrpc++];
    e->method = core_strdup(h->method);
    e->h = *h;
    e->h.method = e->method;
    e->ud = ud;
    return 0;
}

void chat__rpc_free(chat_node_t *n) {
    for (uint32_t i = 0; i < n->nrpc; i++)
        free(n->rpc[i].method);
    n->nrpc = 0;
}

void chat__rpc_client_gone(chat_client_t *c) {
    for (uint32_t i = 0; i < c->node->nrpc; i++) {
        chat_rpc_entry_t *e = &c->node->rpc[i];
        if (e->h.client_gone)
            e->h.client_gone(e->ud, c->id, c->user->name);
    }
}

static void call_free(chat_rpc_call_t *call) {
    CORE_ASSERT(call->base.node->rpc_calls > 0);
    call->base.node->rpc_calls--;
    free(call->user);
    free(call->data);
    free(call);
}

static void rpc_limit_done(void *ud, bool allowed) {
    chat_rpc_call_t *call = ud;
    if (allowed)
        call->entry->h.call(call->entry->ud, call);
    else
        call_free(call); /* answered 429 already, or the client is gone */
}

void chat__handle_rpc(chat_client_t *c, const chat_req_t *cmd) {
    chat_node_t *n = c->node;
    const char *method = cmd->rpc.method;
    if (!method) {
        chat__reply_error(c, cmd->id, CORE_REPLY_BAD_REQUEST, "bad request: method required");
        return;
    }
    chat_rpc_entry_t *e = NULL;
    for (uint32_t i = 0; i < n->nrpc && !e; i++)
        if (strcmp(n->rpc[i].method, method) == 0)
            e = &n->rpc[i];
    if (!e) {
        chat__reply_error(c, cmd->id, CORE_REPLY_METHOD_NOT_FOUND, NULL);
        return;
    }
    chat_rpc_call_t *call = core_calloc(1, sizeof *call);
    chat__op_init(&call->base, c, cmd->id);
    call->user = core_strdup(c->user->name);
    call->plan = c->plan;
    if (cmd->rpc.data) {
        call->data = core_strndup(cmd->rpc.data, cmd->rpc.data_len);
        call->data_len = cmd->rpc.data_len;
    }
    n->rpc_calls++;
    call->entry = e;
    if (e->h.publish_limited)
        chat__limit_take(c, cmd->id, LIMIT_PUB, rpc_limit_done, call);
    else
        e->h.call(e->ud, call);
}

uint32_t chat_rpc_id(const chat_rpc_call_t *call) {
    return call->base.cmd_id;
}

const char *chat_rpc_client(const chat_rpc_call_t *call) {
    return call->base.client;
}

const char *chat_rpc_user(const chat_rpc_call_t *call) {
    return call->user;
}

auth_plan_t chat_rpc_plan(const chat_rpc_call_t *call) {
    return call->plan;
}

const char *chat_rpc_data(const chat_rpc_call_t *call, size_t *len) {
    *len = call->data_len;
    return call->data;
}

bool chat_rpc_subscribed(const chat_rpc_call_t *call, const char *channel) {
    chat_client_t *c = chat__op_client(&call->base);
    chat_sub_t *s = c ? chat__client_find_sub(c, channel) : NULL;
    return s && s->state == SUB_ACTIVE;
}

const chat_ns_t *chat_rpc_namespace(const chat_rpc_call_t *call, const char *channel) {
    const chat_config_t *cfg = &call->base.node->cfg;
    return chat_ns_find(cfg->namespaces, cfg->n_namespaces, channel);
}

void chat_rpc_reply(chat_rpc_call_t *call, const char *result, size_t len) {
    chat_client_t *c = chat__op_client(&call->base);
    if (c) {
        chat__reply(c, &(chat_reply_t){
                           .id = call->base.cmd_id, .method = CHAT_M_RPC, .rpc = {result, len}});
    }
    call_free(call);
}

void chat_rpc_error(chat_rpc_call_t *call, int code, const char *message) {
    chat_client_t *c = chat__op_client(&call->base);
    if (c)
        chat__reply_error(c, call->base.cmd_id, code, message);
    call_free(call);
}

/* ---- typing: chat's own method ---- */

/* {"channel": room} from a member of room publishes {"type":"typing","user":...} into the
 * room's typing channel, under the user's typing limit. The answer comes from the publish
 * path, which replies to the command itself (it outlives the call, like a publish). */
static void typing_call(void *ud, chat_rpc_call_t *call) {
    (void)ud;
    chat_client_t *c = chat__op_client(&call->base);
    CORE_ASSERT(c != NULL); /* handlers are called while the command is dispatched */
    chat_node_t *n = c->node;
    json_t *data =
        call->data ? json_loadb(call->data, call->data_len, JSON_DECODE_ANY, NULL) : NULL;
    const char *room = chat__json_str(data, "channel");
    if (!room) {
        json_decref(data);
        chat_rpc_error(call, CORE_REPLY_BAD_REQUEST, "bad request: data.channel required");
        return;
    }
    const char *colon = strchr(room, ':');
    const char *bad = chat__channel_problem(room);
    if (!bad && strlen("typing:") + strlen(colon ? colon + 1 : room) > CHAT_MAX_CHANNEL_BYTES)
        bad = "bad request: typing channel name too long (at most 255 bytes)";
    if (bad) {
        chat_rpc_error(call, CORE_REPLY_BAD_REQUEST, bad);
        json_decref(data);
        return;
    }
    chat_sub_t *s = chat__client_find_sub(c, room);
    const chat_ns_t *tns = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, "typing:");
    if (!s || s->state != SUB_ACTIVE || !tns) {
        json_decref(data);
        chat_rpc_error(call, CORE_REPLY_PERMISSION_DENIED, NULL);
        return;
    }
    char channel[CHAT_MAX_CHANNEL_BYTES + 8];
    snprintf(channel, sizeof channel, "typing:%s", colon ? colon + 1 : room);
    json_decref(data);
    core_str_t d = {0};
    chat__typing_data(&d, c->user->name);
    chat__gated_publish(c, call->base.cmd_id, CHAT_M_RPC, LIMIT_TYPING, channel, tns, d.ptr, d.len,
                        0);
    core_str_free(&d);
    call_free(call);
}

void chat__rpc_init(chat_node_t *n) {
    static const chat_rpc_handler_t typing = {"typing", typing_call, NULL, false};
    int rc = chat_node_set_rpc(n, &typing, NULL);
    CORE_ASSERT(rc == 0);
}
