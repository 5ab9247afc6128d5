/* chat: structures and functions shared by the module's source files. Not a contract: server/
 * uses chat.h only; unit tests may include this header to drive the internals. */
#ifndef CHAT_CHAT_INT_H
#define CHAT_CHAT_INT_H

#include <jansson.h>

#include "chat/chat.h"
#include "core/core_codes.h"
#include "core/core_limit.h"

#define CHAT_DEDUPE_SLOTS 64
#define CHAT_CLIENT_ID_LEN 36
/* Most bytes of commands held while a connect waits for the broker. */
#define CHAT_HELD_MAX 65536
#define CHAT_MAX_CHANNEL_BYTES 255
/* How long a leave event waits after an unsubscribe: a subscribe of the same client to the same
 * channel within it cancels the leave and sends no join, so resubscribing in a loop does not
 * flood the channel's members. Leaves go out from the once-a-second sweep, so 1-2 s late. */
#define CHAT_LEAVE_DELAY_MS 1000
/* Leaves one client may have waiting; past it the oldest goes out at once. */
#define CHAT_LEAVES_WAITING_MAX 64
/* Publications one subscription buffers while its subscribe waits for the broker; past it the
 * client is closed with 3010 and resynchronises. */
#define CHAT_SUB_PENDING_MAX 4096

typedef struct {
    uint64_t key; /* hash of channel and client_msg_id */
    uint64_t at_ms;
} chat_dedupe_slot_t;

/* Per-user state on this node: connection count, limiters, recent client_msg_ids. */
typedef struct {
    char *name;
    uint32_t nconns;
    core_gcra_t pub_gcra;
    core_gcra_t typing_gcra;
    chat_dedupe_slot_t *dedupe; /* CHAT_DEDUPE_SLOTS, allocated on first client_msg_id */
    uint32_t dedupe_next;
} chat_user_t;

typedef struct chat_sub chat_sub_t;
typedef struct chat_codec chat_codec_t;

/* The client protocol's wire formats; a connection speaks one (chosen when it opens). */
typedef enum { CHAT_CODEC_JSON = 0, CHAT_CODEC_PROTOBUF, CHAT_CODEC_COUNT } chat_codec_index_t;

/* A publication on its way to a channel's subscribers: kept while any of them waits for it,
 * and serialised once per wire format when the first subscriber speaking that format needs it,
 * so a room without Protobuf subscribers never pays for the Protobuf form. */
typedef struct {
    uint32_t refs;
    uint64_t born_us; /* fan-out latency starts here, whatever the format */
    const char *channel;
    clu_pub_t pub; /* data, info and channel live in the same allocation */
    core_buf_t *enc[CHAT_CODEC_COUNT];
} chat_out_t;

typedef struct {
    chat_out_t *out;
    uint64_t offset;
} chat_pending_pub_t;

/* A channel with local subscribers. The node is subscribed in the broker while it exists. */
typedef struct {
    char *name;
    const chat_ns_t *ns;
    chat_sub_t **subs;
    uint32_t n, cap;
    /* Delivery order: stored publications go out strictly by offset. `last` is the newest one
     * delivered here (0 = none yet); newer ones that arrive while a gap is being filled from
     * history wait in `held`. */
    uint64_t last;
    char epoch[CLU_EPOCH_MAX];
    /* `last` and `epoch` are known: set by the first subscribe answer. Until then publications
     * are held, because the node cannot tell a gap from the start of its feed. */
    bool positioned;
    bool resync_wanted; /* a fill was asked for while one could not start (unpositioned, or
                         * one in flight): it runs when it can */
    bool stalled;       /* a fill failed for a passing reason; the sweep retries it */
    bool filling;
    chat_pending_pub_t *held;
    uint32_t nheld, cap_held;
} chat_channel_t;

enum { SUB_PENDING = 0, SUB_ACTIVE };

