/* Unit tests for core_backoff_* (core/core_limit.c): jittered exponential backoff. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/core_limit.h"

/* Each delay lies in [full/2, full], full doubling from min up to max. */
static void test_bounds_and_doubling(void **state) {
    (void)state;
    core_backoff_t b;
    core_backoff_init(&b, 50, 2000, 12345);
    uint64_t full = 50;
    for (int i = 0; i < 12; i++) {
        uint64_t d = core_backoff_next(&b);
        assert_true(d >= full / 2);
        assert_true(d <= full);
        full = full * 2 > 2000 ? 2000 : full * 2;
    }
    assert_int_equal(b.attempts, 12);
}

static void test_reset(void **state) {
    (void)state;
    core_backoff_t b;
    core_backoff_init(&b, 100, 10000, 7);
    for (int i = 0; i < 6; i++)
        core_backoff_next(&b);
    core_backoff_reset(&b);
    uint64_t d = core_backoff_next(&b);
    assert_true(d >= 50 && d <= 100);
}

/* The jitter spreads: peers that failed together do not retry in lockstep. */
static void test_jitter_spreads(void **state) {
    (void)state;
    core_backoff_t b;
    core_backoff_init(&b, 1000, 1000, 99);
    uint64_t min = UINT64_MAX, max = 0;
    for (int i = 0; i < 200; i++) {
        uint64_t d = core_backoff_next(&b);
        min = d < min ? d : min;
        max = d > max ? d : max;
    }
    assert_true(min < 600);
    assert_true(max > 900);
    /* Never beyond many attempts: the shift is bounded. */
    b.attempts = 1000;
    assert_true(core_backoff_next(&b) <= 1000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounds_and_doubling),
        cmocka_unit_test(test_reset),
        cmocka_unit_test(test_jitter_spreads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
