/* Unit tests for core/: the hash map, refcounted buffers, growable strings and JSON string
 * escaping, random ids, the histogram and error texts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- core_map ---------------------------------------------------------------------------- */

/* Distinct non-NULL value pointers without allocating: the map borrows values. */
static int values[4096];

static void test_map_basic(void **state) {
    (void)state;
    core_map_t *m = core_map_new();
    assert_int_equal(core_map_size(m), 0);
    assert_null(core_map_get(m, "a"));
    assert_null(core_map_del(m, "a"));

    assert_null(core_map_put(m, "a", &values[1]));
    assert_null(core_map_put(m, "b", &values[2]));
    assert_null(core_map_put(m, "", &values[3])); /* the empty key is a key like any other */
    assert_int_equal(core_map_size(m), 3);
    assert_ptr_equal(core_map_get(m, "a"), &values[1]);
    assert_ptr_equal(core_map_get(m, "b"), &values[2]);
    assert_ptr_equal(core_map_get(m, ""), &values[3]);
    assert_null(core_map_get(m, "c"));
    assert_null(core_map_get(m, "ab"));

    /* Replace returns the previous value and keeps the size. */
    assert_ptr_equal(core_map_put(m, "a", &values[4]), &values[1]);
    assert_int_equal(core_map_size(m), 3);
    assert_ptr_equal(core_map_get(m, "a"), &values[4]);

    /* Delete returns the value once. */
    assert_ptr_equal(core_map_del(m, "a"), &values[4]);
    assert_null(core_map_del(m, "a"));
    assert_null(core_map_get(m, "a"));
    assert_int_equal(core_map_size(m), 2);
    assert_ptr_equal(core_map_get(m, "b"), &values[2]);

    /* A NULL value is stored, but reads the same as a missing key. */
    assert_null(core_map_put(m, "n", NULL));
    assert_int_equal(core_map_size(m), 3);
    core_map_free(m);
    core_map_free(NULL);
}

/* A borrowed-key map keeps the caller's pointers: keys that live in heap values (each checked
 * by ASan when freed before the map) grow, replace and delete like copied ones, and the map
 * frees none of them. */
static void test_map_borrowed_keys(void **state) {
    (void)state;
    core_map_t *m = core_map_new_borrowed();
    enum { N = 1000 };
    char *keys[N];
    for (int i = 0; i < N; i++) {
        keys[i] = malloc(16);
        snprintf(keys[i], 16, "k%d", i);
        assert_null(core_map_put(m, keys[i], &values[i]));
    }
    assert_int_equal(core_map_size(m), N);
    const char *k;
    void *v;
    core_map_iter_t it = 0;
    while (core_map_next(m, &it, &k, &v))
        assert_ptr_equal(k, keys[(int *)v - values]); /* the very pointer, not a copy */
    /* A replacement takes the new value's key: the old one may be freed with the old value. */
    char *again = strdup("k7");
    assert_ptr_equal(core_map_put(m, again, &values[N]), &values[7]);
    free(keys[7]);
    keys[7] = again;
    assert_ptr_equal(core_map_get(m, "k7"), &values[N]);
    for (int i = 0; i < N; i += 2) {
        assert_non_null(core_map_del(m, keys[i]));
        free(keys[i]);
    }
    assert_int_equal(core_map_size(m), N / 2);
    assert_ptr_equal(core_map_get(m, "k9"), &values[9]);
    core_map_free(m);
    for (int i = 1; i < N; i += 2)
        free(keys[i]);
}

static void test_map_copies_keys(void **state) {
    (void)state;
    core_map_t *m = core_map_new();
    char key[16];
    strcpy(key, "room");
    core_map_put(m, key, &values[1]);
    strcpy(key, "xxxx");
    assert_ptr_equal(core_map_get(m, "room"), &values[1]);
    assert_null(core_map_get(m, "xxxx"));
    core_map_iter_t it = 0;
    const char *k;
    void *v;
    assert_true(core_map_next(m, &it, &k, &v));
    assert_string_equal(k, "room");
    assert_ptr_not_equal(k, key);
    assert_false(core_map_next(m, &it, &k, &v));
    core_map_free(m);
}

