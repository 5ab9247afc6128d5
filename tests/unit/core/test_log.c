/* Unit tests for core_log: values that come from the network (user ids, channel names, reasons)
 * cannot forge a log line or a field, in text and in JSON output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/core.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- capturing stderr ---- */

static FILE *cap_file;
static int saved_fd = -1;

static void cap_begin(void) {
    fflush(stderr);
    cap_file = tmpfile();
    assert_non_null(cap_file);
    saved_fd = dup(STDERR_FILENO);
    assert_true(saved_fd >= 0);
    assert_true(dup2(fileno(cap_file), STDERR_FILENO) >= 0);
}

/* Ends the capture and returns what was written (malloc'd). */
static char *cap_end(void) {
    fflush(stderr);
    assert_true(dup2(saved_fd, STDERR_FILENO) >= 0);
    close(saved_fd);
    saved_fd = -1;
    long n = ftell(cap_file);
    assert_true(n >= 0);
    char *out = calloc(1, (size_t)n + 1);
    rewind(cap_file);
    assert_int_equal(fread(out, 1, (size_t)n, cap_file), (size_t)n);
    fclose(cap_file);
    return out;
}

static size_t count_char(const char *s, char c) {
    size_t n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

/* The part of a text line after "<ts> <level> <module> " (the message and the fields). */
static const char *text_body(const char *line) {
    const char *p = strstr(line, " test    ");
    assert_non_null(p);
    return p + strlen(" test    ");
}

/* ---- text output ---- */

static void test_text_newline_cannot_forge_a_line(void **state) {
    (void)state;
    core_log_setup(CORE_LOG_INFO, false);
    cap_begin();
    core_log(CORE_LOG_WARN, "test", "connect refused", "user=%s remote=%s",
             "eve\n2030-01-01T00:00:00.000Z error chat    admin granted", "1.2.3.4\r\n");
    char *out = cap_end();
    assert_int_equal(count_char(out, '\n'), 1);
    assert_int_equal(count_char(out, '\r'), 0);
    assert_string_equal(text_body(out),
                        "connect refused user=\"eve\\n2030-01-01T00:00:00.000Z error chat    admin "
                        "granted\" remote=\"1.2.3.4\\r\\n\"\n");
    free(out);
}

static void test_text_quotes_and_fields(void **state) {
    (void)state;
    core_log_setup(CORE_LOG_INFO, false);
    cap_begin();
    /* A value inside quotes of the format cannot close them; a bare value with a space or '='
     * is quoted so that it stays one field. */
    core_log(CORE_LOG_INFO, "test", "m", "why=\"%s\" user=%s chan=%s empty=%s", "a\" admin=\"1",
             "bob admin=true", "back\\slash", "");
    char *out = cap_end();
    assert_string_equal(text_body(out), "m why=\"a\\\" admin=\\\"1\" user=\"bob admin=true\" "
                                        "chan=\"back\\\\slash\" empty=\n");
    free(out);
}

static void test_text_control_characters(void **state) {
    (void)state;
    core_log_setup(CORE_LOG_INFO, false);
    cap_begin();
    core_log(CORE_LOG_INFO, "test", "m", "a=%s b=%s c=%s d=%s e=%s f=%s g=%s", "\x1b[31mred",
             "del\x7f", "tab\there", "c1\xc2\x85", "bad\xff\xfe", "ls\xe2\x80\xa8x",
             "z\xc3\xab ok");
    char *out = cap_end();
    assert_string_equal(text_body(out),
                        "m a=\"\\x1b[31mred\" b=\"del\\x7f\" c=\"tab\\there\" d=\"c1\\u0085\" "
                        "e=\"bad\\xff\\xfe\" f=\"ls\\u2028x\" g=\"z\xc3\xab ok\"\n");
    free(out);
    /* The message and the module are escaped too. */
    cap_begin();
    core_log(CORE_LOG_INFO, "test", "two\nlines", NULL);
    out = cap_end();
    assert_int_equal(count_char(out, '\n'), 1);
    assert_string_equal(text_body(out), "two\\nlines\n");
    free(out);
}

static void test_text_plain_values_unchanged(void **state) {
    (void)state;
    core_log_setup(CORE_LOG_INFO, false);
    cap_begin();
    core_log(CORE_LOG_INFO, "test", "m",
             "client=%s code=%d n=%" PRIu64 " size=%zu short=%.3s pct=100%% x=%x neg=%ld c=%c "
             "w=%*d p=%.*s",
             "0f1e-22", -5, UINT64_MAX, (size_t)7, "abcdef", 255u, -9L, 'Q', 4, 7, 2, "xyz");
    char *out = cap_end();
    assert_string_equal(text_body(out), "m client=0f1e-22 code=-5 n=18446744073709551615 size=7 "
                                        "short=abc pct=100% x=ff neg=-9 c=Q w=   7 p=xy\n");
    free(out);
}

static void test_text_long_value_is_bounded(void **state) {
    (void)state;
    core_log_setup(CORE_LOG_INFO, false);
    size_t n = 100000;
    char *big = malloc(n + 1);
    memset(big, '\n', n);
    big[n] = '\0';
    cap_begin();
    core_log(CORE_LOG_INFO, "test", "m", "v=%s end=%d", big, 1);
    char *out = cap_end();
    assert_int_equal(count_char(out, '\n'), 1);
    assert_true(strlen(out) < 8192);
    /* Cut inside the quotes, which still close, and the following fields are kept. */
    assert_non_null(strstr(out, "...\" end=1\n"));
    free(out);
    free(big);
}

/* ---- JSON output ---- */

static void test_json_fields_stay_fields(void **state) {
    (void)state;
    core_log_setup(CORE_LOG_INFO, true);
    cap_begin();
    core_log(CORE_LOG_INFO, "test", "connect refused", "user=%s why=\"%s\" code=%d",
             "bob admin=true\n{\"level\":\"error\"}", "invalid \"token\" here", 3500);
    char *out = cap_end();
    core_log_setup(CORE_LOG_INFO, false);
    assert_int_equal(count_char(out, '\n'), 1);
    json_error_t je;
    json_t *o = json_loads(out, 0, &je);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "msg")), "connect refused");
    assert_string_equal(json_string_value(json_object_get(o, "user")),
                        "bob admin=true\n{\"level\":\"error\"}");
    assert_string_equal(json_string_value(json_object_get(o, "why")), "invalid \"token\" here");
    assert_string_equal(json_string_value(json_object_get(o, "code")), "3500");
    assert_string_equal(json_string_value(json_object_get(o, "level")), "info");
    assert_null(json_object_get(o, "admin"));
    assert_int_equal(json_object_size(o), 7); /* ts, level, module, msg, user, why, code */
    json_decref(o);
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_newline_cannot_forge_a_line),
        cmocka_unit_test(test_text_quotes_and_fields),
        cmocka_unit_test(test_text_control_characters),
        cmocka_unit_test(test_text_plain_values_unchanged),
        cmocka_unit_test(test_text_long_value_is_bounded),
        cmocka_unit_test(test_json_fields_stay_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
