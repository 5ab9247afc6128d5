/* llm: settings (CHAT_LLM_PROVIDERS, CHAT_LLM_QUOTAS, CHAT_LLM_QUEUE) and the provider table. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/llm_int.h"

static const char *const plan_names[LLM_PLANS] = {"free", "plus", "pro", "executive"};

const char *llm_plan_name(unsigned plan) {
    return plan < LLM_PLANS ? plan_names[plan] : "unknown";
}

static int plan_index(const char *s, size_t n) {
    for (int p = 0; p < LLM_PLANS; p++)
        if (strlen(plan_names[p]) == n && memcmp(plan_names[p], s, n) == 0)
            return p;
    return -1;
}

static llm_provider_cfg_t mock_provider(void) {
    return (llm_provider_cfg_t){
        .name = core_strdup("mock"),
        .type = LLM_PROV_MOCK,
        .model = core_strdup("mock-1"),
        .max_tokens = 512,
        .mock_ttft_ms = 300,
        .mock_tokens = 60,
        .mock_tokens_per_s = 40,
    };
}

void llm_config_default(llm_config_t *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->providers = core_calloc(1, sizeof *cfg->providers);
    cfg->providers[0] = mock_provider();
    cfg->nproviders = 1;
    cfg->concurrency = 64;
    const uint32_t depth[LLM_PLANS] = {100, 200, 400, 800};
    const uint32_t wait[LLM_PLANS] = {10000, 20000, 30000, 45000};
    for (int p = 0; p < LLM_PLANS; p++) {
        cfg->queue.max_depth[p] = depth[p];
        cfg->queue.max_wait_ms[p] = wait[p];
        cfg->ttft_timeout_ms[p] = 20000;
    }
    cfg->queue.aging_ms = 5000;
    const llm_quota_t quota[LLM_PLANS] = {{50, 100000}, {200, 400000}, {1000, 2000000}, {0, 0}};
    memcpy(cfg->quota, quota, sizeof quota);
    llm_breaker_cfg_default(&cfg->breaker);
    cfg->lease_ttl_ms = 30000;
    cfg->connect_timeout_ms = 5000;
    cfg->idle_timeout_ms = 30000;
    cfg->total_timeout_ms = 300000;
    cfg->coalesce_ms = 16;
    cfg->pause_backlog_bytes = 262144;
    cfg->max_retries = 2;
    cfg->cooldown_floor_ms = 5000;
    cfg->context_messages = 20;
    cfg->context_tokens = 2000;
    cfg->max_prompt_bytes = 8000;
}

static void provider_free(llm_provider_cfg_t *p) {
    free(p->name);
    free(p->base_url);
    free(p->model);
    free(p->fallback);
    for (size_t i = 0; i < p->nkeys; i++)
        free(p->keys[i]);
    free(p->keys);
    for (size_t i = 0; i < p->nfallback; i++)
        free(p->fallback_keys[i]);
    free(p->fallback_keys);
}

void llm_config_free(llm_config_t *cfg) {
    for (size_t i = 0; i < cfg->nproviders; i++)
        provider_free(&cfg->providers[i]);
    free(cfg->providers);
    cfg->providers = NULL;
    cfg->nproviders = 0;
}

static int keys_parse(const json_t *arr, char ***out, size_t *n, const char *what, char *err,
                      size_t errlen) {
    *out = NULL;
    *n = 0;
    if (!arr)
        return 0;
    if (!json_is_array(arr)) {
        snprintf(err, errlen, "%s must be an array of strings", what);
        return CORE_EINVAL;
    }
    *out = core_calloc(json_array_size(arr) + 1, sizeof **out);
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (!json_is_string(v) || json_string_length(v) == 0) {
            snprintf(err, errlen, "%s[%zu] must be a non-empty string", what, i);
            return CORE_EINVAL;
        }
        (*out)[(*n)++] = core_strdup(json_string_value(v));
    }
    return 0;
}

static int u32_field(const json_t *o, const char *key, uint32_t *out, char *err, size_t errlen) {
    const json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX) {
        snprintf(err, errlen, "%s must be a non-negative integer", key);
        return CORE_EINVAL;
    }
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

static int provider_parse(const json_t *o, llm_provider_cfg_t *p, char *err, size_t errlen) {
    if (!json_is_object(o)) {
        snprintf(err, errlen, "each provider must be an object");
        return CORE_EINVAL;
    }
    const char *name = json_string_value(json_object_get(o, "name"));
    const char *type = json_string_value(json_object_get(o, "type"));
    const char *base = json_string_value(json_object_get(o, "base_url"));
    const char *model = json_string_value(json_object_get(o, "model"));
    const char *fb = json_string_value(json_object_get(o, "fallback"));
    if (!name || !*name || strlen(name) > 48) {
        snprintf(err, errlen, "provider name required (1-48 characters)");
        return CORE_EINVAL;
    }
    if (!type || (strcmp(type, "mock") && strcmp(type, "anthropic") && strcmp(type, "openai"))) {
        snprintf(err, errlen, "provider %s: type must be anthropic, openai or mock", name);
        return CORE_EINVAL;
    }
    p->name = core_strdup(name);
    p->type = strcmp(type, "mock") == 0        ? LLM_PROV_MOCK
              : strcmp(type, "anthropic") == 0 ? LLM_PROV_ANTHROPIC
                                               : LLM_PROV_OPENAI;
    p->model = core_strdup(model ? model : (p->type == LLM_PROV_MOCK ? "mock-1" : ""));
    p->fallback = fb ? core_strdup(fb) : NULL;
    p->max_tokens = 512;
    p->mock_ttft_ms = 300;
    p->mock_tokens = 60;
    p->mock_tokens_per_s = 40;
    if (p->type != LLM_PROV_MOCK) {
        if (!base || strncmp(base, "http", 4) != 0) {
            snprintf(err, errlen, "provider %s: base_url (http:// or https://) required", name);
            return CORE_EINVAL;
        }
        if (!model || !*model) {
            snprintf(err, errlen, "provider %s: model required", name);
            return CORE_EINVAL;
        }
        p->base_url = core_strdup(base);
    }
    char what[80];
    snprintf(what, sizeof what, "provider %s: keys", name);
    if (keys_parse(json_object_get(o, "keys"), &p->keys, &p->nkeys, what, err, errlen) != 0)
        return CORE_EINVAL;
    snprintf(what, sizeof what, "provider %s: fallback_keys", name);
    if (keys_parse(json_object_get(o, "fallback_keys"), &p->fallback_keys, &p->nfallback, what, err,
                   errlen) != 0)
        return CORE_EINVAL;
    if (p->type != LLM_PROV_MOCK && p->nkeys + p->nfallback == 0) {
        snprintf(err, errlen, "provider %s: at least one key required", name);
        return CORE_EINVAL;
    }
    if (u32_field(o, "max_concurrency", &p->max_concurrency, err, errlen) ||
        u32_field(o, "max_tokens", &p->max_tokens, err, errlen))
        return CORE_EINVAL;
    const json_t *mock = json_object_get(o, "mock");
    if (mock && (u32_field(mock, "ttft_ms", &p->mock_ttft_ms, err, errlen) ||
                 u32_field(mock, "tokens", &p->mock_tokens, err, errlen) ||
                 u32_field(mock, "tokens_per_s", &p->mock_tokens_per_s, err, errlen)))
        return CORE_EINVAL;
    if (p->max_tokens == 0 || p->mock_tokens == 0 || p->mock_tokens_per_s == 0) {
        snprintf(err, errlen,
                 "provider %s: max_tokens, mock.tokens and mock.tokens_per_s must be > 0", name);
        return CORE_EINVAL;
    }
    return 0;
}

int llm_providers_parse(llm_config_t *cfg, const char *text, char *err, size_t errlen) {
    json_error_t je;
    json_t *arr = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!arr || !json_is_array(arr) || json_array_size(arr) == 0 || json_array_size(arr) > 16) {
        snprintf(err, errlen, "CHAT_LLM_PROVIDERS must be a JSON array of 1 to 16 providers%s%s",
                 arr ? "" : ": ", arr ? "" : je.text);
        json_decref(arr);
        return CORE_EINVAL;
    }
    size_t n = json_array_size(arr);
    llm_provider_cfg_t *ps = core_calloc(n, sizeof *ps);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = provider_parse(json_array_get(arr, i), &ps[i], err, errlen);
    for (size_t i = 0; i < n && rc == 0; i++) {
        for (size_t j = 0; j < i; j++)
            if (strcmp(ps[i].name, ps[j].name) == 0) {
                snprintf(err, errlen, "provider %s: name used twice", ps[i].name);
                rc = CORE_EINVAL;
            }
        bool found = !ps[i].fallback;
        for (size_t j = 0; j < n && !found; j++)
            found = j != i && strcmp(ps[i].fallback, ps[j].name) == 0;
        if (!found && rc == 0) {
            snprintf(err, errlen, "provider %s: fallback %s is not another provider", ps[i].name,
                     ps[i].fallback);
            rc = CORE_EINVAL;
        }
    }
    json_decref(arr);
    if (rc != 0) {
        for (size_t i = 0; i < n; i++)
            provider_free(&ps[i]);
        free(ps);
        return rc;
    }
    llm_config_free(cfg);
    cfg->providers = ps;
    cfg->nproviders = n;
    return 0;
}

/* "plan=A/B,plan=A/B" into a (first) and b (second) per plan. */
static int plan_pairs_parse(const char *spec, uint64_t a[LLM_PLANS], uint64_t b[LLM_PLANS],
                            const char *what, char *err, size_t errlen) {
    const char *p = spec;
    while (*p) {
        const char *eq = strchr(p, '=');
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        int plan = eq && eq < end ? plan_index(p, (size_t)(eq - p)) : -1;
        char *slash = NULL, *tail = NULL;
        unsigned long long x = 0, y = 0;
        if (plan >= 0) {
            x = strtoull(eq + 1, &slash, 10);
            if (slash && *slash == '/')
                y = strtoull(slash + 1, &tail, 10);
        }
        if (plan < 0 || !slash || *slash != '/' || slash == eq + 1 || !tail || tail == slash + 1 ||
            tail != end) {
            snprintf(err, errlen, "%s: expected plan=N/N,... with plans free, plus, pro, executive",
                     what);
            return CORE_EINVAL;
        }
        a[plan] = x;
        b[plan] = y;
        p = *end ? end + 1 : end;
    }
    return 0;
}

