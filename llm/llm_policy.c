/* llm: the plan-priority queue, circuit breakers and key choice (see llm_policy.h). */
#include "llm/llm_policy.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

/* ---- plan-priority queue ------------------------------------------------------------------- */

void llm_queue_init(llm_queue_t *q, const llm_queue_cfg_t *cfg) {
    memset(q, 0, sizeof *q);
    q->cfg = *cfg;
    for (int p = 0; p < LLM_PLANS; p++)
        core_list_init(&q->fifo[p]);
}

int llm_queue_push(llm_queue_t *q, llm_qentry_t *e, unsigned plan, uint64_t now_ms) {
    CORE_ASSERT(plan < LLM_PLANS);
    CORE_ASSERT(!e->queued);
    if (q->n[plan] >= q->cfg.max_depth[plan])
        return CORE_ELIMIT;
    e->plan = (uint8_t)plan;
    e->enq_ms = now_ms;
    e->seq = ++q->seq;
    e->queued = true;
    core_list_insert_tail(&q->fifo[plan], &e->link);
    q->n[plan]++;
    q->total++;
    return 0;
}

void llm_queue_remove(llm_queue_t *q, llm_qentry_t *e) {
    if (!e->queued)
        return;
    core_list_remove(&e->link);
    e->queued = false;
    q->n[e->plan]--;
    q->total--;
}

static unsigned effective_rank(const llm_queue_t *q, const llm_qentry_t *e, uint64_t now_ms) {
    unsigned rank = e->plan;
    if (q->cfg.aging_ms > 0 && now_ms > e->enq_ms) {
        uint64_t steps = (now_ms - e->enq_ms) / q->cfg.aging_ms;
        rank = steps >= LLM_PLANS ? LLM_PLANS - 1 : rank + (unsigned)steps;
    }
    return rank > LLM_PLANS - 1 ? LLM_PLANS - 1 : rank;
}

/* a is served before b. */
static bool before(const llm_queue_t *q, const llm_qentry_t *a, const llm_qentry_t *b,
                   uint64_t now_ms) {
    unsigned ra = effective_rank(q, a, now_ms), rb = effective_rank(q, b, now_ms);
    return ra != rb ? ra > rb : a->seq < b->seq;
}

/* The first of the cursors (one per plan, NULL when that plan is done) in serving order. */
static int pick_cursor(const llm_queue_t *q, const core_list_t *const cur[LLM_PLANS],
                       uint64_t now_ms) {
    int best = -1;
    for (int p = LLM_PLANS - 1; p >= 0; p--) {
        if (!cur[p])
            continue;
        const llm_qentry_t *e = CORE_CONTAINER_OF(cur[p], llm_qentry_t, link);
        if (best < 0 || before(q, e, CORE_CONTAINER_OF(cur[best], llm_qentry_t, link), now_ms))
            best = p;
    }
    return best;
}

static void cursors_init(const llm_queue_t *q, const core_list_t *cur[LLM_PLANS]) {
    for (int p = 0; p < LLM_PLANS; p++)
        cur[p] = core_list_empty(&q->fifo[p]) ? NULL : q->fifo[p].next;
}

llm_qentry_t *llm_queue_peek(const llm_queue_t *q, uint64_t now_ms) {
    const core_list_t *cur[LLM_PLANS];
    cursors_init(q, cur);
    int p = pick_cursor(q, cur, now_ms);
    return p < 0 ? NULL : CORE_CONTAINER_OF(cur[p], llm_qentry_t, link);
}

llm_qentry_t *llm_queue_expired(const llm_queue_t *q, uint64_t now_ms) {
    /* Each FIFO is in arrival order and shares one max wait, so only heads can be expired
     * first. */
    llm_qentry_t *oldest = NULL;
    for (int p = 0; p < LLM_PLANS; p++) {
        if (core_list_empty(&q->fifo[p]))
            continue;
        llm_qentry_t *e = CORE_CONTAINER_OF(q->fifo[p].next, llm_qentry_t, link);
        if (now_ms >= e->enq_ms + q->cfg.max_wait_ms[p] && (!oldest || e->seq < oldest->seq))
            oldest = e;
    }
    return oldest;
}

void llm_queue_walk(const llm_queue_t *q, uint64_t now_ms,
                    void (*fn)(llm_qentry_t *e, uint32_t position, void *ud), void *ud) {
    const core_list_t *cur[LLM_PLANS];
    cursors_init(q, cur);
    uint32_t pos = 0;
    for (int p; (p = pick_cursor(q, cur, now_ms)) >= 0;) {
        const core_list_t *node = cur[p];
        cur[p] = node->next == &q->fifo[p] ? NULL : node->next;
        /* fn may remove the entry it is given: the cursor already moved past it. */
        fn(CORE_CONTAINER_OF(node, llm_qentry_t, link), ++pos, ud);
    }
}

