/* Unit tests for server/srv_wq.c: the bounded per-connection write queue of shared messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "server/server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static core_buf_t *msg(const char *s, uint64_t born) {
    core_buf_t *b = core_buf_from(16, s, strlen(s));
    b->born_us = born;
    return b;
}

/* Pushes a fresh message and drops the creator's reference: the queue then owns it alone. */
static int push_owned(srv_wq_t *q, const char *s, uint64_t born) {
    core_buf_t *b = msg(s, born);
    int rc = srv_wq_push(q, b);
    core_buf_unref(b);
    return rc;
}

static void test_init_empty(void **state) {
    (void)state;
    srv_wq_t q;
    srv_wq_init(&q, 10, 100);
    assert_true(srv_wq_empty(&q));
    assert_int_equal(q.count, 0);
    assert_int_equal(q.bytes, 0);
    assert_int_equal(q.cap, 0);
    assert_null(q.ring);
    core_str_t out = {0};
    uint32_t nmsgs = 99;
    uint64_t oldest = 0;
    assert_int_equal(srv_wq_fill(&q, &out, 16, 1000, &nmsgs, &oldest), 0);
    assert_int_equal(nmsgs, 0);
    srv_wq_clear(&q);
    srv_wq_clear(&q);
    core_str_free(&out);
}

static void test_push_within_bounds(void **state) {
    (void)state;
    srv_wq_t q;
    srv_wq_init(&q, 10, 100);
    core_buf_t *a = msg("hello", 1);
    assert_int_equal(srv_wq_push(&q, a), 0);
    assert_int_equal(a->refcnt, 2);
    assert_false(srv_wq_empty(&q));
    assert_int_equal(q.count, 1);
    assert_int_equal(q.bytes, 5);
    /* The same shared message can be queued twice (two pushes, two references). */
    assert_int_equal(srv_wq_push(&q, a), 0);
    assert_int_equal(a->refcnt, 3);
    assert_int_equal(q.count, 2);
    assert_int_equal(q.bytes, 10);
    srv_wq_clear(&q);
    assert_int_equal(a->refcnt, 1);
    assert_true(srv_wq_empty(&q));
    assert_int_equal(q.bytes, 0);
    assert_null(q.ring);
    core_buf_unref(a);
}

static void test_byte_bound(void **state) {
    (void)state;
    srv_wq_t q;
    srv_wq_init(&q, 100, 25);
    assert_int_equal(push_owned(&q, "0123456789", 1), 0);
    assert_int_equal(push_owned(&q, "0123456789", 2), 0);
    core_buf_t *over = msg("0123456789", 3);
    assert_int_equal(srv_wq_push(&q, over), CORE_ELIMIT);
    /* Nothing queued and no reference taken. */
    assert_int_equal(over->refcnt, 1);
    assert_int_equal(q.count, 2);
    assert_int_equal(q.bytes, 20);
    /* Exactly up to the bound is allowed. */
    core_buf_t *fit = msg("01234", 4);
    assert_int_equal(srv_wq_push(&q, fit), 0);
    assert_int_equal(q.bytes, 25);
    assert_int_equal(fit->refcnt, 2);
    /* Full to the byte: even an empty message fits, one byte does not. */
    assert_int_equal(push_owned(&q, "", 5), 0);
    assert_int_equal(push_owned(&q, "x", 6), CORE_ELIMIT);
    assert_int_equal(q.count, 4);
    assert_int_equal(q.bytes, 25);

    /* Draining makes room again. */
    core_str_t out = {0};
    uint32_t n;
    uint64_t oldest;
    assert_int_equal(srv_wq_fill(&q, &out, 0, 10, &n, &oldest), 10);
    assert_int_equal(n, 1);
    assert_int_equal(q.bytes, 15);
    assert_int_equal(srv_wq_push(&q, over), 0);
    assert_int_equal(q.bytes, 25);
    srv_wq_clear(&q);
    assert_int_equal(over->refcnt, 1);
    assert_int_equal(fit->refcnt, 1);
    core_buf_unref(over);
    core_buf_unref(fit);
    core_str_free(&out);

    /* A single message over the byte bound never fits, even in an empty queue. */
    srv_wq_init(&q, 100, 4);
    assert_int_equal(push_owned(&q, "12345", 1), CORE_ELIMIT);
    assert_true(srv_wq_empty(&q));
    assert_int_equal(q.bytes, 0);
    srv_wq_clear(&q);
}