int llm_quotas_parse(llm_config_t *cfg, const char *spec, char *err, size_t errlen) {
    uint64_t m[LLM_PLANS], t[LLM_PLANS];
    for (int p = 0; p < LLM_PLANS; p++) {
        m[p] = cfg->quota[p].messages;
        t[p] = cfg->quota[p].tokens;
    }
    if (plan_pairs_parse(spec, m, t, "CHAT_LLM_QUOTAS", err, errlen) != 0)
        return CORE_EINVAL;
    for (int p = 0; p < LLM_PLANS; p++) {
        if (m[p] > UINT32_MAX) {
            snprintf(err, errlen, "CHAT_LLM_QUOTAS: message quota too large");
            return CORE_EINVAL;
        }
        cfg->quota[p] = (llm_quota_t){(uint32_t)m[p], t[p]};
    }
    return 0;
}

int llm_queue_parse(llm_config_t *cfg, const char *spec, char *err, size_t errlen) {
    uint64_t d[LLM_PLANS], w[LLM_PLANS];
    for (int p = 0; p < LLM_PLANS; p++) {
        d[p] = cfg->queue.max_depth[p];
        w[p] = cfg->queue.max_wait_ms[p];
    }
    if (plan_pairs_parse(spec, d, w, "CHAT_LLM_QUEUE", err, errlen) != 0)
        return CORE_EINVAL;
    for (int p = 0; p < LLM_PLANS; p++) {
        if (d[p] > 100000 || w[p] > 3600000) {
            snprintf(err, errlen, "CHAT_LLM_QUEUE: depth at most 100000, wait at most 3600000 ms");
            return CORE_EINVAL;
        }
        cfg->queue.max_depth[p] = (uint32_t)d[p];
        cfg->queue.max_wait_ms[p] = (uint32_t)w[p];
    }
    return 0;
}