static void test_map_growth(void **state) {
    (void)state;
    enum { N = 3000 };
    core_map_t *m = core_map_new();
    char key[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "chan:%d", i);
        assert_null(core_map_put(m, key, &values[i]));
        assert_int_equal(core_map_size(m), (size_t)i + 1);
    }
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "chan:%d", i);
        assert_ptr_equal(core_map_get(m, key), &values[i]);
    }
    assert_null(core_map_get(m, "chan:3000"));
    assert_null(core_map_get(m, "chan:-1"));

    /* Iteration visits every key exactly once with its value. */
    static unsigned char seen[N];
    memset(seen, 0, sizeof seen);
    core_map_iter_t it = 0;
    const char *k;
    void *v;
    size_t count = 0;
    while (core_map_next(m, &it, &k, &v)) {
        int i = (int)((int *)v - values);
        assert_true(i >= 0 && i < N);
        snprintf(key, sizeof key, "chan:%d", i);
        assert_string_equal(k, key);
        assert_int_equal(seen[i], 0);
        seen[i] = 1;
        count++;
    }
    assert_int_equal(count, N);
    /* Exhausted iterators stay exhausted; NULL outputs are allowed. */
    assert_false(core_map_next(m, &it, NULL, NULL));

    /* Delete half, the rest stays reachable. */
    for (int i = 0; i < N; i += 2) {
        snprintf(key, sizeof key, "chan:%d", i);
        assert_ptr_equal(core_map_del(m, key), &values[i]);
    }
    assert_int_equal(core_map_size(m), N / 2);
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "chan:%d", i);
        if (i % 2)
            assert_ptr_equal(core_map_get(m, key), &values[i]);
        else
            assert_null(core_map_get(m, key));
    }
    core_map_free(m);
}

static void test_map_delete_during_iteration(void **state) {
    (void)state;
    enum { N = 500 };
    core_map_t *m = core_map_new();
    char key[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "k%d", i);
        core_map_put(m, key, &values[i]);
    }
    /* Delete every odd key as it is visited: each key is still visited exactly once. */
    static unsigned char seen[N];
    memset(seen, 0, sizeof seen);
    core_map_iter_t it = 0;
    const char *k;
    void *v;
    size_t visits = 0;
    while (core_map_next(m, &it, &k, &v)) {
        int i = (int)((int *)v - values);
        assert_int_equal(seen[i], 0);
        seen[i] = 1;
        visits++;
        if (i % 2) {
            snprintf(key, sizeof key, "%s", k); /* k dies with the delete */
            assert_ptr_equal(core_map_del(m, key), v);
        }
    }
    assert_int_equal(visits, N);
    assert_int_equal(core_map_size(m), N / 2);

    /* Delete everything during a second pass. */
    it = 0;
    visits = 0;
    while (core_map_next(m, &it, &k, &v)) {
        int i = (int)((int *)v - values);
        assert_int_equal(i % 2, 0);
        snprintf(key, sizeof key, "%s", k);
        assert_ptr_equal(core_map_del(m, key), v);
        visits++;
    }
    assert_int_equal(visits, N / 2);
    assert_int_equal(core_map_size(m), 0);
    it = 0;
    assert_false(core_map_next(m, &it, &k, &v));
    core_map_free(m);
}

/* The iterator is a slot index, so its final value is the table's capacity: used here to check
 * that deleted slots are reused instead of growing the table. */
static size_t map_capacity(const core_map_t *m) {
    core_map_iter_t it = 0;
    while (core_map_next(m, &it, NULL, NULL))
        ;
    return it;
}

static void test_map_tombstone_reuse(void **state) {
    (void)state;
    core_map_t *m = core_map_new();
    size_t cap0 = map_capacity(m);
    assert_true(cap0 > 0);

    /* Re-inserting a deleted key finds it again. */
    core_map_put(m, "x", &values[1]);
    core_map_del(m, "x");
    assert_null(core_map_get(m, "x"));
    assert_null(core_map_put(m, "x", &values[2]));
    assert_ptr_equal(core_map_get(m, "x"), &values[2]);
    assert_int_equal(core_map_size(m), 1);

    /* Many insert/delete cycles of distinct keys with few live keys: tombstones must not make
     * the table grow, and lookups must stay correct (no endless probe when every free slot has
     * become a tombstone). */
    char key[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "tmp:%d", i);
        assert_null(core_map_put(m, key, &values[i % 4096]));
        assert_ptr_equal(core_map_get(m, key), &values[i % 4096]);
        assert_ptr_equal(core_map_del(m, key), &values[i % 4096]);
        assert_null(core_map_get(m, key));
        assert_null(core_map_get(m, "missing"));
    }
    assert_int_equal(core_map_size(m), 1);
    assert_ptr_equal(core_map_get(m, "x"), &values[2]);
    assert_int_equal(map_capacity(m), cap0);

    /* Same with a few live keys kept throughout: the capacity settles and then stays. */
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "live:%d", i);
        core_map_put(m, key, &values[100 + i]);
    }
    size_t settled = 0;
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof key, "tmp2:%d", i);
        core_map_put(m, key, &values[1]);
        core_map_del(m, key);
        if (i == 1000)
            settled = map_capacity(m);
    }
    assert_int_equal(core_map_size(m), 6);
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof key, "live:%d", i);
        assert_ptr_equal(core_map_get(m, key), &values[100 + i]);
    }
    assert_int_equal(map_capacity(m), settled);
    assert_true(settled <= 4 * cap0);
    core_map_free(m);
}

