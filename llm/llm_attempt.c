/* llm: the attempts of a request that holds a lease: the room's recent history as context, a
 * key chosen from the pool past the breakers, the provider stream's callbacks (deltas coalesced
 * into the room), the verdict on key and provider, and retries, only before the first token
 * reached the room. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/core_codes.h"
#include "llm/llm_int.h"

#define MOD "llm"
#define BACKOFF_BASE_MS 500
#define BACKOFF_MAX_MS 8000
#define RETRY_AFTER_HONOUR_MS 60000

static void attempt(llm_req_t *r);

/* ---- attempts ----------------------------------------------------------------------------------
 */

/* What the provider's rate-limit headers said is left on the attempt's key. */
static void key_budget(llm_req_t *r, const llm_budget_t *b) {
    llm_key_t *k = &r->l->provs[r->prov].keys[r->key];
    if (b->remaining_requests >= 0)
        k->remaining_requests = b->remaining_requests;
    if (b->remaining_tokens >= 0)
        k->remaining_tokens = b->remaining_tokens;
}

static void stream_open(void *ud, const llm_budget_t *b) {
    llm_req_t *r = ud;
    LLM_TRACE(r);
    key_budget(r, b);
    if (!r->opened) {
        r->opened = true;
        llm__publish_start(r);
    }
}

static void flush_timer(uv_timer_t *t) {
    llm_req_t *r = t->data;
    LLM_TRACE(r);
    llm__flush_delta(r);
}

static void stream_delta(void *ud, const char *text, size_t len) {
    llm_req_t *r = ud;
    llm_t *l = r->l;
    if (len == 0)
        return;
    if (!r->first_token_ms) {
        r->first_token_ms = llm__now_ms(l);
        core_hist_observe(&l->st.ttft, (double)(r->first_token_ms - r->dispatch_ms) / 1000.0);
        if (!r->opened) {
            r->opened = true;
            llm__publish_start(r);
        }
    }
    core_str_append(&r->text, text, len);
    /* Deltas leave at most every coalesce_ms: one publication carries what arrived meanwhile.
     * The first leaves at once, so coalescing never adds to the time to first token. */
    if (!uv_is_active((uv_handle_t *)&r->timer)) {
        if (l->cfg.coalesce_ms == 0 || r->delta_index == 0)
            llm__flush_delta(r);
        else
            uv_timer_start(&r->timer, flush_timer, l->cfg.coalesce_ms, 0);
    }
}

static void stream_usage(void *ud, uint32_t in, uint32_t out) {
    llm_req_t *r = ud;
    r->in_tokens = in;
    r->out_tokens = out;
}

static bool is_breaker_failure(llm_end_t e) {
    switch (e) {
    case LLM_END_OVERLOADED:
    case LLM_END_SERVER:
    case LLM_END_TIMEOUT:
    case LLM_END_NETWORK:
    case LLM_END_STREAM_ERROR:
    case LLM_END_PROTOCOL:
        return true;
    default:
        return false;
    }
}

/* Records an attempt's verdict on its key and provider. */
static void judge(llm_req_t *r, const llm_outcome_t *o) {
    llm_t *l = r->l;
    llm_prov_t *p = &l->provs[r->prov];
    llm_key_t *k = &p->keys[r->key];
    uint64_t now = llm__now_ms(l);
    k->inflight--;
    p->outcomes[o->end]++;
    p->key_outcomes[(size_t)r->key * LLM_END_KINDS + o->end]++;
    if (o->end == LLM_END_OK) {
        llm_breaker_record(&k->br, &l->cfg.breaker, now, true, llm__rnd01());
        llm_breaker_record(&p->br, &l->cfg.breaker, now, true, llm__rnd01());
        return;
    }
    if (is_breaker_failure(o->end)) {
        llm_breaker_record(&k->br, &l->cfg.breaker, now, false, llm__rnd01());
        if (llm_breaker_record(&p->br, &l->cfg.breaker, now, false, llm__rnd01())) {
            CORE_LOGW(MOD, "provider breaker opened", "provider=%s until_ms=%" PRIu64, p->cfg->name,
                      p->br.open_until_ms - now);
            /* Every node stops calling this provider until the same deadline. */
            clu_deadline_raise(l->broker, p->breaker_key,
                               core_wall_ms() + (int64_t)(p->br.open_until_ms - now));
        }
        if (o->end == LLM_END_OVERLOADED && o->retry_after_ms > 0)
            llm_breaker_open_until(&p->br, now + o->retry_after_ms);
    } else {
        /* Not the provider's fault: a trial slot the attempt held is free again. */
        llm_breaker_release(&k->br);
        llm_breaker_release(&p->br);
    }
    if (o->end == LLM_END_RATE_LIMITED)
        llm_key_cool(k, now, o->retry_after_ms, l->cfg.cooldown_floor_ms);
    if (o->end == LLM_END_KEY_DISABLED) {
        llm_key_disable(k, o->reason[0] ? o->reason : "rejected");
        CORE_LOGE(MOD, "key disabled", "provider=%s key=%s reason=%s", p->cfg->name, k->fp,
                  k->disabled_reason);
    }
}

