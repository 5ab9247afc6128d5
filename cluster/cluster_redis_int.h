/* cluster: what the Redis broker's source files share. The broker is one concern a file:
 * cluster_redis.c the two connections, the pub/sub feed and the lifecycle; cluster_redis_call.c
 * script calls on the command connection; cluster_redis_ops.c publish, history, join/leave and
 * presence; cluster_redis_coord.c the node registry, rate limits, semaphores, counters and
 * deadlines. Not a contract: everything outside the broker uses cluster.h only. */
#ifndef CLUSTER_CLUSTER_REDIS_INT_H
#define CLUSTER_CLUSTER_REDIS_INT_H

#include "cluster/cluster.h"
#include "cluster/cluster_redis_uv.h"
#include "core/core_limit.h"

#define MAX_ARGS 16

enum {
    SCRIPT_PUBLISH,
    SCRIPT_HISTORY,
    SCRIPT_PRES_ADD,
    SCRIPT_PRES_GET,
    SCRIPT_HEARTBEAT,
    SCRIPT_RATE,
    SCRIPT_SEM_ACQUIRE,
    SCRIPT_SEM_RENEW,
    SCRIPT_SEM_RELEASE,
    SCRIPT_COUNTER,
    SCRIPT_DEADLINE_RAISE,
    SCRIPT_DEADLINE_GET,
    SCRIPT_DEADLINE_CLEAR,
    SCRIPT_HISTORY_REMOVE,
    SCRIPT_PERSIST_INFO,
    SCRIPT_COUNT
};

/* The scripts' names in metrics and logs ("publish", ...). */
extern const char *const clu__rb_script_names[SCRIPT_COUNT];
/* The scripts' bodies (cluster_redis_lua.h), indexed by the enum above. */
extern const char *const clu__rb_script_src[SCRIPT_COUNT];

typedef struct redis_broker rb_t;

/* One connection and its reconnect state. */
typedef struct {
    rb_t *rb;
    bool is_sub;
    redisAsyncContext *ac; /* non-NULL from the connect attempt until it is gone */
    bool connected;
    core_backoff_t backoff; /* reconnect pacing; reset by a successful connect */
    uv_timer_t retry;
} rconn_t;

struct redis_broker {
    clu_broker_t base;
    uv_loop_t *loop;
    clu_redis_addr_t addr;
    char *node_id;
    uint32_t max_history_limit;
    rconn_t cmd, sub;
    core_map_t *subs; /* chat channel -> (void *)1, the channels the node subscribed to */
    /* Channels re-subscribed by the current pub/sub connection's (re)connect whose SUBSCRIBE is
     * not confirmed yet: their feed is not live, publishes into them fail. Channels subscribed
     * later on a live connection are not here: their first subscribe answer and the resync on
     * confirmation cover what they miss meanwhile, in the same epoch. */
    core_map_t *resub;
    char sha[SCRIPT_COUNT][41]; /* "" until SCRIPT LOAD answered on this connection */
    clu_stats_t st;
    core_hist_t latency[SCRIPT_COUNT]; /* seconds from send to reply, by script */
    /* Commands with a reply callback awaiting their reply on the command connection, and when
     * the connection last made progress (a reply, or the first command after an idle spell). */
    uint32_t inflight;
    uint64_t progress_ms;
    uv_timer_t watchdog;
    /* Calls that failed before anything was sent (Redis away): their callbacks run from the
     * loop, never before the call that started them returned. */
    struct call *failed, *failed_tail;
    uv_idle_t fail_idle;
    uint64_t script_error_logged_ms;
    uint32_t persist_cap; /* 0: no persist stream */
    bool closing;
    int open_timers;
    void (*close_done)(void *);
    void *close_ud;
};

typedef struct call call_t;
/* Runs once per call with the reply (borrowed) or NULL when the connection failed or was lost
 * before an answer; status then says why. */
typedef void (*call_done_fn)(call_t *c, redisReply *r, int status);

struct call {
    rb_t *rb;
    int script;
    bool retried;
    int argc; /* including the two leading slots for EVALSHA/EVAL and sha/body */
    char *argv[MAX_ARGS];
    size_t lens[MAX_ARGS];
    call_done_fn done;
    int status;       /* of a call that failed before it was sent, while it waits in rb->failed */
    uint64_t sent_us; /* core_now_us() when it went out: its round trip is a metric */
    uint64_t trace;   /* the log trace of the work that made the call, current again in done */
    call_t *next;
    void *cb;
    void *ud;
    char *channel;
};

