/* Unit tests for the dispatcher's decisions: the plan-priority queue with aging, the circuit
 * breaker and the key pool. Every test drives a virtual clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "llm/llm_policy.h"

enum { FREE = 0, PLUS, PRO, EXEC };

static llm_queue_cfg_t qcfg(uint32_t aging_ms) {
    llm_queue_cfg_t c = {.aging_ms = aging_ms};
    for (int p = 0; p < LLM_PLANS; p++) {
        c.max_depth[p] = 100;
        c.max_wait_ms[p] = 10000u * (uint32_t)(p + 1);
    }
    return c;
}

/* Pops everything in serving order into out (plan*100 + index encoded by the caller). */
static size_t drain(llm_queue_t *q, uint64_t now, llm_qentry_t *base, int *out, size_t max) {
    size_t n = 0;
    llm_qentry_t *e;
    while (n < max && (e = llm_queue_peek(q, now))) {
        out[n++] = (int)(e - base);
        llm_queue_remove(q, e);
    }
    return n;
}

static void test_queue_priority_and_fifo(void **state) {
    (void)state;
    llm_queue_t q;
    llm_queue_cfg_t c = qcfg(0);
    llm_queue_init(&q, &c);
    llm_qentry_t e[8];
    memset(e, 0, sizeof e);
    /* Arrival order: free, free, plus, pro, exec, pro, plus, exec. */
    const unsigned plans[8] = {FREE, FREE, PLUS, PRO, EXEC, PRO, PLUS, EXEC};
    for (int i = 0; i < 8; i++)
        assert_int_equal(llm_queue_push(&q, &e[i], plans[i], 1000 + (uint64_t)i), 0);
    assert_int_equal(q.total, 8);
    int order[8];
    assert_int_equal(drain(&q, 2000, e, order, 8), 8);
    const int want[8] = {4, 7, 3, 5, 2, 6, 0, 1};
    assert_memory_equal(order, want, sizeof want);
    assert_int_equal(q.total, 0);
    assert_null(llm_queue_peek(&q, 2000));
}

static void test_queue_aging_prevents_starvation(void **state) {
    (void)state;
    llm_queue_t q;
    llm_queue_cfg_t c = qcfg(1000); /* one class per second waited */
    llm_queue_init(&q, &c);
    llm_qentry_t f = {0}, x = {0}, p = {0};
    assert_int_equal(llm_queue_push(&q, &f, FREE, 0), 0);
    /* A pro request arriving 1.5 s later outranks the free one (rank 1 < 2). */
    assert_int_equal(llm_queue_push(&q, &p, PRO, 1500), 0);
    assert_ptr_equal(llm_queue_peek(&q, 1500), &p);
    /* At 2 s the free one has aged to rank 2 and is older: it goes first. */
    assert_ptr_equal(llm_queue_peek(&q, 2000), &f);
    /* A fresh executive request still outranks it... */
    assert_int_equal(llm_queue_push(&q, &x, EXEC, 2000), 0);
    assert_ptr_equal(llm_queue_peek(&q, 2000), &x);
    /* ...until the free one has waited three classes: then age breaks the tie, and the pro one
     * (aged one class) ranks with both and goes by age too. */
    assert_ptr_equal(llm_queue_peek(&q, 3000), &f);
    assert_int_equal(llm_queue_position(&q, &f, 3000), 1);
    assert_int_equal(llm_queue_position(&q, &p, 3000), 2);
    assert_int_equal(llm_queue_position(&q, &x, 3000), 3);
    /* Without aging the same queue is strict priority. */
    q.cfg.aging_ms = 0;
    assert_ptr_equal(llm_queue_peek(&q, 3000), &x);
    assert_int_equal(llm_queue_position(&q, &f, 3000), 3);
}

