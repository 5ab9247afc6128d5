/* chat: command decoding, frame splitting, chat message validation and namespace options. */
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

/* ---- namespaces ---- */

static void ns_defaults(chat_ns_t *ns, const char *name) {
    memset(ns, 0, sizeof *ns);
    ns->name = core_strdup(name);
    ns->max_message_bytes = 4096;
}

int chat_namespaces_parse(const json_t *obj, chat_ns_t **out, size_t *n, char *err, size_t errlen) {
    if (!json_is_object(obj)) {
        snprintf(err, errlen, "namespaces must be a JSON object");
        return CORE_EINVAL;
    }
    size_t cnt = json_object_size(obj);
    chat_ns_t *arr = core_calloc(cnt ? cnt : 1, sizeof *arr);
    size_t i = 0;
    const char *name;
    json_t *opts;
    json_object_foreach((json_t *)obj, name, opts) {
        chat_ns_t *ns = &arr[i++];
        ns_defaults(ns, name);
        if (strchr(name, ':') || strchr(name, '#') || strlen(name) > 64) {
            snprintf(err, errlen, "namespace %s: bad name", name);
            goto fail;
        }
        if (!json_is_object(opts)) {
            snprintf(err, errlen, "namespace %s: options must be an object", name);
            goto fail;
        }
        const char *key;
        json_t *v;
        json_object_foreach(opts, key, v) {
            bool *flag = NULL;
            uint32_t *num = NULL;
            if (strcmp(key, "presence") == 0)
                flag = &ns->presence;
            else if (strcmp(key, "join_leave") == 0)
                flag = &ns->join_leave;
            else if (strcmp(key, "allow_subscribe") == 0)
                flag = &ns->allow_subscribe;
            else if (strcmp(key, "allow_publish") == 0)
                flag = &ns->allow_publish;
            else if (strcmp(key, "llm") == 0)
                flag = &ns->llm;
            else if (strcmp(key, "history_size") == 0)
                num = &ns->history_size;
            else if (strcmp(key, "history_ttl") == 0)
                num = &ns->history_ttl_s;
            else if (strcmp(key, "max_message_bytes") == 0)
                num = &ns->max_message_bytes;
            else if (strcmp(key, "message_schema") == 0) {
                const char *s = json_string_value(v);
                if (s && strcmp(s, "chat") == 0)
                    ns->schema = CHAT_SCHEMA_CHAT;
                else if (s && strcmp(s, "any") == 0)
                    ns->schema = CHAT_SCHEMA_ANY;
                else {
                    snprintf(err, errlen, "namespace %s: message_schema must be chat or any", name);
                    goto fail;
                }
                continue;
            } else {
                snprintf(err, errlen, "namespace %s: unknown option %s", name, key);
                goto fail;
            }
            if (flag) {
                if (!json_is_boolean(v)) {
                    snprintf(err, errlen, "namespace %s: %s must be true or false", name, key);
                    goto fail;
                }
                *flag = json_is_true(v);
            } else {
                if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                    json_integer_value(v) > 10000000) {
                    snprintf(err, errlen, "namespace %s: %s must be an integer 0..10000000", name,
                             key);
                    goto fail;
                }
                *num = (uint32_t)json_integer_value(v);
            }
        }
        if (ns->max_message_bytes == 0) {
            snprintf(err, errlen, "namespace %s: max_message_bytes must be positive", name);
            goto fail;
        }
    }
    *out = arr;
    *n = i;
    return 0;
fail:
    chat_namespaces_free(arr, i);
    return CORE_EINVAL;
}

void chat_namespaces_default(chat_ns_t **out, size_t *n) {
    static const char *spec =
        "{\"chat\":{\"history_size\":200,\"history_ttl\":86400,\"presence\":true,"
        "\"join_leave\":true,\"allow_subscribe\":true,\"allow_publish\":true,\"llm\":true,"
        "\"max_message_bytes\":4096,\"message_schema\":\"chat\"},"
        "\"typing\":{\"history_size\":0,\"allow_subscribe\":true,\"allow_publish\":false,"
        "\"max_message_bytes\":512},"
        "\"personal\":{\"history_size\":100,\"history_ttl\":86400,\"allow_subscribe\":false,"
        "\"allow_publish\":false,\"max_message_bytes\":4096}}";
    json_t *obj = json_loads(spec, 0, NULL);
    char err[128];
    int rc = chat_namespaces_parse(obj, out, n, err, sizeof err);
    json_decref(obj);
    if (rc != 0)
        abort(); /* the built-in defaults are a constant */
}

void chat_namespaces_free(chat_ns_t *ns, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(ns[i].name);
    free(ns);
}

const chat_ns_t *chat_ns_find(const chat_ns_t *ns, size_t n, const char *channel) {
    const char *colon = strchr(channel, ':');
    size_t len = colon ? (size_t)(colon - channel) : 0;
    for (size_t i = 0; i < n; i++)
        if (strlen(ns[i].name) == len && strncmp(ns[i].name, channel, len) == 0)
            return &ns[i];
    return NULL;
}

/* ---- limiter and recovery ---- */

int64_t chat_gcra_interval_us(const chat_rate_t *rate) {
    int64_t interval = (int64_t)(1e6 / rate->rate + 0.5);
    return interval < 1 ? 1 : interval;
}

int64_t chat_gcra_take(chat_gcra_t *g, double now_ms, const chat_rate_t *rate) {
    if (rate->rate <= 0)
        return 0;
    int64_t now = (int64_t)(now_ms * 1000.0);
    int64_t interval = chat_gcra_interval_us(rate);
    int64_t burst = rate->burst ? rate->burst : 1;
    int64_t tat = g->tat_us > now ? g->tat_us : now;
    int64_t allow_at = tat + interval - interval * burst;
    if (now < allow_at)
        return (allow_at - now + 999) / 1000;
    g->tat_us = tat + interval;
    return 0;
}

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