static void test_hash(void **state) {
    (void)state;
    /* Deterministic, length-bounded, and sensitive to order and to every byte. */
    assert_true(core_hash("abc", 3) == core_hash("abcdef", 3));
    assert_true(core_hash("ab", 2) != core_hash("ba", 2));
    assert_true(core_hash("a", 1) != core_hash("", 0));
    assert_true(core_hash("a\0", 2) != core_hash("a", 1));
    assert_true(core_hash("chat:room1", 10) != core_hash("chat:room2", 10));
}

/* ---- core_buf ---------------------------------------------------------------------------- */

static void test_buf_new(void **state) {
    (void)state;
    uint64_t before = core_now_us();
    core_buf_t *b = core_buf_new(16, 100);
    uint64_t after = core_now_us();
    assert_int_equal(b->refcnt, 1);
    assert_int_equal(b->len, 0);
    assert_int_equal(b->cap, 100);
    assert_int_equal(b->head, 16);
    assert_ptr_equal(b->data, b->storage + 16);
    assert_int_equal(b->data[0], '\0');
    assert_true(b->born_us >= before && b->born_us <= after);
    /* head + cap + NUL bytes are writable (ASan checks the bounds). */
    memset(b->storage, 'h', 16);
    memset(b->data, 'x', 100);
    b->data[100] = '\0';
    core_buf_unref(b);
}

static void test_buf_from(void **state) {
    (void)state;
    char src[] = "hello\0world";
    core_buf_t *b = core_buf_from(8, src, sizeof src - 1);
    assert_int_equal(b->len, 11);
    assert_int_equal(b->head, 8);
    assert_ptr_equal(b->data, b->storage + 8);
    assert_memory_equal(b->data, "hello\0world", 11);
    assert_int_equal(b->data[11], '\0');
    /* A copy, not a borrow. */
    src[0] = 'J';
    assert_int_equal(b->data[0], 'h');
    core_buf_unref(b);

    core_buf_t *e = core_buf_from(0, "", 0);
    assert_int_equal(e->len, 0);
    assert_ptr_equal(e->data, e->storage);
    assert_string_equal(e->data, "");
    core_buf_unref(e);
}

static void test_buf_refcount(void **state) {
    (void)state;
    core_buf_t *b = core_buf_from(4, "abc", 3);
    assert_ptr_equal(core_buf_ref(b), b);
    assert_int_equal(b->refcnt, 2);
    assert_ptr_equal(core_buf_ref(b), b);
    assert_int_equal(b->refcnt, 3);
    core_buf_unref(b);
    assert_int_equal(b->refcnt, 2);
    assert_string_equal(b->data, "abc");
    core_buf_unref(b);
    assert_int_equal(b->refcnt, 1);
    assert_string_equal(b->data, "abc");
    core_buf_unref(b); /* frees: ASan reports a leak or a later use otherwise */
    core_buf_unref(NULL);
}

/* ---- core_str ---------------------------------------------------------------------------- */