static void test_queue_depth_and_expiry(void **state) {
    (void)state;
    llm_queue_t q;
    llm_queue_cfg_t c = qcfg(0);
    c.max_depth[FREE] = 2;
    c.max_wait_ms[FREE] = 100;
    c.max_wait_ms[PRO] = 300;
    llm_queue_init(&q, &c);
    llm_qentry_t e[4];
    memset(e, 0, sizeof e);
    assert_int_equal(llm_queue_push(&q, &e[0], FREE, 0), 0);
    assert_int_equal(llm_queue_push(&q, &e[1], FREE, 50), 0);
    /* The free queue is full; other plans are not affected. */
    assert_int_equal(llm_queue_push(&q, &e[2], FREE, 60), CORE_ELIMIT);
    assert_false(e[2].queued);
    assert_int_equal(llm_queue_push(&q, &e[3], PRO, 60), 0);
    assert_null(llm_queue_expired(&q, 99));
    assert_ptr_equal(llm_queue_expired(&q, 100), &e[0]);
    llm_queue_remove(&q, &e[0]);
    assert_null(llm_queue_expired(&q, 149));
    assert_ptr_equal(llm_queue_expired(&q, 150), &e[1]);
    llm_queue_remove(&q, &e[1]);
    /* Room again for a free request. */
    assert_int_equal(llm_queue_push(&q, &e[2], FREE, 150), 0);
    assert_ptr_equal(llm_queue_expired(&q, 250), &e[2]);
    llm_queue_remove(&q, &e[2]);
    assert_null(llm_queue_expired(&q, 359));
    assert_ptr_equal(llm_queue_expired(&q, 360), &e[3]);
    /* Removing twice is harmless. */
    llm_queue_remove(&q, &e[3]);
    llm_queue_remove(&q, &e[3]);
    assert_int_equal(q.total, 0);
}

typedef struct {
    llm_qentry_t *base;
    int order[256];
    uint32_t pos[256];
    size_t n;
} walk_t;

static void walk_fn(llm_qentry_t *e, uint32_t position, void *ud) {
    walk_t *w = ud;
    w->order[w->n] = (int)(e - w->base);
    w->pos[w->n++] = position;
}

/* walk, position and repeated peek/remove agree for random arrivals under aging. */
static void test_queue_walk_matches_serving_order(void **state) {
    (void)state;
    srand(7);
    for (int round = 0; round < 50; round++) {
        llm_queue_t q;
        llm_queue_cfg_t c = qcfg(200);
        llm_queue_init(&q, &c);
        llm_qentry_t e[64];
        memset(e, 0, sizeof e);
        uint64_t t = 0;
        int n = 1 + rand() % 64;
        for (int i = 0; i < n; i++) {
            t += (uint64_t)(rand() % 100);
            assert_int_equal(llm_queue_push(&q, &e[i], (unsigned)(rand() % LLM_PLANS), t), 0);
        }
        uint64_t now = t + (uint64_t)(rand() % 1000);
        walk_t w = {.base = e};
        llm_queue_walk(&q, now, walk_fn, &w);
        assert_int_equal(w.n, n);
        for (size_t i = 0; i < w.n; i++) {
            assert_int_equal(w.pos[i], i + 1);
            assert_int_equal(llm_queue_position(&q, &e[w.order[i]], now), i + 1);
        }
        int order[64];
        assert_int_equal(drain(&q, now, e, order, 64), n);
        assert_memory_equal(order, w.order, (size_t)n * sizeof(int));
    }
}

/* ---- breaker ---- */

static llm_breaker_cfg_t bcfg(void) {
    llm_breaker_cfg_t c;
    llm_breaker_cfg_default(&c);
    c.jitter_pct = 0; /* exact intervals in tests */
    return c;
}

static void test_breaker_needs_volume_and_rate(void **state) {
    (void)state;
    llm_breaker_cfg_t c = bcfg();
    llm_breaker_t br;
    llm_breaker_init(&br);
    uint64_t t = 100000;
    /* Nine failures are below the minimum volume. */
    for (int i = 0; i < 9; i++)
        assert_false(llm_breaker_record(&br, &c, t, false, 0.5));
    assert_int_equal(llm_breaker_state(&br, t), LLM_BR_CLOSED);
    /* The tenth opens it, for the base interval. */
    assert_true(llm_breaker_record(&br, &c, t, false, 0.5));
    assert_int_equal(llm_breaker_state(&br, t), LLM_BR_OPEN);
    assert_int_equal(br.open_until_ms, t + 5000);
    assert_false(llm_breaker_can_pass(&br, &c, t + 4999));
    assert_false(llm_breaker_acquire(&br, &c, t + 4999));

    /* 40 % failures never open it, however many calls. */
    llm_breaker_init(&br);
    for (int i = 0; i < 100; i++)
        assert_false(llm_breaker_record(&br, &c, t + (uint64_t)i * 10, i % 5 < 3, 0.5));
    assert_int_equal(llm_breaker_state(&br, t + 1000), LLM_BR_CLOSED);

    /* Failures older than the window are forgotten. */
    llm_breaker_init(&br);
    for (int i = 0; i < 9; i++)
        llm_breaker_record(&br, &c, t, false, 0.5);
    assert_false(llm_breaker_record(&br, &c, t + 30000, false, 0.5));
    assert_int_equal(llm_breaker_state(&br, t + 30000), LLM_BR_CLOSED);
}

