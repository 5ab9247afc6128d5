/* Unit tests for cluster/cluster_envelope.c: round trips, forward compatibility, refusal of
 * malformed, truncated, oversized and hostile input, and that a tiny input announcing a huge
 * container never turns into a large allocation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cluster/cluster_envelope.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- largest single allocation, to show hostile headers are refused before msgpack-c ------- */

/* Under ASan the allocator's hook sees every allocation (including msgpack-c's, in its shared
 * library); without ASan, malloc and friends defined here interpose on libc for the whole
 * process. Either way the test learns the largest request made while decoding. */
/* volatile: GCC assumes malloc writes no globals and would reuse a stale value across it. */
static volatile size_t largest_alloc;
static void *volatile sink; /* keeps the control allocation from being optimised away */

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_ASAN 1
#endif
#endif

#ifdef HAVE_ASAN
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));

static void on_alloc(const volatile void *p, size_t n) {
    (void)p;
    if (n > largest_alloc)
        largest_alloc = n;
}

static void on_free(const volatile void *p) {
    (void)p;
}

static void track_allocations(void) {
    __sanitizer_install_malloc_and_free_hooks(on_alloc, on_free);
}
#else
void *__libc_malloc(size_t n);
void *__libc_calloc(size_t n, size_t size);
void *__libc_realloc(void *p, size_t n);

static void note(size_t n) {
    if (n > largest_alloc)
        largest_alloc = n;
}

void *malloc(size_t n) {
    note(n);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size) {
    note(n * size);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n) {
    note(n);
    return __libc_realloc(p, n);
}

static void track_allocations(void) {}
#endif

/* ---- helpers ------------------------------------------------------------------------------- */

static clu_envelope_t sample_pub(void) {
    clu_envelope_t e = {.type = CLU_ENV_PUB, .offset = 42};
    e.channel = "chat:room";
    e.channel_len = strlen(e.channel);
    strcpy(e.epoch, "ABCD1234");
    e.data = "{\"text\":\"hi\"}";
    e.data_len = strlen(e.data);
    e.info = "{\"user\":\"u1\",\"client\":\"c1\"}";
    e.info_len = strlen(e.info);
    return e;
}

static void assert_same(const clu_envelope_t *a, const clu_envelope_t *b) {
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->channel_len, b->channel_len);
    assert_memory_equal(a->channel, b->channel, a->channel_len);
    assert_true(a->offset == b->offset);
    assert_string_equal(a->epoch, b->epoch);
    assert_int_equal(a->data_len, b->data_len);
    if (a->data_len)
        assert_memory_equal(a->data, b->data, a->data_len);
    assert_int_equal(a->info == NULL, b->info == NULL);
    assert_int_equal(a->info_len, b->info_len);
    if (a->info_len)
        assert_memory_equal(a->info, b->info, a->info_len);
}

static void roundtrip(const clu_envelope_t *e) {
    core_str_t s = {0};
    assert_int_equal(clu_env_encode(e, &s), 0);
    clu_envelope_t d;
    assert_int_equal(clu_env_decode(s.ptr, s.len, &d), 0);
    assert_same(e, &d);
    /* Decoded strings borrow from the input buffer. */
    assert_true(d.channel >= s.ptr && d.channel < s.ptr + s.len);
    core_str_free(&s);
}