static void test_message_bound(void **state) {
    (void)state;
    srv_wq_t q;
    srv_wq_init(&q, 3, 1 << 20);
    assert_int_equal(push_owned(&q, "a", 1), 0);
    assert_int_equal(push_owned(&q, "b", 2), 0);
    assert_int_equal(push_owned(&q, "c", 3), 0);
    core_buf_t *d = msg("d", 4);
    assert_int_equal(srv_wq_push(&q, d), CORE_ELIMIT);
    assert_int_equal(d->refcnt, 1);
    assert_int_equal(q.count, 3);
    assert_int_equal(q.bytes, 3);
    /* The ring never grows past the message bound. */
    assert_true(q.cap <= 3);

    core_str_t out = {0};
    uint32_t n;
    uint64_t oldest;
    assert_int_equal(srv_wq_fill(&q, &out, 0, 1000, &n, &oldest), 5);
    assert_int_equal(n, 3);
    assert_string_equal(out.ptr, "a\nb\nc");
    assert_int_equal(srv_wq_push(&q, d), 0);
    assert_int_equal(d->refcnt, 2);
    srv_wq_clear(&q);
    assert_int_equal(d->refcnt, 1);
    core_buf_unref(d);
    core_str_free(&out);
}

static void test_fill_joins(void **state) {
    (void)state;
    srv_wq_t q;
    srv_wq_init(&q, 100, 1000);
    core_buf_t *b[3] = {msg("{\"a\":1}", 1111), msg("{\"b\":22}", 2222), msg("{}", 3333)};
    for (int i = 0; i < 3; i++)
        assert_int_equal(srv_wq_push(&q, b[i]), 0);
    core_str_t out = {0};
    uint32_t n = 0;
    uint64_t oldest = 0;
    size_t len = srv_wq_fill(&q, &out, 16, 4096, &n, &oldest);
    const char *want = "{\"a\":1}\n{\"b\":22}\n{}";
    assert_int_equal(len, strlen(want));
    assert_int_equal(n, 3);
    assert_int_equal(oldest, 1111);
    /* Payload after `head` bytes of headroom, NUL-terminated. */
    assert_int_equal(out.len, 16 + len);
    assert_memory_equal(out.ptr + 16, want, len);
    assert_int_equal(out.ptr[out.len], '\0');
    assert_true(out.cap >= out.len + 1);
    assert_true(srv_wq_empty(&q));
    assert_int_equal(q.bytes, 0);
    /* The queue's references were released. */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(b[i]->refcnt, 1);
        core_buf_unref(b[i]);
    }

    /* A second fill reuses out, replacing its previous content. */
    assert_int_equal(push_owned(&q, "zz", 42), 0);
    len = srv_wq_fill(&q, &out, 4, 4096, &n, &oldest);
    assert_int_equal(len, 2);
    assert_int_equal(n, 1);
    assert_int_equal(oldest, 42);
    assert_int_equal(out.len, 6);
    assert_memory_equal(out.ptr + 4, "zz", 3);

    /* No headroom. */
    assert_int_equal(push_owned(&q, "p", 1), 0);
    assert_int_equal(push_owned(&q, "q", 2), 0);
    assert_int_equal(srv_wq_fill(&q, &out, 0, 4096, &n, &oldest), 3);
    assert_string_equal(out.ptr, "p\nq");
    assert_int_equal(out.len, 3);
    srv_wq_clear(&q);
    core_str_free(&out);
}

