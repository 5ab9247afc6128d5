/* Unit tests for core/core_codes.c: the lookups generated from the code tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/core_codes.h"

#include <string.h>

static void test_reply_errors(void **state) {
    (void)state;
    assert_int_equal(CORE_REPLY_INTERNAL, 100);
    assert_int_equal(CORE_REPLY_UNRECOVERABLE_POSITION, 112);
    assert_int_equal(CORE_REPLY_RATE_LIMITED, 429);
    assert_string_equal(core_reply_error_message(CORE_REPLY_PERMISSION_DENIED),
                        "permission denied");
    assert_string_equal(core_reply_error_message(999), "unknown error");
    assert_true(core_reply_error_temporary(CORE_REPLY_INTERNAL));
    assert_true(core_reply_error_temporary(CORE_REPLY_RATE_LIMITED));
    assert_true(core_reply_error_temporary(CORE_REPLY_QUEUE_FULL));
    assert_false(core_reply_error_temporary(CORE_REPLY_QUOTA_EXCEEDED));
    assert_false(core_reply_error_temporary(CORE_REPLY_BAD_REQUEST));
    assert_false(core_reply_error_temporary(999));
}

/* Every code of the table has its own slot, the last row included, and slot and code are
 * inverse; any other code lands in the one slot after them. */
static void test_reply_error_slots(void **state) {
    (void)state;
    for (int slot = 0; slot < CORE_REPLY_ERROR_COUNT; slot++) {
        int code = core_reply_error_code(slot);
        assert_true(code > 0);
        assert_int_equal(core_reply_error_slot(code), slot);
    }
    assert_int_equal(core_reply_error_slot(CORE_REPLY_QUEUE_TIMEOUT), CORE_REPLY_ERROR_COUNT - 1);
    assert_int_equal(core_reply_error_slot(0), CORE_REPLY_ERROR_COUNT);
    assert_int_equal(core_reply_error_slot(7777), CORE_REPLY_ERROR_COUNT);
    assert_int_equal(core_reply_error_code(CORE_REPLY_ERROR_COUNT), 0);
    assert_int_equal(core_reply_error_code(-1), 0);
    assert_int_equal(CORE_REPLY_ERROR_SLOTS, CORE_REPLY_ERROR_COUNT + 1);
}

static void test_disconnects(void **state) {
    (void)state;
    assert_int_equal(CORE_DISCONNECT_INSUFFICIENT_STATE, 3010);
    assert_string_equal(core_disconnect_reason(CORE_DISCONNECT_SLOW), "slow");
    assert_string_equal(core_disconnect_reason(CORE_DISCONNECT_TOO_MANY_ERRORS), "too many errors");
    assert_string_equal(core_disconnect_reason(4999), "");
    assert_true(core_disconnect_reconnect(CORE_DISCONNECT_SHUTDOWN));
    assert_false(core_disconnect_reconnect(CORE_DISCONNECT_INVALID_TOKEN));
    /* Codes outside the table follow the protocol's ranges. */
    assert_true(core_disconnect_reconnect(3100));
    assert_false(core_disconnect_reconnect(3600));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_errors),
        cmocka_unit_test(test_reply_error_slots),
        cmocka_unit_test(test_disconnects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