static void pk_str(msgpack_packer *pk, const char *s) {
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* Packs the sample pub by hand so single fields can be dropped (omit), given a value of the
 * wrong type (wrong), duplicated (dup) or followed by unknown fields (extra). */
static void build(msgpack_sbuffer *sb, const char *omit, const char *wrong, const char *dup,
                  bool extra) {
    static const char *const keys[] = {"v", "type", "channel", "offset", "epoch", "data", "info"};
    size_t n = 7 - (omit != NULL) + (dup != NULL) + (extra ? 3 : 0);
    msgpack_sbuffer_init(sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, n);
    if (extra) { /* unknown keys before and between known ones, with nested values */
        pk_str(&pk, "zz_future");
        msgpack_pack_array(&pk, 2);
        msgpack_pack_map(&pk, 1);
        pk_str(&pk, "a");
        msgpack_pack_double(&pk, 1.5);
        msgpack_pack_bin_with_body(&pk, "\x00\x01", 2);
        msgpack_pack_int64(&pk, -7); /* a non-string key */
        pk_str(&pk, "x");
    }
    for (size_t i = 0; i < 7; i++) {
        const char *k = keys[i];
        if (omit != NULL && strcmp(k, omit) == 0)
            continue;
        int reps = dup != NULL && strcmp(k, dup) == 0 ? 2 : 1;
        for (int r = 0; r < reps; r++) {
            pk_str(&pk, k);
            if (wrong != NULL && strcmp(k, wrong) == 0) {
                /* A uint where a str belongs, a str where a uint belongs. */
                if (strcmp(k, "v") == 0 || strcmp(k, "offset") == 0)
                    pk_str(&pk, "1");
                else
                    msgpack_pack_uint64(&pk, 1);
                continue;
            }
            if (strcmp(k, "v") == 0)
                msgpack_pack_uint64(&pk, 1);
            else if (strcmp(k, "type") == 0)
                pk_str(&pk, "pub");
            else if (strcmp(k, "channel") == 0)
                pk_str(&pk, "chat:room");
            else if (strcmp(k, "offset") == 0)
                msgpack_pack_uint64(&pk, 42);
            else if (strcmp(k, "epoch") == 0)
                pk_str(&pk, "ABCD1234");
            else if (strcmp(k, "data") == 0)
                pk_str(&pk, "{\"text\":\"hi\"}");
            else
                pk_str(&pk, "{\"user\":\"u1\",\"client\":\"c1\"}");
        }
        if (extra && i == 3) {
            pk_str(&pk, "zz_later");
            msgpack_pack_nil(&pk);
        }
    }
}

static int decode_sb(const msgpack_sbuffer *sb, clu_envelope_t *out) {
    return clu_env_decode(sb->data, sb->size, out);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_roundtrip_each_type(void **state) {
    (void)state;
    clu_envelope_t e = sample_pub();
    roundtrip(&e);
    e.info = NULL; /* info is optional in a pub */
    e.info_len = 0;
    e.offset = UINT64_MAX;
    e.epoch[0] = '\0';
    roundtrip(&e);

    clu_envelope_t j = {.type = CLU_ENV_JOIN, .channel = "a", .channel_len = 1};
    j.info = "{\"user\":\"u2\"}";
    j.info_len = strlen(j.info);
    roundtrip(&j);
    j.type = CLU_ENV_LEAVE;
    roundtrip(&j);

    /* encode_alloc gives the same bytes. */
    e = sample_pub();
    core_str_t s = {0};
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(clu_env_encode(&e, &s), 0);
    assert_int_equal(clu_env_encode_alloc(&e, &buf, &len), 0);
    assert_int_equal(len, s.len);
    assert_memory_equal(buf, s.ptr, len);
    free(buf);
    core_str_free(&s);
}

static void test_hand_built_and_unknown_fields(void **state) {
    (void)state;
    clu_envelope_t want = sample_pub(), d;
    msgpack_sbuffer sb;
    build(&sb, NULL, NULL, NULL, false);
    assert_int_equal(decode_sb(&sb, &d), 0);
    assert_same(&want, &d);
    msgpack_sbuffer_destroy(&sb);

    build(&sb, NULL, NULL, NULL, true);
    assert_int_equal(decode_sb(&sb, &d), 0);
    assert_same(&want, &d);
    msgpack_sbuffer_destroy(&sb);

    /* Pub-only fields in a join are ignored. */
    clu_envelope_t j = {.type = CLU_ENV_JOIN, .channel = "c", .channel_len = 1};
    j.info = "{}";
    j.info_len = 2;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    pk_str(&pk, "v");
    msgpack_pack_uint64(&pk, 1);
    pk_str(&pk, "type");
    pk_str(&pk, "join");
    pk_str(&pk, "channel");
    pk_str(&pk, "c");
    pk_str(&pk, "info");
    pk_str(&pk, "{}");
    pk_str(&pk, "offset");
    msgpack_pack_uint64(&pk, 9);
    assert_int_equal(decode_sb(&sb, &d), 0);
    assert_same(&j, &d);
    msgpack_sbuffer_destroy(&sb);
}

static void test_missing_required(void **state) {
    (void)state;
    static const char *const required[] = {"v", "type", "channel", "offset", "epoch", "data"};
    clu_envelope_t d;
    msgpack_sbuffer sb;
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        build(&sb, required[i], NULL, NULL, true);
        assert_int_equal(decode_sb(&sb, &d), CORE_EPROTO);
        assert_null(d.channel); /* out is zeroed on error */
        msgpack_sbuffer_destroy(&sb);
    }
    build(&sb, "info", NULL, NULL, false); /* optional in a pub */
    assert_int_equal(decode_sb(&sb, &d), 0);
    assert_null(d.info);
    msgpack_sbuffer_destroy(&sb);

    /* A join without info. */
    const char join[] = "\x83\xa1v\x01\xa4type\xa4join\xa7"
                        "channel\xa1"
                        "c";
    assert_int_equal(clu_env_decode(join, sizeof join - 1, &d), CORE_EPROTO);
}

static void test_wrong_types_and_duplicates(void **state) {
    (void)state;
    static const char *const keys[] = {"v", "type", "channel", "offset", "epoch", "data", "info"};
    clu_envelope_t d;
    msgpack_sbuffer sb;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        build(&sb, NULL, keys[i], NULL, false);
        assert_int_equal(decode_sb(&sb, &d), CORE_EPROTO);
        msgpack_sbuffer_destroy(&sb);
        build(&sb, NULL, NULL, keys[i], false);
        assert_int_equal(decode_sb(&sb, &d), CORE_EPROTO);
        msgpack_sbuffer_destroy(&sb);
    }
    /* Not a map at all; a negative offset; an unknown type; bin where str belongs. */
    assert_int_equal(clu_env_decode("\x90", 1, &d), CORE_EPROTO);
    assert_int_equal(clu_env_decode("\xa3pub", 4, &d), CORE_EPROTO);
    const char neg[] = "\x86\xa1v\x01\xa4type\xa3pub\xa7"
                       "channel\xa1"
                       "c\xa6offset\xff\xa5"
                       "epoch\xa0\xa4"
                       "data\xa1"
                       "1";
    assert_int_equal(clu_env_decode(neg, sizeof neg - 1, &d), CORE_EPROTO);
    const char unknown_type[] = "\x84\xa1v\x01\xa4type\xa4stat\xa7"
                                "channel\xa1"
                                "c\xa4info\xa2{}";
    assert_int_equal(clu_env_decode(unknown_type, sizeof unknown_type - 1, &d), CORE_EPROTO);
    const char bin_channel[] = "\x84\xa1v\x01\xa4type\xa4join\xa7"
                               "channel\xc4\x01"
                               "c\xa4info\xa2{}";
    assert_int_equal(clu_env_decode(bin_channel, sizeof bin_channel - 1, &d), CORE_EPROTO);
    /* The same with a str channel decodes: the cases above fail for the reason named. */
    const char ok[] = "\x84\xa1v\x01\xa4type\xa4join\xa7"
                      "channel\xa1"
                      "c\xa4info\xa2{}";
    assert_int_equal(clu_env_decode(ok, sizeof ok - 1, &d), 0);
    /* Embedded NUL in the channel. */
    const char nul_channel[] = "\x84\xa1v\x01\xa4type\xa4join\xa7"
                               "channel\xa2"
                               "c\x00\xa4info\xa2{}";
    assert_int_equal(clu_env_decode(nul_channel, sizeof nul_channel - 1, &d), CORE_EPROTO);
}

