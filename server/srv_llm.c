/* server: the LLM dispatcher wired into chat's RPC registry and into /metrics. chat knows no
 * dispatcher and the dispatcher knows no client protocol; this file translates: llm.ask and
 * llm.cancel commands (PROTOCOL.md section 3) become llm_ask/llm_cancel calls, and a client
 * that goes away cancels its requests. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "core/core_codes.h"
#include "server/server.h"

static const char *json_str(const json_t *o, const char *key) {
    return json_string_value(json_object_get(o, key));
}

static void ask_answered(void *ud, int code, const char *message, const llm_admitted_t *a) {
    chat_rpc_call_t *call = ud;
    if (code != 0) {
        chat_rpc_error(call, code, message);
        return;
    }
    core_str_t s = {0};
    core_str_appends(&s, "{\"request_id\":");
    core_str_append_json_string(&s, a->request_id, strlen(a->request_id));
    core_str_appendf(&s, ",\"queue_position\":%u", a->queue_position);
    if (a->quota_limit)
        core_str_appendf(&s, ",\"quota\":{\"used\":%u,\"limit\":%u,\"reset_at\":%" PRId64 "}",
                         a->quota_used, a->quota_limit, a->quota_reset_s);
    core_str_appends(&s, "}");
    chat_rpc_reply(call, s.ptr, s.len);
    core_str_free(&s);
}

/* {"channel":"chat:room","prompt":"...","model":"optional"} from a member of a room whose
 * namespace has `llm` on. */
static void ask_call(void *ud, chat_rpc_call_t *call) {
    llm_t *l = ud;
    size_t len = 0;
    const char *data = chat_rpc_data(call, &len);
    json_t *d = data ? json_loadb(data, len, 0, NULL) : NULL;
    const char *channel = json_str(d, "channel");
    json_t *prompt = json_object_get(d, "prompt");
    json_t *model = json_object_get(d, "model");
    const chat_ns_t *ns = channel ? chat_rpc_namespace(call, channel) : NULL;
    if (!channel || !json_is_string(prompt) || (model && !json_is_string(model))) {
        chat_rpc_error(call, CORE_REPLY_BAD_REQUEST,
                       "bad request: data.channel and data.prompt (strings) required");
    } else if (!ns || !ns->llm) {
        chat_rpc_error(call, CORE_REPLY_PERMISSION_DENIED,
                       "permission denied: the assistant is not available in this channel");
    } else if (!chat_rpc_subscribed(call, channel)) {
        chat_rpc_error(call, CORE_REPLY_PERMISSION_DENIED,
                       "permission denied: subscribe to the channel first");
    } else {
        char personal[300];
        snprintf(personal, sizeof personal, "personal:#%s", chat_rpc_user(call));
        llm_ask_t a = {
            .user = chat_rpc_user(call),
            .client = chat_rpc_client(call),
            .plan = (unsigned)chat_rpc_plan(call),
            .channel = channel,
            .room_opts = {ns->history_size, ns->history_ttl_s, 0, false},
            .personal = personal,
            .prompt = json_string_value(prompt),
            .prompt_len = json_string_length(prompt),
            .model = model ? json_string_value(model) : NULL,
            .system = ns->llm_system_prompt,
        };
        llm_ask(l, &a, ask_answered, call);
    }
    json_decref(d);
}

static void cancel_call(void *ud, chat_rpc_call_t *call) {
    llm_t *l = ud;
    size_t len = 0;
    const char *data = chat_rpc_data(call, &len);
    json_t *d = data ? json_loadb(data, len, 0, NULL) : NULL;
    const char *id = json_str(d, "request_id");
    if (!id) {
        chat_rpc_error(call, CORE_REPLY_BAD_REQUEST, "bad request: data.request_id required");
    } else {
        int rc = llm_cancel(l, chat_rpc_user(call), id);
        if (rc == 0)
            chat_rpc_reply(call, "{}", 2);
        else if (rc == CORE_EPERM)
            chat_rpc_error(call, CORE_REPLY_PERMISSION_DENIED,
                           "permission denied: not your request");
        else
            chat_rpc_error(call, CORE_REPLY_NOT_AVAILABLE,
                           "not available: no such request running");
    }
    json_decref(d);
}

