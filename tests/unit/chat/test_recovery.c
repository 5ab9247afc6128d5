/* Unit tests for chat_recovery_complete: whether a history answer fills the gap of a recovering
 * subscribe exactly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "chat/chat_int.h"

/* Fills pubs with the given offsets (data is irrelevant to the decision). */
static size_t mk(clu_pub_t *pubs, const uint64_t *offs, size_t n) {
    for (size_t i = 0; i < n; i++)
        pubs[i] = (clu_pub_t){.offset = offs[i], .data = "{}", .data_len = 2};
    return n;
}

#define PUBS(...)                                                                                  \
    pubs, mk(pubs, (const uint64_t[]){__VA_ARGS__},                                                \
             sizeof((const uint64_t[]){__VA_ARGS__}) / sizeof(uint64_t))

static void test_complete(void **state) {
    (void)state;
    clu_pub_t pubs[8];
    assert_true(chat_recovery_complete(0, PUBS(6, 7, 8), 5, 8));
    assert_true(chat_recovery_complete(0, PUBS(1), 0, 1));
    assert_true(chat_recovery_complete(0, PUBS(1, 2, 3, 4, 5), 0, 5));
    /* Large offsets do not wrap. */
    assert_true(
        chat_recovery_complete(0, PUBS(UINT64_MAX - 1, UINT64_MAX), UINT64_MAX - 2, UINT64_MAX));
}

static void test_nothing_missed(void **state) {
    (void)state;
    assert_true(chat_recovery_complete(0, NULL, 0, 8, 8));
    assert_true(chat_recovery_complete(0, NULL, 0, 0, 0));
    clu_pub_t pubs[1];
    /* Publications when nothing was missed are not a match. */
    assert_false(chat_recovery_complete(0, PUBS(8), 8, 8));
}

static void test_missing_middle(void **state) {
    (void)state;
    clu_pub_t pubs[8];
    assert_false(chat_recovery_complete(0, PUBS(6, 8), 5, 8));
    /* Right count, but a hole filled by a duplicate. */
    assert_false(chat_recovery_complete(0, PUBS(6, 6, 8), 5, 8));
    assert_false(chat_recovery_complete(0, PUBS(6, 7, 7), 5, 8));
    /* Missing the last. */
    assert_false(chat_recovery_complete(0, PUBS(6, 7), 5, 8));
    /* Nothing returned while something was missed. */
    assert_false(chat_recovery_complete(0, NULL, 0, 5, 8));
}

static void test_wrong_start(void **state) {
    (void)state;
    clu_pub_t pubs[8];
    assert_false(chat_recovery_complete(0, PUBS(7, 8, 9), 5, 8));
    assert_false(chat_recovery_complete(0, PUBS(5, 6, 7), 5, 8));
    assert_false(chat_recovery_complete(0, PUBS(7, 8), 5, 8));
}

static void test_extra_and_order(void **state) {
    (void)state;
    clu_pub_t pubs[8];
    assert_false(chat_recovery_complete(0, PUBS(6, 7, 8, 9), 5, 8));
    assert_false(chat_recovery_complete(0, PUBS(5, 6, 7, 8), 5, 8));
    /* Newest first is not the order a recovery replays. */
    assert_false(chat_recovery_complete(0, PUBS(8, 7, 6), 5, 8));
    assert_false(chat_recovery_complete(0, PUBS(6, 8, 7), 5, 8));
}

static void test_top_below_since(void **state) {
    (void)state;
    clu_pub_t pubs[2];
    /* The stream went backwards (reset): the client's position does not exist. */
    assert_false(chat_recovery_complete(0, NULL, 0, 9, 8));
    assert_false(chat_recovery_complete(0, NULL, 0, 1, 0));
    assert_false(chat_recovery_complete(0, PUBS(10), 9, 8));
}

static void test_status(void **state) {
    (void)state;
    clu_pub_t pubs[8];
    assert_false(chat_recovery_complete(CORE_EUNRECOVERABLE, PUBS(6, 7, 8), 5, 8));
    assert_false(chat_recovery_complete(CORE_EUNRECOVERABLE, NULL, 0, 8, 8));
    assert_false(chat_recovery_complete(CORE_EAGAIN, NULL, 0, 8, 8));
    assert_false(chat_recovery_complete(CORE_ETIMEDOUT, PUBS(6, 7, 8), 5, 8));
    assert_false(chat_recovery_complete(1, NULL, 0, 8, 8));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_complete),        cmocka_unit_test(test_nothing_missed),
        cmocka_unit_test(test_missing_middle),  cmocka_unit_test(test_wrong_start),
        cmocka_unit_test(test_extra_and_order), cmocka_unit_test(test_top_below_since),
        cmocka_unit_test(test_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