/* ---- script calls (cluster_redis_call.c) ---- */

/* Sets s to prefix{channel}: the braces make channel the Redis Cluster hash tag. */
void clu__rb_key_of(core_str_t *s, const char *prefix, const char *channel);
/* A call of script; done runs once with its reply, cb and ud are for done to use. */
call_t *clu__rb_call_new(rb_t *rb, int script, call_done_fn done, void *cb, void *ud);
/* Append one argument (copied): n bytes, a C string, an unsigned decimal. */
void clu__rb_call_arg(call_t *c, const char *p, size_t n);
void clu__rb_call_args(call_t *c, const char *z);
void clu__rb_call_argu(call_t *c, uint64_t v);
void clu__rb_channel_keys(call_t *c, const char *channel, const char *prefix1, const char *prefix2);
void clu__rb_call_free(call_t *c);
void clu__rb_cmd_sent(rb_t *rb);
void clu__rb_cmd_answered(rb_t *rb);
void clu__rb_failed_drain(rb_t *rb);
void clu__rb_call_fail_later(call_t *c, int status);
void clu__rb_call_start(call_t *c);
/* The reply to a SCRIPT LOAD sent with the script's index as priv. */
void clu__rb_on_script_loaded(redisAsyncContext *ac, void *reply, void *priv);

/* ---- clu_ops_t entries of cluster_redis_ops.c ---- */

int clu__rb_publish(clu_broker_t *b, const char *channel, const clu_pub_t *pub,
                    const clu_chan_opts_t *opts, clu_publish_cb cb, void *ud);
int clu__rb_history_remove(clu_broker_t *b, const char *channel, clu_publish_cb cb, void *ud);
int clu__rb_history(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                    const clu_history_req_t *req, clu_history_cb cb, void *ud);
int clu__rb_join(clu_broker_t *b, const char *channel, const char *info, size_t len);
int clu__rb_leave(clu_broker_t *b, const char *channel, const char *info, size_t len);
int clu__rb_presence_add(clu_broker_t *b, const char *channel, const clu_chan_opts_t *opts,
                         const clu_presence_t *e);
int clu__rb_presence_remove(clu_broker_t *b, const char *channel, const char *client);
int clu__rb_presence(clu_broker_t *b, const char *channel, clu_presence_cb cb, void *ud);
int clu__rb_presence_stats(clu_broker_t *b, const char *channel, clu_presence_stats_cb cb,
                           void *ud);

/* ---- the persist stream (cluster_redis_persist.c) ---- */

#define CLU_PERSIST_KEY "chat.persist"
#define CLU_PERSIST_GROUP "chat-store"

/* Creates the consumer group on a fresh command connection (a no-op when it exists). */
void clu__rb_persist_connected(rb_t *rb);
int clu__rb_persist_read(clu_broker_t *b, const char *consumer, uint32_t count,
                         uint32_t claim_idle_ms, clu_persist_cb cb, void *ud);
int clu__rb_persist_ack(clu_broker_t *b, const char *const *ids, size_t n);
int clu__rb_persist_info(clu_broker_t *b, clu_persist_info_cb cb, void *ud);

/* ---- clu_ops_t entries of cluster_redis_coord.c ---- */

int clu__rb_heartbeat(clu_broker_t *b, const char *node_id, const char *info, size_t len,
                      uint32_t ttl_ms, clu_nodes_cb cb, void *ud);
int clu__rb_rate_take(clu_broker_t *b, const char *key, int64_t interval_us, int64_t burst,
                      clu_rate_cb cb, void *ud);
int clu__rb_sem_acquire(clu_broker_t *b, const char *const *keys, const uint32_t *limits, size_t n,
                        const char *lease, uint32_t ttl_ms, clu_sem_cb cb, void *ud);
int clu__rb_sem_renew(clu_broker_t *b, const char *const *keys, size_t n, const char *lease,
                      uint32_t ttl_ms, clu_sem_cb cb, void *ud);
int clu__rb_sem_release(clu_broker_t *b, const char *const *keys, size_t n, const char *lease);
int clu__rb_counter_add(clu_broker_t *b, const char *key, int64_t amount, int64_t limit,
                        int64_t expire_at_s, clu_counter_cb cb, void *ud);
int clu__rb_deadline_raise(clu_broker_t *b, const char *key, int64_t until_ms);
int clu__rb_deadline_clear(clu_broker_t *b, const char *key);
int clu__rb_deadline_get(clu_broker_t *b, const char *const *keys, size_t n, clu_deadlines_cb cb,
                         void *ud);

#endif
