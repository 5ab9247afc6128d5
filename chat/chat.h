/* chat: the client protocol (PROTOCOL.md section 1), channels and namespaces, subscriptions,
 * recovery, presence, message validation and per-user limits. Transport-agnostic: server/ hands
 * it text frames and gives it a send/close table; the broker interface (cluster/) carries
 * publications. */
#ifndef CHAT_CHAT_H
#define CHAT_CHAT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "auth/auth.h"
#include "cluster/cluster.h"
#include "core/core.h"
#include "core/core_codes.h"
#include "core/core_limit.h"

/* ---- configuration ----------------------------------------------------------------------- */

typedef enum { CHAT_SCHEMA_ANY = 0, CHAT_SCHEMA_CHAT } chat_schema_t;

/* Options of one namespace (PROTOCOL.md section 3). */
typedef struct {
    char *name; /* "" for the default namespace */
    uint32_t history_size;
    uint32_t history_ttl_s;
    bool presence;
    bool join_leave;
    bool allow_subscribe;
    bool allow_publish;
    bool llm;
    uint32_t max_message_bytes;
    chat_schema_t schema;
} chat_ns_t;

/* A publish limit: tokens per second and burst (core's GCRA). */
typedef core_rate_t chat_rate_t;

typedef struct {
    chat_ns_t *namespaces;
    size_t n_namespaces;
    chat_rate_t plan_rate[AUTH_PLAN_COUNT];
    chat_rate_t typing_rate;
    const auth_keyring_t *keys; /* borrowed */
    const char *audience;       /* NULL = not checked */
    const char *issuer;
    int64_t jwt_leeway_s;
    uint32_t ping_interval_s;
    uint32_t pong_timeout_s;
    uint32_t stale_timeout_s;
    uint32_t max_channels_per_conn;
    uint32_t max_conns_per_user;
    uint32_t dedupe_window_s;
    uint32_t max_recover;    /* most publications a recovering subscribe returns */
    uint32_t max_errors;     /* error replies per client within 10 s before close 3509; 0 = off */
    uint32_t presence_ttl_s; /* presence entries expire unless their node refreshes them */
    const char *node_id;
    const char *version;
} chat_config_t;

/* Parses a namespaces JSON object ({"name": {options}}) into an array. Returns 0 or
 * CORE_EINVAL with a message in err (size errlen). */
int chat_namespaces_parse(const json_t *obj, chat_ns_t **out, size_t *n, char *err, size_t errlen);
/* The defaults of docs/RUNTIME.md. */
void chat_namespaces_default(chat_ns_t **out, size_t *n);
void chat_namespaces_free(chat_ns_t *ns, size_t n);
/* The namespace of a channel name (the part before ':', or "" without ':'), or NULL. */
const chat_ns_t *chat_ns_find(const chat_ns_t *ns, size_t n, const char *channel);

/* ---- codec ------------------------------------------------------------------------------- */

typedef enum {
    CHAT_M_PING = 0, /* the empty object: a pong from the client */
    CHAT_M_CONNECT,
    CHAT_M_SUBSCRIBE,
    CHAT_M_UNSUBSCRIBE,
    CHAT_M_PUBLISH,
    CHAT_M_PRESENCE,
    CHAT_M_PRESENCE_STATS,
    CHAT_M_HISTORY,
    CHAT_M_RPC,
    CHAT_M_SEND,
    CHAT_M_REFRESH,
    CHAT_M_SUB_REFRESH,
    CHAT_M_UNKNOWN,
    CHAT_M_COUNT
} chat_method_t;

/* "connect", "subscribe", ... ("ping" for CHAT_M_PING, "unknown"). */
const char *chat_method_name(chat_method_t m);

/* One decoded command. */
typedef struct {
    uint32_t id; /* 0 only for CHAT_M_PING and CHAT_M_SEND */
    chat_method_t method;
    json_t *params; /* borrowed from root; an object, or NULL when absent */
    json_t *root;   /* owned */
} chat_cmd_t;

