/* server: the metric sources chatd registers with admin's registry: the transport's own
 * counters, the chat node's and the broker's. Each family keeps the name, labels and help text
 * docs/RUNTIME.md lists. */
#include <stdio.h>

#include "server/server.h"

int srv_disconnect_slot(int code) {
    if (code >= 3000 && code < 3032)
        return code - 3000;
    if (code >= 3500 && code < 3532)
        return 32 + code - 3500;
    return -1;
}

int srv_disconnect_code(int slot) {
    return slot < 32 ? 3000 + slot : 3500 + slot - 32;
}

void srv_stats_init(srv_stats_t *st) {
    static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                    0.05,   0.1,   0.25,   0.5,   1.0,  2.5};
    *st = (srv_stats_t){0};
    core_hist_init(&st->fanout_latency, bounds, sizeof bounds / sizeof bounds[0]);
    /* A pass that works for more than a few milliseconds delays every socket of the node. */
    static const double pass[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                  0.01,   0.025,   0.05,   0.1,   0.25,   1.0};
    core_hist_init(&st->loop_pass, pass, sizeof pass / sizeof pass[0]);
}

void srv_metrics_transport(void *ud, adm_metrics_writer_t *w) {
    const srv_stats_t *sv = ud;
    adm_metrics_counter(w, "chat_connections_accepted_total", "WebSocket sessions accepted.",
                        sv->accepted);
    adm_metrics_family(w, "chat_disconnects_total", "counter", "Server-side closes by code.");
    for (int i = 0; i < SRV_DISCONNECT_SLOTS; i++) {
        if (!sv->disconnects[i])
            continue;
        char code[16];
        snprintf(code, sizeof code, "%d", srv_disconnect_code(i));
        adm_metrics_sample(w, "chat_disconnects_total", &(adm_label_t){"code", code}, 1,
                           sv->disconnects[i]);
    }
    static const char *const refused[SRV_REFUSED_COUNT] = {"limit", "descriptors", "origin",
                                                           "headers", "rate"};
    adm_metrics_family(w, "chat_connections_refused_total", "counter",
                       "Connections refused before they became sessions, by reason.");
    for (int i = 0; i < SRV_REFUSED_COUNT; i++)
        adm_metrics_sample(w, "chat_connections_refused_total",
                           &(adm_label_t){"reason", refused[i]}, 1, sv->refused[i]);
    adm_metrics_counter(w, "chat_write_calls_total", "WebSocket frames written.", sv->write_calls);
    adm_metrics_counter(w, "chat_write_bytes_total", "WebSocket payload bytes written.",
                        sv->write_bytes);
    adm_metrics_counter(w, "chat_flush_slices_total",
                        "Flushes that stopped after CHAT_FLUSH_SLICE_US to let the loop poll.",
                        sv->flush_slices);
    adm_metrics_counter(w, "chat_write_short_total",
                        "Writes the socket did not take whole: the rest waited for the client.",
                        sv->write_short);
    adm_metrics_gauge(w, "chat_write_queue_bytes", "Bytes waiting in connection write queues.",
                      sv->write_queue_bytes);
    adm_metrics_histogram(w, "chat_fanout_latency_seconds",
                          "Time from a message being built to its write to a subscriber's socket.",
                          &sv->fanout_latency);
    adm_metrics_histogram(w, "chat_loop_pass_seconds",
                          "Work of one event-loop pass: from the loop's return from polling to its "
                          "next poll.",
                          &sv->loop_pass);
}