static void test_str_append(void **state) {
    (void)state;
    core_str_t s = {0};
    core_str_append(&s, "abc", 3);
    assert_int_equal(s.len, 3);
    assert_string_equal(s.ptr, "abc");
    core_str_appends(&s, "def");
    assert_int_equal(s.len, 6);
    assert_string_equal(s.ptr, "abcdef");
    core_str_append(&s, "", 0);
    assert_int_equal(s.len, 6);
    assert_string_equal(s.ptr, "abcdef");
    /* Binary bytes, NUL included, are appended as given. */
    core_str_append(&s, "x\0y", 3);
    assert_int_equal(s.len, 9);
    assert_memory_equal(s.ptr, "abcdefx\0y", 10);

    /* Growth well past the first allocation keeps the content and the NUL. */
    core_str_t t = {0};
    for (int i = 0; i < 1000; i++)
        core_str_append(&t, "0123456789", 10);
    assert_int_equal(t.len, 10000);
    assert_true(t.cap > t.len);
    assert_int_equal(t.ptr[t.len], '\0');
    for (size_t i = 0; i < t.len; i++)
        assert_int_equal(t.ptr[i], '0' + (int)(i % 10));
    core_str_free(&t);
    assert_null(t.ptr);
    assert_int_equal(t.len, 0);
    assert_int_equal(t.cap, 0);

    core_str_reserve(&s, 5000);
    assert_true(s.cap >= s.len + 5000 + 1);
    assert_int_equal(s.len, 9);
    assert_memory_equal(s.ptr, "abcdefx\0y", 10);
    core_str_free(&s);
}

static void test_str_appendf(void **state) {
    (void)state;
    core_str_t s = {0};
    core_str_appendf(&s, "%d-%s", 42, "x");
    assert_string_equal(s.ptr, "42-x");
    assert_int_equal(s.len, 4);
    core_str_appendf(&s, "|%llu|%05.1f", 18446744073709551615ULL, 2.5);
    assert_string_equal(s.ptr, "42-x|18446744073709551615|002.5");
    assert_int_equal(s.len, strlen(s.ptr));
    /* A long formatted piece forces growth in one go. */
    char big[3001];
    memset(big, 'q', 3000);
    big[3000] = '\0';
    core_str_appendf(&s, "[%s]", big);
    assert_int_equal(s.len, 31 + 3002);
    assert_int_equal(s.ptr[31], '[');
    assert_int_equal(s.ptr[31 + 3001], ']');
    assert_int_equal(s.ptr[s.len], '\0');
    /* An empty expansion appends nothing. */
    size_t len = s.len;
    core_str_appendf(&s, "%s", "");
    assert_int_equal(s.len, len);
    core_str_free(&s);
}

static void json_escape_check(const char *in, size_t n, const char *want) {
    core_str_t s = {0};
    core_str_append_json_string(&s, in, n);
    assert_string_equal(s.ptr, want);
    assert_int_equal(s.len, strlen(want));
    core_str_free(&s);
}

static void test_str_json_string(void **state) {
    (void)state;
    json_escape_check("", 0, "\"\"");
    json_escape_check("plain text", 10, "\"plain text\"");
    json_escape_check("say \"hi\"", 8, "\"say \\\"hi\\\"\"");
    json_escape_check("a\\b", 3, "\"a\\\\b\"");
    json_escape_check("\\\"", 2, "\"\\\\\\\"\"");
    json_escape_check("l1\nl2\r\t", 7, "\"l1\\u000al2\\u000d\\u0009\"");
    json_escape_check("\x01\x1f", 2, "\"\\u0001\\u001f\"");
    json_escape_check("a\0b", 3, "\"a\\u0000b\"");
    /* 0x20 and 0x7f are not control characters for JSON. */
    json_escape_check(" \x7f", 2, "\" \x7f\"");
    /* '/' needs no escape. */
    json_escape_check("a/b", 3, "\"a/b\"");
    /* UTF-8 passes through byte for byte. */
    json_escape_check("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15,
                      "\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\"");
    /* Only n bytes are read. */
    json_escape_check("abcdef", 3, "\"abc\"");

    /* Appends to existing content; a long string of escapes grows the buffer correctly. */
    core_str_t s = {0};
    core_str_appends(&s, "{\"k\":");
    char quotes[500];
    memset(quotes, '"', sizeof quotes);
    core_str_append_json_string(&s, quotes, sizeof quotes);
    core_str_appends(&s, "}");
    assert_int_equal(s.len, 5 + 2 + 1000 + 1);
    assert_memory_equal(s.ptr, "{\"k\":\"", 6);
    for (size_t i = 0; i < 500; i++) {
        assert_int_equal(s.ptr[6 + 2 * i], '\\');
        assert_int_equal(s.ptr[7 + 2 * i], '"');
    }
    assert_string_equal(s.ptr + 1006, "\"}");
    core_str_free(&s);

    core_str_t c = {0};
    char ctl[300];
    for (size_t i = 0; i < sizeof ctl; i++)
        ctl[i] = (char)(i % 32);
    core_str_append_json_string(&c, ctl, sizeof ctl);
    assert_int_equal(c.len, 2 + 6 * 300);
    assert_int_equal(c.ptr[c.len], '\0');
    char want[8];
    for (size_t i = 0; i < sizeof ctl; i++) {
        snprintf(want, sizeof want, "\\u%04x", (unsigned)(i % 32));
        assert_memory_equal(c.ptr + 1 + 6 * i, want, 6);
    }
    core_str_free(&c);
}