/* Decodes one command (one line of a frame). Returns 0, or CORE_EPROTO for input that is not a
 * command object (malformed JSON, invalid UTF-8, not an object, bad id, params not an object,
 * several methods). An unknown method decodes as CHAT_M_UNKNOWN with its id. */
int chat_cmd_decode(const char *buf, size_t len, chat_cmd_t *out);
void chat_cmd_clear(chat_cmd_t *cmd);

/* Splits a frame into lines: returns the next non-empty line (line, len) and advances pos;
 * false when done. */
bool chat_frame_next(const char *frame, size_t frame_len, size_t *pos, const char **line,
                     size_t *len);

/* Validates chat message data (message_schema "chat") and returns its normalized JSON text
 * (malloc'd) or NULL with a reason in err. client_msg_id, when present, is copied to msg_id
 * (65 bytes) or msg_id[0] is 0. */
char *chat_message_normalize(const json_t *data, uint32_t max_text_bytes, char *msg_id, char *err,
                             size_t errlen);

/* ---- recovery ----------------------------------------------------------------------------- */

/* Decides whether a history answer for a recovering subscribe recovers every missed
 * publication: status 0, and pubs are exactly offsets since+1 .. top in order. */
bool chat_recovery_complete(int status, const clu_pub_t *pubs, size_t n, uint64_t since,
                            uint64_t top);

/* ---- node and clients -------------------------------------------------------------------- */

typedef struct chat_node chat_node_t;
typedef struct chat_client chat_client_t;

/* What chat needs from the transport of one connection. */
typedef struct {
    /* Queues msg (a complete JSON reply or push, without trailing newline) for the client and
     * takes a reference. Returns 0, or a negative code when the connection's queue overflowed:
     * the transport then closes it with 3008 on its own. */
    int (*send)(void *tctx, core_buf_t *msg);
    /* Closes the connection with a WebSocket close code and reason. chat_client_free follows
     * later, from the transport's close path. */
    void (*close)(void *tctx, int code, const char *reason);
} chat_transport_t;

typedef struct {
    uint64_t connections; /* gauge: connected clients (after connect) */
    uint64_t sessions;    /* gauge: sockets (before and after connect) */
    uint64_t commands[CHAT_M_COUNT];
    uint64_t publications_in;
    uint64_t publications_out;
    uint64_t errors[CORE_REPLY_ERROR_SLOTS]; /* by core_reply_error_slot() of the code */
    uint64_t rate_limited;
    uint64_t rate_limit_fallbacks; /* limits taken locally because the shared limiter failed */
    uint64_t dedupe_hits;
    uint64_t state_lost; /* channels whose clients were closed with 3010 */
    uint64_t channels;   /* gauge */
} chat_stats_t;

/* Creates a node. The broker is attached with chat_node_set_broker before any client. */
chat_node_t *chat_node_new(uv_loop_t *loop, const chat_config_t *cfg);
/* The event table and userdata to create the broker with. */
const clu_events_t *chat_node_broker_events(void);
void chat_node_set_broker(chat_node_t *n, clu_broker_t *b);
/* Closes every client with code/reason (drain). */
void chat_node_close_all(chat_node_t *n, int code, const char *reason);
/* Stops the node's timers; done runs when they are closed. Clients must be gone. */
void chat_node_close(chat_node_t *n, void (*done)(void *), void *ud);
void chat_node_stats(const chat_node_t *n, chat_stats_t *out);
/* A new socket. remote is the peer address for logs. */
chat_client_t *chat_client_new(chat_node_t *n, const chat_transport_t *t, void *tctx,
                               const char *remote);
/* One complete text message from the socket. Replies and closes go through the transport. */
void chat_client_on_frame(chat_client_t *c, const char *data, size_t len);
/* The socket is gone: drops subscriptions, presence and the client. */
void chat_client_free(chat_client_t *c);

#endif