int llm__prov_index(const llm_t *l, const char *name_or_model) {
    if (!name_or_model || !*name_or_model)
        return l->nprovs ? 0 : -1;
    for (size_t i = 0; i < l->nprovs; i++)
        if (strcmp(l->provs[i].cfg->name, name_or_model) == 0)
            return (int)i;
    for (size_t i = 0; i < l->nprovs; i++)
        if (strcmp(l->provs[i].cfg->model, name_or_model) == 0)
            return (int)i;
    return -1;
}

void llm__provider_attach(llm_t *l, llm_prov_t *p) {
    switch (p->cfg->type) {
    case LLM_PROV_MOCK:
        p->ops = &llm_mock_ops;
        p->impl = llm_mock_new(l->loop, p->cfg->mock_ttft_ms, p->cfg->mock_tokens,
                               p->cfg->mock_tokens_per_s);
        break;
    case LLM_PROV_ANTHROPIC:
    case LLM_PROV_OPENAI:
        p->ops = &llm_http_stream_ops;
        p->impl = llm__http_provider_new(l, p->cfg);
        break;
    }
}

void llm__provider_detach(llm_t *l, llm_prov_t *p) {
    (void)l;
    switch (p->cfg->type) {
    case LLM_PROV_MOCK:
        llm_mock_free(p->impl);
        break;
    case LLM_PROV_ANTHROPIC:
    case LLM_PROV_OPENAI:
        llm__http_provider_free(p->impl);
        break;
    }
    p->impl = NULL;
}
