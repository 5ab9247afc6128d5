/* llm: the dispatcher. One request goes through admission (daily message quota and token budget,
 * reserved in the broker), the plan-priority queue, a lease on the cluster-wide and the
 * provider's semaphore, the room's recent history as context, then attempts: a key chosen by the
 * pool, breakers consulted, the stream's deltas coalesced into ephemeral publications and the
 * answer stored as one publication with an offset. Retries happen only before the first token
 * reached the room; afterwards a failure stores the partial answer as interrupted.
 *
 * Every broker call answers from the loop, never before it returns, so a request is referenced
 * by the calls it has in flight (pending_ops) and freed only when none is left.
 *
 * This file holds a request's lifetime, leases, the queue, admission, cancel, the sweep and the
 * dispatcher's own lifecycle. What a request publishes is in llm_room.c, the daily allowances in
 * llm_quota.c, the attempts at a provider in llm_attempt.c. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core_codes.h"
#include "llm/llm_http.h"
#include "llm/llm_int.h"

#define MOD "llm"
#define SWEEP_MS 100
#define POSITION_EVERY_TICKS 5 /* queue positions published at most twice a second */
#define BREAKER_SYNC_TICKS 10  /* shared breaker decisions read once a second */
#define ACQUIRE_RETRY_MIN_MS 50
#define ACQUIRE_RETRY_JITTER_MS 100

static const char *const reject_names[LLM_REJ_COUNT] = {
    [LLM_REJ_QUOTA] = "quota",
    [LLM_REJ_BUDGET] = "token_budget",
    [LLM_REJ_QUEUE_FULL] = "queue_full",
    [LLM_REJ_TIMEOUT] = "queue_timeout",
    [LLM_REJ_UNAVAILABLE] = "unavailable",
    [LLM_REJ_BAD_REQUEST] = "bad_request",
};
static void release_lease(llm_req_t *r);
static void pump(llm_t *l);
static void sweep(uv_timer_t *t);
static void llm_maybe_free(llm_t *l);

const char *llm_reject_reason_name(llm_reject_reason_t r) {
    return r < LLM_REJ_COUNT ? reject_names[r] : "unknown";
}

/* ---- request lifetime ------------------------------------------------------------------------ */