/* ---- core_random_id ---------------------------------------------------------------------- */

static void test_random_id(void **state) {
    (void)state;
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    size_t lens[] = {0, 1, 8, 36, 63, 64, 65, 200};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        char buf[256];
        memset(buf, '#', sizeof buf);
        core_random_id(buf, lens[k]);
        assert_int_equal(strlen(buf), lens[k]);
        assert_int_equal(buf[lens[k] + 1], '#'); /* nothing written past the NUL */
        for (size_t i = 0; i < lens[k]; i++)
            assert_non_null(memchr(alphabet, buf[i], 62));
    }
    /* Over many ids every class of the alphabet shows up, and ids differ. */
    bool upper = false, lower = false, digit = false;
    char a[37], b[37];
    for (int i = 0; i < 50; i++) {
        core_random_id(a, 36);
        core_random_id(b, 36);
        assert_string_not_equal(a, b);
        for (int j = 0; j < 36; j++) {
            upper |= a[j] >= 'A' && a[j] <= 'Z';
            lower |= a[j] >= 'a' && a[j] <= 'z';
            digit |= a[j] >= '0' && a[j] <= '9';
        }
    }
    assert_true(upper && lower && digit);
}

/* ---- core_hist --------------------------------------------------------------------------- */

static void test_hist(void **state) {
    (void)state;
    static const double bounds[] = {0.001, 0.01, 0.1, 1};
    core_hist_t h;
    memset(&h, 0xff, sizeof h);
    core_hist_init(&h, bounds, 4);
    assert_int_equal(h.nbuckets, 4);
    assert_true(h.bounds[2] == 0.1);
    assert_int_equal(h.total, 0);
    assert_int_equal(h.inf, 0);
    assert_true(h.sum == 0.0);
    for (int i = 0; i < CORE_HIST_MAX_BUCKETS; i++)
        assert_int_equal(h.counts[i], 0);

    /* Upper bounds are inclusive (Prometheus "le"). */
    core_hist_observe(&h, 0.001);     /* bucket 0 */
    core_hist_observe(&h, 0);         /* bucket 0 */
    core_hist_observe(&h, -5);        /* bucket 0 */
    core_hist_observe(&h, 0.0011);    /* bucket 1 */
    core_hist_observe(&h, 0.01);      /* bucket 1 */
    core_hist_observe(&h, 0.5);       /* bucket 3 */
    core_hist_observe(&h, 1);         /* bucket 3 */
    core_hist_observe(&h, 1.0000001); /* +Inf */
    core_hist_observe(&h, 1e9);       /* +Inf */
    assert_int_equal(h.counts[0], 3);
    assert_int_equal(h.counts[1], 2);
    assert_int_equal(h.counts[2], 0);
    assert_int_equal(h.counts[3], 2);
    assert_int_equal(h.counts[4], 0);
    assert_int_equal(h.inf, 2);
    assert_int_equal(h.total, 9);
    double want = 0.001 + 0 - 5 + 0.0011 + 0.01 + 0.5 + 1 + 1.0000001 + 1e9;
    assert_true(h.sum == want);

    /* More bounds than fit are cut to CORE_HIST_MAX_BUCKETS. */
    double many[CORE_HIST_MAX_BUCKETS + 4];
    for (int i = 0; i < CORE_HIST_MAX_BUCKETS + 4; i++)
        many[i] = i + 1;
    core_hist_init(&h, many, CORE_HIST_MAX_BUCKETS + 4);
    assert_int_equal(h.nbuckets, CORE_HIST_MAX_BUCKETS);
    core_hist_observe(&h, CORE_HIST_MAX_BUCKETS);     /* last bucket */
    core_hist_observe(&h, CORE_HIST_MAX_BUCKETS + 1); /* +Inf */
    assert_int_equal(h.counts[CORE_HIST_MAX_BUCKETS - 1], 1);
    assert_int_equal(h.inf, 1);
    assert_int_equal(h.total, 2);

    /* No bounds: everything is +Inf. */
    core_hist_init(&h, bounds, 0);
    core_hist_observe(&h, 0);
    assert_int_equal(h.inf, 1);
    assert_int_equal(h.total, 1);
}

