/* llm: the dispatcher. One request goes through admission (daily message quota and token budget,
 * reserved in the broker), the plan-priority queue, a lease on the cluster-wide and the
 * provider's semaphore, the room's recent history as context, then attempts: a key chosen by the
 * pool, breakers consulted, the stream's deltas coalesced into ephemeral publications and the
 * answer stored as one publication with an offset. Retries happen only before the first token
 * reached the room; afterwards a failure stores the partial answer as interrupted.
 *
 * Every broker call answers from the loop, never before it returns, so a request is referenced
 * by the calls it has in flight (pending_ops) and freed only when none is left. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "core/core_codes.h"
#include "llm/llm_http.h"
#include "llm/llm_int.h"

#define MOD "llm"
#define SWEEP_MS 100
#define POSITION_EVERY_TICKS 5 /* queue positions published at most twice a second */
#define BREAKER_SYNC_TICKS 10  /* shared breaker decisions read once a second */
#define ACQUIRE_RETRY_MIN_MS 50
#define ACQUIRE_RETRY_JITTER_MS 100
#define BACKOFF_BASE_MS 500
#define BACKOFF_MAX_MS 8000
#define RETRY_AFTER_HONOUR_MS 60000

static const char *const reject_names[LLM_REJ_COUNT] = {
    [LLM_REJ_QUOTA] = "quota",
    [LLM_REJ_BUDGET] = "token_budget",
    [LLM_REJ_QUEUE_FULL] = "queue_full",
    [LLM_REJ_TIMEOUT] = "queue_timeout",
    [LLM_REJ_UNAVAILABLE] = "unavailable",
    [LLM_REJ_BAD_REQUEST] = "bad_request",
};

const char *llm_reject_reason_name(llm_reject_reason_t r) {
    return r < LLM_REJ_COUNT ? reject_names[r] : "unknown";
}

static double rnd01(void) {
    uint32_t v;
    core_random(&v, sizeof v);
    return (double)v / 4294967296.0;
}

static uint64_t now_ms(const llm_t *l) {
    return uv_now(l->loop);
}

/* ---- request lifetime ------------------------------------------------------------------------ */

static void llm_maybe_free(llm_t *l);

static void req_free(llm_req_t *r) {
    llm_t *l = r->l;
    free(r->user);
    free(r->client);
    free(r->channel);
    free(r->personal);
    free(r->prompt);
    free(r->model);
    free(r->ctx);
    free(r->ctx_store);
    core_str_free(&r->text);
    free(r);
    l->live_reqs--;
    llm_maybe_free(l);
}

static void req_closed(uv_handle_t *h) {
    llm_req_t *r = h->data;
    r->timer_closed = true;
    if (r->pending_ops == 0)
        req_free(r);
}

/* Drops a request from every index; freed once its broker calls answered. */
static void req_kill(llm_req_t *r) {
    if (r->dead)
        return;
    llm_t *l = r->l;
    r->dead = true;
    llm_queue_remove(&l->queue, &r->q);
    core_map_del(l->by_id, r->id);
    core_list_remove(&r->link);
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, req_closed);
}

/* A broker answer for r arrived: false when r is finished and must not be touched further. */
static bool req_back(llm_req_t *r) {
    CORE_ASSERT(r->pending_ops > 0);
    r->pending_ops--;
    if (r->dead) {
        if (r->pending_ops == 0 && r->timer_closed)
            req_free(r);
        return false;
    }
    return true;
}

/* ---- publishing into rooms ------------------------------------------------------------------- */

static void published(int status, uint64_t offset, const char *epoch, void *ud) {
    (void)offset;
    (void)epoch;
    llm_req_t *r = ud;
    if (status != 0)
        CORE_LOGW(MOD, "publication failed", "request=%s status=%s", r->id, core_strerror(status));
    req_back(r);
}

static void publish_json(llm_req_t *r, const char *channel, const core_str_t *data, bool stored) {
    llm_t *l = r->l;
    core_str_t info = {0};
    core_str_appends(&info, "{\"user\":\"assistant\",\"client\":");
    core_str_append_json_string(&info, r->id, strlen(r->id));
    core_str_appends(&info, "}");
    clu_pub_t pub = {
        .data = data->ptr, .data_len = data->len, .info = info.ptr, .info_len = info.len};
    clu_chan_opts_t opts = stored ? r->room_opts : (clu_chan_opts_t){0};
    r->pending_ops++;
    int rc = clu_publish(l->broker, channel, &pub, &opts, published, r);
    if (rc != 0) {
        r->pending_ops--;
        CORE_LOGW(MOD, "publication failed", "request=%s status=%s", r->id, core_strerror(rc));
    }
    core_str_free(&info);
}

static void json_head(core_str_t *s, const char *type, const llm_req_t *r) {
    core_str_appends(s, "{\"type\":\"");
    core_str_appends(s, type);
    core_str_appends(s, "\",\"request_id\":");
    core_str_append_json_string(s, r->id, strlen(r->id));
}

static const char *req_model(const llm_req_t *r) {
    return r->l->provs[r->prov].cfg->model;
}

