/* llm: read-only views of the dispatcher for metrics and the admin API, and operator actions. */
#include <inttypes.h>
#include <string.h>

#include "llm/llm_int.h"

static const char *const outcome_names[LLM_END_KINDS] = {
    [LLM_END_OK] = "ok",
    [LLM_END_RATE_LIMITED] = "rate_limited",
    [LLM_END_KEY_DISABLED] = "key_rejected",
    [LLM_END_OVERLOADED] = "overloaded",
    [LLM_END_SERVER] = "server_error",
    [LLM_END_BAD_REQUEST] = "bad_request",
    [LLM_END_TIMEOUT] = "timeout",
    [LLM_END_NETWORK] = "network",
    [LLM_END_STREAM_ERROR] = "stream_error",
    [LLM_END_PROTOCOL] = "protocol",
};

static const char *const type_names[] = {"mock", "anthropic", "openai"};

size_t llm_outcome_count(void) {
    return LLM_END_KINDS;
}

const char *llm_outcome_name(size_t i) {
    return i < LLM_END_KINDS ? outcome_names[i] : "unknown";
}

size_t llm_provider_count(const llm_t *l) {
    return l->nprovs;
}

void llm_provider_view(const llm_t *l, size_t i, llm_prov_view_t *out) {
    const llm_prov_t *p = &l->provs[i];
    uint64_t now = uv_now(l->loop);
    llm_br_state_t st = llm_breaker_state(&p->br, now);
    *out = (llm_prov_view_t){
        .name = p->cfg->name,
        .model = p->cfg->model,
        .type = type_names[p->cfg->type],
        .breaker = llm_breaker_state_name(st),
        .breaker_open_ms = st == LLM_BR_OPEN ? p->br.open_until_ms - now : 0,
        .inflight = p->inflight,
        .nkeys = p->nkeys,
        .outcomes = p->outcomes,
    };
}

void llm_key_view(const llm_t *l, size_t i, size_t k, llm_key_view_t *out) {
    const llm_prov_t *p = &l->provs[i];
    const llm_key_t *key = &p->keys[k];
    uint64_t now = uv_now(l->loop);
    *out = (llm_key_view_t){
        .fp = key->fp,
        .fallback = key->fallback,
        .disabled = key->disabled,
        .disabled_reason = key->disabled_reason,
        .cooldown_ms = key->cooldown_until_ms > now ? key->cooldown_until_ms - now : 0,
        .inflight = key->inflight,
        .requests = key->requests,
        .remaining_requests = key->remaining_requests,
        .remaining_tokens = key->remaining_tokens,
        .breaker = llm_breaker_state_name(llm_breaker_state(&key->br, now)),
        .outcomes = p->key_outcomes + k * LLM_END_KINDS,
    };
}

typedef struct {
    core_str_t *out;
    const llm_t *l;
    uint64_t now;
    bool first;
} queue_walk_t;

static void queue_entry(llm_qentry_t *e, uint32_t pos, void *ud) {
    queue_walk_t *w = ud;
    const llm_req_t *r = CORE_CONTAINER_OF(e, llm_req_t, q);
    core_str_appends(w->out, w->first ? "{\"request_id\":" : ",{\"request_id\":");
    w->first = false;
    core_str_append_json_string(w->out, r->id, strlen(r->id));
    core_str_appends(w->out, ",\"user\":");
    core_str_append_json_string(w->out, r->user, strlen(r->user));
    core_str_appendf(w->out, ",\"plan\":\"%s\",\"position\":%u,\"waited_ms\":%" PRIu64 "}",
                     llm_plan_name(r->plan), pos, w->now - r->enq_ms);
}