static void backoff_done(uv_timer_t *t) {
    llm_req_t *r = t->data;
    LLM_TRACE(r);
    attempt(r);
}

/* Ends a request whose text reached the room: the last delta, the stored answer (flag NULL, or
 * "interrupted"), the token counters and the quota settled from the usage. */
static void store_answer(llm_req_t *r, const char *flag) {
    llm_t *l = r->l;
    llm__flush_delta(r);
    llm__publish_final(r, flag);
    l->st.tokens_in += r->in_tokens;
    l->st.tokens_out += r->out_tokens;
    llm__quota_settle(r);
    llm__req_end(r);
}

static void stream_end(void *ud, const llm_outcome_t *o, const llm_budget_t *b) {
    llm_req_t *r = ud;
    LLM_TRACE(r);
    llm_t *l = r->l;
    r->stream = NULL;
    llm__set_paused(r, false);
    key_budget(r, b);
    judge(r, o);
    r->last = *o;
    uv_timer_stop(&r->timer);
    if (o->end == LLM_END_OK) {
        l->st.completed++;
        store_answer(r, NULL);
        return;
    }
    if (r->text.len > 0) {
        /* Output reached the room: never restarted, kept as it stands. */
        if (!r->out_tokens)
            r->out_tokens = (uint32_t)(r->text.len / 4 + 1);
        l->st.interrupted++;
        store_answer(r, "interrupted");
        return;
    }
    bool retryable =
        o->retryable && o->end != LLM_END_BAD_REQUEST && o->end != LLM_END_KEY_DISABLED;
    if (o->end == LLM_END_KEY_DISABLED)
        retryable = true; /* another key may take it */
    uint64_t now = llm__now_ms(l);
    if (!retryable || r->attempts > l->cfg.max_retries || now >= r->deadline_ms) {
        char msg[160];
        snprintf(msg, sizeof msg, "provider failed: %s", o->reason[0] ? o->reason : "error");
        l->st.failed++;
        llm__fail(r, CORE_REPLY_UPSTREAM_UNAVAILABLE, msg);
        return;
    }
    /* The next attempt: at once when another key can take it, else after the provider's wait
     * (when sane and inside the deadline) or a jittered exponential backoff. */
    llm_prov_t *p = &l->provs[r->prov];
    uint64_t wait = 0;
    if (llm_keys_pick(p->keys, p->nkeys, &l->cfg.breaker, now, NULL) < 0 ||
        !llm_breaker_can_pass(&p->br, &l->cfg.breaker, now)) {
        if (o->retry_after_ms > 0 && o->retry_after_ms <= RETRY_AFTER_HONOUR_MS)
            wait = o->retry_after_ms;
        else {
            uint32_t doublings = r->attempts > 5 ? 4 : r->attempts - 1;
            double backoff = (double)(BACKOFF_BASE_MS << doublings);
            if (backoff > BACKOFF_MAX_MS)
                backoff = BACKOFF_MAX_MS;
            wait = (uint64_t)(backoff * (1.0 - 0.25 * llm__rnd01()));
        }
    }
    l->st.retries++;
    if (now + wait >= r->deadline_ms) {
        /* Waiting would pass the deadline: the fallback provider, if any, now. */
        wait = 0;
    }
    r->state = REQ_BACKOFF;
    uv_timer_start(&r->timer, backoff_done, wait, 0);
}

