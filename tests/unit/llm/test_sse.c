/* Unit tests for llm_sse: the incremental text/event-stream parser. Events are recorded as
 * "[name|data]" with explicit lengths so that any loss, merge or split of an event shows up as a
 * different string. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/core.h"
#include "llm/llm_sse.h"

typedef struct {
    core_str_t out;
    int count;
    int stop_after; /* return 99 from the callback once this many events were seen (0 = never) */
} rec_t;

static int on_event(void *ud, const char *event, size_t elen, const char *data, size_t dlen) {
    rec_t *r = ud;
    assert_int_equal(strlen(event), elen); /* NUL-terminated, no embedded NUL in these inputs */
    assert_int_equal(event[elen], '\0');
    assert_int_equal(data[dlen], '\0');
    core_str_appendf(&r->out, "[%zu:", elen);
    core_str_append(&r->out, event, elen);
    core_str_appendf(&r->out, "|%zu:", dlen);
    core_str_append(&r->out, data, dlen);
    core_str_appends(&r->out, "]");
    r->count++;
    return r->stop_after && r->count >= r->stop_after ? 99 : 0;
}

/* Parses the whole input in pieces of `step` bytes (0 = in one call) and returns the record. */
static char *parse_steps(const char *in, size_t len, size_t step, int *rc_out) {
    rec_t r = {0};
    llm_sse_t *p = llm_sse_new(0, 0, on_event, &r);
    int rc = 0;
    if (step == 0) {
        rc = llm_sse_feed(p, in, len);
    } else {
        for (size_t i = 0; i < len && rc == 0; i += step)
            rc = llm_sse_feed(p, in + i, len - i < step ? len - i : step);
    }
    if (rc_out)
        *rc_out = rc;
    llm_sse_free(p);
    char *s = core_strdup(r.out.ptr ? r.out.ptr : "");
    core_str_free(&r.out);
    return s;
}

static char *parse(const char *in) {
    int rc;
    char *s = parse_steps(in, strlen(in), 0, &rc);
    assert_int_equal(rc, 0);
    return s;
}

#define EXPECT(input, expected)                                                                    \
    do {                                                                                           \
        char *got_ = parse(input);                                                                 \
        assert_string_equal(got_, expected);                                                       \
        free(got_);                                                                                \
    } while (0)

static void test_basic_fields(void **state) {
    (void)state;
    EXPECT("event: ping\ndata: {\"type\": \"ping\"}\n\n", "[4:ping|16:{\"type\": \"ping\"}]");
    EXPECT("data: a\n\n", "[0:|1:a]");
    /* Only one space is stripped, and only right after the colon. */
    EXPECT("data:x\n\n", "[0:|1:x]");
    EXPECT("data:  x \n\n", "[0:|3: x ]");
    EXPECT("data: a:b: c\n\n", "[0:|6:a:b: c]");
    /* The last event field wins; the name is reset after each dispatch. */
    EXPECT("event: a\nevent: b\ndata: 1\n\ndata: 2\n\n", "[1:b|1:1][0:|1:2]");
}

static void test_whatwg_examples(void **state) {
    (void)state;
    /* The examples of WHATWG HTML 9.2.6 and the WebKit/Chromium event-stream vectors. */
    EXPECT("data: YHOO\ndata: +2\ndata: 10\n\n", "[0:|10:YHOO\n+2\n10]");
    EXPECT(": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
           "data:  third event\n\n",
           "[0:|11:first event][0:|12:second event][0:|12: third event]");
    /* "data" without a colon is an empty value; two of them make one "\n"; the last event has
     * no blank line and is never dispatched. */
    EXPECT("data\n\ndata\ndata\n\ndata:", "[0:|0:][0:|1:\n]");
    EXPECT("data:test\n\ndata: test\n\n", "[0:|4:test][0:|4:test]");
    /* Unknown fields, retry and id are ignored and do not break the event. */
    EXPECT("foo: bar\nretry: 10\nid: 7\ndata: x\nDATA: y\nData: z\n\n", "[0:|1:x]");
    /* An event with no data field is not dispatched, and its name does not leak on. */
    EXPECT("event: lonely\n\ndata: after\n\n", "[0:|5:after]");
    /* A field name with a trailing space is a different (unknown) field. */
    EXPECT("data : x\ndata: y\n\n", "[0:|1:y]");
    /* Empty-valued event name. */
    EXPECT("event:\ndata: z\n\n", "[0:|1:z]");
}

static void test_line_endings(void **state) {
    (void)state;
    EXPECT("data: a\r\n\r\ndata: b\r\r", "[0:|1:a][0:|1:b]");
    EXPECT("data: a\rdata: b\r\n\n", "[0:|3:a\nb]");
    /* "\r\r\n" is a line end, then an empty line: dispatch. */
    EXPECT("data: a\r\r\ndata: b\n\n", "[0:|1:a][0:|1:b]");
    /* "\n\r" is two line ends. */
    EXPECT("data: a\n\rdata: b\n\n", "[0:|1:a][0:|1:b]");
}