/* One client's subscription to one channel. */
struct chat_sub {
    chat_client_t *c;
    chat_channel_t *ch;
    chat_sub_t *next; /* in the client's list */
    uint32_t idx;     /* position in ch->subs */
    uint8_t state;
    bool join_leave;
    bool server_side;
    bool presence_added;
    uint64_t gen;
    char *info; /* ClientInfo JSON of this subscriber, chan_info included */
    size_t info_len;
    int64_t exp; /* subscription token expiry, Unix seconds; 0 = none */
    /* Publications up to this offset reached the client in its subscribe answer (recovered)
     * or before it subscribed: never sent again, whatever the node's feed delivers late. */
    uint64_t floor;
    /* Publications that arrived while the subscribe was waiting for its history answer. */
    chat_pending_pub_t *pending;
    uint32_t npending, cap_pending;
};

typedef enum { CL_NEW = 0, CL_CONNECTING, CL_CONNECTED, CL_CLOSING } chat_client_state_t;

/* A leave event held back after an unsubscribe (CHAT_LEAVE_DELAY_MS). */
typedef struct chat_leave {
    struct chat_leave *next;
    char *channel;
    char *info; /* the ClientInfo of the subscription that ended */
    size_t info_len;
    uint64_t due_ms;
} chat_leave_t;

struct chat_client {
    /* Fields ordered to leave no padding: one of these per connection. */
    chat_node_t *node;
    const chat_codec_t *codec;
    const chat_transport_t *t;
    void *tctx;
    chat_user_t *user;
    char *conn_info; /* JSON text of the token's info claim, or NULL */
    int64_t exp;
    uint64_t created_ms;
    uint64_t next_ping_ms;
    uint64_t pong_deadline_ms;
    uint64_t presence_due_ms; /* next refresh of this client's presence entries */
    uint64_t window_ms;       /* start of the current error window (chat__error_window) */
    core_gcra_t cmd_gcra;
    chat_leave_t *leaves; /* held-back leave events, oldest first */
    core_str_t held;      /* commands that arrived behind a pending connect or subscribe */
    chat_sub_t *subs;
    core_list_t link;
    chat_client_state_t state;
    auth_plan_t plan;
    uint32_t errors;  /* error replies in the current window */
    uint32_t limited; /* commands refused by command_rate in the current window */
    uint32_t nleaves;
    uint32_t blocked; /* subscribe commands waiting for the broker; later commands wait */
    uint32_t nsubs;
    uint32_t limits_waiting; /* publishes waiting for the shared rate limiter */
    char id[CHAT_CLIENT_ID_LEN + 1];
    bool counted; /* included in the connections gauge */
    bool has_exp;
};

/* A registered RPC method. */
#define CHAT_RPC_MAX_HANDLERS 16

typedef struct {
    char *method;
    chat_rpc_handler_t h;
    void *ud;
} chat_rpc_entry_t;

struct chat_node {
    uv_loop_t *loop;
    chat_config_t cfg;
    clu_broker_t *broker;
    core_map_t *clients;  /* client id -> chat_client_t */
    core_map_t *users;    /* user id -> chat_user_t */
    core_map_t *channels; /* channel -> chat_channel_t */
    core_list_t all;      /* every chat_client_t */
    uint32_t nall;
    uv_timer_t sweep;
    uint64_t sweep_ticks;
    core_list_t *sweep_at;    /* the next client the sweep visits (&all: the first) */
    core_map_iter_t users_at; /* where the sweep of idle users goes on */
    uint64_t rng;             /* jitter of due times */
    uint64_t next_gen;
    uint32_t stalled;                   /* channels with a fill to retry */
    core_buf_t *ping[CHAT_CODEC_COUNT]; /* the shared ping of each wire format */
    chat_stats_t st;
    chat_rpc_entry_t rpc[CHAT_RPC_MAX_HANDLERS];
    uint32_t nrpc;
    uint64_t rpc_calls;  /* calls handed to handlers and not answered yet */
    core_map_t *surveys; /* survey id -> chat_survey_t: server API calls asking every node */
    uint64_t survey_seq;
    uint32_t cluster_nodes; /* live nodes in the registry (the answers a survey waits for) */
    void (*close_done)(void *);
    void *close_ud;
};

/* ---- typed commands and the codec ---------------------------------------------------------- */