static void test_truncated_everywhere(void **state) {
    (void)state;
    msgpack_sbuffer sb;
    build(&sb, NULL, NULL, NULL, true);
    clu_envelope_t d;
    /* Each prefix is copied into its own exact-size allocation, so ASan catches any read past
     * the declared length. */
    for (size_t n = 0; n < sb.size; n++) {
        char *p = malloc(n ? n : 1);
        memcpy(p, sb.data, n);
        assert_int_equal(clu_env_decode(p, n, &d), CORE_EPROTO);
        free(p);
    }
    /* Trailing bytes after a whole envelope are refused too. */
    char *p = malloc(sb.size + 1);
    memcpy(p, sb.data, sb.size);
    p[sb.size] = '\xc0';
    assert_int_equal(clu_env_decode(p, sb.size + 1, &d), CORE_EPROTO);
    assert_int_equal(clu_env_decode(p, sb.size, &d), 0);
    free(p);
    msgpack_sbuffer_destroy(&sb);
    assert_int_equal(clu_env_decode(NULL, 0, &d), CORE_EPROTO);
}

static void test_huge_declared_lengths(void **state) {
    (void)state;
    static const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        {"\xdd\xff\xff\xff\xff", 5},          /* array32 of 4G elements */
        {"\xdf\xff\xff\xff\xff", 5},          /* map32 of 4G pairs */
        {"\xdb\xff\xff\xff\xff", 5},          /* str32 of 4 GiB */
        {"\xc6\xff\xff\xff\xff", 5},          /* bin32 */
        {"\xc9\xff\xff\xff\xff\x01", 6},      /* ext32 */
        {"\xdc\xff\xff", 3},                  /* array16 */
        {"\xde\xff\xff", 3},                  /* map16 */
        {"\x81\xa1x\xdd\x00\x40\x00\x00", 8}, /* 4M elements under an unknown key */
        {"\x81\xa1x\xdf\x7f\xff\xff\xff", 8}, /* map32 under an unknown key */
        {"\x82\xa1v\x01\xa1x\xdb\xff\xff\xff\xff", 11},
        {"\xc1", 1}, /* never-used type byte */
    };
    track_allocations();
    /* Control: the tracking sees an ordinary allocation, so the checks below are not vacuous. */
    largest_alloc = 0;
    sink = malloc(100000);
    free(sink);
    assert_true(largest_alloc >= 100000);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        clu_envelope_t d;
        largest_alloc = 0;
        assert_int_equal(clu_env_decode(cases[i].bytes, cases[i].len, &d), CORE_EPROTO);
        if (largest_alloc > 64 * 1024)
            fail_msg("case %zu allocated %zu bytes", i, largest_alloc);
    }
    /* Nesting: 16 levels under an unknown key is over the cap (the envelope is level 1). */
    char deep[64];
    size_t n = 0;
    memcpy(deep, "\x82\xa1v\x01\xa1x", 6);
    n = 6;
    for (int i = 0; i < CLU_ENV_MAX_DEPTH; i++)
        deep[n++] = '\x91';
    deep[n++] = '\xc0';
    clu_envelope_t d;
    assert_int_equal(clu_env_decode(deep, n, &d), CORE_EPROTO);
    /* One level less passes the walk (and then fails only for the missing fields). */
    memmove(deep + 6, deep + 7, n - 7);
    n--;
    assert_int_equal(clu_env_decode(deep, n, &d), CORE_EPROTO);

    /* Many small objects: over CLU_ENV_MAX_OBJECTS is refused even though every count fits. */
    size_t cnt = CLU_ENV_MAX_OBJECTS + 1;
    char *many = malloc(16 + cnt);
    memcpy(many, "\x81\xa1x\xdd", 4);
    many[4] = (char)(cnt >> 24), many[5] = (char)(cnt >> 16), many[6] = (char)(cnt >> 8);
    many[7] = (char)cnt;
    memset(many + 8, 0, cnt);
    largest_alloc = 0;
    assert_int_equal(clu_env_decode(many, 8 + cnt, &d), CORE_EPROTO);
    assert_true(largest_alloc <= 64 * 1024);
    free(many);
}