static void req_free(llm_req_t *r) {
    llm_t *l = r->l;
    free(r->user);
    free(r->client);
    free(r->channel);
    free(r->personal);
    free(r->prompt);
    free(r->model);
    free(r->system);
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
bool llm__req_back(llm_req_t *r) {
    CORE_ASSERT(r->pending_ops > 0);
    r->pending_ops--;
    if (r->dead) {
        if (r->pending_ops == 0 && r->timer_closed)
            req_free(r);
        return false;
    }
    return true;
}

/* ---- the end of a request -------------------------------------------------------------------- */

static void answer_ask(llm_req_t *r, int code, const char *message) {
    if (!r->ask_cb)
        return;
    llm_ask_cb cb = r->ask_cb;
    r->ask_cb = NULL;
    if (code != 0) {
        cb(r->ask_ud, code, message, NULL);
        return;
    }
    llm_admitted_t a = {.request_id = r->id, .queue_position = r->last_position};
    if (r->reserved_message) {
        a.quota_used = r->quota_used;
        a.quota_limit = r->l->cfg.quota[r->plan].messages;
        a.quota_reset_s = r->quota_reset_s;
    }
    cb(r->ask_ud, 0, message, &a);
}

static void observe_service(llm_t *l, llm_req_t *r) {
    if (!r->dispatch_ms)
        return;
    double ms = (double)(llm__now_ms(l) - r->dispatch_ms);
    l->service_ms_avg = l->service_ms_avg * 0.9 + ms * 0.1;
}

/* The request is over: lease back, request gone, the queue moves. */
void llm__req_end(llm_req_t *r) {
    llm_t *l = r->l;
    CORE_LOGI(MOD, "llm request ended",
              "request=%s outcome=%s attempts=%" PRIu32 " tokens_in=%" PRIu32 " tokens_out=%" PRIu32
              " ms=%" PRIu64,
              r->id, llm_outcome_name(r->last.end), r->attempts, r->in_tokens, r->out_tokens,
              r->enq_ms ? llm__now_ms(l) - r->enq_ms : 0);
    observe_service(l, r);
    if (l->usage) {
        const llm_prov_t *p =
            r->prov >= 0 && (size_t)r->prov < l->nprovs ? &l->provs[r->prov] : NULL;
        llm_settled_t u = {r->id,
                           r->user,
                           llm_plan_name(r->plan),
                           p ? p->cfg->name : NULL,
                           p ? (r->model ? r->model : p->cfg->model) : NULL,
                           r->in_tokens,
                           r->out_tokens,
                           llm_outcome_name(r->last.end)};
        l->usage(l->usage_ud, &u);
    }
    release_lease(r);
    req_kill(r);
    pump(l);
}

/* Ends a request with an error: to the asker when admission had not answered yet, else as an
 * llm.error publication in the room. Counting is the caller's. */
void llm__fail(llm_req_t *r, int code, const char *message) {
    if (r->ask_cb) {
        answer_ask(r, code, message);
    } else {
        llm__publish_error(r, code, message);
    }
    llm__quota_refund(r, true);
    llm__req_end(r);
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

/* ---- the queue ----------------------------------------------------------------------------------
 */

static void lease_granted(llm_req_t *r, bool local) {
    llm_t *l = r->l;
    r->lease_held = true;
    r->local_lease = local;
    l->running++;
    l->provs[r->prov].inflight++;
    llm_queue_remove(&l->queue, &r->q);
    llm__dispatch(r);
}

static void pump_timer(uv_timer_t *t) {
    pump(t->data);
}

static void pump_later(llm_t *l) {
    if (!uv_is_active((uv_handle_t *)&l->pump))
        uv_timer_start(&l->pump, pump_timer,
                       ACQUIRE_RETRY_MIN_MS + (uint64_t)(llm__rnd01() * ACQUIRE_RETRY_JITTER_MS),
                       0);
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
    LLM_TRACE(r);
    llm_t *l = r->l;
    l->acquiring = false;
    if (!llm__req_back(r)) {
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
    llm_qentry_t *e = llm_queue_peek(&l->queue, llm__now_ms(l));
    if (!e)
        return;
    llm_req_t *r = CORE_CONTAINER_OF(e, llm_req_t, q);
    LLM_TRACE(r); /* the head's work, whichever request's callback moved the queue */
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

void llm__reject(llm_req_t *r, llm_reject_reason_t why, int code, const char *message) {
    r->l->st.rejected[why]++;
    answer_ask(r, code, message);
    llm__quota_refund(r, true);
    req_kill(r);
}

void llm__enqueue(llm_req_t *r) {
    llm_t *l = r->l;
    uint64_t now = llm__now_ms(l);
    if (llm_queue_push(&l->queue, &r->q, r->plan, now) != 0) {
        double per = l->service_ms_avg / (l->cfg.concurrency ? l->cfg.concurrency : 1);
        uint64_t wait = (uint64_t)((double)(l->queue.total + 1) * per) + 1;
        char msg[96];
        snprintf(msg, sizeof msg, "assistant queue full: retry_after_ms=%" PRIu64, wait);
        llm__reject(r, LLM_REJ_QUEUE_FULL, CORE_REPLY_QUEUE_FULL, msg);
        return;
    }
    r->state = REQ_QUEUED;
    r->enq_ms = now;
    uint32_t wait = l->cfg.queue.max_wait_ms[r->plan] + l->cfg.ttft_timeout_ms[r->plan];
    r->deadline_ms = now + wait;
    r->last_position = llm_queue_position(&l->queue, &r->q, now);
    CORE_LOGD(MOD, "llm request queued", "request=%s plan=%s position=%" PRIu32, r->id,
              llm_plan_name(r->plan), r->last_position);
    answer_ask(r, 0, NULL);
    pump(l);
}

static void deferred_reject(uv_timer_t *t) {
    llm_req_t *r = t->data;
    LLM_TRACE(r);
    llm__reject(r, r->reject_why, r->reject_code, r->last.reason);
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
    r->trace = core_log_trace() ? core_log_trace() : core_trace_new();
    r->user = core_strdup(a->user);
    r->client = core_strdup(a->client ? a->client : "");
    r->channel = core_strdup(a->channel);
    r->personal = a->personal ? core_strdup(a->personal) : NULL;
    r->prompt = core_strndup(a->prompt, a->prompt_len);
    r->prompt_len = a->prompt_len;
    r->model = a->model ? core_strdup(a->model) : NULL;
    r->system = a->system ? core_strdup(a->system) : NULL;
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
    llm__quota_day(r->day, &r->quota_reset_s);

    /* Problems found here are answered from the loop too: never before llm_ask returns. */
    r->prov = llm__prov_index(l, a->model);
    const char *bad = NULL;
    if (l->closing || l->draining)
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
                     l->closing || l->draining ? CORE_REPLY_QUEUE_FULL : CORE_REPLY_BAD_REQUEST);
        return;
    }
    /* Nothing can serve it now: refused at once with the time a key comes back. */
    uint64_t now = llm__now_ms(l);
    bool usable = false;
    for (int prov = r->prov, hop = 0; prov >= 0 && hop < 2; hop++, prov = l->provs[prov].fallback)
        if (llm_breaker_can_pass(&l->provs[prov].br, &l->cfg.breaker, now) &&
            llm_keys_pick(l->provs[prov].keys, l->provs[prov].nkeys, &l->cfg.breaker, now, NULL) >=
                0)
            usable = true;
    if (!usable) {
        snprintf(r->last.reason, sizeof r->last.reason,
                 "provider unavailable: retry_after_ms=%" PRIu64,
                 llm__unavailable_for(l, r->prov, now) + 1);
        reject_later(r, LLM_REJ_UNAVAILABLE, CORE_REPLY_UPSTREAM_UNAVAILABLE);
        return;
    }
    r->state = REQ_ADMITTING;
    if (l->cfg.quota[r->plan].messages == 0) {
        llm__reserve_tokens(r);
        return;
    }
    core_str_t k = {0};
    llm__quota_key(&k, r, "msgs");
    r->pending_ops++;
    if (clu_counter_add(l->broker, k.ptr, 1, l->cfg.quota[r->plan].messages,
                        r->quota_reset_s + 3600, llm__message_reserved, r) != 0) {
        r->pending_ops--;
        llm__reserve_tokens(r);
    }
    core_str_free(&k);
}

/* ---- cancel ------------------------------------------------------------------------------------
 */

static bool req_started(const llm_req_t *r) {
    return r->state != REQ_ADMITTING && r->state != REQ_QUEUED && r->state != REQ_ACQUIRING;
}

/* Ends a request that holds no lease yet with code: to the asker while admission has not
 * answered, else as an llm.error in the room; its quota back. */
static void end_unstarted(llm_req_t *r, int code, const char *message) {
    answer_ask(r, code, message);
    if (r->state != REQ_ADMITTING)
        llm__publish_error(r, code, message);
    llm__quota_refund(r, true);
    llm__req_end(r);
}

static void cancel_req(llm_req_t *r) {
    llm_t *l = r->l;
    l->st.cancelled++;
    r->cancelled = true;
    switch (r->state) {
    case REQ_ADMITTING:
    case REQ_QUEUED:
    case REQ_ACQUIRING:
        end_unstarted(r, CORE_REPLY_CANCELLED, "cancelled");
        return;
    case REQ_RUNNING:
        if (r->stream) {
            llm_prov_t *p = &l->provs[r->prov];
            p->ops->cancel(r->stream);
            r->stream = NULL;
            llm__set_paused(r, false);
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
        llm__flush_delta(r);
        if (!r->out_tokens)
            r->out_tokens = (uint32_t)(r->text.len / 4);
        llm__publish_final(r, "cancelled");
        llm__quota_settle(r);
    } else {
        llm__publish_error(r, CORE_REPLY_CANCELLED, "cancelled");
        llm__quota_refund(r, false);
    }
    llm__req_end(r);
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

void llm_drain(llm_t *l) {
    l->draining = true;
    core_list_t *it = l->reqs.next;
    while (it != &l->reqs) {
        llm_req_t *r = CORE_CONTAINER_OF(it, llm_req_t, link);
        it = it->next; /* ending r unlinks it */
        if (r->dead || req_started(r))
            continue;
        LLM_TRACE(r);
        l->st.rejected[LLM_REJ_QUEUE_FULL]++;
        end_unstarted(r, CORE_REPLY_QUEUE_FULL, "assistant node draining: retry_after_ms=1000");
    }
}

uint32_t llm_live_requests(const llm_t *l) {
    return (uint32_t)l->live_reqs;
}

void llm_client_gone(llm_t *l, const char *client) {
    if (l->draining)
        return;
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
    llm__publish_position(CORE_CONTAINER_OF(e, llm_req_t, q), pos);
}

static void renewed(int status, bool granted, void *ud) {
    llm_req_t *r = ud;
    LLM_TRACE(r);
    if (!llm__req_back(r))
        return;
    if (status == 0 && !granted)
        CORE_LOGW(MOD, "lease lost", "request=%s", r->id);
}

static void breakers_read(int status, const int64_t *values, size_t n, void *ud) {
    llm_t *l = ud;
    if (status != 0 || l->closing)
        return;
    int64_t wall = core_wall_ms();
    uint64_t now = llm__now_ms(l);
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
    uint64_t now = llm__now_ms(l);
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
        llm__fail(r, CORE_REPLY_QUEUE_TIMEOUT, msg);
    }
    if (l->sweep_ticks % POSITION_EVERY_TICKS == 0)
        llm_queue_walk(&l->queue, now, position_fn, NULL);
    if (l->st.paused > 0)
        for (core_list_t *it = l->reqs.next; it != &l->reqs; it = it->next)
            llm__maybe_resume(CORE_CONTAINER_OF(it, llm_req_t, link));
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
