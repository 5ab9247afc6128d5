/* chat: the JSON codec (Centrifugo protocol v2, JSON): commands one per line of a text frame,
 * decoded into typed requests; typed replies and pushes written as JSON objects, several per
 * frame joined by newlines. Also what is JSON whatever the codec: the chat message validation,
 * the ClientInfo record the broker keeps, and the data of typing notices. Nothing else in chat/
 * writes JSON. */
#include "chat/chat_int.h"

#include <inttypes.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const method_names[CHAT_M_COUNT] = {
    [CHAT_M_PING] = "ping",
    [CHAT_M_CONNECT] = "connect",
    [CHAT_M_SUBSCRIBE] = "subscribe",
    [CHAT_M_UNSUBSCRIBE] = "unsubscribe",
    [CHAT_M_PUBLISH] = "publish",
    [CHAT_M_PRESENCE] = "presence",
    [CHAT_M_PRESENCE_STATS] = "presence_stats",
    [CHAT_M_HISTORY] = "history",
    [CHAT_M_RPC] = "rpc",
    [CHAT_M_SEND] = "send",
    [CHAT_M_REFRESH] = "refresh",
    [CHAT_M_SUB_REFRESH] = "sub_refresh",
    [CHAT_M_UNKNOWN] = "unknown",
};

const char *chat_method_name(chat_method_t m) {
    return m < CHAT_M_COUNT ? method_names[m] : "unknown";
}

static chat_method_t method_lookup(const char *key) {
    for (int m = CHAT_M_CONNECT; m < CHAT_M_UNKNOWN; m++)
        if (strcmp(key, method_names[m]) == 0)
            return (chat_method_t)m;
    return CHAT_M_UNKNOWN;
}

int chat_cmd_decode(const char *buf, size_t len, chat_cmd_t *out) {
    memset(out, 0, sizeof *out);
    /* jansson validates UTF-8 and rejects duplicate keys, so a command has one meaning. */
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, NULL);
    if (!root)
        return CORE_EPROTO;
    if (!json_is_object(root))
        goto bad;
    json_t *id = json_object_get(root, "id");
    if (id) {
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) > UINT32_MAX)
            goto bad;
        out->id = (uint32_t)json_integer_value(id);
    }
    out->method = CHAT_M_PING;
    const char *key;
    json_t *val;
    int methods = 0;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "id") == 0)
            continue;
        chat_method_t m = method_lookup(key);
        if (m == CHAT_M_UNKNOWN) {
            /* Unknown keys are ignored, unless nothing else names a method. */
            if (methods == 0)
                out->method = CHAT_M_UNKNOWN;
            continue;
        }
        if (!json_is_object(val) && !json_is_null(val))
            goto bad;
        if (methods++ > 0)
            goto bad;
        out->method = m;
        out->params = json_is_object(val) ? val : NULL;
    }
    if (out->method == CHAT_M_PING && out->id != 0)
        out->method = CHAT_M_UNKNOWN;
    /* Every command but the pong and `send` needs an id to carry its reply. */
    if (out->id == 0 && out->method != CHAT_M_PING && out->method != CHAT_M_SEND)
        goto bad;
    out->root = root;
    return 0;
bad:
    json_decref(root);
    memset(out, 0, sizeof *out);
    return CORE_EPROTO;
}

void chat_cmd_clear(chat_cmd_t *cmd) {
    json_decref(cmd->root);
    memset(cmd, 0, sizeof *cmd);
}

bool chat_frame_next(const char *frame, size_t frame_len, size_t *pos, const char **line,
                     size_t *len) {
    while (*pos < frame_len) {
        const char *start = frame + *pos;
        const char *nl = memchr(start, '\n', frame_len - *pos);
        size_t n = nl ? (size_t)(nl - start) : frame_len - *pos;
        *pos += n + (nl ? 1 : 0);
        /* Tolerate CRLF and blank lines between commands. */
        while (n > 0 && (start[n - 1] == '\r' || start[n - 1] == ' '))
            n--;
        if (n == 0)
            continue;
        *line = start;
        *len = n;
        return true;
    }
    return false;
}

