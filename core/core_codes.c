/* core: lookups generated from the code tables of core_codes.h. */
#include "core/core_codes.h"

#include <stddef.h>

#define ROW(code, sym, text, flag) {code, text, flag},
typedef struct {
    int code;
    const char *text;
    bool flag;
} code_row_t;

static const code_row_t reply_rows[CORE_REPLY_ERROR_COUNT] = {CORE_REPLY_ERROR_MAP(ROW)};
static const code_row_t disconnect_rows[CORE_DISCONNECT_COUNT] = {CORE_DISCONNECT_MAP(ROW)};
#undef ROW

/* The tables are short (under 20 rows) and looked up once per error reply or close: a scan over
 * every row is cheaper than anything cleverer. */
static const code_row_t *find(const code_row_t *rows, size_t n, int code) {
    for (size_t i = 0; i < n; i++)
        if (rows[i].code == code)
            return &rows[i];
    return NULL;
}

const char *core_reply_error_message(int code) {
    const code_row_t *r = find(reply_rows, CORE_REPLY_ERROR_COUNT, code);
    return r ? r->text : "unknown error";
}

bool core_reply_error_temporary(int code) {
    const code_row_t *r = find(reply_rows, CORE_REPLY_ERROR_COUNT, code);
    return r && r->flag;
}

int core_reply_error_slot(int code) {
    const code_row_t *r = find(reply_rows, CORE_REPLY_ERROR_COUNT, code);
    return r ? (int)(r - reply_rows) : CORE_REPLY_ERROR_COUNT;
}

int core_reply_error_code(int slot) {
    return slot >= 0 && slot < CORE_REPLY_ERROR_COUNT ? reply_rows[slot].code : 0;
}

const char *core_disconnect_reason(int code) {
    const code_row_t *r = find(disconnect_rows, CORE_DISCONNECT_COUNT, code);
    return r ? r->text : "";
}

bool core_disconnect_reconnect(int code) {
    const code_row_t *r = find(disconnect_rows, CORE_DISCONNECT_COUNT, code);
    return r ? r->flag : code < 3500;
}