void llm_render_state(const llm_t *l, core_str_t *out) {
    uint64_t now = uv_now(l->loop);
    core_str_appendf(out, "{\"concurrency\":%u,\"running\":%u,\"queue\":{\"depth\":{",
                     l->cfg.concurrency, l->running);
    for (int p = 0; p < LLM_PLANS; p++)
        core_str_appendf(out, "%s\"%s\":%u", p ? "," : "", llm_plan_name(p), l->queue.n[p]);
    core_str_appends(out, "},\"entries\":[");
    queue_walk_t w = {out, l, now, true};
    llm_queue_walk(&l->queue, now, queue_entry, &w);
    core_str_appends(out, "]},\"providers\":[");
    for (size_t i = 0; i < l->nprovs; i++) {
        llm_prov_view_t pv;
        llm_provider_view(l, i, &pv);
        core_str_appends(out, i ? ",{\"name\":" : "{\"name\":");
        core_str_append_json_string(out, pv.name, strlen(pv.name));
        core_str_appendf(out, ",\"type\":\"%s\",\"model\":", pv.type);
        core_str_append_json_string(out, pv.model, strlen(pv.model));
        core_str_appendf(out,
                         ",\"breaker\":{\"state\":\"%s\",\"open_ms\":%" PRIu64
                         "},\"inflight\":%u,\"keys\":[",
                         pv.breaker, pv.breaker_open_ms, pv.inflight);
        for (size_t k = 0; k < pv.nkeys; k++) {
            llm_key_view_t kv;
            llm_key_view(l, i, k, &kv);
            core_str_appendf(out,
                             "%s{\"fingerprint\":\"%s\",\"fallback\":%s,\"state\":\"%s\","
                             "\"disabled_reason\":",
                             k ? "," : "", kv.fp, kv.fallback ? "true" : "false",
                             kv.disabled      ? "disabled"
                             : kv.cooldown_ms ? "cooling"
                                              : "ready");
            if (kv.disabled)
                core_str_append_json_string(out, kv.disabled_reason, strlen(kv.disabled_reason));
            else
                core_str_appends(out, "null");
            core_str_appendf(out,
                             ",\"cooldown_ms\":%" PRIu64 ",\"inflight\":%u,\"requests\":%" PRIu64
                             ",\"remaining_requests\":%" PRId64 ",\"remaining_tokens\":%" PRId64
                             ",\"breaker\":\"%s\"}",
                             kv.cooldown_ms, kv.inflight, kv.requests, kv.remaining_requests,
                             kv.remaining_tokens, kv.breaker);
        }
        core_str_appends(out, "]}");
    }
    core_str_appends(out, "],\"leases\":[");
    bool first = true;
    for (const core_list_t *it = l->reqs.next; it != &l->reqs; it = it->next) {
        const llm_req_t *r = CORE_CONTAINER_OF(it, llm_req_t, link);
        if (!r->lease_held)
            continue;
        core_str_appends(out, first ? "{\"request_id\":" : ",{\"request_id\":");
        first = false;
        core_str_append_json_string(out, r->id, strlen(r->id));
        core_str_appends(out, ",\"provider\":");
        core_str_append_json_string(out, l->provs[r->prov].cfg->name,
                                    strlen(l->provs[r->prov].cfg->name));
        core_str_appendf(out, ",\"local\":%s,\"paused\":%s,\"held_ms\":%" PRIu64 "}",
                         r->local_lease ? "true" : "false", r->paused ? "true" : "false",
                         now - r->dispatch_ms);
    }
    core_str_appends(out, "]}");
}

static llm_prov_t *prov_named(llm_t *l, const char *name) {
    for (size_t i = 0; i < l->nprovs; i++)
        if (strcmp(l->provs[i].cfg->name, name) == 0)
            return &l->provs[i];
    return NULL;
}

int llm_key_enable(llm_t *l, const char *provider, const char *fp) {
    llm_prov_t *p = prov_named(l, provider);
    for (size_t k = 0; p && k < p->nkeys; k++)
        if (strcmp(p->keys[k].fp, fp) == 0) {
            p->keys[k].disabled = false;
            p->keys[k].disabled_reason[0] = '\0';
            p->keys[k].cooldown_until_ms = 0;
            llm_breaker_reset(&p->keys[k].br);
            return 0;
        }
    return CORE_ENOENT;
}

int llm_breaker_close(llm_t *l, const char *provider) {
    llm_prov_t *p = prov_named(l, provider);
    if (!p)
        return CORE_ENOENT;
    llm_breaker_reset(&p->br);
    p->shared_open_until_wall_ms = 0;
    clu_deadline_clear(l->broker, p->breaker_key);
    return 0;
}
