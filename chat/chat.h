/* chat: the client protocol (PROTOCOL.md section 1), channels and namespaces, subscriptions,
 * recovery, presence, message validation and per-user limits. Transport-agnostic: server/ hands
 * it WebSocket messages and gives it a send/close table, and frames its output by the client's
 * codec (chat_client_framing); the broker interface (cluster/) carries publications. This header
 * is the contract server/ uses; chat_int.h holds the internals. */
#ifndef CHAT_CHAT_H
#define CHAT_CHAT_H

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
    char
        *llm_system_prompt; /* the assistant's system prompt in this namespace; NULL = the node's */
    uint32_t max_message_bytes;
    chat_schema_t schema;
    /* Durable history kept this many days, by the publisher's plan (0 = forever); publications
     * without a plan (server API) follow retention_days. */
    uint32_t retention_days;
    uint32_t retention_plan_days[AUTH_PLAN_COUNT];
} chat_ns_t;

/* A publish limit: tokens per second and burst (core's GCRA). */
typedef core_rate_t chat_rate_t;

typedef struct {
    chat_ns_t *namespaces;
    size_t n_namespaces;
    chat_rate_t plan_rate[AUTH_PLAN_COUNT];
    chat_rate_t typing_rate;
    /* subscribe and unsubscribe commands per connection (rate <= 0: unlimited). Past it they
     * are refused with 111; max_errors of them within 10 s close the client with 3013. */
    chat_rate_t command_rate;
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

struct json_t; /* jansson's, for configuration only: chat.h does not include jansson */
/* Parses a namespaces JSON object ({"name": {options}}) into an array. Returns 0 or
 * CORE_EINVAL with a message in err (size errlen). */
int chat_namespaces_parse(const struct json_t *obj, chat_ns_t **out, size_t *n, char *err,
                          size_t errlen);
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

/* ---- the server API (PROTOCOL.md section 4) ---------------------------------------------- */

/* The answer of a server API call: {"result":...} or {"error":{"code","message"}} (borrowed
 * for the call). */
typedef void (*chat_api_done_fn)(void *ud, const char *reply, size_t len);

typedef struct chat_node chat_node_t;

/* Whether method is one of the server API's (publish, broadcast, history, presence,
 * presence_stats, channels, disconnect, unsubscribe, batch, subscribe, refresh,
 * history_remove). */
bool chat_api_has_method(const char *method);
/* The server API's methods by index (0 .. CHAT_API_METHOD_COUNT-1), for metrics. */
#define CHAT_API_METHOD_COUNT 12
const char *chat_api_method_name(int i);
/* Runs method with the JSON params in body (empty: none). done is called exactly once, maybe
 * before this returns. */
void chat_api_call(chat_node_t *n, const char *method, const char *body, size_t len,
                   chat_api_done_fn done, void *ud);
/* Runs newline-separated {"method","params"} commands in order and answers with one line per
 * command (the batch form of Centrifugo before v5, which server API clients still send). */
void chat_api_lines(chat_node_t *n, const char *body, size_t len, chat_api_done_fn done, void *ud);

/* ---- node and clients -------------------------------------------------------------------- */

typedef struct chat_client chat_client_t;

/* How a client's wire format frames its messages: server/ writes queued messages as one
 * WebSocket message of this opcode, joined by these rules. */
typedef struct {
    const char *name;  /* "json" */
    uint8_t ws_opcode; /* 1 text, 2 binary */
    /* Bytes that msg of len bytes adds to a frame (first: nothing before it in the frame). */
    size_t (*join_size)(size_t len, bool first);
    /* Appends msg to a frame being built. */
    void (*join_append)(core_str_t *frame, const char *msg, size_t len, bool first);
} chat_framing_t;

/* What chat needs from the transport of one connection. */
typedef struct {
    /* Queues msg (one complete reply or push in the client's codec) for the client and
     * takes a reference. Returns 0, or a negative code when the connection's queue overflowed:
     * the transport then closes it with 3008 on its own. */
    int (*send)(void *tctx, core_buf_t *msg);
    /* Closes the connection with a WebSocket close code and reason. chat_client_free follows
     * later, from the transport's close path. */
    void (*close)(void *tctx, int code, const char *reason);
    /* Bytes queued for the connection and not yet taken by its socket. */
    size_t (*queued)(void *tctx);
    /* Writes the peer's address, for logs (NULL: none known). Asked for when a log line needs
     * it rather than kept per client. */
    void (*peer)(void *tctx, char *buf, size_t len);
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
    uint64_t state_lost;                         /* channels whose clients were closed with 3010 */
    uint64_t channels;                           /* gauge */
    uint64_t api_calls[CHAT_API_METHOD_COUNT];   /* server API calls (batch members too) */
    uint64_t api_errors[CORE_REPLY_ERROR_SLOTS]; /* server API error answers by code */
} chat_stats_t;

/* ---- RPC methods ------------------------------------------------------------------------- */

/* One `rpc` command handed to the handler of its method. It stays valid until it is answered,
 * exactly once, with chat_rpc_reply or chat_rpc_error, at once or later from the loop. The call
 * outlives its client: answering after the client went away (or stopped being connected) is
 * safe and the answer is dropped; client_gone tells the handler when that happens. */
typedef struct chat_rpc_call chat_rpc_call_t;

typedef struct {
    const char *method; /* e.g. "llm.ask"; copied at registration */
    void (*call)(void *ud, chat_rpc_call_t *call);
    /* A connected client went away (optional): a handler drops what it does for it. */
    void (*client_gone)(void *ud, const char *client_id, const char *user);
    /* Each call first takes a token of the user's publish limit (the same bucket as chat
     * messages, shared across the cluster); a refusal is answered 429 without calling. */
    bool publish_limited;
} chat_rpc_handler_t;

/* Routes `rpc` commands of h->method to h (with ud). Returns 0, CORE_EEXIST for a method
 * already registered, CORE_ELIMIT past 16 methods. chat registers "typing" itself. */
int chat_node_set_rpc(chat_node_t *n, const chat_rpc_handler_t *h, void *ud);

/* What a handler may read of a call (strings valid until the answer). */
uint32_t chat_rpc_id(const chat_rpc_call_t *call);
const char *chat_rpc_client(const chat_rpc_call_t *call);
const char *chat_rpc_user(const chat_rpc_call_t *call);
auth_plan_t chat_rpc_plan(const chat_rpc_call_t *call);
/* The raw data bytes of the command (JSON text with the JSON codec), NULL when absent. */
const char *chat_rpc_data(const chat_rpc_call_t *call, size_t *len);
/* Whether the calling client (still connected) is subscribed to channel, and active there. */
bool chat_rpc_subscribed(const chat_rpc_call_t *call, const char *channel);
/* The options of channel's namespace, or NULL. */
const chat_ns_t *chat_rpc_namespace(const chat_rpc_call_t *call, const char *channel);
/* Answers with result (a JSON value, sent as {"data":result}) and releases the call. */
void chat_rpc_reply(chat_rpc_call_t *call, const char *result, size_t len);
/* Answers with an error code of CORE_REPLY_ERROR_MAP (message NULL: the table's; the temporary
 * flag comes from the table) and releases the call. */
void chat_rpc_error(chat_rpc_call_t *call, int code, const char *message);

/* Creates a node. The broker is attached with chat_node_set_broker before any client. */
chat_node_t *chat_node_new(uv_loop_t *loop, const chat_config_t *cfg);
/* The event table and userdata to create the broker with. */
const clu_events_t *chat_node_broker_events(void);
void chat_node_set_broker(chat_node_t *n, clu_broker_t *b);
/* The per-user connection cap, changed at run time (chatctl limits): it applies to connects
 * from now on; connections over a lowered cap stay. */
void chat_node_set_max_conns_per_user(chat_node_t *n, uint32_t max);
/* The live nodes of the cluster (this one included), from the registry: a server API call that
 * asks every node (channels) waits for that many answers, or its timeout. */
void chat_node_set_cluster_size(chat_node_t *n, uint32_t nodes);
uint32_t chat_node_max_conns_per_user(const chat_node_t *n);
/* Closes every client with code/reason (drain). */
void chat_node_close_all(chat_node_t *n, int code, const char *reason);
/* Closes up to max clients that are not closing yet, oldest first; returns how many. */
size_t chat_node_close_some(chat_node_t *n, size_t max, int code, const char *reason);
/* Stops the node's timers; done runs when they are closed. Clients must be gone, and every RPC
 * call answered. */
void chat_node_close(chat_node_t *n, void (*done)(void *), void *ud);
void chat_node_stats(const chat_node_t *n, chat_stats_t *out);
/* The most bytes queued for any local subscriber of channel (0 when it has none here): how far
 * the room's slowest reader on this node is behind. */
size_t chat_node_room_backlog(const chat_node_t *n, const char *channel);
/* A new socket. */
chat_client_t *chat_client_new(chat_node_t *n, const chat_transport_t *t, void *tctx);
/* One complete WebSocket message from the socket (binary: opcode 2). Replies and closes go
 * through the transport; a message of the wrong kind for the client's codec closes it with
 * 3501. */
void chat_client_on_frame(chat_client_t *c, bool binary, const char *data, size_t len);
/* The client protocol's wire format of the connection, before its first frame: "json" (also
 * NULL) or "protobuf" (Centrifugo's cf_protocol URL parameter). CORE_EINVAL for another. */
int chat_client_set_protocol(chat_client_t *c, const char *name);
/* The framing of the client's codec. */
const chat_framing_t *chat_client_framing(const chat_client_t *c);
/* The socket is gone: drops subscriptions, presence and the client. */
void chat_client_free(chat_client_t *c);

#endif