static void publish_start(llm_req_t *r) {
    core_str_t s = {0};
    json_head(&s, "llm.start", r);
    core_str_appends(&s, ",\"model\":");
    core_str_append_json_string(&s, req_model(r), strlen(req_model(r)));
    core_str_appends(&s, "}");
    publish_json(r, r->channel, &s, false);
    core_str_free(&s);
}

/* ---- backpressure ------------------------------------------------------------------------------
 * A room whose slowest reader on this node is far behind would only grow that reader's queue
 * until it is closed as slow (3008). The stream stops reading from the provider instead: the
 * provider's bytes wait in the kernel and the stream picks up where it stopped once the reader
 * has caught up to half the bound. Readers on other nodes are not probed: each node protects its
 * own. */

static void set_paused(llm_req_t *r, bool paused) {
    llm_t *l = r->l;
    if (r->paused == paused)
        return;
    r->paused = paused;
    if (paused) {
        l->st.pauses++;
        l->st.paused++;
    } else
        l->st.paused--;
}

static void maybe_pause(llm_req_t *r) {
    llm_t *l = r->l;
    if (r->paused || !r->stream || !l->backlog || l->cfg.pause_backlog_bytes == 0)
        return;
    if (l->backlog(l->backlog_ud, r->channel) <= l->cfg.pause_backlog_bytes)
        return;
    set_paused(r, true);
    l->provs[r->prov].ops->pause(r->stream);
}

static void maybe_resume(llm_req_t *r) {
    llm_t *l = r->l;
    if (!r->paused || !r->stream)
        return;
    if (l->backlog(l->backlog_ud, r->channel) > l->cfg.pause_backlog_bytes / 2)
        return;
    set_paused(r, false);
    l->provs[r->prov].ops->resume(r->stream);
}

void llm_set_backlog_probe(llm_t *l, llm_backlog_fn fn, void *ud) {
    l->backlog = fn;
    l->backlog_ud = ud;
}

/* Publishes the text not yet sent as one delta; the room's readers are checked at the same pace
 * (not per token: a big room costs one walk of its members per publication). */
static void flush_delta(llm_req_t *r) {
    if (r->flushed >= r->text.len)
        return;
    core_str_t s = {0};
    json_head(&s, "llm.delta", r);
    core_str_appendf(&s, ",\"index\":%u,\"text\":", r->delta_index++);
    core_str_append_json_string(&s, r->text.ptr + r->flushed, r->text.len - r->flushed);
    core_str_appends(&s, "}");
    r->flushed = r->text.len;
    publish_json(r, r->channel, &s, false);
    core_str_free(&s);
    maybe_pause(r);
}

/* The stored answer: complete, interrupted by a provider failure, or cancelled. */
static void publish_final(llm_req_t *r, const char *marker) {
    core_str_t s = {0};
    core_str_appends(&s, "{\"type\":\"message\",\"role\":\"assistant\",\"text\":");
    core_str_append_json_string(&s, r->text.ptr ? r->text.ptr : "", r->text.len);
    core_str_appends(&s, ",\"request_id\":");
    core_str_append_json_string(&s, r->id, strlen(r->id));
    core_str_appends(&s, ",\"model\":");
    core_str_append_json_string(&s, req_model(r), strlen(req_model(r)));
    core_str_appendf(&s, ",\"usage\":{\"input_tokens\":%u,\"output_tokens\":%u}", r->in_tokens,
                     r->out_tokens);
    if (marker)
        core_str_appendf(&s, ",\"%s\":true", marker);
    core_str_appends(&s, "}");
    publish_json(r, r->channel, &s, true);
    core_str_free(&s);
}

static void publish_error(llm_req_t *r, int code, const char *message) {
    core_str_t s = {0};
    json_head(&s, "llm.error", r);
    core_str_appendf(&s, ",\"code\":%d,\"message\":", code);
    core_str_append_json_string(&s, message, strlen(message));
    core_str_appends(&s, "}");
    publish_json(r, r->channel, &s, false);
    core_str_free(&s);
}

static void publish_position(llm_req_t *r, uint32_t pos) {
    if (!r->personal || pos == r->last_position)
        return;
    r->last_position = pos;
    core_str_t s = {0};
    json_head(&s, "llm.queued", r);
    core_str_appendf(&s, ",\"queue_position\":%u}", pos);
    publish_json(r, r->personal, &s, false);
    core_str_free(&s);
}

/* ---- quotas ---------------------------------------------------------------------------------- */

static void quota_day(char out[9], int64_t *reset_s) {
    time_t t = (time_t)core_wall_s();
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 9, "%Y%m%d", &tm);
    *reset_s = (int64_t)t - (tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec) + 86400;
}

static void quota_key(core_str_t *k, const llm_req_t *r, const char *what) {
    core_str_appendf(k, "llm:%s:%s:", what, r->day);
    core_str_appends(k, r->user);
}

static void counter_done_noop(int status, bool allowed, int64_t value, void *ud) {
    (void)allowed;
    (void)value;
    llm_req_t *r = ud;
    if (status != 0)
        CORE_LOGW(MOD, "quota settle failed", "request=%s status=%s", r->id, core_strerror(status));
    req_back(r);
}

