/* Unit tests for core_gcra_take (core/core_limit.c): the per-user publish and typing limiter. Time
 * is passed in, so every test drives a virtual clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/core_limit.h"

/* ceil without libm: the interval in whole milliseconds, rounded up. */
static int64_t ceil_ms(double v) {
    int64_t t = (int64_t)v;
    return (double)t < v ? t + 1 : t;
}

static void test_burst_then_wait(void **state) {
    (void)state;
    core_gcra_t g = {0};
    const core_rate_t r = {.rate = 10, .burst = 3}; /* one token per 100 ms */
    double now = 1000000;
    for (int i = 0; i < 3; i++)
        assert_int_equal(core_gcra_take(&g, now, &r), 0);
    /* The fourth at the same instant waits exactly one interval. */
    assert_int_equal(core_gcra_take(&g, now, &r), 100);
    /* A refusal does not change the state: asking again gives the same answer. */
    int64_t tat = g.tat_us;
    assert_int_equal(core_gcra_take(&g, now, &r), 100);
    assert_int_equal(g.tat_us, tat);
    /* Part of the way there, the wait shrinks accordingly. */
    assert_int_equal(core_gcra_take(&g, now + 40, &r), 60);
    assert_int_equal(core_gcra_take(&g, now + 99, &r), 1);
    /* After the interval exactly one more goes through. */
    assert_int_equal(core_gcra_take(&g, now + 100, &r), 0);
    assert_int_equal(core_gcra_take(&g, now + 100, &r), 100);
    /* After two more intervals, two more. */
    assert_int_equal(core_gcra_take(&g, now + 300, &r), 0);
    assert_int_equal(core_gcra_take(&g, now + 300, &r), 0);
    assert_int_equal(core_gcra_take(&g, now + 300, &r), 100);
}

static void test_burst_sizes(void **state) {
    (void)state;
    const uint32_t bursts[] = {1, 2, 10, 100};
    for (size_t k = 0; k < sizeof bursts / sizeof bursts[0]; k++) {
        core_gcra_t g = {0};
        const core_rate_t r = {.rate = 5, .burst = bursts[k]}; /* 200 ms */
        for (uint32_t i = 0; i < bursts[k]; i++)
            assert_int_equal(core_gcra_take(&g, 5000, &r), 0);
        assert_int_equal(core_gcra_take(&g, 5000, &r), 200);
    }
}

static void test_wait_is_ceiled(void **state) {
    (void)state;
    /* 3 per second: 333.33 ms between tokens, reported as 334. */
    core_gcra_t g = {0};
    const core_rate_t r = {.rate = 3, .burst = 1};
    assert_int_equal(core_gcra_take(&g, 0, &r), 0);
    assert_int_equal(core_gcra_take(&g, 0, &r), 334);
    assert_int_equal(core_gcra_take(&g, 333, &r), 1);
    assert_int_equal(core_gcra_take(&g, 334, &r), 0);

    /* 0.5 per second: 2000 ms. */
    core_gcra_t h = {0};
    const core_rate_t slow = {.rate = 0.5, .burst = 2};
    assert_int_equal(core_gcra_take(&h, 10, &slow), 0);
    assert_int_equal(core_gcra_take(&h, 10, &slow), 0);
    assert_int_equal(core_gcra_take(&h, 10, &slow), 2000);
    assert_int_equal(core_gcra_take(&h, 1500, &slow), 510);
}

/* The returned wait is enough: retrying after exactly that many milliseconds is allowed, and it
 * is not more than needed: one millisecond earlier is refused. */
static void test_wait_is_exact(void **state) {
    (void)state;
    const double rates[] = {1, 2, 3, 7, 10, 13, 20, 50, 0.3, 2.5};
    for (size_t k = 0; k < sizeof rates / sizeof rates[0]; k++) {
        core_gcra_t g = {0};
        const core_rate_t r = {.rate = rates[k], .burst = 4};
        double now = 100000;
        int allowed = 0;
        for (int step = 0; step < 200; step++) {
            int64_t w = core_gcra_take(&g, now, &r);
            if (w == 0) {
                allowed++;
                continue;
            }
            assert_true(w > 0);
            assert_true(w <= ceil_ms(1000.0 / rates[k]));
            if (w > 1)
                assert_true(core_gcra_take(&g, now + (double)w - 1, &r) > 0);
            now += (double)w;
            assert_int_equal(core_gcra_take(&g, now, &r), 0);
            allowed++;
        }
        assert_true(allowed >= 4);
    }
}

