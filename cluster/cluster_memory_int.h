/* cluster: what the in-memory broker's source files share. cluster_memory.c holds the channels
 * (history, pub/sub events, presence) and the lifecycle; cluster_memory_answer.c the queue of
 * answers run from the loop; cluster_memory_coord.c the node registry, semaphores, counters and
 * deadlines. Not a contract: everything outside the broker uses cluster.h only. */
#ifndef CLUSTER_CLUSTER_MEMORY_INT_H
#define CLUSTER_CLUSTER_MEMORY_INT_H

#include "cluster/cluster.h"

typedef struct {
    uint64_t offset;
    char *data;
    size_t data_len;
    char *info;
    size_t info_len;
} stored_pub_t;

/* One allocation: the strings follow the struct (the map's key is `client`). */
typedef struct {
    char *client;
    char *user;
    char *info;
    size_t info_len;
} presence_entry_t;

typedef struct mem_broker mem_broker_t;

typedef enum {
    ANS_PUBLISH,
    ANS_HISTORY,
    ANS_PRESENCE,
    ANS_PRESENCE_STATS,
    ANS_NODES,
    ANS_SEM,
    ANS_COUNTER,
    ANS_DEADLINES
} ans_kind_t;

/* One answer waiting for the loop. Strings it hands out point into `blob`, its own copy. */
typedef struct answer {
    struct answer *next;
    ans_kind_t kind;
    void *cb;
    void *ud;
    int status;
    uint64_t top; /* publish: the offset */
    uint32_t clients, users;
    char epoch[CLU_EPOCH_MAX];
    size_t n;
    clu_pub_t *pubs;
    clu_presence_t *presence;
    clu_node_t node;
    core_str_t blob;
    bool flag;       /* sem: granted; counter: allowed */
    int64_t value;   /* counter: its value after the call */
    int64_t *values; /* deadlines */
} answer_t;

/* One semaphore: its holders and when each lease expires (loop milliseconds). */
typedef struct {
    char **leases;
    uint64_t *until;
    uint32_t n, cap;
} msem_t;

typedef struct {
    char epoch[CLU_EPOCH_MAX];
    uint64_t top;
} mpos_t;

typedef struct {
    int64_t value;
    int64_t expire_at_s;
} mcounter_t;

typedef struct {
    mem_broker_t *mb;
    core_list_t lru_link; /* in mb->lru while the channel keeps publications */
    char *name;
    char epoch[CLU_EPOCH_MAX];
    uint64_t top;       /* offset of the newest publication ever stored in this epoch */
    stored_pub_t *ring; /* capacity ring_cap, newest at (start + count - 1) % ring_cap */
    uint32_t ring_cap;
    uint32_t start;
    uint32_t count;
    uint64_t last_pub_ms;
    uint32_t ttl_s;
    bool node_subscribed;
    core_map_t *presence; /* client id (borrowed from the entry) -> presence_entry_t*, created on
                           * first add */
} mchan_t;

struct mem_broker {
    clu_broker_t base;
    uv_loop_t *loop;
    core_map_t *channels;
    size_t bytes;     /* stored publication bytes over all channels */
    size_t max_bytes; /* 0 = no cap */
    core_list_t lru;  /* channels with stored publications, least recently published first */
    uint32_t max_history_limit;
    /* With a database behind the broker a channel's position (epoch, top) outlives its stream
     * and the channel itself: channel -> mpos_t of channels not in `channels` now. */
    bool keep_positions;
    core_map_t *positions;
    uv_timer_t sweep;
    core_map_iter_t sweep_at; /* where the sliced sweep of channels goes on */
    uint64_t sweep_ticks;
    uv_idle_t answers;     /* active while `queue` holds answers */
    core_map_t *sems;      /* key -> msem_t */
    core_map_t *counters;  /* key -> mcounter_t */
    core_map_t *deadlines; /* key -> int64_t* (Unix ms) */
    answer_t *queue, *queue_tail;
    int open_handles;
    clu_stats_t st;
    void (*close_done)(void *);
    void *close_ud;
};

/* ---- answers run from the loop (cluster_memory_answer.c) ---- */

answer_t *clu__mem_answer_new(ans_kind_t kind, void *cb, void *ud);
uintptr_t clu__mem_answer_copy(answer_t *a, const char *p, size_t n);
/* Queues a for the loop; its strings' offsets into the blob become pointers here. */
void clu__mem_answer_queue(mem_broker_t *mb, answer_t *a);
void clu__mem_answers_drain(mem_broker_t *mb);

/* ---- the node registry, semaphores, counters and deadlines (cluster_memory_coord.c) ---- */

int clu__mem_heartbeat(clu_broker_t *b, const char *node_id, const char *info, size_t len,
                       uint32_t ttl_ms, clu_nodes_cb cb, void *ud);
int clu__mem_sem_acquire(clu_broker_t *b, const char *const *keys, const uint32_t *limits, size_t n,
                         const char *lease, uint32_t ttl_ms, clu_sem_cb cb, void *ud);
int clu__mem_sem_renew(clu_broker_t *b, const char *const *keys, size_t n, const char *lease,
                       uint32_t ttl_ms, clu_sem_cb cb, void *ud);
int clu__mem_sem_release(clu_broker_t *b, const char *const *keys, size_t n, const char *lease);
int clu__mem_counter_add(clu_broker_t *b, const char *key, int64_t amount, int64_t limit,
                         int64_t expire_at_s, clu_counter_cb cb, void *ud);
int clu__mem_deadline_raise(clu_broker_t *b, const char *key, int64_t until_ms);
int clu__mem_deadline_clear(clu_broker_t *b, const char *key);
int clu__mem_deadline_get(clu_broker_t *b, const char *const *keys, size_t n, clu_deadlines_cb cb,
                          void *ud);
/* Forgets what expired; called by the channels' sweep timer. */
void clu__mem_coord_sweep(mem_broker_t *mb);
/* Frees the semaphores, counters and deadlines once the broker's handles are closed. */
void clu__mem_coord_free(mem_broker_t *mb);

#endif