static void test_size_cap(void **state) {
    (void)state;
    clu_envelope_t e = sample_pub(), d;
    char *big = malloc(CLU_ENV_MAX_SIZE + 1);
    memset(big, 'x', CLU_ENV_MAX_SIZE + 1);
    big[0] = '"';

    /* Decoding: anything longer than the cap is refused before it is looked at. */
    assert_int_equal(clu_env_decode(big, CLU_ENV_MAX_SIZE + 1, &d), CORE_E2BIG);

    /* Encoding: over the cap is refused and leaves out untouched. */
    core_str_t s = {0};
    core_str_appends(&s, "keep");
    e.data = big;
    e.data_len = CLU_ENV_MAX_SIZE;
    assert_int_equal(clu_env_encode(&e, &s), CORE_E2BIG);
    assert_int_equal(s.len, 4);
    assert_string_equal(s.ptr, "keep");
    core_str_free(&s);

    /* A large envelope under the cap round-trips. */
    e.data_len = CLU_ENV_MAX_SIZE - 512;
    roundtrip(&e);
    free(big);
}

static void test_version(void **state) {
    (void)state;
    clu_envelope_t d;
    const char v1[] = "\x84\xa1v\x01\xa4type\xa5leave\xa7"
                      "channel\xa1"
                      "c\xa4info\xa2{}";
    assert_int_equal(clu_env_decode(v1, sizeof v1 - 1, &d), 0);
    assert_int_equal(d.type, CLU_ENV_LEAVE);
    char v[sizeof v1];
    memcpy(v, v1, sizeof v1);
    for (unsigned ver = 0; ver < 4; ver++) {
        if (ver == 1)
            continue;
        v[3] = (char)ver;
        assert_int_equal(clu_env_decode(v, sizeof v1 - 1, &d), CORE_EPROTO);
    }
    /* Version 1 written as a wider uint is still version 1. */
    const char wide[] = "\x84\xa1v\xcf\x00\x00\x00\x00\x00\x00\x00\x01\xa4type\xa5leave\xa7"
                        "channel\xa1"
                        "c\xa4info\xa2{}";
    assert_int_equal(clu_env_decode(wide, sizeof wide - 1, &d), 0);
}

