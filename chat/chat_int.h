/* chat: structures shared by the module's source files. */
#ifndef CHAT_CHAT_INT_H
#define CHAT_CHAT_INT_H

#include "chat/chat.h"

#define CHAT_DEDUPE_SLOTS 64
#define CHAT_CLIENT_ID_LEN 36
/* Most bytes of commands held while a connect waits for the broker. */
#define CHAT_HELD_MAX 65536

typedef struct {
    uint64_t key; /* hash of channel and client_msg_id */
    uint64_t at_ms;
} chat_dedupe_slot_t;

/* Per-user state on this node: connection count, limiters, recent client_msg_ids. */
typedef struct {
    char *name;
    uint32_t nconns;
    chat_gcra_t pub_gcra;
    chat_gcra_t typing_gcra;
    chat_dedupe_slot_t *dedupe; /* CHAT_DEDUPE_SLOTS, allocated on first client_msg_id */
    uint32_t dedupe_next;
} chat_user_t;

typedef struct chat_sub chat_sub_t;

typedef struct {
    core_buf_t *buf;
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

struct chat_client {
    chat_node_t *node;
    const chat_transport_t *t;
    void *tctx;
    char id[CHAT_CLIENT_ID_LEN + 1];
    char remote[64];
    chat_client_state_t state;
    bool counted; /* included in the connections gauge */
    chat_user_t *user;
    auth_plan_t plan;
    char *conn_info; /* JSON text of the token's info claim, or NULL */
    bool has_exp;
    int64_t exp;
    uint64_t created_ms;
    uint64_t next_ping_ms;
    uint64_t pong_deadline_ms;
    uint32_t errors; /* error replies in the current 10 s window */
    core_str_t held; /* commands that arrived behind a pending connect */
    chat_sub_t *subs;
    uint32_t nsubs;
    uint32_t limits_waiting; /* publishes waiting for the shared rate limiter */
    core_list_t link;
};

struct chat_node {
    uv_loop_t *loop;
    chat_config_t cfg;
    clu_broker_t *broker;
    core_map_t *clients;  /* client id -> chat_client_t */
    core_map_t *users;    /* user id -> chat_user_t */
    core_map_t *channels; /* channel -> chat_channel_t */
    core_list_t all;      /* every chat_client_t */
    uv_timer_t sweep;
    uint64_t sweep_ticks;
    uint64_t next_gen;
    uint32_t stalled; /* channels with a fill to retry */
    core_buf_t *ping; /* the shared "{}" */
    chat_stats_t st;
    void (*close_done)(void *);
    void *close_ud;
};

#endif
