/* core: GCRA limiter and jittered backoff. */
#include "core/core_limit.h"

#include "core/core.h"

int64_t core_gcra_interval_us(const core_rate_t *rate) {
    int64_t interval = (int64_t)(1e6 / rate->rate + 0.5);
    return interval < 1 ? 1 : interval;
}

int64_t core_gcra_take(core_gcra_t *g, double now_ms, const core_rate_t *rate) {
    if (rate->rate <= 0)
        return 0;
    int64_t now = (int64_t)(now_ms * 1000.0);
    int64_t interval = core_gcra_interval_us(rate);
    int64_t burst = rate->burst ? rate->burst : 1;
    int64_t tat = g->tat_us > now ? g->tat_us : now;
    int64_t allow_at = tat + interval - interval * burst;
    if (now < allow_at)
        return (allow_at - now + 999) / 1000;
    g->tat_us = tat + interval;
    return 0;
}

void core_backoff_init(core_backoff_t *b, uint32_t min_ms, uint32_t max_ms, uint64_t seed) {
    b->min_ms = min_ms ? min_ms : 1;
    b->max_ms = max_ms < b->min_ms ? b->min_ms : max_ms;
    b->attempts = 0;
    if (seed == 0)
        core_random(&seed, sizeof seed);
    b->rng = seed | 1; /* xorshift must not start at 0 */
}

/* xorshift64*: no syscall per delay. */
static uint32_t backoff_rand(core_backoff_t *b) {
    uint64_t x = b->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    b->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

uint64_t core_backoff_next(core_backoff_t *b) {
    uint32_t shift = b->attempts < 20 ? b->attempts : 20;
    uint64_t full = (uint64_t)b->min_ms << shift;
    if (full > b->max_ms)
        full = b->max_ms;
    b->attempts++;
    return full / 2 + backoff_rand(b) % (full / 2 + 1);
}

void core_backoff_reset(core_backoff_t *b) {
    b->attempts = 0;
}