/* ---- errors and misc --------------------------------------------------------------------- */

static void test_strerror(void **state) {
    (void)state;
    assert_string_equal(core_strerror(0), "ok");
    assert_string_equal(core_strerror(CORE_EPROTO), "protocol error");
    assert_string_equal(core_strerror(CORE_ELIMIT), "limit exceeded");
    assert_string_equal(core_strerror(CORE_EPERM), "permission denied");
    assert_string_equal(core_strerror(CORE_EUNRECOVERABLE), "unrecoverable position");
    /* libuv codes read as libuv writes them. */
    assert_string_equal(core_strerror(CORE_EINVAL), uv_strerror(UV_EINVAL));
    assert_string_equal(core_strerror(CORE_EAGAIN), uv_strerror(UV_EAGAIN));
    assert_string_equal(core_strerror(CORE_ETIMEDOUT), uv_strerror(UV_ETIMEDOUT));
    /* Domain codes are all distinct from each other. */
    const int codes[] = {CORE_EPROTO, CORE_ELIMIT, CORE_EPERM, CORE_EUNRECOVERABLE};
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            assert_string_not_equal(core_strerror(codes[i]), core_strerror(codes[j]));
    assert_string_equal(core_strerror(CORE_EDOMAIN_BASE), "unknown error");
    assert_string_equal(core_strerror(-10005), "unknown error");
    assert_string_equal(core_strerror(-20000), "unknown error");
    assert_string_equal(core_strerror(7), "unknown error");
}

static void test_log_level_parse(void **state) {
    (void)state;
    assert_int_equal(core_log_level_parse("error"), CORE_LOG_ERROR);
    assert_int_equal(core_log_level_parse("warn"), CORE_LOG_WARN);
    assert_int_equal(core_log_level_parse("info"), CORE_LOG_INFO);
    assert_int_equal(core_log_level_parse("debug"), CORE_LOG_DEBUG);
    assert_int_equal(core_log_level_parse("DEBUG"), -1);
    assert_int_equal(core_log_level_parse(""), -1);
    assert_int_equal(core_log_level_parse("trace"), -1);
    core_log_setup(CORE_LOG_WARN, false);
    assert_true(core_log_enabled(CORE_LOG_ERROR));
    assert_true(core_log_enabled(CORE_LOG_WARN));
    assert_false(core_log_enabled(CORE_LOG_INFO));
    assert_false(core_log_enabled(CORE_LOG_DEBUG));
    core_log_setup(CORE_LOG_INFO, false);
}

static void test_strndup_and_list(void **state) {
    (void)state;
    char *p = core_strndup("abcdef", 3);
    assert_string_equal(p, "abc");
    free(p);
    p = core_strdup("");
    assert_string_equal(p, "");
    free(p);

    typedef struct {
        int v;
        core_list_t link;
    } item_t;
    core_list_t head;
    core_list_init(&head);
    assert_true(core_list_empty(&head));
    item_t it[3] = {{.v = 1}, {.v = 2}, {.v = 3}};
    for (int i = 0; i < 3; i++)
        core_list_insert_tail(&head, &it[i].link);
    assert_false(core_list_empty(&head));
    core_list_remove(&it[1].link);
    int got[3], n = 0;
    for (core_list_t *l = head.next; l != &head; l = l->next)
        got[n++] = CORE_CONTAINER_OF(l, item_t, link)->v;
    assert_int_equal(n, 2);
    assert_int_equal(got[0], 1);
    assert_int_equal(got[1], 3);
    core_list_remove(&it[0].link);
    core_list_remove(&it[2].link);
    assert_true(core_list_empty(&head));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_basic),
        cmocka_unit_test(test_map_copies_keys),
        cmocka_unit_test(test_map_borrowed_keys),
        cmocka_unit_test(test_map_growth),
        cmocka_unit_test(test_map_delete_during_iteration),
        cmocka_unit_test(test_map_tombstone_reuse),
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_buf_new),
        cmocka_unit_test(test_buf_from),
        cmocka_unit_test(test_buf_refcount),
        cmocka_unit_test(test_str_append),
        cmocka_unit_test(test_str_appendf),
        cmocka_unit_test(test_str_json_string),
        cmocka_unit_test(test_random_id),
        cmocka_unit_test(test_hist),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_log_level_parse),
        cmocka_unit_test(test_strndup_and_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