static void open_it(llm_breaker_t *br, const llm_breaker_cfg_t *c, uint64_t t) {
    for (int i = 0; i < 10; i++)
        llm_breaker_record(br, c, t, false, 0.5);
    assert_int_equal(llm_breaker_state(br, t), LLM_BR_OPEN);
}

static void test_breaker_half_open_trials(void **state) {
    (void)state;
    llm_breaker_cfg_t c = bcfg();
    llm_breaker_t br;
    llm_breaker_init(&br);
    uint64_t t = 100000;
    open_it(&br, &c, t);
    t += 5000;
    assert_int_equal(llm_breaker_state(&br, t), LLM_BR_HALF_OPEN);
    /* Three trials pass, the fourth waits. */
    for (int i = 0; i < 3; i++)
        assert_true(llm_breaker_acquire(&br, &c, t));
    assert_false(llm_breaker_can_pass(&br, &c, t));
    assert_false(llm_breaker_acquire(&br, &c, t));
    /* A trial that ended without a verdict frees its slot. */
    llm_breaker_release(&br);
    assert_true(llm_breaker_acquire(&br, &c, t));
    /* Three successes close it. */
    for (int i = 0; i < 3; i++)
        llm_breaker_record(&br, &c, t + 10, true, 0.5);
    assert_int_equal(llm_breaker_state(&br, t + 10), LLM_BR_CLOSED);
    assert_true(llm_breaker_acquire(&br, &c, t + 10));
    /* The window was cleared: nine new failures do not reopen it. */
    for (int i = 0; i < 9; i++)
        assert_false(llm_breaker_record(&br, &c, t + 20, false, 0.5));
}

static void test_breaker_reopens_longer(void **state) {
    (void)state;
    llm_breaker_cfg_t c = bcfg();
    llm_breaker_t br;
    llm_breaker_init(&br);
    uint64_t t = 100000;
    open_it(&br, &c, t);
    uint64_t interval = 5000;
    for (int k = 0; k < 7; k++) {
        t = br.open_until_ms;
        assert_true(llm_breaker_acquire(&br, &c, t));
        /* One failed trial reopens it at once, for twice as long, capped at 120 s. */
        assert_true(llm_breaker_record(&br, &c, t, false, 0.5));
        interval = interval * 2 > 120000 ? 120000 : interval * 2;
        assert_int_equal(br.open_until_ms, t + interval);
    }
    /* Jitter stays within +-20 %. */
    c.jitter_pct = 20;
    llm_breaker_init(&br);
    for (int i = 0; i < 10; i++)
        llm_breaker_record(&br, &c, t, false, 0.0);
    assert_int_equal(br.open_until_ms, t + 4000);
    llm_breaker_init(&br);
    for (int i = 0; i < 10; i++)
        llm_breaker_record(&br, &c, t, false, 0.999999);
    assert_in_range(br.open_until_ms, t + 5999, t + 6000);
}

static void test_breaker_hung_trials_and_shared_open(void **state) {
    (void)state;
    llm_breaker_cfg_t c = bcfg();
    llm_breaker_t br;
    llm_breaker_init(&br);
    uint64_t t = 100000;
    open_it(&br, &c, t);
    t = br.open_until_ms;
    for (int i = 0; i < 3; i++)
        assert_true(llm_breaker_acquire(&br, &c, t));
    assert_false(llm_breaker_acquire(&br, &c, t + 29999));
    /* The trials hang: after the half-open bound their slots are free again. */
    assert_true(llm_breaker_acquire(&br, &c, t + 30000));

    /* Another node's (or a retry-after's) open deadline: never shortened. */
    llm_breaker_init(&br);
    llm_breaker_open_until(&br, t + 9000);
    assert_int_equal(llm_breaker_state(&br, t), LLM_BR_OPEN);
    llm_breaker_open_until(&br, t + 1000);
    assert_int_equal(br.open_until_ms, t + 9000);
    assert_false(llm_breaker_can_pass(&br, &c, t + 8999));
    assert_true(llm_breaker_can_pass(&br, &c, t + 9000));
    llm_breaker_reset(&br);
    assert_int_equal(llm_breaker_state(&br, t), LLM_BR_CLOSED);
}

/* ---- keys ---- */

static void keys_init(llm_key_t *k, size_t n, size_t nprimary) {
    memset(k, 0, n * sizeof *k);
    for (size_t i = 0; i < n; i++) {
        k[i].fallback = i >= nprimary;
        k[i].remaining_requests = k[i].remaining_tokens = -1;
        llm_breaker_init(&k[i].br);
    }
}