/* Strings of a request are NUL-terminated and borrowed from the decoded frame (valid until
 * req_clear); NULL when absent. data fields are raw payload bytes (JSON text with the JSON
 * codec), NULL when absent. */
typedef struct {
    const char *channel;
    bool recover;
    uint64_t offset;
    const char *epoch;
} chat_recover_req_t;

typedef struct {
    const char *token;
    chat_recover_req_t *subs; /* recovery positions of server-side subscriptions */
    size_t nsubs;
} chat_connect_req_t;

typedef struct {
    const char *channel;
    const char *token;
    bool recover;
    uint64_t offset;
    const char *epoch;
    bool join_leave;
} chat_subscribe_req_t;

typedef struct {
    const char *channel;
    const char *data; /* the data as text, or NULL when doc has it */
    size_t data_len;
    /* The data as the JSON codec already parsed it (NULL from other codecs): the chat schema
     * checks it as it is instead of parsing its text a second time. */
    const json_t *doc;
} chat_publish_req_t;

typedef struct {
    const char *channel;
    int32_t limit; /* < 0: up to the broker's cap */
    bool reverse;
    bool has_since;
    uint64_t since_offset;
    const char *since_epoch;
} chat_history_req_t;

typedef struct {
    const char *method;
    const char *data;
    size_t data_len;
} chat_rpc_req_t;

typedef struct {
    const char *channel; /* unsubscribe, presence, presence_stats, sub_refresh */
    const char *token;   /* refresh, sub_refresh */
} chat_simple_req_t;

/* One decoded command. */
typedef struct {
    uint32_t id; /* 0 only for CHAT_M_PING and CHAT_M_SEND */
    chat_method_t method;
    /* Parameters of a valid command that have the wrong type (a history limit that is not an
     * integer): the command is answered with error 107 and this message, in the order of the
     * command's own checks. */
    const char *invalid;
    union {
        chat_connect_req_t connect;
        chat_subscribe_req_t subscribe;
        chat_publish_req_t publish;
        chat_history_req_t history;
        chat_rpc_req_t rpc;
        chat_simple_req_t simple;
    };
    void *priv; /* the codec's own (the decoded document, copies) */
} chat_req_t;

/* ---- typed results and pushes ---- */

/* What encoders get: strings are NUL-terminated and borrowed for the call. A ClientInfo travels
 * as the record chat__client_info_record writes (the form the broker stores and carries
 * between nodes, whatever codec the clients speak); publications carry it in clu_pub_t.info. A
 * codec writes the record as its own ClientInfo. */

/* SubscribeResult; also each server-side subscription of a ConnectResult. */
typedef struct {
    bool recoverable; /* the namespace keeps history */
    bool positioned;  /* the channel's position follows: epoch and offset */
    const char *epoch;
    uint64_t offset;
    bool was_recovering; /* the subscribe asked to recover */
    bool recovered;      /* and every missed publication is in pubs */
    const clu_pub_t *pubs;
    size_t npubs;
    bool expires; /* the subscription token expires in ttl seconds */
    int64_t ttl;
} chat_subscribe_result_t;

/* One server-side subscription of a ConnectResult. */
typedef struct {
    const char *channel;
    chat_subscribe_result_t result;
} chat_connect_sub_t;

typedef struct {
    const char *client;
    const char *version;
    bool expires; /* the connection token expires in ttl seconds */
    int64_t ttl;
    uint32_t ping; /* seconds between the server's pings */
    bool pong;     /* the client answers pings */
    const char *node;
    const chat_connect_sub_t *subs; /* in the order their answers came */
    size_t nsubs;
} chat_connect_result_t;

typedef struct {
    const char *client;
    const char *version;
    bool expires;
    int64_t ttl;
} chat_refresh_result_t;

typedef struct {
    bool expires;
    int64_t ttl;
} chat_sub_refresh_result_t;

/* The channel's members, one per client (info: its ClientInfo record). */
typedef struct {
    const clu_presence_t *clients;
    size_t n;
} chat_presence_result_t;

