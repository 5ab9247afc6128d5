/* llm: the dispatcher's decisions, kept free of I/O so that each rule can be tested with a clock
 * the test controls: the plan-priority queue, circuit breakers and the key pool. Every function
 * takes the current time in monotonic milliseconds; nothing here reads a clock or allocates
 * behind the caller's back except where stated. */
#ifndef LLM_LLM_POLICY_H
#define LLM_LLM_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* Plans in rank order, the same order as the tokens' `plan` claim (auth_plan_t). */
#define LLM_PLANS 4

/* ---- plan-priority queue ------------------------------------------------------------------- */

/* Waiting requests, one FIFO per plan. The next request to serve is the one with the highest
 * effective rank, plan + one rank per `aging_ms` waited (capped at the top plan), the oldest first
 * among equals: executive > pro > plus > free while waits are short, and a free request that
 * waited 3 x aging_ms competes with a fresh executive one on equal terms, so no plan starves.
 * Inside one plan, older entries never rank lower than newer ones, so every FIFO stays sorted
 * by (rank desc, age desc) and the global order is a merge of the four heads: O(1) to pick,
 * O(n) to number every waiting request. */
typedef struct {
    uint32_t max_depth[LLM_PLANS];   /* entries per plan; a full plan refuses at once */
    uint32_t max_wait_ms[LLM_PLANS]; /* an entry older than this expires (504) */
    uint32_t aging_ms;               /* 0 = strict priority */
} llm_queue_cfg_t;

typedef struct {
    core_list_t link;
    uint64_t enq_ms;
    uint64_t seq;
    uint8_t plan;
    bool queued;
} llm_qentry_t;

typedef struct {
    llm_queue_cfg_t cfg;
    core_list_t fifo[LLM_PLANS];
    uint32_t n[LLM_PLANS];
    uint32_t total;
    uint64_t seq;
} llm_queue_t;

void llm_queue_init(llm_queue_t *q, const llm_queue_cfg_t *cfg);
/* Appends e (plan 0..LLM_PLANS-1). Returns 0, or CORE_ELIMIT when the plan's queue is full. */
int llm_queue_push(llm_queue_t *q, llm_qentry_t *e, unsigned plan, uint64_t now_ms);
/* The entry to serve next, or NULL when empty. It stays queued until removed. */
llm_qentry_t *llm_queue_peek(const llm_queue_t *q, uint64_t now_ms);
/* Takes e out (served, cancelled or expired). Safe on an entry that is not queued. */
void llm_queue_remove(llm_queue_t *q, llm_qentry_t *e);
/* The oldest entry whose plan's max wait has passed, or NULL. Call repeatedly, removing each. */
llm_qentry_t *llm_queue_expired(const llm_queue_t *q, uint64_t now_ms);
/* Visits every entry in serving order with its 1-based position. */
void llm_queue_walk(const llm_queue_t *q, uint64_t now_ms,
                    void (*fn)(llm_qentry_t *e, uint32_t position, void *ud), void *ud);
/* The 1-based position e would take in serving order now (0 if e is not queued). O(n). */
uint32_t llm_queue_position(const llm_queue_t *q, const llm_qentry_t *e, uint64_t now_ms);

/* ---- circuit breaker ----------------------------------------------------------------------- */

#define LLM_BR_BUCKETS 60

typedef enum { LLM_BR_CLOSED = 0, LLM_BR_OPEN, LLM_BR_HALF_OPEN } llm_br_state_t;

typedef struct {
    uint32_t window_s;         /* rolling window of 1 s buckets (<= LLM_BR_BUCKETS) */
    uint32_t min_calls;        /* calls in the window before it may open */
    uint32_t failure_pct;      /* opens at this failure share or more */
    uint32_t open_base_ms;     /* first open interval; doubles with each consecutive open */
    uint32_t open_max_ms;      /* cap of the open interval */
    uint32_t jitter_pct;       /* +- this share of the open interval, at random */
    uint32_t half_open_trials; /* calls let through while half-open; as many successes close */
    uint32_t half_open_max_ms; /* a half-open period whose trials hang frees their slots */
} llm_breaker_cfg_t;

/* The defaults of LLM.md section 3: 30 s window, 10 calls, 50 %, 5 s doubling to 120 s, +-20 %,
 * 3 trials, 30 s. */
