/* Unit tests for admin/admin_metrics.c: the metrics registry and its text exposition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "admin/admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void source_a(void *ud, adm_metrics_writer_t *w) {
    adm_metrics_counter(w, "a_total", "Things counted.", *(uint64_t *)ud);
    adm_metrics_family(w, "a_by_code", "counter", "Things by code.");
    adm_label_t l[] = {{"code", "3008"}, {"node", "n\"1\\\n"}};
    adm_metrics_sample(w, "a_by_code", l, 2, 7);
}

static void source_b(void *ud, adm_metrics_writer_t *w) {
    adm_metrics_gauge(w, "b", "A level.", (uint64_t)(uintptr_t)ud);
}

/* Sources render in registration order, each family with its HELP and TYPE lines, label values
 * escaped as the text format wants, and the process's metrics last. */
static void test_render_order_and_format(void **state) {
    (void)state;
    uint64_t a = 42;
    adm_metrics_t *m = adm_metrics_new();
    adm_metrics_add(m, source_a, &a);
    adm_metrics_add(m, source_b, (void *)(uintptr_t)3);
    core_str_t out = {0};
    adm_metrics_render(m, &out);
    core_str_append(&out, "", 1);
    const char *want = "# HELP a_total Things counted.\n"
                       "# TYPE a_total counter\n"
                       "a_total 42\n"
                       "# HELP a_by_code Things by code.\n"
                       "# TYPE a_by_code counter\n"
                       "a_by_code{code=\"3008\",node=\"n\\\"1\\\\\\n\"} 7\n"
                       "# HELP b A level.\n"
                       "# TYPE b gauge\n"
                       "b 3\n";
    assert_memory_equal(out.ptr, want, strlen(want));
    const char *proc = out.ptr + strlen(want);
    assert_non_null(strstr(proc, "# TYPE process_resident_memory_bytes gauge\n"));
    assert_non_null(strstr(proc, "# TYPE process_cpu_seconds_total counter\n"));
    assert_non_null(strstr(proc, "\nprocess_open_fds "));
    /* The values are read at each render, not at registration. */
    a = 43;
    out.len = 0;
    adm_metrics_render(m, &out);
    core_str_append(&out, "", 1);
    assert_non_null(strstr(out.ptr, "\na_total 43\n"));
    core_str_free(&out);
    adm_metrics_free(m);
}

static void hist_source(void *ud, adm_metrics_writer_t *w) {
    adm_metrics_histogram(w, "lat_seconds", "Latency.", ud);
}

/* A histogram: cumulative buckets by upper bound, +Inf, sum and count. */
static void test_histogram_render(void **state) {
    (void)state;
    static const double bounds[] = {0.001, 0.5};
    core_hist_t h;
    core_hist_init(&h, bounds, 2);
    core_hist_observe(&h, 0.0005);
    core_hist_observe(&h, 0.25);
    core_hist_observe(&h, 3);
    adm_metrics_t *m = adm_metrics_new();
    adm_metrics_add(m, hist_source, &h);
    core_str_t out = {0};
    adm_metrics_render(m, &out);
    core_str_append(&out, "", 1);
    const char *want = "# HELP lat_seconds Latency.\n"
                       "# TYPE lat_seconds histogram\n"
                       "lat_seconds_bucket{le=\"0.001\"} 1\n"
                       "lat_seconds_bucket{le=\"0.5\"} 2\n"
                       "lat_seconds_bucket{le=\"+Inf\"} 3\n"
                       "lat_seconds_sum 3.250500\n"
                       "lat_seconds_count 3\n";
    assert_memory_equal(out.ptr, want, strlen(want));
    core_str_free(&out);
    adm_metrics_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_order_and_format),
        cmocka_unit_test(test_histogram_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
