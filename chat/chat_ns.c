/* chat: namespace options: parsing, defaults and lookup by channel name. */
#include "chat/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
            else if (strcmp(key, "llm_system_prompt") == 0) {
                const char *s = json_string_value(v);
                if (!s || json_string_length(v) > 16384) {
                    snprintf(err, errlen,
                             "namespace %s: llm_system_prompt must be a string of at most 16384 "
                             "bytes",
                             name);
                    goto fail;
                }
                free(ns->llm_system_prompt);
                ns->llm_system_prompt = core_strdup(s);
                continue;
            } else if (strcmp(key, "retention_days") == 0) {
                /* A number of days for everyone, or {"default": N, "free": N, ...}. */
                json_t *one = json_is_object(v) ? json_object_get(v, "default") : v;
                const char *pk;
                json_t *pv;
                bool ok = !one || (json_is_integer(one) && json_integer_value(one) >= 0 &&
                                   json_integer_value(one) <= 1000000);
                if (ok && one)
                    ns->retention_days = (uint32_t)json_integer_value(one);
                if (json_is_object(v)) {
                    json_object_foreach(v, pk, pv) {
                        if (strcmp(pk, "default") == 0)
                            continue;
                        int plan = -1;
                        for (int p = 0; p < AUTH_PLAN_COUNT; p++)
                            if (strcmp(pk, auth_plan_name((auth_plan_t)p)) == 0)
                                plan = p;
                        if (plan < 0 || !json_is_integer(pv) || json_integer_value(pv) < 0 ||
                            json_integer_value(pv) > 1000000) {
                            ok = false;
                            break;
                        }
                        ns->retention_plan_days[plan] = (uint32_t)json_integer_value(pv);
                    }
                }
                if (!ok) {
                    snprintf(err, errlen,
                             "namespace %s: retention_days must be days (0..1000000) or an "
                             "object of default and plan names to days",
                             name);
                    goto fail;
                }
                continue;
            } else if (strcmp(key, "message_schema") == 0) {
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
    for (size_t i = 0; i < n; i++) {
        free(ns[i].name);
        free(ns[i].llm_system_prompt);
    }
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