static void counter_adjust(llm_req_t *r, const char *what, int64_t amount) {
    if (amount == 0)
        return;
    core_str_t k = {0};
    quota_key(&k, r, what);
    r->pending_ops++;
    if (clu_counter_add(r->l->broker, k.ptr, amount, 0, r->quota_reset_s + 3600, counter_done_noop,
                        r) != 0)
        r->pending_ops--;
    core_str_free(&k);
}

/* Gives back what admission reserved (the request failed or never ran). */
static void quota_refund(llm_req_t *r, bool message_too) {
    if (r->reserved_tokens > 0)
        counter_adjust(r, "tokens", -r->reserved_tokens);
    r->reserved_tokens = 0;
    if (message_too && r->reserved_message)
        counter_adjust(r, "msgs", -1);
    r->reserved_message = false;
}

/* Replaces the token reservation by what the provider reported. */
static void quota_settle(llm_req_t *r) {
    if (r->l->cfg.quota[r->plan].tokens == 0)
        return;
    int64_t used = (int64_t)r->in_tokens + r->out_tokens;
    counter_adjust(r, "tokens", used - r->reserved_tokens);
    r->reserved_tokens = 0;
}

/* ---- the end of a request -------------------------------------------------------------------- */

static void pump(llm_t *l);
static void release_lease(llm_req_t *r);

static void answer_ask(llm_req_t *r, int code, const char *message) {
    if (!r->ask_cb)
        return;
    llm_ask_cb cb = r->ask_cb;
    r->ask_cb = NULL;
    cb(r->ask_ud, code, message, code == 0 ? r->id : NULL, code == 0 ? r->last_position : 0);
}

static void observe_service(llm_t *l, llm_req_t *r) {
    if (!r->dispatch_ms)
        return;
    double ms = (double)(now_ms(l) - r->dispatch_ms);
    l->service_ms_avg = l->service_ms_avg * 0.9 + ms * 0.1;
}

/* The request is over: lease back, request gone, the queue moves. */
static void req_end(llm_req_t *r) {
    llm_t *l = r->l;
    observe_service(l, r);
    release_lease(r);
    req_kill(r);
    pump(l);
}

/* Ends a request with an error: to the asker when admission had not answered yet, else as an
 * llm.error publication in the room. Counting is the caller's. */
static void fail(llm_req_t *r, int code, const char *message) {
    if (r->ask_cb) {
        answer_ask(r, code, message);
    } else {
        publish_error(r, code, message);
    }
    quota_refund(r, true);
    req_end(r);
}

/* ---- leases ------------------------------------------------------------------------------------
 */

static size_t lease_keys(const llm_req_t *r, const char *keys[2], uint32_t limits[2]) {
    const llm_t *l = r->l;
    size_t n = 0;
    keys[n] = "llm:sem:all";
    limits[n++] = l->cfg.concurrency;
    const llm_prov_t *p = &l->provs[r->prov];
    if (p->cfg->max_concurrency > 0) {
        keys[n] = p->sem_key;
        limits[n++] = p->cfg->max_concurrency;
    }
    return n;
}

static void lease_id(const llm_req_t *r, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s", r->l->cfg.node_id ? r->l->cfg.node_id : "node", r->id);
}

/* Gives r's slots back in the broker (fire and forget). */
static void lease_give_back(llm_req_t *r) {
    const char *keys[2];
    uint32_t limits[2];
    size_t n = lease_keys(r, keys, limits);
    char lease[128];
    lease_id(r, lease, sizeof lease);
    clu_sem_release(r->l->broker, keys, n, lease);
}

static void release_lease(llm_req_t *r) {
    if (!r->lease_held)
        return;
    llm_t *l = r->l;
    r->lease_held = false;
    l->running--;
    l->provs[r->prov].inflight--;
    if (!r->local_lease)
        lease_give_back(r);
}

/* ---- attempts ----------------------------------------------------------------------------------
 */

static void attempt(llm_req_t *r);

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
    key_budget(r, b);
    if (!r->opened) {
        r->opened = true;
        publish_start(r);
    }
}

static void flush_timer(uv_timer_t *t) {
    llm_req_t *r = t->data;
    flush_delta(r);
}