char *chat_message_normalize(const json_t *data, uint32_t max_text_bytes, int64_t ts_ms,
                             char *msg_id, char *err, size_t errlen) {
    msg_id[0] = '\0';
    if (!json_is_object(data)) {
        snprintf(err, errlen, "message must be an object");
        return NULL;
    }
    json_t *type = json_object_get(data, "type");
    if (!json_is_string(type) || strcmp(json_string_value(type), "message") != 0) {
        snprintf(err, errlen, "message type must be \"message\"");
        return NULL;
    }
    json_t *text = json_object_get(data, "text");
    if (!json_is_string(text) || json_string_length(text) == 0) {
        snprintf(err, errlen, "message text must be a non-empty string");
        return NULL;
    }
    if (json_string_length(text) > max_text_bytes) {
        snprintf(err, errlen, "message text over %u bytes", max_text_bytes);
        return NULL;
    }
    /* jansson accepts NUL inside strings (\u0000); a chat text never needs one. */
    if (memchr(json_string_value(text), '\0', json_string_length(text))) {
        snprintf(err, errlen, "message text contains NUL");
        return NULL;
    }
    json_t *cid = json_object_get(data, "client_msg_id");
    if (cid && !json_is_null(cid)) {
        if (!json_is_string(cid) || json_string_length(cid) == 0 || json_string_length(cid) > 64 ||
            memchr(json_string_value(cid), '\0', json_string_length(cid))) {
            snprintf(err, errlen, "client_msg_id must be a string of 1 to 64 bytes");
            return NULL;
        }
        memcpy(msg_id, json_string_value(cid), json_string_length(cid) + 1);
    }
    /* Only the known fields go out, so a client cannot pose as the assistant or add fields
     * that other clients would trust. */
    json_t *norm = json_object();
    json_object_set_new(norm, "type", json_string("message"));
    json_object_set(norm, "text", text);
    if (msg_id[0])
        json_object_set_new(norm, "client_msg_id", json_string(msg_id));
    /* The time is the server's, whatever the client sent: readers compare messages from many
     * clocks, and a client could date its message anywhere. */
    json_object_set_new(norm, "ts", json_integer(ts_ms));
    char *out = json_dumps(norm, JSON_COMPACT);
    json_decref(norm);
    return out;
}

char *chat__client_info_record(const chat_client_info_t *ci, size_t *len) {
    core_str_t s = {0};
    core_str_appends(&s, "{\"user\":");
    core_str_append_json_string(&s, ci->user, strlen(ci->user));
    core_str_appends(&s, ",\"client\":");
    core_str_append_json_string(&s, ci->client, strlen(ci->client));
    if (ci->conn_info) {
        core_str_appends(&s, ",\"conn_info\":");
        core_str_appends(&s, ci->conn_info);
    }
    if (ci->chan_info) {
        core_str_appends(&s, ",\"chan_info\":");
        core_str_appends(&s, ci->chan_info);
    }
    core_str_appends(&s, "}");
    *len = s.len;
    /* Kept for the subscription's life, one per subscription: without the builder's slack. */
    return core_realloc(s.ptr, s.len + 1);
}

void chat__typing_data(core_str_t *out, const char *user) {
    core_str_appends(out, "{\"type\":\"typing\",\"user\":");
    core_str_append_json_string(out, user, strlen(user));
    core_str_appends(out, "}");
}

/* ---- typed requests ---- */

/* What the JSON codec keeps for a decoded request: the document (the strings of the request
 * point into it), the data text, the recovery array. */
typedef struct {
    json_t *root;
    char *data;
    chat_recover_req_t *subs;
} json_priv_t;

static uint64_t json_offset(const json_t *v) {
    json_int_t off = json_integer_value(v);
    return off > 0 ? (uint64_t)off : 0;
}

/* The data member as compact JSON text (NULL when absent). */
static const char *json_data(json_priv_t *pv, const json_t *params, size_t *len) {
    json_t *data = json_object_get(params, "data");
    *len = 0;
    if (!data)
        return NULL;
    pv->data = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    *len = pv->data ? strlen(pv->data) : 0;
    return pv->data;
}

