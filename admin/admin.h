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
    bool shared_limits;     /* rate limits held across the cluster */
    uint32_t cluster_nodes; /* live nodes in the registry */
    const chat_stats_t *chat;
    const clu_stats_t *broker;
    const adm_server_stats_t *server;
} adm_snapshot_t;

/* ---- node registry ---- */

typedef struct adm_registry adm_registry_t;
/* Appends this node's registry entry: a JSON object (name, address, version, counts, uptime,
 * draining, ...). */
typedef void (*adm_self_fn)(void *ud, core_str_t *out);

/* Starts announcing node_id through the broker at once and every ttl_ms/3. */
adm_registry_t *adm_registry_new(uv_loop_t *loop, clu_broker_t *b, const char *node_id,
                                 uint32_t ttl_ms, adm_self_fn self, void *ud);
/* Announces now (e.g. the node started draining). */
void adm_registry_beat(adm_registry_t *r);
/* Live nodes in the last answer of the broker. */
size_t adm_registry_size(const adm_registry_t *r);
/* Appends the /api/info answer: {"result":{"nodes":[...]}} with this node's entry fresh. */
void adm_registry_render_info(const adm_registry_t *r, core_str_t *out);
/* Stops announcing and takes the node out of the registry (an announcement with TTL 0); done
 * runs once that was answered or failed, and the broker may close only then. The registry is
 * freed by itself. */
void adm_registry_close(adm_registry_t *r, void (*done)(void *), void *ud);

/* Appends the Prometheus text exposition (format 0.0.4) of snap and of this process. */
void adm_metrics_render(core_str_t *out, const adm_snapshot_t *snap);

#endif
