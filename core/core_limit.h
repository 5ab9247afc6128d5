/* core: rate limiting and retry pacing shared by every module that talks to clients or to
 * backends: the GCRA limiter (per-user publish limits, LLM plan limits) and jittered
 * exponential backoff (reconnects to Redis, retries towards LLM providers). */
#ifndef CORE_CORE_LIMIT_H
#define CORE_CORE_LIMIT_H

#include <stdint.h>

/* ---- GCRA rate limiter ------------------------------------------------------------------- */

typedef struct {
    double rate;    /* tokens per second; <= 0 = unlimited */
    uint32_t burst; /* tokens at most at once (0 counts as 1) */
} core_rate_t;

typedef struct {
    int64_t tat_us; /* theoretical arrival time, microseconds: integers keep waits exact */
} core_gcra_t;

/* Takes one token at now_ms. Returns 0 when allowed, else the milliseconds until a request
 * would be allowed (state unchanged). A rate <= 0 always allows. */
int64_t core_gcra_take(core_gcra_t *g, double now_ms, const core_rate_t *rate);
/* Microseconds between two tokens of a positive rate (at least 1). */
int64_t core_gcra_interval_us(const core_rate_t *rate);

/* ---- jittered exponential backoff -------------------------------------------------------- */

/* Delays double from min_ms per failed attempt up to max_ms; each delay is half fixed, half
 * random, so peers that failed together do not retry in lockstep. */
typedef struct {
    uint32_t min_ms;
    uint32_t max_ms;
    uint32_t attempts; /* failed attempts in a row */
    uint64_t rng;      /* xorshift state: jitter needs spread, not secrecy */
} core_backoff_t;

/* Sets the bounds and seeds the jitter (seed 0 takes one from the kernel). */
void core_backoff_init(core_backoff_t *b, uint32_t min_ms, uint32_t max_ms, uint64_t seed);
/* The delay before the next attempt, in [full/2, full] with full = min(min_ms << attempts,
 * max_ms); counts the attempt. */
uint64_t core_backoff_next(core_backoff_t *b);
/* A success: the next failure starts from min_ms again. */
void core_backoff_reset(core_backoff_t *b);

#endif