static void json_to_req(const chat_cmd_t *cmd, chat_req_t *req) {
    json_priv_t *pv = core_calloc(1, sizeof *pv);
    const json_t *p = cmd->params;
    pv->root = cmd->root;
    req->priv = pv;
    req->id = cmd->id;
    req->method = cmd->method;
    switch (cmd->method) {
    case CHAT_M_CONNECT: {
        req->connect.token = chat__json_str(p, "token");
        json_t *subs = json_object_get(p, "subs");
        size_t n = json_is_object(subs) ? json_object_size(subs) : 0;
        if (n) {
            pv->subs = core_calloc(n, sizeof *pv->subs);
            const char *key;
            json_t *r;
            size_t i = 0;
            json_object_foreach(subs, key, r) {
                pv->subs[i++] = (chat_recover_req_t){
                    key, json_is_true(json_object_get(r, "recover")),
                    json_offset(json_object_get(r, "offset")), chat__json_str(r, "epoch")};
            }
            req->connect.subs = pv->subs;
            req->connect.nsubs = n;
        }
        break;
    }
    case CHAT_M_SUBSCRIBE:
        req->subscribe = (chat_subscribe_req_t){chat__json_str(p, "channel"),
                                                chat__json_str(p, "token"),
                                                json_is_true(json_object_get(p, "recover")),
                                                json_offset(json_object_get(p, "offset")),
                                                chat__json_str(p, "epoch"),
                                                json_is_true(json_object_get(p, "join_leave"))};
        break;
    case CHAT_M_PUBLISH:
        req->publish.channel = chat__json_str(p, "channel");
        req->publish.doc = json_object_get(p, "data");
        break;
    case CHAT_M_RPC:
        req->rpc.method = chat__json_str(p, "method");
        req->rpc.data = json_data(pv, p, &req->rpc.data_len);
        break;
    case CHAT_M_HISTORY: {
        chat_history_req_t *h = &req->history;
        h->channel = chat__json_str(p, "channel");
        json_t *limit = json_object_get(p, "limit");
        if (limit && !json_is_integer(limit))
            req->invalid = "bad request: limit must be an integer";
        json_int_t lim = json_integer_value(limit);
        h->limit = lim < 0 ? -1 : (lim > INT32_MAX ? INT32_MAX : (int32_t)lim);
        h->reverse = json_is_true(json_object_get(p, "reverse"));
        json_t *since = json_object_get(p, "since");
        if (since) {
            if (!json_is_object(since) && !req->invalid)
                req->invalid = "bad request: since must be an object";
            h->has_since = true;
            h->since_offset = json_offset(json_object_get(since, "offset"));
            h->since_epoch = chat__json_str(since, "epoch");
            if (!h->since_epoch)
                h->since_epoch = "";
        }
        break;
    }
    default:
        req->simple.channel = chat__json_str(p, "channel");
        req->simple.token = chat__json_str(p, "token");
        break;
    }
}

static int json_next(const char *frame, size_t len, size_t *pos, chat_req_t *req) {
    const char *line;
    size_t llen;
    memset(req, 0, sizeof *req);
    if (!chat_frame_next(frame, len, pos, &line, &llen))
        return 0;
    chat_cmd_t cmd;
    if (chat_cmd_decode(line, llen, &cmd) != 0)
        return CORE_EPROTO;
    json_to_req(&cmd, req);
    return 1;
}

static void json_req_clear(chat_req_t *req) {
    json_priv_t *pv = req->priv;
    if (pv) {
        json_decref(pv->root);
        free(pv->data);
        free(pv->subs);
        free(pv);
    }
    memset(req, 0, sizeof *req);
}

/* ---- encoders ---- */

static void append_string(core_str_t *s, const char *z) {
    core_str_append_json_string(s, z, strlen(z));
}

/* Starts the next member of an object being written: the comma before all but the first. */
static void member(core_str_t *s, bool *first, const char *key) {
    core_str_appendf(s, "%s\"%s\":", *first ? "" : ",", key);
    *first = false;
}

/* A Publication: {"data":...,"offset":N,"info":...}; offset 0 (not stored) and a missing
 * info are left out. */
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

void chat__json_append_pub(core_str_t *s, const clu_pub_t *p) {
    append_pub(s, p);
}

