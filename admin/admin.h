/* admin: the metrics registry snapshot and its Prometheus text exposition. The modules keep
 * their own counters; this module only reads them. */
#ifndef ADMIN_ADMIN_H
#define ADMIN_ADMIN_H

#include "chat/chat.h"
#include "cluster/cluster.h"
#include "core/core.h"

#define ADM_DISCONNECT_SLOTS 64

/* Counters owned by the transport (server/). */
typedef struct {
    uint64_t accepted;
    uint64_t write_calls;
    uint64_t write_bytes;
    uint64_t write_queue_bytes;                 /* gauge */
    uint64_t disconnects[ADM_DISCONNECT_SLOTS]; /* by adm_disconnect_slot() */
    core_hist_t fanout_latency;                 /* seconds */
} adm_server_stats_t;

/* Slot of a close code: 3000..3031 and 3500..3531; -1 for other codes. */
int adm_disconnect_slot(int code);
/* Inverse of adm_disconnect_slot. */
int adm_disconnect_code(int slot);

typedef struct {
    const char *node_id;
    const char *broker_name;
    bool ready;
    bool draining;
    const chat_stats_t *chat;
    const clu_stats_t *broker;
    const adm_server_stats_t *server;
} adm_snapshot_t;

/* Appends the Prometheus text exposition (format 0.0.4) of snap and of this process. */
void adm_metrics_render(core_str_t *out, const adm_snapshot_t *snap);

#endif