static void stream_delta(void *ud, const char *text, size_t len) {
    llm_req_t *r = ud;
    llm_t *l = r->l;
    if (len == 0)
        return;
    if (!r->first_token_ms) {
        r->first_token_ms = now_ms(l);
        core_hist_observe(&l->st.ttft, (double)(r->first_token_ms - r->dispatch_ms) / 1000.0);
        if (!r->opened) {
            r->opened = true;
            publish_start(r);
        }
    }
    core_str_append(&r->text, text, len);
    /* Deltas leave at most every coalesce_ms: one publication carries what arrived meanwhile.
     * The first leaves at once, so coalescing never adds to the time to first token. */
    if (!uv_is_active((uv_handle_t *)&r->timer)) {
        if (l->cfg.coalesce_ms == 0 || r->delta_index == 0)
            flush_delta(r);
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
    uint64_t now = now_ms(l);
    k->inflight--;
    p->outcomes[o->end]++;
    p->key_outcomes[(size_t)r->key * LLM_END_KINDS + o->end]++;
    if (o->end == LLM_END_OK) {
        llm_breaker_record(&k->br, &l->cfg.breaker, now, true, rnd01());
        llm_breaker_record(&p->br, &l->cfg.breaker, now, true, rnd01());
        return;
    }
    if (is_breaker_failure(o->end)) {
        llm_breaker_record(&k->br, &l->cfg.breaker, now, false, rnd01());
        if (llm_breaker_record(&p->br, &l->cfg.breaker, now, false, rnd01())) {
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
    attempt(r);
}

static void stream_end(void *ud, const llm_outcome_t *o, const llm_budget_t *b) {
    llm_req_t *r = ud;
    llm_t *l = r->l;
    r->stream = NULL;
    set_paused(r, false);
    key_budget(r, b);
    judge(r, o);
    r->last = *o;
    uv_timer_stop(&r->timer);
    if (o->end == LLM_END_OK) {
        flush_delta(r);
        publish_final(r, NULL);
        l->st.completed++;
        l->st.tokens_in += r->in_tokens;
        l->st.tokens_out += r->out_tokens;
        quota_settle(r);
        req_end(r);
        return;
    }
    if (r->text.len > 0) {
        /* Output reached the room: never restarted, kept as it stands. */
        flush_delta(r);
        if (!r->out_tokens)
            r->out_tokens = (uint32_t)(r->text.len / 4 + 1);
        publish_final(r, "interrupted");
        l->st.interrupted++;
        l->st.tokens_in += r->in_tokens;
        l->st.tokens_out += r->out_tokens;
        quota_settle(r);
        req_end(r);
        return;
    }
    bool retryable =
        o->retryable && o->end != LLM_END_BAD_REQUEST && o->end != LLM_END_KEY_DISABLED;
    if (o->end == LLM_END_KEY_DISABLED)
        retryable = true; /* another key may take it */
    uint64_t now = now_ms(l);
    if (!retryable || r->attempts > l->cfg.max_retries || now >= r->deadline_ms) {
        char msg[160];
        snprintf(msg, sizeof msg, "provider failed: %s", o->reason[0] ? o->reason : "error");
        l->st.failed++;
        fail(r, CORE_REPLY_UPSTREAM_UNAVAILABLE, msg);
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
            wait = (uint64_t)(backoff * (1.0 - 0.25 * rnd01()));
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
    *p = (llm_prompt_t){.model = req_model(r),
                        .system = r->l->cfg.system_prompt,
                        .msgs = msgs,
                        .nmsgs = r->nctx + 1,
                        .max_tokens = r->l->provs[r->prov].cfg->max_tokens};
}

/* The earliest time any key of provider p (or its fallback) is back, as retry_after_ms. */
static uint64_t unavailable_for(llm_t *l, int prov, uint64_t now) {
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
    uint64_t now = now_ms(l);
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
    uint64_t wait = unavailable_for(l, r->prov, now);
    snprintf(msg, sizeof msg, "provider unavailable: retry_after_ms=%" PRIu64, wait ? wait : 1000);
    l->st.failed++;
    fail(r, CORE_REPLY_UPSTREAM_UNAVAILABLE, msg);
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
    k->inflight++;
    k->requests++;
    llm_msg_t *msgs = core_calloc(r->nctx + 1, sizeof *msgs);
    llm_prompt_t prompt;
    build_prompt(r, &prompt, msgs);
    uint64_t now = now_ms(l);
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
        fail(r, CORE_REPLY_UPSTREAM_UNAVAILABLE, "provider refused the request");
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
    if (!req_back(r))
        return;
    llm_t *l = r->l;
    if (status == 0 && n > 0) {
        /* pubs are newest first; walk until the budget is spent, then store oldest first. */
        size_t budget = (size_t)l->cfg.context_tokens * 4, used = 0, keep = 0;
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
            if (used + json_string_length(t) > budget) {
                json_decref(d); /* older messages would not fit either way */
                break;
            }
            const char *role = json_string_value(json_object_get(d, "role"));
            assistant[keep] = role && strcmp(role, "assistant") == 0;
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

static void dispatch(llm_req_t *r) {
    llm_t *l = r->l;
    r->state = REQ_CONTEXT;
    r->dispatch_ms = now_ms(l);
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

/* ---- the queue ----------------------------------------------------------------------------------
 */

static void lease_granted(llm_req_t *r, bool local) {
    llm_t *l = r->l;
    r->lease_held = true;
    r->local_lease = local;
    l->running++;
    l->provs[r->prov].inflight++;
    llm_queue_remove(&l->queue, &r->q);
    dispatch(r);
}

static void pump_timer(uv_timer_t *t) {
    pump(t->data);
}

static void pump_later(llm_t *l) {
    if (!uv_is_active((uv_handle_t *)&l->pump))
        uv_timer_start(&l->pump, pump_timer,
                       ACQUIRE_RETRY_MIN_MS + (uint64_t)(rnd01() * ACQUIRE_RETRY_JITTER_MS), 0);
}

/* While Redis does not answer, this node holds at most its share of the cluster limit. */
static bool local_fallback_allows(const llm_t *l, const llm_req_t *r) {
    uint32_t nodes = l->cluster_nodes ? l->cluster_nodes : 1;
    uint32_t share = (l->cfg.concurrency + nodes - 1) / nodes;
    const llm_prov_t *p = &l->provs[r->prov];
    if (l->running >= share)
        return false;
    if (p->cfg->max_concurrency > 0 && p->inflight >= (p->cfg->max_concurrency + nodes - 1) / nodes)
        return false;
    return true;
}

static void acquired(int status, bool granted, void *ud) {
    llm_req_t *r = ud;
    llm_t *l = r->l;
    l->acquiring = false;
    if (!req_back(r)) {
        if (status == 0 && granted)
            lease_give_back(r); /* cancelled while asking */
        pump(l);
        return;
    }
    r->state = REQ_QUEUED;
    if (status != 0) {
        if (local_fallback_allows(l, r)) {
            lease_granted(r, true);
            pump(l);
        } else
            pump_later(l);
        return;
    }
    if (granted) {
        lease_granted(r, false);
        pump(l);
    } else
        pump_later(l);
}

/* Serves the head of the queue when a slot is free: only the head asks for a lease, one request
 * at a time, so waiting nodes do not poll Redis in a tight loop. */
static void pump(llm_t *l) {
    if (l->closing || l->acquiring)
        return;
    llm_qentry_t *e = llm_queue_peek(&l->queue, now_ms(l));
    if (!e)
        return;
    llm_req_t *r = CORE_CONTAINER_OF(e, llm_req_t, q);
    if (l->running >= l->cfg.concurrency) {
        pump_later(l);
        return;
    }
    const char *keys[2];
    uint32_t limits[2];
    size_t n = lease_keys(r, keys, limits);
    char lease[128];
    lease_id(r, lease, sizeof lease);
    r->state = REQ_ACQUIRING;
    l->acquiring = true;
    r->pending_ops++;
    int rc = clu_sem_acquire(l->broker, keys, limits, n, lease, l->cfg.lease_ttl_ms, acquired, r);
    if (rc != 0) {
        r->pending_ops--;
        l->acquiring = false;
        r->state = REQ_QUEUED;
        if (local_fallback_allows(l, r))
            lease_granted(r, true);
        else
            pump_later(l);
    }
}

/* ---- admission --------------------------------------------------------------------------------
 */

static void reject(llm_req_t *r, llm_reject_reason_t why, int code, const char *message) {
    r->l->st.rejected[why]++;
    answer_ask(r, code, message);
    quota_refund(r, true);
    req_kill(r);
}

static void enqueue(llm_req_t *r) {
    llm_t *l = r->l;
    uint64_t now = now_ms(l);
    if (llm_queue_push(&l->queue, &r->q, r->plan, now) != 0) {
        double per = l->service_ms_avg / (l->cfg.concurrency ? l->cfg.concurrency : 1);
        uint64_t wait = (uint64_t)((double)(l->queue.total + 1) * per) + 1;
        char msg[96];
        snprintf(msg, sizeof msg, "assistant queue full: retry_after_ms=%" PRIu64, wait);
        reject(r, LLM_REJ_QUEUE_FULL, CORE_REPLY_QUEUE_FULL, msg);
        return;
    }
    r->state = REQ_QUEUED;
    r->enq_ms = now;
    uint32_t wait = l->cfg.queue.max_wait_ms[r->plan] + l->cfg.ttft_timeout_ms[r->plan];
    r->deadline_ms = now + wait;
    r->last_position = llm_queue_position(&l->queue, &r->q, now);
    answer_ask(r, 0, NULL);
    pump(l);
}

/* 402 with the time until the allowance resets (PROTOCOL.md section 1). */
static void reject_quota(llm_req_t *r, llm_reject_reason_t why, const char *what) {
    char msg[128];
    snprintf(msg, sizeof msg, "%s used up: retry_after_ms=%" PRId64 " plan=%s", what,
             (r->quota_reset_s - core_wall_s()) * 1000, llm_plan_name(r->plan));
    reject(r, why, CORE_REPLY_QUOTA_EXCEEDED, msg);
}

static void tokens_reserved(int status, bool allowed, int64_t value, void *ud) {
    (void)value;
    llm_req_t *r = ud;
    if (!req_back(r))
        return;
    if (status == 0 && !allowed) {
        r->reserved_tokens = 0;
        reject_quota(r, LLM_REJ_BUDGET, "daily token budget");
        return;
    }
    if (status != 0)
        r->reserved_tokens = 0; /* the store is down: admitted unreserved rather than refused */
    enqueue(r);
}

static void reserve_tokens(llm_req_t *r) {
    llm_t *l = r->l;
    uint64_t limit = l->cfg.quota[r->plan].tokens;
    if (limit == 0) {
        enqueue(r);
        return;
    }
    /* Input estimate (prompt and context budget, 4 bytes a token) plus the answer's maximum. */
    r->reserved_tokens = (int64_t)(r->prompt_len / 4 + 1 + l->cfg.context_tokens) +
                         l->provs[r->prov].cfg->max_tokens;
    core_str_t k = {0};
    quota_key(&k, r, "tokens");
    r->pending_ops++;
    if (clu_counter_add(l->broker, k.ptr, r->reserved_tokens, (int64_t)limit,
                        r->quota_reset_s + 3600, tokens_reserved, r) != 0) {
        r->pending_ops--;
        r->reserved_tokens = 0;
        enqueue(r);
    }
    core_str_free(&k);
}

static void message_reserved(int status, bool allowed, int64_t value, void *ud) {
    (void)value;
    llm_req_t *r = ud;
    if (!req_back(r))
        return;
    if (status == 0 && !allowed) {
        r->reserved_message = false;
        reject_quota(r, LLM_REJ_QUOTA, "daily assistant quota");
        return;
    }
    r->reserved_message = status == 0;
    reserve_tokens(r);
}

static void deferred_reject(uv_timer_t *t) {
    llm_req_t *r = t->data;
    reject(r, r->reject_why, r->reject_code, r->last.reason);
}

/* Answers a refusal found inside llm_ask from the loop, never before llm_ask returns. */
static void reject_later(llm_req_t *r, llm_reject_reason_t why, int code) {
    r->reject_why = why;
    r->reject_code = code;
    uv_timer_start(&r->timer, deferred_reject, 0, 0);
}

static int random_request_id(char out[LLM_REQ_ID_LEN + 1]) {
    memcpy(out, "rq_", 3);
    core_random_id(out + 3, LLM_REQ_ID_LEN - 3);
    return 0;
}

void llm_ask(llm_t *l, const llm_ask_t *a, llm_ask_cb cb, void *ud) {
    llm_req_t *r = core_calloc(1, sizeof *r);
    r->l = l;
    random_request_id(r->id);
    r->user = core_strdup(a->user);
    r->client = core_strdup(a->client ? a->client : "");
    r->channel = core_strdup(a->channel);
    r->personal = a->personal ? core_strdup(a->personal) : NULL;
    r->prompt = core_strndup(a->prompt, a->prompt_len);
    r->prompt_len = a->prompt_len;
    r->model = a->model ? core_strdup(a->model) : NULL;
    r->room_opts = a->room_opts;
    r->plan = a->plan < LLM_PLANS ? a->plan : 0;
    r->key = -1;
    r->ask_cb = cb;
    r->ask_ud = ud;
    uv_timer_init(l->loop, &r->timer);
    r->timer.data = r;
    core_map_put(l->by_id, r->id, r);
    core_list_insert_tail(&l->reqs, &r->link);
    l->live_reqs++;
    l->st.asks++;
    quota_day(r->day, &r->quota_reset_s);

    /* Problems found here are answered from the loop too: never before llm_ask returns. */
    r->prov = llm__prov_index(l, a->model);
    const char *bad = NULL;
    if (l->closing)
        bad = "assistant shutting down";
    else if (r->prov < 0)
        bad = "unknown model";
    else if (a->prompt_len == 0)
        bad = "prompt required";
    else if (a->prompt_len > l->cfg.max_prompt_bytes)
        bad = "prompt too long";
    if (bad) {
        if (r->prov < 0)
            r->prov = 0;
        snprintf(r->last.reason, sizeof r->last.reason, "%s", bad);
        reject_later(r, LLM_REJ_BAD_REQUEST,
                     l->closing ? CORE_REPLY_QUEUE_FULL : CORE_REPLY_BAD_REQUEST);
        return;
    }
    /* Nothing can serve it now: refused at once with the time a key comes back. */
    uint64_t now = now_ms(l);
    bool usable = false;
    for (int prov = r->prov, hop = 0; prov >= 0 && hop < 2; hop++, prov = l->provs[prov].fallback)
        if (llm_breaker_can_pass(&l->provs[prov].br, &l->cfg.breaker, now) &&
            llm_keys_pick(l->provs[prov].keys, l->provs[prov].nkeys, &l->cfg.breaker, now, NULL) >=
                0)
            usable = true;
    if (!usable) {
        snprintf(r->last.reason, sizeof r->last.reason,
                 "provider unavailable: retry_after_ms=%" PRIu64,
                 unavailable_for(l, r->prov, now) + 1);
        reject_later(r, LLM_REJ_UNAVAILABLE, CORE_REPLY_UPSTREAM_UNAVAILABLE);
        return;
    }
    r->state = REQ_ADMITTING;
    if (l->cfg.quota[r->plan].messages == 0) {
        reserve_tokens(r);
        return;
    }
    core_str_t k = {0};
    quota_key(&k, r, "msgs");
    r->pending_ops++;
    if (clu_counter_add(l->broker, k.ptr, 1, l->cfg.quota[r->plan].messages,
                        r->quota_reset_s + 3600, message_reserved, r) != 0) {
        r->pending_ops--;
        reserve_tokens(r);
    }
    core_str_free(&k);
}

/* ---- cancel ------------------------------------------------------------------------------------
 */

static void cancel_req(llm_req_t *r) {
    llm_t *l = r->l;
    l->st.cancelled++;
    r->cancelled = true;
    switch (r->state) {
    case REQ_ADMITTING:
    case REQ_QUEUED:
    case REQ_ACQUIRING:
        answer_ask(r, CORE_REPLY_CANCELLED, "cancelled");
        if (r->state != REQ_ADMITTING)
            publish_error(r, CORE_REPLY_CANCELLED, "cancelled");
        quota_refund(r, true);
        req_end(r);
        return;
    case REQ_RUNNING:
        if (r->stream) {
            llm_prov_t *p = &l->provs[r->prov];
            p->ops->cancel(r->stream);
            r->stream = NULL;
            set_paused(r, false);
            p->keys[r->key].inflight--;
            llm_breaker_release(&p->keys[r->key].br);
            llm_breaker_release(&p->br);
        }
        break;
    case REQ_CONTEXT:
    case REQ_BACKOFF:
    case REQ_FINISHING:
        break;
    }
    uv_timer_stop(&r->timer);
    if (r->text.len > 0 || r->opened) {
        flush_delta(r);
        if (!r->out_tokens)
            r->out_tokens = (uint32_t)(r->text.len / 4);
        publish_final(r, "cancelled");
        quota_settle(r);
    } else {
        publish_error(r, CORE_REPLY_CANCELLED, "cancelled");
        quota_refund(r, false);
    }
    req_end(r);
}

int llm_cancel(llm_t *l, const char *user, const char *request_id) {
    llm_req_t *r = core_map_get(l->by_id, request_id);
    if (!r || r->dead)
        return CORE_ENOENT;
    if (strcmp(r->user, user) != 0)
        return CORE_EPERM;
    cancel_req(r);
    return 0;
}

void llm_client_gone(llm_t *l, const char *client) {
    core_list_t *it = l->reqs.next;
    while (it != &l->reqs) {
        llm_req_t *r = CORE_CONTAINER_OF(it, llm_req_t, link);
        it = it->next; /* cancel_req unlinks r */
        if (strcmp(r->client, client) == 0)
            cancel_req(r);
    }
}

/* ---- sweep: queue expiry, positions, lease renewal, shared breakers
 * ------------------------------ */

static void position_fn(llm_qentry_t *e, uint32_t pos, void *ud) {
    (void)ud;
    publish_position(CORE_CONTAINER_OF(e, llm_req_t, q), pos);
}

static void renewed(int status, bool granted, void *ud) {
    llm_req_t *r = ud;
    if (!req_back(r))
        return;
    if (status == 0 && !granted)
        CORE_LOGW(MOD, "lease lost", "request=%s", r->id);
}

static void breakers_read(int status, const int64_t *values, size_t n, void *ud) {
    llm_t *l = ud;
    if (status != 0 || l->closing)
        return;
    int64_t wall = core_wall_ms();
    uint64_t now = now_ms(l);
    for (size_t i = 0; i < n && i < l->nprovs; i++) {
        llm_prov_t *p = &l->provs[i];
        /* A decision that vanished before its time was ended by an operator (on any node). */
        if (values[i] == 0 && p->shared_open_until_wall_ms > wall)
            llm_breaker_reset(&p->br);
        p->shared_open_until_wall_ms = values[i];
        if (values[i] > wall)
            llm_breaker_open_until(&p->br, now + (uint64_t)(values[i] - wall));
    }
}

static void sweep(uv_timer_t *t) {
    llm_t *l = t->data;
    uint64_t now = now_ms(l);
    l->sweep_ticks++;
    llm_qentry_t *e;
    while ((e = llm_queue_expired(&l->queue, now))) {
        llm_req_t *r = CORE_CONTAINER_OF(e, llm_req_t, q);
        llm_queue_remove(&l->queue, e);
        l->st.rejected[LLM_REJ_TIMEOUT]++;
        char msg[96];
        double per = l->service_ms_avg / (l->cfg.concurrency ? l->cfg.concurrency : 1);
        snprintf(msg, sizeof msg, "waited too long in the assistant queue: retry_after_ms=%" PRIu64,
                 (uint64_t)((double)l->queue.total * per) + 1000);
        /* A head still asking for a lease gets its answer as a dead request, which gives a
         * granted slot straight back (acquired). */
        fail(r, CORE_REPLY_QUEUE_TIMEOUT, msg);
    }
    if (l->sweep_ticks % POSITION_EVERY_TICKS == 0)
        llm_queue_walk(&l->queue, now, position_fn, NULL);
    if (l->st.paused > 0)
        for (core_list_t *it = l->reqs.next; it != &l->reqs; it = it->next)
            maybe_resume(CORE_CONTAINER_OF(it, llm_req_t, link));
    uint64_t renew_ticks = l->cfg.lease_ttl_ms / 3 / SWEEP_MS;
    if (renew_ticks == 0)
        renew_ticks = 1;
    if (l->sweep_ticks % renew_ticks == 0) {
        for (core_list_t *it = l->reqs.next; it != &l->reqs; it = it->next) {
            llm_req_t *r = CORE_CONTAINER_OF(it, llm_req_t, link);
            if (!r->lease_held || r->local_lease)
                continue;
            const char *keys[2];
            uint32_t limits[2];
            size_t n = lease_keys(r, keys, limits);
            char lease[128];
            lease_id(r, lease, sizeof lease);
            r->pending_ops++;
            if (clu_sem_renew(l->broker, keys, n, lease, l->cfg.lease_ttl_ms, renewed, r) != 0)
                r->pending_ops--;
        }
    }
    if (l->sweep_ticks % BREAKER_SYNC_TICKS == 0 && l->nprovs > 0) {
        const char *keys[16];
        size_t n = l->nprovs < 16 ? l->nprovs : 16;
        for (size_t i = 0; i < n; i++)
            keys[i] = l->provs[i].breaker_key;
        clu_deadline_get(l->broker, keys, n, breakers_read, l);
    }
    l->st.running = l->running;
    for (int p = 0; p < LLM_PLANS; p++)
        l->st.queued[p] = l->queue.n[p];
    if (l->queue.total > 0 && !l->acquiring)
        pump(l);
}

/* ---- lifecycle ---------------------------------------------------------------------------------
 */

static const double wait_bounds[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double ttft_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

llm_t *llm_new(uv_loop_t *loop, clu_broker_t *broker, const llm_config_t *cfg) {
    llm_t *l = core_calloc(1, sizeof *l);
    l->loop = loop;
    l->broker = broker;
    l->cfg = *cfg;
    l->by_id = core_map_new();
    core_list_init(&l->reqs);
    llm_queue_init(&l->queue, &cfg->queue);
    l->service_ms_avg = 2000;
    l->cluster_nodes = 1;
    for (int p = 0; p < LLM_PLANS; p++)
        core_hist_init(&l->st.queue_wait[p], wait_bounds, sizeof wait_bounds / sizeof *wait_bounds);
    core_hist_init(&l->st.ttft, ttft_bounds, sizeof ttft_bounds / sizeof *ttft_bounds);
    l->nprovs = cfg->nproviders;
    l->provs = core_calloc(l->nprovs ? l->nprovs : 1, sizeof *l->provs);
    for (size_t i = 0; i < l->nprovs; i++) {
        llm_prov_t *p = &l->provs[i];
        llm_provider_cfg_t *pc = &cfg->providers[i];
        p->cfg = pc;
        p->fallback = -1;
        snprintf(p->sem_key, sizeof p->sem_key, "llm:sem:p:%s", pc->name);
        snprintf(p->breaker_key, sizeof p->breaker_key, "llm:breaker:%s", pc->name);
        llm_breaker_init(&p->br);
        p->nkeys = pc->nkeys + pc->nfallback;
        if (pc->type == LLM_PROV_MOCK && p->nkeys == 0)
            p->nkeys = 1; /* the mock needs no key; one pseudo key carries its state */
        p->keys = core_calloc(p->nkeys, sizeof *p->keys);
        p->key_outcomes = core_calloc(p->nkeys * LLM_END_KINDS, sizeof *p->key_outcomes);
        for (size_t k = 0; k < p->nkeys; k++) {
            llm_key_t *key = &p->keys[k];
            const char *secret = k < pc->nkeys                   ? pc->keys[k]
                                 : k - pc->nkeys < pc->nfallback ? pc->fallback_keys[k - pc->nkeys]
                                                                 : "mock";
            key->secret = core_strdup(secret);
            key->fallback = k >= pc->nkeys && pc->nkeys > 0;
            key->remaining_requests = key->remaining_tokens = -1;
            llm_key_fingerprint(secret, key->fp);
            llm_breaker_init(&key->br);
        }
        llm__provider_attach(l, p);
    }
    for (size_t i = 0; i < l->nprovs; i++)
        if (cfg->providers[i].fallback)
            l->provs[i].fallback = llm__prov_index(l, cfg->providers[i].fallback);
    uv_timer_init(loop, &l->pump);
    l->pump.data = l;
    uv_timer_init(loop, &l->sweep);
    l->sweep.data = l;
    uv_timer_start(&l->sweep, sweep, SWEEP_MS, SWEEP_MS);
    return l;
}

const llm_stats_t *llm_stats(const llm_t *l) {
    return &l->st;
}

void llm_set_cluster_size(llm_t *l, uint32_t nodes) {
    l->cluster_nodes = nodes ? nodes : 1;
}

static void llm_free(llm_t *l) {
    for (size_t i = 0; i < l->nprovs; i++) {
        llm_prov_t *p = &l->provs[i];
        llm__provider_detach(l, p);
        for (size_t k = 0; k < p->nkeys; k++)
            free(p->keys[k].secret);
        free(p->keys);
        free(p->key_outcomes);
    }
    free(l->provs);
    core_map_free(l->by_id);
    void (*done)(void *) = l->close_done;
    void *ud = l->close_ud;
    free(l);
    if (done)
        done(ud);
}

/* The dispatcher goes once its timers are closed and every request is freed: requests still
 * waiting for broker answers keep it alive (their callbacks reach into it). */
static void llm_maybe_free(llm_t *l) {
    if (l->closing && l->closing_handles == 0 && l->live_reqs == 0)
        llm_free(l);
}

static void http_closed(void *ud) {
    llm_t *l = ud;
    l->http = NULL;
    l->closing_handles--;
    llm_maybe_free(l);
}

static void handle_closed(uv_handle_t *h) {
    llm_t *l = h->data;
    l->closing_handles--;
    llm_maybe_free(l);
}

void llm_close(llm_t *l, void (*done)(void *), void *ud) {
    l->closing = true;
    l->close_done = done;
    l->close_ud = ud;
    while (!core_list_empty(&l->reqs))
        cancel_req(CORE_CONTAINER_OF(l->reqs.next, llm_req_t, link));
    l->closing_handles = 2;
    uv_close((uv_handle_t *)&l->pump, handle_closed);
    uv_close((uv_handle_t *)&l->sweep, handle_closed);
    if (l->http) {
        l->closing_handles++;
        llm_http_close(l->http, http_closed, l);
    }
}