static void append_pubs(core_str_t *s, const clu_pub_t *pubs, size_t n) {
    core_str_appends(s, "[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            core_str_appends(s, ",");
        append_pub(s, &pubs[i]);
    }
    core_str_appends(s, "]");
}

static void append_expiry(core_str_t *s, bool *first, bool expires, int64_t ttl) {
    if (!expires)
        return;
    member(s, first, "expires");
    core_str_appends(s, "true");
    member(s, first, "ttl");
    core_str_appendf(s, "%" PRId64, ttl);
}

static void append_subscribe(core_str_t *s, const chat_subscribe_result_t *r) {
    bool first = true;
    core_str_appends(s, "{");
    if (r->recoverable) {
        member(s, &first, "recoverable");
        core_str_appends(s, "true");
    }
    if (r->positioned) {
        member(s, &first, "positioned");
        core_str_appends(s, "true");
        member(s, &first, "epoch");
        append_string(s, r->epoch ? r->epoch : "");
        member(s, &first, "offset");
        core_str_appendf(s, "%" PRIu64, r->offset);
    }
    if (r->was_recovering) {
        member(s, &first, "was_recovering");
        core_str_appends(s, "true");
    }
    if (r->recovered) {
        member(s, &first, "recovered");
        core_str_appends(s, "true");
    }
    if (r->npubs) {
        member(s, &first, "publications");
        append_pubs(s, r->pubs, r->npubs);
    }
    append_expiry(s, &first, r->expires, r->ttl);
    core_str_appends(s, "}");
}

/* The members a ConnectResult and a RefreshResult share: client, version, expiry. */
static void append_identity(core_str_t *s, bool *first, const char *client, const char *version,
                            bool expires, int64_t ttl) {
    member(s, first, "client");
    append_string(s, client);
    member(s, first, "version");
    append_string(s, version);
    append_expiry(s, first, expires, ttl);
}

static void append_connect(core_str_t *s, const chat_connect_result_t *r) {
    bool first = true;
    core_str_appends(s, "{");
    append_identity(s, &first, r->client, r->version, r->expires, r->ttl);
    member(s, &first, "ping");
    core_str_appendf(s, "%u", r->ping);
    if (r->pong) {
        member(s, &first, "pong");
        core_str_appends(s, "true");
    }
    if (r->node) {
        member(s, &first, "node");
        append_string(s, r->node);
    }
    if (r->nsubs) {
        member(s, &first, "subs");
        core_str_appends(s, "{");
        for (size_t i = 0; i < r->nsubs; i++) {
            if (i)
                core_str_appends(s, ",");
            append_string(s, r->subs[i].channel);
            core_str_appends(s, ":");
            append_subscribe(s, &r->subs[i].result);
        }
        core_str_appends(s, "}");
    }
    core_str_appends(s, "}");
}

static void append_presence(core_str_t *s, const chat_presence_result_t *r) {
    core_str_appends(s, "{\"presence\":{");
    for (size_t i = 0; i < r->n; i++) {
        if (i)
            core_str_appends(s, ",");
        append_string(s, r->clients[i].client);
        core_str_appends(s, ":");
        /* The ClientInfo record is a JSON object already. */
        core_str_append(s, r->clients[i].info, r->clients[i].info_len);
    }
    core_str_appends(s, "}}");
}

static void append_history(core_str_t *s, const chat_history_result_t *r) {
    core_str_appends(s, "{\"publications\":");
    append_pubs(s, r->pubs, r->npubs);
    core_str_appends(s, ",\"epoch\":");
    append_string(s, r->epoch ? r->epoch : "");
    core_str_appendf(s, ",\"offset\":%" PRIu64 "}", r->offset);
}