static void test_fill_max_frame(void **state) {
    (void)state;
    srv_wq_t q;
    srv_wq_init(&q, 100, 1000);
    core_str_t out = {0};
    uint32_t n;
    uint64_t oldest;

    /* "aaaa\nbbbb" is 9 bytes: fits a 9-byte frame exactly, the third does not. */
    push_owned(&q, "aaaa", 1);
    push_owned(&q, "bbbb", 2);
    push_owned(&q, "cccc", 3);
    assert_int_equal(srv_wq_fill(&q, &out, 8, 9, &n, &oldest), 9);
    assert_int_equal(n, 2);
    assert_int_equal(oldest, 1);
    assert_memory_equal(out.ptr + 8, "aaaa\nbbbb", 10);
    assert_int_equal(q.count, 1);
    assert_int_equal(q.bytes, 4);
    assert_int_equal(srv_wq_fill(&q, &out, 8, 9, &n, &oldest), 4);
    assert_int_equal(n, 1);
    assert_int_equal(oldest, 3);
    assert_string_equal(out.ptr + 8, "cccc");

    /* One byte less and each message goes alone (the separator counts). */
    push_owned(&q, "aaaa", 1);
    push_owned(&q, "bbbb", 2);
    assert_int_equal(srv_wq_fill(&q, &out, 0, 8, &n, &oldest), 4);
    assert_int_equal(n, 1);
    assert_string_equal(out.ptr, "aaaa");
    assert_int_equal(srv_wq_fill(&q, &out, 0, 8, &n, &oldest), 4);
    assert_int_equal(n, 1);
    assert_string_equal(out.ptr, "bbbb");
    assert_true(srv_wq_empty(&q));

    /* The first message always goes, even when it is larger than a frame. */
    push_owned(&q, "0123456789abcdef", 7);
    push_owned(&q, "x", 8);
    assert_int_equal(srv_wq_fill(&q, &out, 4, 5, &n, &oldest), 16);
    assert_int_equal(n, 1);
    assert_int_equal(oldest, 7);
    assert_string_equal(out.ptr + 4, "0123456789abcdef");
    assert_int_equal(srv_wq_fill(&q, &out, 4, 5, &n, &oldest), 1);
    assert_int_equal(n, 1);
    assert_string_equal(out.ptr + 4, "x");

    /* A small message followed by a large one: the large one waits for the next frame. */
    push_owned(&q, "s", 1);
    push_owned(&q, "0123456789abcdef", 2);
    assert_int_equal(srv_wq_fill(&q, &out, 0, 10, &n, &oldest), 1);
    assert_int_equal(n, 1);
    assert_int_equal(srv_wq_fill(&q, &out, 0, 10, &n, &oldest), 16);
    assert_int_equal(n, 1);
    assert_int_equal(oldest, 2);

    /* max_frame 0: still one message per fill. */
    push_owned(&q, "m1", 1);
    push_owned(&q, "m2", 2);
    assert_int_equal(srv_wq_fill(&q, &out, 0, 0, &n, &oldest), 2);
    assert_int_equal(n, 1);
    assert_string_equal(out.ptr, "m1");
    srv_wq_clear(&q);
    core_str_free(&out);
}

static void test_refcounts_after_fill_and_clear(void **state) {
    (void)state;
    srv_wq_t q;
    srv_wq_init(&q, 16, 1000);
    core_buf_t *shared = msg("shared", 5);
    /* The fan-out pattern: one message queued for several connections. */
    srv_wq_t q2;
    srv_wq_init(&q2, 16, 1000);
    assert_int_equal(srv_wq_push(&q, shared), 0);
    assert_int_equal(srv_wq_push(&q2, shared), 0);
    assert_int_equal(shared->refcnt, 3);
    core_str_t out = {0};
    uint32_t n;
    uint64_t oldest;
    assert_int_equal(srv_wq_fill(&q, &out, 0, 100, &n, &oldest), 6);
    assert_int_equal(shared->refcnt, 2);
    /* A partial fill releases only what it took. */
    core_buf_t *a = msg("aaaa", 1), *b = msg("bbbb", 2);
    srv_wq_push(&q, a);
    srv_wq_push(&q, b);
    assert_int_equal(srv_wq_fill(&q, &out, 0, 4, &n, &oldest), 4);
    assert_int_equal(a->refcnt, 1);
    assert_int_equal(b->refcnt, 2);
    srv_wq_clear(&q);
    assert_int_equal(b->refcnt, 1);
    srv_wq_clear(&q2);
    assert_int_equal(shared->refcnt, 1);
    core_buf_unref(shared);
    core_buf_unref(a);
    core_buf_unref(b);
    core_str_free(&out);
}