void srv_metrics_chat(void *ud, adm_metrics_writer_t *w) {
    chat_stats_t c;
    chat_node_stats(ud, &c);
    adm_metrics_gauge(w, "chat_connections", "Connected clients (after connect).", c.connections);
    adm_metrics_gauge(w, "chat_sessions", "Open WebSocket sessions, connected or not.", c.sessions);
    adm_metrics_family(w, "chat_commands_total", "counter", "Client commands by method.");
    for (int m = 0; m < CHAT_M_COUNT; m++)
        adm_metrics_sample(w, "chat_commands_total",
                           &(adm_label_t){"method", chat_method_name((chat_method_t)m)}, 1,
                           c.commands[m]);
    adm_metrics_counter(w, "chat_publications_in_total", "Publications accepted into channels.",
                        c.publications_in);
    adm_metrics_counter(w, "chat_publications_out_total", "Publications queued to subscribers.",
                        c.publications_out);
    adm_metrics_family(w, "chat_errors_total", "counter", "Error replies by code.");
    for (int i = 0; i < CORE_REPLY_ERROR_COUNT; i++) {
        char code[16];
        snprintf(code, sizeof code, "%d", core_reply_error_code(i));
        adm_metrics_sample(w, "chat_errors_total", &(adm_label_t){"code", code}, 1, c.errors[i]);
    }
    adm_metrics_sample(w, "chat_errors_total", &(adm_label_t){"code", "other"}, 1,
                       c.errors[CORE_REPLY_ERROR_COUNT]);
    adm_metrics_counter(w, "chat_rate_limited_total", "Publishes refused by the rate limit.",
                        c.rate_limited);
    adm_metrics_counter(w, "chat_rate_limit_fallback_total",
                        "Rate limits taken by this node alone because the shared limiter failed.",
                        c.rate_limit_fallbacks);
    adm_metrics_counter(w, "chat_dedupe_hits_total", "Publishes answered from the dedupe window.",
                        c.dedupe_hits);
    adm_metrics_counter(w, "chat_state_lost_total",
                        "Channel gaps that history could not fill (clients closed with 3010).",
                        c.state_lost);
    adm_metrics_gauge(w, "chat_channels", "Channels with local subscribers.", c.channels);
    adm_metrics_family(w, "chat_api_calls_total", "counter",
                       "Server API calls by method (the commands of a batch included).");
    for (int m = 0; m < CHAT_API_METHOD_COUNT; m++)
        adm_metrics_sample(w, "chat_api_calls_total",
                           &(adm_label_t){"method", chat_api_method_name(m)}, 1, c.api_calls[m]);
    adm_metrics_family(w, "chat_api_errors_total", "counter", "Server API error answers by code.");
    for (int i = 0; i < CORE_REPLY_ERROR_SLOTS; i++) {
        if (!c.api_errors[i])
            continue;
        char code[16];
        if (i < CORE_REPLY_ERROR_COUNT)
            snprintf(code, sizeof code, "%d", core_reply_error_code(i));
        else
            snprintf(code, sizeof code, "other");
        adm_metrics_sample(w, "chat_api_errors_total", &(adm_label_t){"code", code}, 1,
                           c.api_errors[i]);
    }
}

void srv_metrics_broker(void *ud, adm_metrics_writer_t *w) {
    clu_broker_t *broker = ud;
    clu_stats_t b;
    clu_stats(broker, &b);
    adm_metrics_gauge(w, "chat_broker_up",
                      "1 while the broker's backing store is connected and the node's channels "
                      "are subscribed there (always 1 for the in-memory broker).",
                      clu_ready(broker) ? 1 : 0);
    if (b.nlatency) {
        adm_metrics_family(w, "chat_broker_command_seconds", "histogram",
                           "Round trips of the broker's backing-store commands, by operation.");
        for (size_t i = 0; i < b.nlatency; i++)
            adm_metrics_histogram_sample(w, "chat_broker_command_seconds",
                                         &(adm_label_t){"op", b.latency_ops[i]}, 1, &b.latency[i]);
    }
    adm_metrics_gauge(w, "chat_rate_limit_shared",
                      "1 when rate limits are held across the cluster (Redis), 0 when per node.",
                      clu_has_shared_limits(broker) ? 1 : 0);
    adm_metrics_counter(w, "chat_broker_publishes_total", "Publications the broker accepted.",
                        b.publishes);
    adm_metrics_counter(w, "chat_broker_publish_errors_total", "Publications the broker refused.",
                        b.publish_errors);
    adm_metrics_counter(w, "chat_broker_undecodable_total", "Inter-node envelopes dropped.",
                        b.undecodable);
    adm_metrics_counter(w, "chat_broker_timeouts_total",
                        "Broker connections dropped because a command went unanswered.",
                        b.timeouts);
    adm_metrics_gauge(w, "chat_broker_channels", "Channels with state in the broker.", b.channels);
    adm_metrics_counter(w, "chat_broker_history_evicted_total",
                        "Channel histories dropped to stay under the history memory cap.",
                        b.evicted);
}
