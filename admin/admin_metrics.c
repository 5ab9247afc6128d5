/* admin: Prometheus exposition. */
#include "admin/admin.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

int adm_disconnect_slot(int code) {
    if (code >= 3000 && code < 3032)
        return code - 3000;
    if (code >= 3500 && code < 3532)
        return 32 + code - 3500;
    return -1;
}

int adm_disconnect_code(int slot) {
    return slot < 32 ? 3000 + slot : 3500 + slot - 32;
}

static void header(core_str_t *o, const char *name, const char *type, const char *help) {
    core_str_appendf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric(core_str_t *o, const char *name, const char *type, const char *help,
                   uint64_t v) {
    header(o, name, type, help);
    core_str_appendf(o, "%s %" PRIu64 "\n", name, v);
}

static void process_metrics(core_str_t *o) {
    long page = sysconf(_SC_PAGESIZE);
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    metric(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
           (uint64_t)resident * (uint64_t)page);
    metric(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
           (uint64_t)size * (uint64_t)page);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    header(o, "process_cpu_seconds_total", "counter", "Total user and system CPU time in seconds.");
    core_str_appendf(o, "process_cpu_seconds_total %.6f\n", cpu);
    uint64_t fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                fds++;
        closedir(d);
    }
    metric(o, "process_open_fds", "gauge", "Number of open file descriptors.", fds);
}

void adm_metrics_render(core_str_t *o, const adm_snapshot_t *s) {
    const chat_stats_t *c = s->chat;
    const adm_server_stats_t *sv = s->server;
    header(o, "chat_node_info", "gauge", "Node identity; the value is always 1.");
    core_str_appends(o, "chat_node_info{node=");
    core_str_append_json_string(o, s->node_id, strlen(s->node_id));
    core_str_appendf(o, ",broker=\"%s\"} 1\n", s->broker_name);
    metric(o, "chat_ready", "gauge", "1 when the node accepts clients.", s->ready ? 1 : 0);
    metric(o, "chat_draining", "gauge", "1 while the node drains.", s->draining ? 1 : 0);
    metric(o, "chat_connections", "gauge", "Connected clients (after connect).", c->connections);
    metric(o, "chat_sessions", "gauge", "Open WebSocket sessions, connected or not.", c->sessions);
    metric(o, "chat_connections_accepted_total", "counter", "WebSocket sessions accepted.",
           sv->accepted);
    header(o, "chat_commands_total", "counter", "Client commands by method.");
    for (int m = 0; m < CHAT_M_COUNT; m++)
        core_str_appendf(o, "chat_commands_total{method=\"%s\"} %" PRIu64 "\n",
                         chat_method_name((chat_method_t)m), c->commands[m]);
    metric(o, "chat_publications_in_total", "counter", "Publications accepted into channels.",
           c->publications_in);
    metric(o, "chat_publications_out_total", "counter", "Publications queued to subscribers.",
           c->publications_out);
    header(o, "chat_errors_total", "counter", "Error replies by code.");
    for (int i = 0; i < CORE_REPLY_ERROR_COUNT; i++)
        core_str_appendf(o, "chat_errors_total{code=\"%d\"} %" PRIu64 "\n",
                         core_reply_error_code(i), c->errors[i]);
    core_str_appendf(o, "chat_errors_total{code=\"other\"} %" PRIu64 "\n",
                     c->errors[CORE_REPLY_ERROR_COUNT]);
    header(o, "chat_disconnects_total", "counter", "Server-side closes by code.");
    for (int i = 0; i < ADM_DISCONNECT_SLOTS; i++)
        if (sv->disconnects[i])
            core_str_appendf(o, "chat_disconnects_total{code=\"%d\"} %" PRIu64 "\n",
                             adm_disconnect_code(i), sv->disconnects[i]);
    metric(o, "chat_rate_limited_total", "counter", "Publishes refused by the rate limit.",
           c->rate_limited);
    metric(o, "chat_rate_limit_shared", "gauge",
           "1 when rate limits are held across the cluster (Redis), 0 when per node.",
           s->shared_limits ? 1 : 0);
    metric(o, "chat_rate_limit_fallback_total", "counter",
           "Rate limits taken by this node alone because the shared limiter failed.",
           c->rate_limit_fallbacks);
    metric(o, "chat_cluster_nodes", "gauge", "Live nodes in the cluster's registry.",
           s->cluster_nodes);
    metric(o, "chat_dedupe_hits_total", "counter", "Publishes answered from the dedupe window.",
           c->dedupe_hits);
    metric(o, "chat_state_lost_total", "counter",
           "Channel gaps that history could not fill (clients closed with 3010).", c->state_lost);
    metric(o, "chat_write_calls_total", "counter", "WebSocket frames written.", sv->write_calls);
    metric(o, "chat_write_bytes_total", "counter", "WebSocket payload bytes written.",
           sv->write_bytes);
    metric(o, "chat_write_queue_bytes", "gauge", "Bytes waiting in connection write queues.",
           sv->write_queue_bytes);
    metric(o, "chat_channels", "gauge", "Channels with local subscribers.", c->channels);
    const core_hist_t *h = &sv->fanout_latency;
    header(o, "chat_fanout_latency_seconds", "histogram",
           "Time from a message being built to its write to a subscriber's socket.");
    uint64_t cum = 0;
    for (size_t i = 0; i < h->nbuckets; i++) {
        cum += h->counts[i];
        core_str_appendf(o, "chat_fanout_latency_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                         h->bounds[i], cum);
    }
    core_str_appendf(o, "chat_fanout_latency_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", h->total);
    core_str_appendf(o, "chat_fanout_latency_seconds_sum %.6f\n", h->sum);
    core_str_appendf(o, "chat_fanout_latency_seconds_count %" PRIu64 "\n", h->total);
    const clu_stats_t *b = s->broker;
    metric(o, "chat_broker_publishes_total", "counter", "Publications the broker accepted.",
           b->publishes);
    metric(o, "chat_broker_publish_errors_total", "counter", "Publications the broker refused.",
           b->publish_errors);
    metric(o, "chat_broker_undecodable_total", "counter", "Inter-node envelopes dropped.",
           b->undecodable);
    metric(o, "chat_broker_timeouts_total", "counter",
           "Broker connections dropped because a command went unanswered.", b->timeouts);
    metric(o, "chat_broker_channels", "gauge", "Channels with state in the broker.", b->channels);
    metric(o, "chat_broker_history_evicted_total", "counter",
           "Channel histories dropped to stay under the history memory cap.", b->evicted);
    process_metrics(o);
}