/* Checks FIFO order across many cycles: messages carry their sequence number. */
static void test_ring_growth_and_shrink(void **state) {
    (void)state;
    srv_wq_t q;
    srv_wq_init(&q, 100000, 1 << 24);
    core_str_t out = {0};
    uint32_t n;
    uint64_t oldest;
    char txt[32];
    uint64_t next_in = 0, next_out = 0;

    /* Growth by doubling from 4. */
    for (int i = 0; i < 5; i++) {
        snprintf(txt, sizeof txt, "%llu", (unsigned long long)next_in);
        assert_int_equal(push_owned(&q, txt, next_in), 0);
        next_in++;
    }
    assert_int_equal(q.cap, 8);

    /* Many cycles of pushing k and draining part of it, with the head wrapping around. */
    for (int cycle = 0; cycle < 300; cycle++) {
        int k = 1 + (cycle * 7) % 23;
        if (cycle >= 150 && cycle < 160)
            k = 90; /* a burst grows the ring past 64 */
        for (int i = 0; i < k; i++) {
            snprintf(txt, sizeof txt, "%llu", (unsigned long long)next_in);
            assert_int_equal(push_owned(&q, txt, next_in), 0);
            next_in++;
        }
        assert_true(q.cap >= q.count);
        assert_true(q.cap <= 100000);
        /* Drain with a frame that takes a few messages at a time. */
        int drains = 1 + cycle % 3;
        for (int d = 0; d < drains && !srv_wq_empty(&q); d++) {
            size_t len = srv_wq_fill(&q, &out, 8, 30, &n, &oldest);
            assert_true(n >= 1);
            assert_int_equal(oldest, next_out);
            assert_true(len <= 30);
            /* Split the payload and check the sequence. */
            char *p = out.ptr + 8;
            for (uint32_t m = 0; m < n; m++) {
                char *nl = strchr(p, '\n');
                assert_true((nl != NULL) == (m + 1 < n));
                if (nl)
                    *nl = '\0';
                snprintf(txt, sizeof txt, "%llu", (unsigned long long)next_out);
                assert_string_equal(p, txt);
                next_out++;
                p = nl ? nl + 1 : p + strlen(p);
            }
        }
    }
    assert_int_equal(q.count, next_in - next_out);
    while (q.count < 100) {
        snprintf(txt, sizeof txt, "%llu", (unsigned long long)next_in);
        assert_int_equal(push_owned(&q, txt, next_in), 0);
        next_in++;
    }
    assert_true(q.cap >= 128);

    /* Draining everything from a ring above 64 slots gives the ring back. */
    while (!srv_wq_empty(&q)) {
        srv_wq_fill(&q, &out, 0, 1 << 20, &n, &oldest);
        assert_int_equal(oldest, next_out);
        next_out += n;
    }
    assert_int_equal(next_out, next_in);
    assert_int_equal(q.bytes, 0);
    assert_null(q.ring);
    assert_int_equal(q.cap, 0);
    assert_int_equal(q.head, 0);

    /* And the queue works again from there. */
    assert_int_equal(push_owned(&q, "again", 77), 0);
    assert_int_equal(q.cap, 4);
    assert_int_equal(srv_wq_fill(&q, &out, 0, 100, &n, &oldest), 5);
    assert_int_equal(oldest, 77);
    /* A small ring is kept when it empties. */
    assert_int_equal(q.cap, 4);
    assert_non_null(q.ring);
    srv_wq_clear(&q);
    core_str_free(&out);
}

static void test_ring_cap_clamped(void **state) {
    (void)state;
    srv_wq_t q;
    srv_wq_init(&q, 6, 1000);
    for (int i = 0; i < 6; i++)
        assert_int_equal(push_owned(&q, "m", (uint64_t)i), 0);
    assert_int_equal(q.cap, 6);
    assert_int_equal(push_owned(&q, "m", 6), CORE_ELIMIT);
    /* Wrap around a non power-of-two ring. */
    core_str_t out = {0};
    uint32_t n;
    uint64_t oldest;
    for (int round = 0; round < 20; round++) {
        assert_int_equal(srv_wq_fill(&q, &out, 0, 3, &n, &oldest), 3);
        assert_int_equal(n, 2);
        assert_string_equal(out.ptr, "m\nm");
        assert_int_equal(push_owned(&q, "m", 0), 0);
        assert_int_equal(push_owned(&q, "m", 0), 0);
        assert_int_equal(q.count, 6);
        assert_int_equal(q.cap, 6);
    }
    srv_wq_clear(&q);
    core_str_free(&out);
}

/* Node ids end up in Set-Cookie, Redis keys and metric labels. */
static void test_node_id(void **state) {
    (void)state;
    assert_true(srv_node_id_ok("node1"));
    assert_true(srv_node_id_ok("chat-3.eu_west:8000"));
    char max[65];
    memset(max, 'a', 64);
    max[64] = '\0';
    assert_true(srv_node_id_ok(max));
    assert_false(srv_node_id_ok(""));
    char over[66];
    memset(over, 'a', 65);
    over[65] = '\0';
    assert_false(srv_node_id_ok(over));
    const char *bad[] = {"a b", "a;b", "a=b", "a,b", "a\r\nSet-Cookie: x", "a\"b", "{x}", "é"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(srv_node_id_ok(bad[i]));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_empty),
        cmocka_unit_test(test_push_within_bounds),
        cmocka_unit_test(test_byte_bound),
        cmocka_unit_test(test_message_bound),
        cmocka_unit_test(test_fill_joins),
        cmocka_unit_test(test_fill_max_frame),
        cmocka_unit_test(test_refcounts_after_fill_and_clear),
        cmocka_unit_test(test_ring_growth_and_shrink),
        cmocka_unit_test(test_ring_cap_clamped),
        cmocka_unit_test(test_node_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