static void test_encode_refuses_bad_input(void **state) {
    (void)state;
    core_str_t s = {0};
    clu_envelope_t e = sample_pub();
    e.type = (clu_env_type_t)9;
    assert_int_equal(clu_env_encode(&e, &s), CORE_EINVAL);
    e = sample_pub();
    e.channel_len = 0;
    assert_int_equal(clu_env_encode(&e, &s), CORE_EINVAL);
    e = sample_pub();
    memset(e.epoch, 'e', sizeof e.epoch); /* not NUL-terminated */
    assert_int_equal(clu_env_encode(&e, &s), CORE_EINVAL);
    e = sample_pub();
    e.data = NULL;
    assert_int_equal(clu_env_encode(&e, &s), CORE_EINVAL);
    e = sample_pub();
    e.type = CLU_ENV_JOIN;
    e.info = NULL;
    assert_int_equal(clu_env_encode(&e, &s), CORE_EINVAL);
    assert_int_equal(s.len, 0);
    assert_int_equal(clu_env_encode(NULL, &s), CORE_EINVAL);
    core_str_free(&s);
    assert_null(clu_env_type_name((clu_env_type_t)0));
    assert_string_equal(clu_env_type_name(CLU_ENV_LEAVE), "leave");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_each_type),
        cmocka_unit_test(test_hand_built_and_unknown_fields),
        cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_wrong_types_and_duplicates),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_huge_declared_lengths),
        cmocka_unit_test(test_size_cap),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_encode_refuses_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