/* With an interval that is not a whole number of milliseconds (7 per second: 142.857 ms), the
 * limiter must still allow a fresh user's first request, and a retry after exactly the wait it
 * returned. Floating-point rounding of (now + interval) - interval must not refuse them. */
static void test_fractional_interval_burst_one(void **state) {
    (void)state;
    const core_rate_t r = {.rate = 7, .burst = 1};
    core_gcra_t fresh = {0};
    assert_int_equal(core_gcra_take(&fresh, 114, &r), 0);

    core_gcra_t g = {0};
    assert_int_equal(core_gcra_take(&g, 0, &r), 0);
    assert_int_equal(core_gcra_take(&g, 0, &r), 143);
    assert_int_equal(core_gcra_take(&g, 143, &r), 0);

    const core_rate_t r3 = {.rate = 3, .burst = 1};
    core_gcra_t fresh3 = {0};
    assert_int_equal(core_gcra_take(&fresh3, 1715, &r3), 0);

    /* Any idle limiter allows one request, whatever the clock reads. */
    for (int t = 1; t <= 20000; t++) {
        core_gcra_t z = {0};
        if (core_gcra_take(&z, (double)t, &r) != 0)
            fail_msg("fresh limiter (7/s, burst 1) refused at now_ms=%d", t);
    }
}

static void test_idle_does_not_accumulate(void **state) {
    (void)state;
    core_gcra_t g = {0};
    const core_rate_t r = {.rate = 10, .burst = 3};
    for (int i = 0; i < 3; i++)
        assert_int_equal(core_gcra_take(&g, 0, &r), 0);
    assert_int_equal(core_gcra_take(&g, 0, &r), 100);
    /* An hour of silence still allows only one burst. */
    double later = 3600.0 * 1000;
    for (int i = 0; i < 3; i++)
        assert_int_equal(core_gcra_take(&g, later, &r), 0);
    assert_int_equal(core_gcra_take(&g, later, &r), 100);

    /* A fresh limiter (tat 0) at a large clock value also starts with exactly one burst. */
    core_gcra_t f = {0};
    for (int i = 0; i < 3; i++)
        assert_int_equal(core_gcra_take(&f, 1e12, &r), 0);
    assert_int_equal(core_gcra_take(&f, 1e12, &r), 100);
}

static void test_steady_rate(void **state) {
    (void)state;
    /* Spaced exactly one interval apart, every request passes forever, with no burst used. */
    core_gcra_t g = {0};
    const core_rate_t r = {.rate = 20, .burst = 1}; /* 50 ms */
    for (int i = 0; i < 1000; i++)
        assert_int_equal(core_gcra_take(&g, 1000.0 + 50.0 * i, &r), 0);
    assert_int_equal(core_gcra_take(&g, 1000.0 + 50.0 * 999, &r), 50);
}

static void test_rate_zero_or_negative(void **state) {
    (void)state;
    const core_rate_t zero = {.rate = 0, .burst = 0};
    const core_rate_t neg = {.rate = -5, .burst = 1};
    core_gcra_t g = {0};
    for (int i = 0; i < 10000; i++) {
        assert_int_equal(core_gcra_take(&g, 42, &zero), 0);
        assert_int_equal(core_gcra_take(&g, 42, &neg), 0);
    }
    assert_int_equal(g.tat_us, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_wait),
        cmocka_unit_test(test_burst_sizes),
        cmocka_unit_test(test_wait_is_ceiled),
        cmocka_unit_test(test_wait_is_exact),
        cmocka_unit_test(test_fractional_interval_burst_one),
        cmocka_unit_test(test_idle_does_not_accumulate),
        cmocka_unit_test(test_steady_rate),
        cmocka_unit_test(test_rate_zero_or_negative),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