static const llm_stream_cb_t stream_cb = {stream_open, stream_delta, stream_usage, stream_end};

static void build_prompt(const llm_req_t *r, llm_prompt_t *p, llm_msg_t *msgs) {
    for (size_t i = 0; i < r->nctx; i++)
        msgs[i] = r->ctx[i];
    msgs[r->nctx] = (llm_msg_t){"user", r->prompt, r->prompt_len};
    *p = (llm_prompt_t){.model = llm__req_model(r),
                        .system = r->system ? r->system : r->l->cfg.system_prompt,
                        .msgs = msgs,
                        .nmsgs = r->nctx + 1,
                        .max_tokens = r->l->provs[r->prov].cfg->max_tokens};
}

/* The earliest time any key of provider p (or its fallback) is back, as retry_after_ms. */
uint64_t llm__unavailable_for(llm_t *l, int prov, uint64_t now) {
    uint64_t best = UINT64_MAX;
    for (int hop = 0; prov >= 0 && hop < 2; hop++, prov = l->provs[prov].fallback) {
        llm_prov_t *p = &l->provs[prov];
        uint64_t at = 0;
        llm_keys_pick(p->keys, p->nkeys, &l->cfg.breaker, now, &at);
        if (at == 0)
            at = now;
        if (llm_breaker_state(&p->br, now) == LLM_BR_OPEN && p->br.open_until_ms > at)
            at = p->br.open_until_ms;
        if (at < best)
            best = at;
    }
    return best == UINT64_MAX ? 0 : best - now;
}

/* Picks a usable key of the request's provider, switching once to the fallback provider. Returns
 * false (and fails the request) when none can serve. */
static bool choose_key(llm_req_t *r) {
    llm_t *l = r->l;
    uint64_t now = llm__now_ms(l);
    for (;;) {
        llm_prov_t *p = &l->provs[r->prov];
        if (llm_breaker_acquire(&p->br, &l->cfg.breaker, now)) {
            int k = llm_keys_pick(p->keys, p->nkeys, &l->cfg.breaker, now, NULL);
            if (k >= 0 && llm_breaker_acquire(&p->keys[k].br, &l->cfg.breaker, now)) {
                r->key = k;
                return true;
            }
            llm_breaker_release(&p->br);
        }
        if (p->fallback < 0 || r->fell_back)
            break;
        /* The lease was taken for the first provider; the cluster-wide slot is what bounds
         * concurrency, so the fallback runs under it. */
        r->fell_back = true;
        l->st.fallbacks++;
        r->prov = p->fallback;
    }
    char msg[96];
    uint64_t wait = llm__unavailable_for(l, r->prov, now);
    snprintf(msg, sizeof msg, "provider unavailable: retry_after_ms=%" PRIu64, wait ? wait : 1000);
    l->st.failed++;
    llm__fail(r, CORE_REPLY_UPSTREAM_UNAVAILABLE, msg);
    return false;
}

static void attempt(llm_req_t *r) {
    llm_t *l = r->l;
    if (!choose_key(r))
        return;
    llm_prov_t *p = &l->provs[r->prov];
    llm_key_t *k = &p->keys[r->key];
    r->attempts++;
    r->state = REQ_RUNNING;
    CORE_LOGI(MOD, "llm attempt", "request=%s provider=%s key=%s attempt=%" PRIu32 " plan=%s",
              r->id, p->cfg->name, k->fp, r->attempts, llm_plan_name(r->plan));
    k->inflight++;
    k->requests++;
    llm_msg_t *msgs = core_calloc(r->nctx + 1, sizeof *msgs);
    llm_prompt_t prompt;
    build_prompt(r, &prompt, msgs);
    uint64_t now = llm__now_ms(l);
    uint64_t left = r->deadline_ms > now ? r->deadline_ms - now : 1;
    llm_stream_timeouts_t t = {
        .connect_ms = l->cfg.connect_timeout_ms,
        .first_byte_ms =
            (uint32_t)(left < l->cfg.ttft_timeout_ms[r->plan] ? left
                                                              : l->cfg.ttft_timeout_ms[r->plan]),
        .idle_ms = l->cfg.idle_timeout_ms,
        .total_ms = l->cfg.total_timeout_ms,
    };
    r->stream = p->ops->start(p->impl, k->secret, &prompt, &t, &stream_cb, r);
    free(msgs);
    if (!r->stream) {
        k->inflight--;
        llm_breaker_release(&k->br);
        llm_breaker_release(&p->br);
        l->st.failed++;
        llm__fail(r, CORE_REPLY_UPSTREAM_UNAVAILABLE, "provider refused the request");
    }
}