static void test_cr_split_from_lf(void **state) {
    (void)state;
    /* A CRLF split across two feeds is one line end, not a line end plus a blank line. */
    rec_t r = {0};
    llm_sse_t *p = llm_sse_new(0, 0, on_event, &r);
    assert_int_equal(llm_sse_feed(p, "data: a\r", 8), 0);
    assert_int_equal(llm_sse_feed(p, "\ndata: b\r", 9), 0);
    assert_int_equal(llm_sse_feed(p, "", 0), 0);   /* an empty feed keeps the pending CR */
    assert_int_equal(llm_sse_feed(p, "\n", 1), 0); /* pairs with the CR: not a blank line */
    assert_int_equal(r.count, 0);
    assert_int_equal(llm_sse_feed(p, "\r", 1), 0); /* a blank line of its own: dispatch */
    assert_int_equal(r.count, 1);
    assert_int_equal(llm_sse_feed(p, "\n", 1), 0); /* pairs with that CR: no second blank */
    assert_int_equal(llm_sse_feed(p, "data: c\n\n", 9), 0);
    assert_int_equal(r.count, 2);
    assert_string_equal(r.out.ptr, "[0:|3:a\nb][0:|1:c]");
    assert_true(llm_sse_idle(p));
    llm_sse_free(p);
    core_str_free(&r.out);
}

static void test_comments(void **state) {
    (void)state;
    /* Keep-alive comments anywhere, including between the fields of one event. */
    EXPECT(": ping\n\ndata: a\n: OPENROUTER PROCESSING\ndata: b\n\n:\n\n", "[0:|3:a\nb]");
    EXPECT(": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n\ndata: [DONE]\n\n",
           "[0:|6:[DONE]]");
}

static void test_bom(void **state) {
    (void)state;
    EXPECT("\xEF\xBB\xBF"
           "data: a\n\n",
           "[0:|1:a]");
    /* Only one BOM, only at the start: a second one makes the first field unknown. */
    EXPECT("\xEF\xBB\xBF\xEF\xBB\xBF"
           "data: a\n\ndata: b\n\n",
           "[0:|1:b]");
    EXPECT("data: a\n\n\xEF\xBB\xBF"
           "data: b\n\n",
           "[0:|1:a]");
    /* A BOM split over three feeds. */
    rec_t r = {0};
    llm_sse_t *p = llm_sse_new(0, 0, on_event, &r);
    assert_int_equal(llm_sse_feed(p, "\xEF", 1), 0);
    assert_int_equal(llm_sse_feed(p, "\xBB", 1), 0);
    assert_int_equal(llm_sse_feed(p,
                                  "\xBF"
                                  "data: x\n\n",
                                  10),
                     0);
    assert_string_equal(r.out.ptr, "[0:|1:x]");
    /* After a reset, the stream starts again and may carry a BOM. */
    llm_sse_reset(p);
    assert_int_equal(llm_sse_feed(p,
                                  "\xEF\xBB\xBF"
                                  "data: y\n\n",
                                  12),
                     0);
    assert_string_equal(r.out.ptr, "[0:|1:x][0:|1:y]");
    llm_sse_free(p);
    core_str_free(&r.out);
}

/* The Anthropic sample of LLM.md 1.1 (body only) with multibyte text, CRLF line ends in places,
 * a comment, and a multi-line data field. */
static const char sample[] =
    "event: message_start\r\n"
    "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25}}}\r\n"
    "\r\n"
    ": OPENROUTER PROCESSING\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n"
    "\n"
    "event: content_block_delta\r"
    "data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\","
    "\"text\":\"h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80\"}}\r"
    "\r"
    "data: line one\n"
    "data: line two\n"
    "\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n"
    "\n";

