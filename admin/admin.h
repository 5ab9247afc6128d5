/* admin: the metrics registry and its Prometheus text exposition, and the cluster's node
 * registry behind /api/info. The modules keep their own counters and register sources that
 * render them; this module knows none of them. */
#ifndef ADMIN_ADMIN_H
#define ADMIN_ADMIN_H

#include "cluster/cluster.h"
#include "core/core.h"

/* ---- metrics registry ---- */

/* The registry of metric sources behind /metrics. Every module keeps its own counters; the
 * program registers one source per module, and each source writes its families through the
 * writer, so admin knows no module's statistics. The output is the Prometheus text format
 * 0.0.4: the sources in registration order, then this process's metrics (process_*). */
typedef struct adm_metrics adm_metrics_t;
/* Where a source writes its samples: valid only during its render call. */
typedef struct adm_metrics_writer adm_metrics_writer_t;
/* Writes the source's metric families; ud is the pointer it was registered with. */
typedef void (*adm_metrics_render_fn)(void *ud, adm_metrics_writer_t *w);

/* One label of a sample. Values are escaped as the text format requires (\\, \", \n). */
typedef struct {
    const char *name;
    const char *value;
} adm_label_t;

/* An empty registry; never NULL (out of memory aborts). */
adm_metrics_t *adm_metrics_new(void);
/* Frees the registry; the sources' userdata stays their owners'. */
void adm_metrics_free(adm_metrics_t *m);
/* Adds a source, rendered after those added before it. A source stays until the registry is
 * freed, so ud must live as long. */
void adm_metrics_add(adm_metrics_t *m, adm_metrics_render_fn render, void *ud);
/* Appends the exposition of every source, then of this process, to out. */
void adm_metrics_render(const adm_metrics_t *m, core_str_t *out);

/* The "# HELP" and "# TYPE" lines of a family; type is "counter", "gauge" or "histogram". Every
 * family is written once, its samples right after it. */
void adm_metrics_family(adm_metrics_writer_t *w, const char *name, const char *type,
                        const char *help);
/* One sample "name{labels} value"; labels may be NULL when nlabels is 0. */
void adm_metrics_sample(adm_metrics_writer_t *w, const char *name, const adm_label_t *labels,
                        size_t nlabels, uint64_t value);
/* The same with a fractional value, printed with six decimals (e.g. seconds). */
void adm_metrics_sample_double(adm_metrics_writer_t *w, const char *name, const adm_label_t *labels,
                               size_t nlabels, double value);
/* A counter family of one unlabelled sample. */
void adm_metrics_counter(adm_metrics_writer_t *w, const char *name, const char *help,
                         uint64_t value);
/* A gauge family of one unlabelled sample. */
void adm_metrics_gauge(adm_metrics_writer_t *w, const char *name, const char *help, uint64_t value);
/* A histogram family: cumulative name_bucket{le="..."} lines for h's bounds and +Inf, then
 * name_sum and name_count. */
void adm_metrics_histogram(adm_metrics_writer_t *w, const char *name, const char *help,
                           const core_hist_t *h);
/* One labelled series of a histogram family written with adm_metrics_family: its buckets
 * (with `le` after labels), _sum and _count. */
void adm_metrics_histogram_sample(adm_metrics_writer_t *w, const char *name,
                                  const adm_label_t *labels, size_t nlabels, const core_hist_t *h);

/* ---- node registry ---- */

typedef struct adm_registry adm_registry_t;
/* Appends this node's registry entry: a JSON object (name, address, version, counts, uptime,
 * draining, ...). */
typedef void (*adm_self_fn)(void *ud, core_str_t *out);

/* Starts announcing node_id through the broker at once and every ttl_ms/3. */
adm_registry_t *adm_registry_new(uv_loop_t *loop, clu_broker_t *b, const char *node_id,
                                 uint32_t ttl_ms, adm_self_fn self, void *ud);
/* fn(ud, nodes) after every answer of the broker: the live nodes, this one included. */
void adm_registry_on_nodes(adm_registry_t *r, void (*fn)(void *ud, size_t nodes), void *ud);
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

#endif