typedef struct {
    uint32_t num_clients;
    uint32_t num_users;
} chat_presence_stats_result_t;

typedef struct {
    const clu_pub_t *pubs;
    size_t npubs;
    const char *epoch;
    uint64_t offset;
} chat_history_result_t;

/* data: the handler's payload, raw bytes in the client's codec (JSON text with the JSON
 * codec). */
typedef struct {
    const char *data;
    size_t data_len;
} chat_rpc_result_t;

/* A reply to command id; method picks the result. publish and unsubscribe have empty results. */
typedef struct {
    uint32_t id;
    chat_method_t method;
    union {
        chat_connect_result_t connect;
        chat_refresh_result_t refresh;
        chat_subscribe_result_t subscribe;
        chat_sub_refresh_result_t sub_refresh;
        chat_presence_result_t presence;
        chat_presence_stats_result_t presence_stats;
        chat_history_result_t history;
        chat_rpc_result_t rpc;
    };
} chat_reply_t;

/* The asynchronous messages the server sends into a channel's subscription. */
typedef enum {
    CHAT_PUSH_PUB = 0,
    CHAT_PUSH_JOIN,
    CHAT_PUSH_LEAVE,
    CHAT_PUSH_UNSUBSCRIBE,
    CHAT_PUSH_SUBSCRIBE /* a server-side subscription made after connect (the server API) */
} chat_push_kind_t;

/* The code of an unsubscribe push from the server API: below 2500, so the SDK does not
 * resubscribe. */
#define CHAT_UNSUB_SERVER 2000

typedef struct {
    const char *channel;
    chat_push_kind_t kind;
    union {
        const clu_pub_t *pub; /* CHAT_PUSH_PUB */
        struct {              /* CHAT_PUSH_JOIN, CHAT_PUSH_LEAVE */
            const char *info; /* the subscriber's ClientInfo record */
            size_t info_len;
        } member;
        struct { /* CHAT_PUSH_UNSUBSCRIBE */
            int code;
            const char *reason;
        } unsub;
        const chat_subscribe_result_t *sub; /* CHAT_PUSH_SUBSCRIBE */
    };
} chat_push_t;

/* A wire format of the client protocol: commands in as typed requests, replies and pushes out
 * from typed results, so every codec writes the same answers its own way. The framing part is
 * what server/ sees (chat.h). */
struct chat_codec {
    chat_framing_t framing;
    chat_codec_index_t index;
    /* Decodes the next command of frame from *pos (advanced). Returns 1 with *req filled (release
     * with req_clear), 0 when the frame has no more, CORE_EPROTO for input that is not a
     * command. */
    int (*next)(const char *frame, size_t len, size_t *pos, chat_req_t *req);
    void (*req_clear)(chat_req_t *req);
    /* Encoders append one complete message to out. */
    void (*reply)(core_str_t *out, const chat_reply_t *r);
    void (*error)(core_str_t *out, uint32_t id, int code, const char *message, bool temporary);
    void (*push)(core_str_t *out, const chat_push_t *p);
    /* The server's ping (the client answers with a pong command). */
    void (*ping)(core_str_t *out);
};

extern const chat_codec_t chat__codec_json;
extern const chat_codec_t chat__codec_pb;

/* Formats that are JSON whatever the client's codec (chat_codec_json.c writes them too). */

/* The parts of a ClientInfo: conn_info and chan_info are the JSON text of a token's info claim,
 * or NULL. */
typedef struct {
    const char *user;
    const char *client;
    const char *conn_info;
    const char *chan_info;
} chat_client_info_t;

/* The ClientInfo record: the JSON object {"user","client","conn_info","chan_info"} the broker
 * stores (presence), carries between nodes (join, leave) and keeps in publications. Returns it
 * malloc'd, its length in *len. */
char *chat__client_info_record(const chat_client_info_t *ci, size_t *len);
/* Appends the data of a typing notice, {"type":"typing","user":...}, published into a room's
 * typing channel. */
void chat__typing_data(core_str_t *out, const char *user);