uint32_t llm_queue_position(const llm_queue_t *q, const llm_qentry_t *e, uint64_t now_ms) {
    if (!e->queued)
        return 0;
    uint32_t pos = 1;
    for (int p = 0; p < LLM_PLANS; p++)
        for (const core_list_t *it = q->fifo[p].next; it != &q->fifo[p]; it = it->next) {
            const llm_qentry_t *o = CORE_CONTAINER_OF(it, llm_qentry_t, link);
            if (o != e && before(q, o, e, now_ms))
                pos++;
        }
    return pos;
}

/* ---- circuit breaker ----------------------------------------------------------------------- */

void llm_breaker_cfg_default(llm_breaker_cfg_t *cfg) {
    *cfg = (llm_breaker_cfg_t){
        .window_s = 30,
        .min_calls = 10,
        .failure_pct = 50,
        .open_base_ms = 5000,
        .open_max_ms = 120000,
        .jitter_pct = 20,
        .half_open_trials = 3,
        .half_open_max_ms = 30000,
    };
}

void llm_breaker_init(llm_breaker_t *br) {
    memset(br, 0, sizeof *br);
}

const char *llm_breaker_state_name(llm_br_state_t s) {
    switch (s) {
    case LLM_BR_CLOSED:
        return "closed";
    case LLM_BR_OPEN:
        return "open";
    case LLM_BR_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}

llm_br_state_t llm_breaker_state(const llm_breaker_t *br, uint64_t now_ms) {
    if (br->state == LLM_BR_OPEN && now_ms >= br->open_until_ms)
        return LLM_BR_HALF_OPEN;
    return br->state;
}

/* Moves an open breaker whose interval ended to half-open, and frees the trial slots of a
 * half-open period that lasted too long (its trials hung or were lost). */
static void breaker_advance(llm_breaker_t *br, const llm_breaker_cfg_t *cfg, uint64_t now_ms) {
    if (br->state == LLM_BR_OPEN && now_ms >= br->open_until_ms) {
        br->state = LLM_BR_HALF_OPEN;
        br->half_open_since_ms = now_ms;
        br->trials = br->trials_ok = 0;
        br->transitions++;
    } else if (br->state == LLM_BR_HALF_OPEN && cfg->half_open_max_ms > 0 &&
               now_ms >= br->half_open_since_ms + cfg->half_open_max_ms) {
        br->half_open_since_ms = now_ms;
        br->trials = br->trials_ok;
    }
}

bool llm_breaker_can_pass(const llm_breaker_t *br, const llm_breaker_cfg_t *cfg, uint64_t now_ms) {
    llm_breaker_t copy = *br;
    breaker_advance(&copy, cfg, now_ms);
    switch (copy.state) {
    case LLM_BR_CLOSED:
        return true;
    case LLM_BR_OPEN:
        return false;
    case LLM_BR_HALF_OPEN:
        return copy.trials < cfg->half_open_trials;
    }
    return false;
}

bool llm_breaker_acquire(llm_breaker_t *br, const llm_breaker_cfg_t *cfg, uint64_t now_ms) {
    breaker_advance(br, cfg, now_ms);
    if (br->state == LLM_BR_CLOSED)
        return true;
    if (br->state == LLM_BR_HALF_OPEN && br->trials < cfg->half_open_trials) {
        br->trials++;
        return true;
    }
    return false;
}

static void breaker_open(llm_breaker_t *br, const llm_breaker_cfg_t *cfg, uint64_t now_ms,
                         double rnd) {
    uint64_t interval = cfg->open_base_ms;
    for (uint32_t i = 0; i < br->opens && interval < cfg->open_max_ms; i++)
        interval *= 2;
    if (interval > cfg->open_max_ms)
        interval = cfg->open_max_ms;
    /* Jitter spreads the nodes' (and keys') half-open trials apart. */
    double j = ((rnd * 2.0) - 1.0) * (double)cfg->jitter_pct / 100.0;
    interval = (uint64_t)((double)interval * (1.0 + j));
    br->opens++;
    br->state = LLM_BR_OPEN;
    br->transitions++;
    br->trials = br->trials_ok = 0;
    if (now_ms + interval > br->open_until_ms)
        br->open_until_ms = now_ms + interval;
}

bool llm_breaker_record(llm_breaker_t *br, const llm_breaker_cfg_t *cfg, uint64_t now_ms, bool ok,
                        double rnd) {
    breaker_advance(br, cfg, now_ms);
    uint32_t window = cfg->window_s < LLM_BR_BUCKETS ? cfg->window_s : LLM_BR_BUCKETS;
    if (window == 0)
        window = 1;
    uint64_t sec = now_ms / 1000;
    unsigned slot = (unsigned)(sec % window);
    if (br->b[slot].sec != sec) {
        br->b[slot].sec = sec;
        br->b[slot].ok = br->b[slot].fail = 0;
    }
    if (ok)
        br->b[slot].ok++;
    else
        br->b[slot].fail++;

    switch (br->state) {
    case LLM_BR_HALF_OPEN:
        if (!ok) {
            breaker_open(br, cfg, now_ms, rnd);
            return true;
        }
        if (++br->trials_ok >= cfg->half_open_trials) {
            br->state = LLM_BR_CLOSED;
            br->opens = 0;
            br->transitions++;
            /* The failures that opened it are history now. */
            memset(br->b, 0, sizeof br->b);
        }
        return false;
    case LLM_BR_OPEN:
        return false; /* a call admitted before it opened: counted, nothing more */
    case LLM_BR_CLOSED:
        break;
    }
    if (ok)
        return false;
    uint64_t calls = 0, fails = 0;
    for (unsigned i = 0; i < window; i++)
        if (br->b[i].sec + window > sec) {
            calls += br->b[i].ok + br->b[i].fail;
            fails += br->b[i].fail;
        }
    if (calls >= cfg->min_calls && fails * 100 >= (uint64_t)cfg->failure_pct * calls) {
        breaker_open(br, cfg, now_ms, rnd);
        return true;
    }
    return false;
}

void llm_breaker_release(llm_breaker_t *br) {
    if (br->state == LLM_BR_HALF_OPEN && br->trials > br->trials_ok)
        br->trials--;
}

void llm_breaker_open_until(llm_breaker_t *br, uint64_t until_ms) {
    if (until_ms > br->open_until_ms)
        br->open_until_ms = until_ms;
    if (br->state != LLM_BR_OPEN) {
        br->state = LLM_BR_OPEN;
        br->transitions++;
        br->trials = br->trials_ok = 0;
    }
}

void llm_breaker_reset(llm_breaker_t *br) {
    uint32_t transitions = br->transitions + (br->state != LLM_BR_CLOSED);
    llm_breaker_init(br);
    br->transitions = transitions;
}

/* ---- key pool ------------------------------------------------------------------------------ */

void llm_key_fingerprint(const char *secret, char fp[16]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(secret, strlen(secret), md, &len, EVP_sha256(), NULL);
    snprintf(fp, 16, "k:%02x%02x%02x%02x", md[0], md[1], md[2], md[3]);
}

static bool key_usable(const llm_key_t *k, const llm_breaker_cfg_t *cfg, uint64_t now_ms) {
    return !k->disabled && now_ms >= k->cooldown_until_ms &&
           llm_breaker_can_pass(&k->br, cfg, now_ms);
}

/* a is preferred over b; both usable and in the same tier. */
static bool key_better(const llm_key_t *a, const llm_key_t *b) {
    bool a_left = a->remaining_requests != 0, b_left = b->remaining_requests != 0;
    if (a_left != b_left)
        return a_left;
    if (a->remaining_tokens != b->remaining_tokens) {
        /* Unknown (-1) ranks with plenty: a fresh key has not told us its budget yet. */
        int64_t at = a->remaining_tokens < 0 ? INT64_MAX : a->remaining_tokens;
        int64_t bt = b->remaining_tokens < 0 ? INT64_MAX : b->remaining_tokens;
        if (at != bt)
            return at > bt;
    }
    if (a->inflight != b->inflight)
        return a->inflight < b->inflight;
    return a->requests < b->requests;
}

int llm_keys_pick(const llm_key_t *keys, size_t n, const llm_breaker_cfg_t *cfg, uint64_t now_ms,
                  uint64_t *retry_at_ms) {
    for (int tier = 0; tier < 2; tier++) {
        int best = -1;
        for (size_t i = 0; i < n; i++) {
            if (keys[i].fallback != (tier == 1) || !key_usable(&keys[i], cfg, now_ms))
                continue;
            if (best < 0 || key_better(&keys[i], &keys[best]))
                best = (int)i;
        }
        if (best >= 0)
            return best;
    }
    if (retry_at_ms) {
        uint64_t at = UINT64_MAX;
        for (size_t i = 0; i < n; i++) {
            if (keys[i].disabled)
                continue;
            uint64_t back = keys[i].cooldown_until_ms;
            llm_br_state_t s = llm_breaker_state(&keys[i].br, now_ms);
            if (s == LLM_BR_OPEN && keys[i].br.open_until_ms > back)
                back = keys[i].br.open_until_ms;
            else if (s == LLM_BR_HALF_OPEN && !llm_breaker_can_pass(&keys[i].br, cfg, now_ms) &&
                     back < now_ms + 1000)
                back = now_ms + 1000; /* trials running: their verdict comes soon */
            if (back < at)
                at = back;
        }
        *retry_at_ms = at;
    }
    return -1;
}

void llm_key_cool(llm_key_t *k, uint64_t now_ms, uint64_t wait_ms, uint64_t floor_ms) {
    uint64_t until = now_ms + (wait_ms > floor_ms ? wait_ms : floor_ms);
    if (until > k->cooldown_until_ms)
        k->cooldown_until_ms = until;
}

void llm_key_disable(llm_key_t *k, const char *reason) {
    k->disabled = true;
    snprintf(k->disabled_reason, sizeof k->disabled_reason, "%s", reason);
}