/* ---- context ------------------------------------------------------------------------------------
 */

/* Keeps the room's recent chat messages (newest last) within the context budget. */
static void context_done(int status, const clu_pub_t *pubs, size_t n, uint64_t top,
                         const char *epoch, void *ud) {
    (void)top;
    (void)epoch;
    llm_req_t *r = ud;
    LLM_TRACE(r);
    if (!llm__req_back(r))
        return;
    llm_t *l = r->l;
    if (status == 0 && n > 0) {
        /* pubs are newest first; walk until the budget is spent, then store oldest first. */
        size_t budget = (size_t)l->cfg.context_tokens * 4, used = 0, keep = 0;
        /* The asker's client may post the question into the room as well (the web demo does,
         * once the ask is admitted); the prompt is sent last either way, so that copy is left
         * out: the newest user message with the prompt's exact text, if no answer follows it. */
        bool prompt_seen = false, answer_seen = false;
        json_t **texts = core_calloc(n, sizeof *texts);
        bool *assistant = core_calloc(n, sizeof *assistant);
        for (size_t i = 0; i < n; i++) {
            json_t *d = json_loadb(pubs[i].data, pubs[i].data_len, 0, NULL);
            json_t *t = json_object_get(d, "text");
            const char *type = json_string_value(json_object_get(d, "type"));
            if (!json_is_string(t) || !type || strcmp(type, "message") != 0) {
                json_decref(d); /* typing notices, system events: not conversation */
                continue;
            }
            const char *role = json_string_value(json_object_get(d, "role"));
            bool is_answer = role && strcmp(role, "assistant") == 0;
            if (!is_answer && !prompt_seen && !answer_seen &&
                json_string_length(t) == r->prompt_len &&
                memcmp(json_string_value(t), r->prompt, r->prompt_len) == 0) {
                prompt_seen = true;
                json_decref(d);
                continue;
            }
            if (used + json_string_length(t) > budget) {
                json_decref(d); /* older messages would not fit either way */
                break;
            }
            answer_seen = answer_seen || is_answer;
            assistant[keep] = is_answer;
            used += json_string_length(t);
            texts[keep++] = d;
        }
        r->ctx = core_calloc(keep ? keep : 1, sizeof *r->ctx);
        r->ctx_store = core_malloc(used + 1);
        size_t off = 0;
        for (size_t i = keep; i-- > 0;) {
            json_t *t = json_object_get(texts[i], "text");
            size_t len = json_string_length(t);
            memcpy(r->ctx_store + off, json_string_value(t), len);
            r->ctx[r->nctx++] =
                (llm_msg_t){assistant[i] ? "assistant" : "user", r->ctx_store + off, len};
            off += len;
            json_decref(texts[i]);
        }
        free(texts);
        free(assistant);
    }
    attempt(r);
}

void llm__dispatch(llm_req_t *r) {
    llm_t *l = r->l;
    r->state = REQ_CONTEXT;
    r->dispatch_ms = llm__now_ms(l);
    core_hist_observe(&l->st.queue_wait[r->plan], (double)(r->dispatch_ms - r->enq_ms) / 1000.0);
    if (l->cfg.context_messages == 0) {
        attempt(r);
        return;
    }
    clu_history_req_t h = {.limit = (int32_t)l->cfg.context_messages, .reverse = true};
    r->pending_ops++;
    if (clu_history(l->broker, r->channel, &r->room_opts, &h, context_done, r) != 0) {
        r->pending_ops--;
        attempt(r);
    }
}