/* JSON-level helpers of the JSON codec, for its tests and fuzz drivers. */
typedef struct {
    uint32_t id;
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
 * (malloc'd), stamped with "ts": ts_ms (the server's wall clock, Unix milliseconds), or NULL with
 * a reason in err. client_msg_id, when present, is copied to msg_id (65 bytes) or msg_id[0] is
 * 0. */
char *chat_message_normalize(const json_t *data, uint32_t max_text_bytes, int64_t ts_ms,
                             char *msg_id, char *err, size_t errlen);

/* ---- recovery ---- */

/* Decides whether a history answer for a recovering subscribe recovers every missed
 * publication: status 0, and pubs are exactly offsets since+1 .. top in order. */
bool chat_recovery_complete(int status, const clu_pub_t *pubs, size_t n, uint64_t since,
                            uint64_t top);

/* ---- operations waiting for the broker ---------------------------------------------------- */

/* What every per-command operation that waits for the broker remembers of its command. The
 * client is named by id, not pointer: it may be gone when the answer comes. */
typedef struct {
    chat_node_t *node;
    char client[CHAT_CLIENT_ID_LEN + 1];
    uint32_t cmd_id;
} chat_op_t;

void chat__op_init(chat_op_t *op, chat_client_t *c, uint32_t cmd_id);
/* The op's client when it is still connected, else NULL. */
chat_client_t *chat__op_client(const chat_op_t *op);

/* What waits for a subscription's history answer: a subscribe command (answered with a reply),
 * a connect (its server-side channels), or the server API (answered with a subscribe push). */
typedef enum { SUBOP_COMMAND, SUBOP_CONNECT, SUBOP_SERVER } subop_kind_t;

typedef struct connect_op connect_op_t;

/* One subscription waiting for its history answer: a subscribe command, or one server-side
 * subscription of a connect. */
typedef struct {
    chat_op_t base;
    char *channel;
    uint64_t gen;
    subop_kind_t kind;
    bool recovering;
    uint64_t since;
    int64_t sub_exp; /* subscription token expiry for the answer, 0 = none */
    connect_op_t *conn;
    bool later; /* answered by the broker, after chat__sub_start returned */
} subop_t;

/* ---- chat_node.c ---- */

/* One tick of the sweep, at the given clocks: visits the next slice of clients (a round of
 * ticks visits each once) and of idle users. Called by the node's timer; tests call it with
 * their own clocks. */
void chat__sweep_step(chat_node_t *n, uint64_t now, int64_t wall);
/* A jittered first due time in (now + period/2, now + period]. */
uint64_t chat__first_due(chat_node_t *n, uint64_t now, uint64_t period_ms);
/* How often a client refreshes its presence entries. */
uint64_t chat__presence_refresh_ms(const chat_node_t *n);
/* Starts a new error window for the client when the current one is over; true if it did. */
bool chat__error_window(chat_client_t *c, uint64_t now);

/* ---- chat_client.c ---- */

void chat__send_str(chat_client_t *c, core_str_t *s);
/* The peer's address from the transport, for logs: buf, "" when unknown. */
const char *chat__client_peer(const chat_client_t *c, char *buf, size_t len);
/* Closes the client with a code of CORE_DISCONNECT_MAP and its reason. */
void chat__client_close(chat_client_t *c, int code);
/* The same with another reason (a drain's own words). */
void chat__client_close_reason(chat_client_t *c, int code, const char *reason);
/* Replies with an error; message NULL takes the table's message. Counts it, and closes a client
 * that collected too many errors that are not temporary. */
void chat__reply_error(chat_client_t *c, uint32_t id, int code, const char *message);
/* Answers a command whose broker call failed with status: error 100 (temporary), saying
 * "broker unavailable" when the broker cannot be reached. */
void chat__reply_broker_error(chat_client_t *c, uint32_t id, int status);
/* Sends the reply r in the client's codec. */
void chat__reply(chat_client_t *c, const chat_reply_t *r);
/* Sends the empty result of command id (publish, unsubscribe). */
void chat__reply_empty(chat_client_t *c, uint32_t id, chat_method_t m);
chat_client_t *chat__client_lookup(chat_node_t *n, const char *id);

static inline const char *chat__json_str(const json_t *obj, const char *key) {
    return json_string_value(json_object_get(obj, key));
}
/* The commands of a frame (or of held bytes, which hold whole commands). */
void chat__client_on_data(chat_client_t *c, const char *data, size_t len);
/* Runs the held commands once nothing blocks them (connected, no subscribe waiting). */
void chat__client_release_held(chat_client_t *c);
/* A subscribe command that blocked the client's commands was answered. */
void chat__client_unblock(chat_client_t *c);

/* ---- chat_user.c ---- */

chat_user_t *chat__user_get(chat_node_t *n, const char *name);
void chat__user_free(chat_user_t *u);
/* Frees a user with no connection once its limiter state has drained. */
void chat__user_maybe_free(chat_node_t *n, chat_user_t *u, double now_ms);
uint64_t chat__dedupe_key(const char *channel, const char *msg_id);
bool chat__dedupe_seen(chat_node_t *n, chat_user_t *u, uint64_t key, uint64_t now);
void chat__dedupe_remember(chat_user_t *u, uint64_t key, uint64_t now);
void chat__dedupe_forget(chat_user_t *u, uint64_t key);

/* ---- chat_channel.c ---- */

/* The channel, created (and subscribed in the broker) on first use. */
chat_channel_t *chat__channel_get(chat_node_t *n, const char *name, const chat_ns_t *ns);
void chat__channel_add(chat_channel_t *ch, chat_sub_t *s);
/* Takes s out of its channel; the channel goes (unsubscribed) after its last subscriber. */
void chat__channel_remove(chat_node_t *n, chat_sub_t *s);
clu_chan_opts_t chat__chan_opts(const chat_node_t *n, const chat_ns_t *ns);
/* Delivers held publications that continue the sequence, then fills a remaining gap. */
void chat__channel_release_held(chat_node_t *n, chat_channel_t *ch);
/* Reads what follows `last` from history (or marks the fill wanted when one cannot start). */
void chat__channel_fill(chat_node_t *n, chat_channel_t *ch);
/* Queues b to every active subscriber (above its floor) and buffers it for pending ones. */
void chat__channel_fanout(chat_node_t *n, chat_channel_t *ch, chat_out_t *o, uint64_t offset);
void chat__channel_drop_held(chat_channel_t *ch);
/* A copy of pub on its way to channel's subscribers (refcount 1). */
chat_out_t *chat__out_new(const char *channel, const clu_pub_t *pub);
chat_out_t *chat__out_ref(chat_out_t *o);
void chat__out_unref(chat_out_t *o);
/* The publication's push in codec's format, serialised on first use (borrowed from o). */
core_buf_t *chat__out_buf(chat_out_t *o, const chat_codec_t *codec);
/* Appends a publication as the JSON protocol writes it: {"data","offset","info"}. */
void chat__json_append_pub(core_str_t *s, const clu_pub_t *p);

/* ---- chat_api.c ---- */

/* The channel that carries the server API's acts on users (disconnect, unsubscribe) to every
 * node. Its first byte is a control character, which no client channel name may hold. */
#define CHAT_CONTROL_CHANNEL "\x01chat.control"
/* Ends the surveys still waiting (the node closes): they answer with what they have. */
void chat__surveys_close(chat_node_t *n);
/* Applies an act of the control channel to this node's clients. */
void chat__control_apply(chat_node_t *n, const clu_pub_t *pub);

/* ---- chat_sub.c ---- */

chat_sub_t *chat__client_find_sub(chat_client_t *c, const char *channel);
/* The subscription when its client is alive and it is the same generation, else NULL. */
chat_sub_t *chat__sub_lookup(chat_node_t *n, const char *client, const char *channel, uint64_t gen);
/* The client's ClientInfo record with chan_info (NULL: none), malloc'd. */
char *chat__client_info(const chat_client_t *c, const char *chan_info, size_t *len);
chat_sub_t *chat__sub_new(chat_client_t *c, const char *channel, const chat_ns_t *ns,
                          const char *chan_info);
/* Removes the subscription: presence, leave event, channel membership. */
void chat__sub_remove(chat_sub_t *s);
/* The same for an unsubscribe command: the leave event is held back (CHAT_LEAVE_DELAY_MS). */
void chat__sub_unsubscribe(chat_sub_t *s);
/* Sends the client's held-back leave events that are due at now (all of them with all). */
void chat__leaves_flush(chat_client_t *c, uint64_t now, bool all);
/* Makes a subscription live: buffered publications newer than the answer go out in order,
 * then presence and the join event. */
void chat__sub_activate(chat_sub_t *s, uint64_t top, const char *epoch);
/* Asks the broker for the channel position or the publications to recover; op is answered
 * through chat__subop_done: at once when the namespace keeps no history or the broker refused
 * the call (returns false), else from the loop once the broker answers (returns true). */
bool chat__sub_start(chat_sub_t *s, subop_t *op, bool recover, uint64_t offset, const char *epoch);
void chat__subop_done(int status, const clu_pub_t *pubs, size_t n, uint64_t top, const char *epoch,
                      void *ud);
/* Why a channel name cannot be used (an error 107 message: missing, over 255 bytes, control
 * characters), or NULL. */
const char *chat__channel_problem(const char *ch);

/* ---- chat_connect.c ---- */

/* Whether s (NUL-terminated, valid UTF-8) holds a control character: C0, DEL or C1. */
bool chat__has_control(const char *s);

/* One server-side subscription of a connect got its answer: res is its SubscribeResult (copied;
 * borrowed for the call), or NULL when it failed (left out of the connect answer). later: the
 * answer came from the broker after the connect started it (one of the connect's pending
 * answers), not inline. */
void chat__connect_sub_done(connect_op_t *co, const char *channel,
                            const chat_subscribe_result_t *res, uint64_t top, const char *epoch,
                            bool later);

/* ---- chat_publish.c ---- */

typedef enum { LIMIT_PUB, LIMIT_TYPING } chat_limit_kind_t;

/* Takes one token of the user's limit of `kind` (this node's bucket first, then the cluster's
 * when the broker shares limits) and runs done(ud, true) once it passed. A refusal answers
 * command cmd_id with 429 and its wait, and runs done(ud, false); so does a client gone
 * meanwhile (without an answer). done may run before this returns. */
void chat__limit_take(chat_client_t *c, uint32_t cmd_id, chat_limit_kind_t kind,
                      void (*done)(void *ud, bool allowed), void *ud);

/* Publishes data (JSON text) into channel once the user's limit of `kind` allows it (locally,
 * and across the cluster when the broker shares limits), then answers command cmd_id of
 * `method` (publish: its empty result, rpc: data {}) or refuses it with 429. */
void chat__gated_publish(chat_client_t *c, uint32_t cmd_id, chat_method_t method,
                         chat_limit_kind_t kind, const char *channel, const chat_ns_t *ns,
                         const char *data, size_t len, uint64_t dedupe);

/* ---- chat_rpc.c ---- */

/* Registers the handlers chat provides itself (typing). */
void chat__rpc_init(chat_node_t *n);
void chat__rpc_free(chat_node_t *n);
/* Tells every handler that a connected client went away. */
void chat__rpc_client_gone(chat_client_t *c);

/* ---- command handlers (one file per concern) ---- */

void chat__handle_connect(chat_client_t *c, const chat_req_t *cmd);
void chat__handle_refresh(chat_client_t *c, const chat_req_t *cmd);
void chat__handle_subscribe(chat_client_t *c, const chat_req_t *cmd);
void chat__handle_unsubscribe(chat_client_t *c, const chat_req_t *cmd);
void chat__handle_sub_refresh(chat_client_t *c, const chat_req_t *cmd);
void chat__handle_publish(chat_client_t *c, const chat_req_t *cmd);
void chat__handle_rpc(chat_client_t *c, const chat_req_t *cmd);
void chat__handle_presence(chat_client_t *c, const chat_req_t *cmd, bool stats);
void chat__handle_history(chat_client_t *c, const chat_req_t *cmd);

#endif
