/* core: the protocol's reply error codes and disconnect (WebSocket close) codes, each as one
 * table (PROTOCOL.md section 1). Every module that answers clients (chat/, llm/) takes its codes
 * from here, so a code, its message, its temporary flag and its metric label are one line. */
#ifndef CORE_CORE_CODES_H
#define CORE_CORE_CODES_H

#include <stdbool.h>

/* XX(code, symbol, message, temporary): error replies. Temporary errors are the server's doing
 * (a limit, a backend away): the client may retry, and they do not count towards closing a
 * client that keeps sending what cannot succeed. Codes 400-1999 are this server's own. */
#define CORE_REPLY_ERROR_MAP(XX)                                                                   \
    XX(100, INTERNAL, "internal error", true)                                                      \
    XX(101, UNAUTHORIZED, "unauthorized", false)                                                   \
    XX(102, UNKNOWN_CHANNEL, "unknown channel", false)                                             \
    XX(103, PERMISSION_DENIED, "permission denied", false)                                         \
    XX(104, METHOD_NOT_FOUND, "method not found", false)                                           \
    XX(105, ALREADY_SUBSCRIBED, "already subscribed", false)                                       \
    XX(106, LIMIT_EXCEEDED, "limit exceeded", false)                                               \
    XX(107, BAD_REQUEST, "bad request", false)                                                     \
    XX(108, NOT_AVAILABLE, "not available", false)                                                 \
    XX(109, TOKEN_EXPIRED, "token expired", false)                                                 \
    XX(110, EXPIRED, "expired", false)                                                             \
    XX(111, TOO_MANY_REQUESTS, "too many requests", true)                                          \
    XX(112, UNRECOVERABLE_POSITION, "unrecoverable position", false)                               \
    XX(429, RATE_LIMITED, "too many requests", true)                                               \
    XX(402, QUOTA_EXCEEDED, "quota exceeded", false)                                               \
    XX(499, CANCELLED, "cancelled", false)                                                         \
    XX(502, UPSTREAM_UNAVAILABLE, "upstream unavailable", true)                                    \
    XX(503, QUEUE_FULL, "queue full", true)                                                        \
    XX(504, QUEUE_TIMEOUT, "queue timeout", true)

/* XX(code, symbol, reason, reconnect): server-side closes. 3000-3499 tell the client to
 * reconnect, 3500-3999 not to. */
#define CORE_DISCONNECT_MAP(XX)                                                                    \
    XX(3001, SHUTDOWN, "shutdown", true)                                                           \
    XX(3004, SERVER_ERROR, "server error", true)                                                   \
    XX(3005, EXPIRED, "connection expired", true)                                                  \
    XX(3006, SUB_EXPIRED, "subscription expired", true)                                            \
    XX(3008, SLOW, "slow", true)                                                                   \
    XX(3009, WRITE_ERROR, "write error", true)                                                     \
    XX(3010, INSUFFICIENT_STATE, "insufficient state", true)                                       \
    XX(3011, FORCE_RECONNECT, "force reconnect", true)                                             \
    XX(3012, NO_PONG, "no pong", true)                                                             \
    XX(3013, TOO_MANY_REQUESTS, "too many requests", true)                                         \
    XX(3500, INVALID_TOKEN, "invalid token", false)                                                \
    XX(3501, BAD_REQUEST, "bad request", false)                                                    \
    XX(3502, STALE, "stale", false)                                                                \
    XX(3503, FORCE_DISCONNECT, "force disconnect", false)                                          \
    XX(3504, CONNECTION_LIMIT, "connection limit", false)                                          \
    XX(3505, CHANNEL_LIMIT, "channel limit", false)                                                \
    XX(3507, PERMISSION_DENIED, "permission denied", false)                                        \
    XX(3509, TOO_MANY_ERRORS, "too many errors", false)

#define CORE__XX_ENUM(code, sym, text, flag) CORE_REPLY_##sym = code,
typedef enum { CORE_REPLY_ERROR_MAP(CORE__XX_ENUM) } core_reply_error_t;
#undef CORE__XX_ENUM
#define CORE__XX_ENUM(code, sym, text, flag) CORE_DISCONNECT_##sym = code,
typedef enum { CORE_DISCONNECT_MAP(CORE__XX_ENUM) } core_disconnect_t;
#undef CORE__XX_ENUM

#define CORE__XX_COUNT(code, sym, text, flag) +1
/* Codes in each table. */
enum {
    CORE_REPLY_ERROR_COUNT = 0 CORE_REPLY_ERROR_MAP(CORE__XX_COUNT),
    CORE_DISCONNECT_COUNT = 0 CORE_DISCONNECT_MAP(CORE__XX_COUNT),
};
#undef CORE__XX_COUNT
/* Metric slots of error replies: one per code of the table, then one for any other code. */
#define CORE_REPLY_ERROR_SLOTS (CORE_REPLY_ERROR_COUNT + 1)

/* The message of an error code ("unknown error" for a code not in the table). */
const char *core_reply_error_message(int code);
/* Whether an error code is temporary (false for a code not in the table). */
bool core_reply_error_temporary(int code);
/* The metric slot of an error code: its row in the table, or CORE_REPLY_ERROR_COUNT for a code
 * not in it. */
int core_reply_error_slot(int code);
/* The code of a slot below CORE_REPLY_ERROR_COUNT, else 0 (the "other" slot). */
int core_reply_error_code(int slot);

/* The reason of a disconnect code ("" for a code not in the table). */
const char *core_disconnect_reason(int code);
/* Whether the client should reconnect after a close with this code: the table's flag, else by
 * range (below 3500). */
bool core_disconnect_reconnect(int code);

#endif