static void json_reply(core_str_t *s, const chat_reply_t *r) {
    core_str_appendf(s, "{\"id\":%u,\"%s\":", r->id, chat_method_name(r->method));
    bool first = true;
    switch (r->method) {
    case CHAT_M_CONNECT:
        append_connect(s, &r->connect);
        break;
    case CHAT_M_REFRESH:
        core_str_appends(s, "{");
        append_identity(s, &first, r->refresh.client, r->refresh.version, r->refresh.expires,
                        r->refresh.ttl);
        core_str_appends(s, "}");
        break;
    case CHAT_M_SUBSCRIBE:
        append_subscribe(s, &r->subscribe);
        break;
    case CHAT_M_SUB_REFRESH:
        core_str_appends(s, "{");
        append_expiry(s, &first, r->sub_refresh.expires, r->sub_refresh.ttl);
        core_str_appends(s, "}");
        break;
    case CHAT_M_PRESENCE:
        append_presence(s, &r->presence);
        break;
    case CHAT_M_PRESENCE_STATS:
        core_str_appendf(s, "{\"num_clients\":%u,\"num_users\":%u}", r->presence_stats.num_clients,
                         r->presence_stats.num_users);
        break;
    case CHAT_M_HISTORY:
        append_history(s, &r->history);
        break;
    case CHAT_M_RPC:
        /* The handler's data is JSON text in this codec: it goes out as it is. */
        core_str_appends(s, "{\"data\":");
        core_str_append(s, r->rpc.data, r->rpc.data_len);
        core_str_appends(s, "}");
        break;
    case CHAT_M_PUBLISH:
    case CHAT_M_UNSUBSCRIBE:
        core_str_appends(s, "{}");
        break;
    default:
        /* Pongs, send and unknown methods get no result: a caller bug. */
        CORE_ASSERT(!"a reply for a method without a result");
    }
    core_str_appends(s, "}");
}

static void json_error(core_str_t *s, uint32_t id, int code, const char *message, bool temporary) {
    core_str_appendf(s, "{\"id\":%u,\"error\":{\"code\":%d,\"message\":", id, code);
    core_str_append_json_string(s, message, strlen(message));
    if (temporary)
        core_str_appends(s, ",\"temporary\":true");
    core_str_appends(s, "}}");
}

static void json_push(core_str_t *s, const chat_push_t *p) {
    if (p->kind == CHAT_PUSH_PUB)
        /* The fan-out path: one allocation for the whole message. */
        core_str_reserve(s, p->pub->data_len + p->pub->info_len + strlen(p->channel) + 64);
    core_str_appends(s, "{\"push\":{\"channel\":");
    append_string(s, p->channel);
    switch (p->kind) {
    case CHAT_PUSH_PUB:
        core_str_appends(s, ",\"pub\":");
        append_pub(s, p->pub);
        break;
    case CHAT_PUSH_JOIN:
    case CHAT_PUSH_LEAVE:
        core_str_appends(s, p->kind == CHAT_PUSH_JOIN ? ",\"join\":{\"info\":"
                                                      : ",\"leave\":{\"info\":");
        core_str_append(s, p->member.info, p->member.info_len);
        core_str_appends(s, "}");
        break;
    case CHAT_PUSH_UNSUBSCRIBE:
        core_str_appendf(s, ",\"unsubscribe\":{\"code\":%d,\"reason\":", p->unsub.code);
        append_string(s, p->unsub.reason);
        core_str_appends(s, "}");
        break;
    case CHAT_PUSH_SUBSCRIBE:
        core_str_appends(s, ",\"subscribe\":");
        append_subscribe(s, p->sub);
        break;
    default:
        CORE_ASSERT(!"an unknown push kind");
    }
    core_str_appends(s, "}}");
}

static void json_ping(core_str_t *s) {
    core_str_appends(s, "{}");
}

/* Several messages in one text frame, one per line (the protocol's batching). */
static size_t json_join_size(size_t len, bool first) {
    return len + (first ? 0 : 1);
}

static void json_join_append(core_str_t *frame, const char *msg, size_t len, bool first) {
    if (!first)
        core_str_append(frame, "\n", 1);
    core_str_append(frame, msg, len);
}

const chat_codec_t chat__codec_json = {
    .framing = {.name = "json",
                .ws_opcode = 1,
                .join_size = json_join_size,
                .join_append = json_join_append},
    .index = CHAT_CODEC_JSON,
    .next = json_next,
    .req_clear = json_req_clear,
    .reply = json_reply,
    .error = json_error,
    .push = json_push,
    .ping = json_ping,
};
