/* chat: command decoding, frame splitting and chat message validation. */
#include "chat/chat.h"

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

char *chat_message_normalize(const json_t *data, uint32_t max_text_bytes, char *msg_id, char *err,
                             size_t errlen) {
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
    char *out = json_dumps(norm, JSON_COMPACT);
    json_decref(norm);
    return out;
}