static void test_keys_primary_then_fallback(void **state) {
    (void)state;
    llm_breaker_cfg_t c = bcfg();
    llm_key_t k[4];
    keys_init(k, 4, 2);
    uint64_t t = 1000, at = 0;
    /* Fresh pool: round robin over the primaries by requests so far. */
    assert_int_equal(llm_keys_pick(k, 4, &c, t, NULL), 0);
    k[0].requests++;
    assert_int_equal(llm_keys_pick(k, 4, &c, t, NULL), 1);
    /* Fewer streams in flight wins over request count. */
    k[1].requests = 5;
    k[0].inflight = 2;
    assert_int_equal(llm_keys_pick(k, 4, &c, t, NULL), 1);
    /* A 429 cools key 1; key 0 is the only usable primary. */
    llm_key_cool(&k[1], t, 12000, 5000);
    assert_int_equal(k[1].cooldown_until_ms, t + 12000);
    assert_int_equal(llm_keys_pick(k, 4, &c, t, NULL), 0);
    /* Both primaries cooling: a fallback key. */
    llm_key_cool(&k[0], t, 0, 5000);
    assert_int_equal(k[0].cooldown_until_ms, t + 5000);
    assert_int_equal(llm_keys_pick(k, 4, &c, t, NULL), 2);
    /* Every key cooling: none, and the earliest return is reported. */
    llm_key_cool(&k[2], t, 8000, 5000);
    llm_key_cool(&k[3], t, 30000, 5000);
    assert_int_equal(llm_keys_pick(k, 4, &c, t, &at), -1);
    assert_int_equal(at, t + 5000);
    /* A cooldown never shortens. */
    llm_key_cool(&k[3], t, 1000, 1000);
    assert_int_equal(k[3].cooldown_until_ms, t + 30000);
    /* Back after the cooldown, primary first again. */
    assert_int_equal(llm_keys_pick(k, 4, &c, t + 5000, NULL), 0);
}

static void test_keys_disabled_breaker_and_budget(void **state) {
    (void)state;
    llm_breaker_cfg_t c = bcfg();
    llm_key_t k[3];
    keys_init(k, 3, 3);
    uint64_t t = 100000, at = 0;
    /* The key with requests left and the most tokens left wins. */
    k[0].remaining_requests = 0;
    k[0].remaining_tokens = 900000;
    k[1].remaining_requests = 10;
    k[1].remaining_tokens = 1000;
    k[2].remaining_requests = 10;
    k[2].remaining_tokens = 5000;
    assert_int_equal(llm_keys_pick(k, 3, &c, t, NULL), 2);
    /* An open breaker takes a key out until it half-opens. */
    for (int i = 0; i < 10; i++)
        llm_breaker_record(&k[2].br, &c, t, false, 0.5);
    assert_int_equal(llm_keys_pick(k, 3, &c, t, NULL), 1);
    /* Disabled keys are never picked and never "come back". */
    llm_key_disable(&k[1], "401");
    assert_string_equal(k[1].disabled_reason, "401");
    assert_int_equal(llm_keys_pick(k, 3, &c, t, NULL), 0);
    llm_key_disable(&k[0], "insufficient_quota");
    assert_int_equal(llm_keys_pick(k, 3, &c, t, &at), -1);
    assert_int_equal(at, k[2].br.open_until_ms);
    assert_int_equal(llm_keys_pick(k, 3, &c, k[2].br.open_until_ms, NULL), 2);
    llm_key_disable(&k[2], "403");
    assert_int_equal(llm_keys_pick(k, 3, &c, t, &at), -1);
    assert_int_equal(at, UINT64_MAX);
}

static void test_key_fingerprint(void **state) {
    (void)state;
    char a[16], b[16], c[16];
    llm_key_fingerprint("sk-ant-secret-key-123456", a);
    llm_key_fingerprint("sk-ant-secret-key-123456", b);
    llm_key_fingerprint("sk-ant-secret-key-123457", c);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_int_equal(strlen(a), 10);
    assert_memory_equal(a, "k:", 2);
    assert_null(strstr(a, "sk-"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue_priority_and_fifo),
        cmocka_unit_test(test_queue_aging_prevents_starvation),
        cmocka_unit_test(test_queue_depth_and_expiry),
        cmocka_unit_test(test_queue_walk_matches_serving_order),
        cmocka_unit_test(test_breaker_needs_volume_and_rate),
        cmocka_unit_test(test_breaker_half_open_trials),
        cmocka_unit_test(test_breaker_reopens_longer),
        cmocka_unit_test(test_breaker_hung_trials_and_shared_open),
        cmocka_unit_test(test_keys_primary_then_fallback),
        cmocka_unit_test(test_keys_disabled_breaker_and_budget),
        cmocka_unit_test(test_key_fingerprint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