static void client_gone(void *ud, const char *client, const char *user) {
    (void)user;
    llm_client_gone(ud, client);
}

static size_t room_backlog(void *ud, const char *channel) {
    return chat_node_room_backlog(ud, channel);
}

void srv_llm_wire(chat_node_t *node, llm_t *l) {
    /* An ask takes a token of the user's publish limit first: one budget for everything a user
     * makes the room receive. */
    static const chat_rpc_handler_t ask = {"llm.ask", ask_call, client_gone, true};
    static const chat_rpc_handler_t cancel = {"llm.cancel", cancel_call, NULL, false};
    int rc = chat_node_set_rpc(node, &ask, l);
    CORE_ASSERT(rc == 0);
    rc = chat_node_set_rpc(node, &cancel, l);
    CORE_ASSERT(rc == 0);
    /* Streams wait for the slowest reader of their room here rather than outrun it. */
    llm_set_backlog_probe(l, room_backlog, node);
}

/* ---- metrics ---- */

void srv_metrics_llm(void *ud, adm_metrics_writer_t *w) {
    const llm_t *l = ud;
    const llm_stats_t *st = llm_stats(l);
    adm_metrics_counter(w, "chat_llm_asks_total", "llm.ask requests received.", st->asks);
    adm_metrics_family(w, "chat_llm_rejections_total", "counter",
                       "llm.ask requests refused or dropped by the node, by reason.");
    for (int r = 0; r < LLM_REJ_COUNT; r++)
        adm_metrics_sample(w, "chat_llm_rejections_total",
                           &(adm_label_t){"reason", llm_reject_reason_name((llm_reject_reason_t)r)},
                           1, st->rejected[r]);
    adm_metrics_family(w, "chat_llm_completions_total", "counter",
                       "Requests that ended, by how: completed, failed, interrupted, cancelled.");
    const struct {
        const char *how;
        uint64_t v;
    } ends[] = {{"completed", st->completed},
                {"failed", st->failed},
                {"interrupted", st->interrupted},
                {"cancelled", st->cancelled}};
    for (size_t i = 0; i < sizeof ends / sizeof *ends; i++)
        adm_metrics_sample(w, "chat_llm_completions_total", &(adm_label_t){"outcome", ends[i].how},
                           1, ends[i].v);
    adm_metrics_counter(w, "chat_llm_retries_total", "Attempts retried before the first token.",
                        st->retries);
    adm_metrics_counter(w, "chat_llm_fallbacks_total", "Requests moved to a fallback provider.",
                        st->fallbacks);
    adm_metrics_counter(w, "chat_llm_stream_pauses_total",
                        "Streams that stopped reading from the provider because a reader of the "
                        "room was behind.",
                        st->pauses);
    adm_metrics_gauge(w, "chat_llm_streams_paused",
                      "Streams not reading from the provider now (a reader of the room is behind).",
                      st->paused);
    adm_metrics_family(w, "chat_llm_tokens_total", "counter", "Tokens reported by providers.");
    adm_metrics_sample(w, "chat_llm_tokens_total", &(adm_label_t){"direction", "input"}, 1,
                       st->tokens_in);
    adm_metrics_sample(w, "chat_llm_tokens_total", &(adm_label_t){"direction", "output"}, 1,
                       st->tokens_out);
    adm_metrics_family(w, "chat_llm_queue_depth", "gauge", "Requests waiting, by plan.");
    for (int p = 0; p < LLM_PLANS; p++)
        adm_metrics_sample(w, "chat_llm_queue_depth", &(adm_label_t){"plan", llm_plan_name(p)}, 1,
                           st->queued[p]);
    adm_metrics_gauge(w, "chat_llm_leases", "Concurrency leases this node holds (running streams).",
                      st->running);
    adm_metrics_family(w, "chat_llm_queue_wait_seconds", "histogram",
                       "Time from admission to dispatch, by plan.");
    for (int p = 0; p < LLM_PLANS; p++)
        adm_metrics_histogram_sample(w, "chat_llm_queue_wait_seconds",
                                     &(adm_label_t){"plan", llm_plan_name(p)}, 1,
                                     &st->queue_wait[p]);
    adm_metrics_histogram(w, "chat_llm_ttft_seconds", "Time from dispatch to the first token.",
                          &st->ttft);

    size_t np = llm_provider_count(l), no = llm_outcome_count();
    adm_metrics_family(w, "chat_llm_requests_total", "counter",
                       "Provider attempts by provider, key fingerprint and outcome.");
    for (size_t i = 0; i < np; i++) {
        llm_prov_view_t pv;
        llm_provider_view(l, i, &pv);
        for (size_t k = 0; k < pv.nkeys; k++) {
            llm_key_view_t kv;
            llm_key_view(l, i, k, &kv);
            for (size_t o = 0; o < no; o++) {
                adm_label_t lb[3] = {
                    {"provider", pv.name}, {"key", kv.fp}, {"outcome", llm_outcome_name(o)}};
                adm_metrics_sample(w, "chat_llm_requests_total", lb, 3, kv.outcomes[o]);
            }
        }
    }
    adm_metrics_family(
        w, "chat_llm_breaker_state", "gauge",
        "Circuit breakers: 0 closed, 1 open, 2 half-open (key \"*\": the provider's).");
    for (size_t i = 0; i < np; i++) {
        llm_prov_view_t pv;
        llm_provider_view(l, i, &pv);
        uint64_t v = strcmp(pv.breaker, "open") == 0     ? 1
                     : strcmp(pv.breaker, "closed") == 0 ? 0
                                                         : 2;
        adm_metrics_sample(w, "chat_llm_breaker_state",
                           (adm_label_t[2]){{"provider", pv.name}, {"key", "*"}}, 2, v);
        for (size_t k = 0; k < pv.nkeys; k++) {
            llm_key_view_t kv;
            llm_key_view(l, i, k, &kv);
            v = strcmp(kv.breaker, "open") == 0 ? 1 : strcmp(kv.breaker, "closed") == 0 ? 0 : 2;
            adm_metrics_sample(w, "chat_llm_breaker_state",
                               (adm_label_t[2]){{"provider", pv.name}, {"key", kv.fp}}, 2, v);
        }
    }
    adm_metrics_family(w, "chat_llm_key_cooldown_seconds", "gauge",
                       "Time left before a key that got a 429 is used again.");
    for (size_t i = 0; i < np; i++) {
        llm_prov_view_t pv;
        llm_provider_view(l, i, &pv);
        for (size_t k = 0; k < pv.nkeys; k++) {
            llm_key_view_t kv;
            llm_key_view(l, i, k, &kv);
            adm_metrics_sample_double(w, "chat_llm_key_cooldown_seconds",
                                      (adm_label_t[2]){{"provider", pv.name}, {"key", kv.fp}}, 2,
                                      (double)kv.cooldown_ms / 1000.0);
        }
    }
    adm_metrics_family(
        w, "chat_llm_key_disabled", "gauge",
        "1 for a key disabled by its provider (401/402/403, quota) until re-enabled.");
    for (int pass = 0; pass < 2; pass++) {
        const char *name = pass == 0 ? "chat_llm_key_disabled" : "chat_llm_key_inflight";
        if (pass == 1)
            adm_metrics_family(w, name, "gauge", "Streams running on a key (this node).");
        for (size_t i = 0; i < np; i++) {
            llm_prov_view_t pv;
            llm_provider_view(l, i, &pv);
            for (size_t k = 0; k < pv.nkeys; k++) {
                llm_key_view_t kv;
                llm_key_view(l, i, k, &kv);
                adm_label_t lb[2] = {{"provider", pv.name}, {"key", kv.fp}};
                adm_metrics_sample(w, name, lb, 2, pass == 0 ? (kv.disabled ? 1 : 0) : kv.inflight);
            }
        }
    }
}