void llm_breaker_cfg_default(llm_breaker_cfg_t *cfg);

typedef struct {
    struct {
        uint64_t sec; /* which second this bucket counts */
        uint32_t ok, fail;
    } b[LLM_BR_BUCKETS];
    llm_br_state_t state;
    uint64_t open_until_ms;
    uint64_t half_open_since_ms;
    uint32_t opens;       /* consecutive opens without a close in between */
    uint32_t trials;      /* trial calls let through in this half-open period */
    uint32_t trials_ok;   /* of which succeeded */
    uint32_t transitions; /* count of state changes, for metrics */
} llm_breaker_t;

void llm_breaker_init(llm_breaker_t *br);
/* The state at now: an open breaker whose interval ended reads as half-open. No side effect. */
llm_br_state_t llm_breaker_state(const llm_breaker_t *br, uint64_t now_ms);
/* Whether a call may start now, without taking a trial slot. */
bool llm_breaker_can_pass(const llm_breaker_t *br, const llm_breaker_cfg_t *cfg, uint64_t now_ms);
/* Admits a call: true when it may start (a half-open breaker counts it as a trial). */
bool llm_breaker_acquire(llm_breaker_t *br, const llm_breaker_cfg_t *cfg, uint64_t now_ms);
/* The outcome of an admitted call. Only provider faults are failures (LLM.md section 3): the
 * caller never records 4xx request errors, 429s or the node's own rejections as failures. rnd
 * in [0,1) picks the jitter. Returns true when this outcome opened the breaker. */
bool llm_breaker_record(llm_breaker_t *br, const llm_breaker_cfg_t *cfg, uint64_t now_ms, bool ok,
                        double rnd);
/* An admitted call ended without a verdict (cancelled, or the request's own fault): its trial
 * slot, if it held one, is free again. */
void llm_breaker_release(llm_breaker_t *br);
/* Opens until at least until_ms (another node's decision, or a provider's retry-after). An open
 * deadline is never shortened. */
void llm_breaker_open_until(llm_breaker_t *br, uint64_t until_ms);
/* Closes and forgets the window (an operator's reset). */
void llm_breaker_reset(llm_breaker_t *br);
const char *llm_breaker_state_name(llm_br_state_t s);

/* ---- key pool ------------------------------------------------------------------------------ */

typedef struct {
    char *secret;  /* sent upstream only; never logged or shown */
    char fp[16];   /* short fingerprint shown in logs, metrics and /api answers */
    bool fallback; /* used only when no primary key can take the request */
    bool disabled; /* 401/402/403 or an exhausted quota: until an operator re-enables it */
    char disabled_reason[32];
    uint64_t cooldown_until_ms; /* after a 429 */
    uint32_t inflight;          /* streams running on this key on this node */
    int64_t remaining_requests; /* from the last rate-limit headers; -1 unknown */
    int64_t remaining_tokens;   /* idem */
    uint64_t requests;          /* started on this key */
    llm_breaker_t br;
} llm_key_t;

/* Fills fp with a short, stable fingerprint of secret ("k:" and 8 hex digits of its SHA-256). */
void llm_key_fingerprint(const char *secret, char fp[16]);

/* Picks the key for the next call among keys[0..n): usable keys (not disabled, not cooling,
 * breaker passes) of the primary tier first, then the fallback tier; inside a tier, keys whose
 * last headers said requests remain before keys known to be exhausted, then the most remaining
 * tokens, then the fewest streams in flight, then the fewest requests so far (round robin on a
 * fresh pool). Returns the index, or -1 when no key is usable; then *retry_at_ms (if not NULL)
 * is the earliest time a key comes back (UINT64_MAX when every key is disabled). */
int llm_keys_pick(const llm_key_t *keys, size_t n, const llm_breaker_cfg_t *cfg, uint64_t now_ms,
                  uint64_t *retry_at_ms);
/* A 429 on key k: cools it until max(its current cooldown, now + wait_ms, now + floor_ms). */
void llm_key_cool(llm_key_t *k, uint64_t now_ms, uint64_t wait_ms, uint64_t floor_ms);
/* Disables k with a short reason (e.g. "401", "insufficient_quota"). */
void llm_key_disable(llm_key_t *k, const char *reason);

#endif