static void test_every_split(void **state) {
    (void)state;
    size_t len = sizeof sample - 1;
    char *whole = parse_steps(sample, len, 0, NULL);
    assert_non_null(strstr(whole, "[13:message_start|"));
    assert_non_null(strstr(whole, "[0:|17:line one\nline two]"));
    assert_non_null(strstr(whole, "\xF0\x9F\x98\x80"));
    assert_int_equal(strstr(whole, "message_stop|") != NULL, 1);
    /* One split at every position, then two splits at every pair of positions. */
    for (size_t i = 0; i <= len; i++) {
        rec_t r = {0};
        llm_sse_t *p = llm_sse_new(0, 0, on_event, &r);
        assert_int_equal(llm_sse_feed(p, sample, i), 0);
        assert_int_equal(llm_sse_feed(p, sample + i, len - i), 0);
        assert_true(llm_sse_idle(p));
        assert_string_equal(r.out.ptr, whole);
        llm_sse_free(p);
        core_str_free(&r.out);
    }
    for (size_t i = 0; i <= len; i++) {
        for (size_t j = i; j <= len; j++) {
            rec_t r = {0};
            llm_sse_t *p = llm_sse_new(0, 0, on_event, &r);
            assert_int_equal(llm_sse_feed(p, sample, i), 0);
            assert_int_equal(llm_sse_feed(p, sample + i, j - i), 0);
            assert_int_equal(llm_sse_feed(p, sample + j, len - j), 0);
            if (strcmp(r.out.ptr, whole) != 0)
                fail_msg("split at %zu and %zu differs", i, j);
            llm_sse_free(p);
            core_str_free(&r.out);
        }
    }
    for (size_t step = 1; step < 8; step++) {
        char *s = parse_steps(sample, len, step, NULL);
        assert_string_equal(s, whole);
        free(s);
    }
    free(whole);
}

static void test_truncated_stream(void **state) {
    (void)state;
    rec_t r = {0};
    llm_sse_t *p = llm_sse_new(0, 0, on_event, &r);
    assert_true(llm_sse_idle(p));
    assert_int_equal(llm_sse_feed(p, "data: a\n\ndata: b\n", 17), 0);
    assert_int_equal(r.count, 1);
    assert_false(llm_sse_idle(p)); /* an event without its blank line */
    assert_int_equal(llm_sse_feed(p, "\n", 1), 0);
    assert_true(llm_sse_idle(p));
    assert_int_equal(llm_sse_feed(p, "dat", 3), 0);
    assert_false(llm_sse_idle(p)); /* a partial line */
    assert_int_equal(llm_sse_feed(p, "a: c\n", 5), 0);
    assert_false(llm_sse_idle(p));
    assert_int_equal(llm_sse_feed(p, ": comment only\n", 15), 0);
    assert_false(llm_sse_idle(p));
    assert_int_equal(r.count, 2);
    llm_sse_free(p);
    core_str_free(&r.out);
}

static void test_limits(void **state) {
    (void)state;
    rec_t r = {0};
    /* A line over the cap, arriving in pieces: an error, sticky, and no growth past the cap. */
    llm_sse_t *p = llm_sse_new(16, 64, on_event, &r);
    assert_int_equal(llm_sse_feed(p, "data: 0123456789", 16), 0);
    assert_int_equal(llm_sse_feed(p, "x", 1), CORE_ELIMIT);
    assert_int_equal(llm_sse_feed(p, "\n\n", 2), CORE_ELIMIT);
    assert_int_equal(r.count, 0);
    /* Exactly at the cap is fine, in one piece or as a complete line. */
    llm_sse_reset(p);
    assert_int_equal(llm_sse_feed(p, "data: 0123456789\n\n", 18), 0);
    assert_int_equal(r.count, 1);
    assert_int_equal(llm_sse_feed(p, "data: 01234567890\n", 18), CORE_ELIMIT);
    /* An event whose data lines together exceed the event cap. */
    llm_sse_reset(p);
    int rc = 0;
    for (int i = 0; i < 20 && rc == 0; i++)
        rc = llm_sse_feed(p, "data: 0123456789\n", 17);
    assert_int_equal(rc, CORE_ELIMIT);
    assert_int_equal(r.count, 1);
    /* Many small events are fine: the cap is per event, not per stream. */
    llm_sse_reset(p);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(llm_sse_feed(p, "data: 0123456789\n\n", 18), 0);
    assert_int_equal(r.count, 1001);
    llm_sse_free(p);
    core_str_free(&r.out);
}

static void test_callback_stops(void **state) {
    (void)state;
    rec_t r = {.stop_after = 2};
    llm_sse_t *p = llm_sse_new(0, 0, on_event, &r);
    assert_int_equal(llm_sse_feed(p, "data: 1\n\ndata: 2\n\ndata: 3\n\n", 27), 99);
    assert_int_equal(r.count, 2);
    assert_int_equal(llm_sse_feed(p, "data: 4\n\n", 9), 99);
    assert_int_equal(r.count, 2);
    llm_sse_free(p);
    core_str_free(&r.out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic_fields), cmocka_unit_test(test_whatwg_examples),
        cmocka_unit_test(test_line_endings), cmocka_unit_test(test_cr_split_from_lf),
        cmocka_unit_test(test_comments),     cmocka_unit_test(test_bom),
        cmocka_unit_test(test_every_split),  cmocka_unit_test(test_truncated_stream),
        cmocka_unit_test(test_limits),       cmocka_unit_test(test_callback_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
