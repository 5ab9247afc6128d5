/* chat: the server API (PROTOCOL.md section 4), Centrifugo's HTTP API methods as the node runs
 * them: publish, broadcast, history, presence, presence_stats, channels, disconnect, unsubscribe
 * and batch. Publications, history and presence go through the broker like a client's; acts on
 * users (disconnect, unsubscribe) go to every node of the cluster through the control channel,
 * which the broker carries like any channel and no client can name (it starts with a control
 * character, which client channel names may not contain). */
#include "chat/chat_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "api"

/* Commands one batch may hold: a batch answers in one response body. */
#define API_BATCH_MAX 1000

typedef void (*reply_fn)(void *ud, core_str_t *reply);

/* One method call: answered once through done with {"result":...} or {"error":...}. */
typedef struct {
    chat_node_t *n;
    reply_fn done;
    void *ud;
} call_t;

static void answer_error(call_t *k, int code, const char *message) {
    k->n->st.api_errors[core_reply_error_slot(code)]++;
    core_str_t s = {0};
    core_str_appendf(&s, "{\"error\":{\"code\":%d,\"message\":", code);
    if (!message)
        message = core_reply_error_message(code);
    core_str_append_json_string(&s, message, strlen(message));
    core_str_appends(&s, "}}");
    k->done(k->ud, &s);
    core_str_free(&s);
}

/* result is the JSON of the result object (without the envelope). */
static void answer_result(call_t *k, const core_str_t *result) {
    core_str_t s = {0};
    core_str_reserve(&s, result->len + 16);
    core_str_appends(&s, "{\"result\":");
    core_str_append(&s, result->ptr, result->len);
    core_str_appends(&s, "}");
    k->done(k->ud, &s);
    core_str_free(&s);
}

static void answer_empty(call_t *k) {
    core_str_t s = {0};
    core_str_appends(&s, "{}");
    answer_result(k, &s);
    core_str_free(&s);
}

static void answer_broker_error(call_t *k, int status) {
    answer_error(k, CORE_REPLY_INTERNAL,
                 status == CORE_EAGAIN ? "internal error: broker unavailable" : NULL);
}

/* The channel's namespace, or NULL after answering why the channel cannot be used. */
static const chat_ns_t *api_channel(call_t *k, const char *channel) {
    const char *bad = chat__channel_problem(channel);
    if (bad) {
        answer_error(k, CORE_REPLY_BAD_REQUEST, bad);
        return NULL;
    }
    const chat_ns_t *ns = chat_ns_find(k->n->cfg.namespaces, k->n->cfg.n_namespaces, channel);
    if (!ns)
        answer_error(k, CORE_REPLY_UNKNOWN_CHANNEL, NULL);
    return ns;
}

/* ---- publish and broadcast ---- */

static void publish_done(int status, uint64_t offset, const char *epoch, void *ud) {
    call_t *k = ud;
    if (status != 0) {
        answer_broker_error(k, status);
    } else {
        k->n->st.publications_in++;
        core_str_t r = {0};
        if (offset) {
            core_str_appendf(&r, "{\"offset\":%" PRIu64 ",\"epoch\":", offset);
            core_str_append_json_string(&r, epoch, strlen(epoch));
            core_str_appends(&r, "}");
        } else {
            core_str_appends(&r, "{}");
        }
        answer_result(k, &r);
        core_str_free(&r);
    }
    free(k);
}

/* Publishes data (a JSON value) into channel as the server: no publisher info. */
static void publish_one(call_t *k, const char *channel, const json_t *data, bool skip_history) {
    const chat_ns_t *ns = api_channel(k, channel);
    if (!ns)
        return;
    if (!data) {
        answer_error(k, CORE_REPLY_BAD_REQUEST, "bad request: data required");
        return;
    }
    char *text = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    size_t len = text ? strlen(text) : 0;
    if (!text || (ns->max_message_bytes && len > ns->max_message_bytes)) {
        char msg[96];
        snprintf(msg, sizeof msg, "bad request: data larger than %" PRIu32 " bytes",
                 ns->max_message_bytes);
        free(text);
        answer_error(k, CORE_REPLY_BAD_REQUEST, msg);
        return;
    }
    call_t *op = core_calloc(1, sizeof *op);
    *op = *k;
    clu_pub_t pub = {0, text, len, NULL, 0, NULL};
    clu_chan_opts_t o = chat__chan_opts(k->n, ns);
    if (skip_history)
        o.history_size = 0;
    int rc = clu_publish(k->n->broker, channel, &pub, &o, publish_done, op);
    free(text);
    if (rc != 0)
        publish_done(rc, 0, "", op);
}

static void m_publish(call_t *k, const json_t *params) {
    publish_one(k, chat__json_str(params, "channel"), json_object_get(params, "data"),
                json_is_true(json_object_get(params, "skip_history")));
}

/* broadcast: one publish per channel, answered together in the channels' order. */
typedef struct {
    call_t k;
    size_t n, answered;
    core_str_t *replies;
} bcast_t;

typedef struct {
    bcast_t *b;
    size_t i;
} bcast_part_t;

static void bcast_part_done(void *ud, core_str_t *reply) {
    bcast_part_t *part = ud;
    bcast_t *b = part->b;
    b->replies[part->i] = *reply;
    *reply = (core_str_t){0};
    free(part);
    if (++b->answered < b->n)
        return;
    core_str_t r = {0};
    core_str_appends(&r, "{\"responses\":[");
    for (size_t i = 0; i < b->n; i++) {
        if (i)
            core_str_appends(&r, ",");
        core_str_append(&r, b->replies[i].ptr, b->replies[i].len);
        core_str_free(&b->replies[i]);
    }
    core_str_appends(&r, "]}");
    answer_result(&b->k, &r);
    core_str_free(&r);
    free(b->replies);
    free(b);
}

/* The parts answer through bcast_part_done, which takes their reply text: reply_fn callers
 * pass a string the callee may take (left empty) or leave. */
static void m_broadcast(call_t *k, const json_t *params) {
    const json_t *chans = json_object_get(params, "channels");
    const json_t *data = json_object_get(params, "data");
    if (!json_is_array(chans) || json_array_size(chans) == 0) {
        answer_error(k, CORE_REPLY_BAD_REQUEST, "bad request: channels required");
        return;
    }
    if (json_array_size(chans) > API_BATCH_MAX) {
        answer_error(k, CORE_REPLY_LIMIT_EXCEEDED, "limit exceeded: at most 1000 channels");
        return;
    }
    bool skip = json_is_true(json_object_get(params, "skip_history"));
    bcast_t *b = core_calloc(1, sizeof *b);
    b->k = *k;
    b->n = json_array_size(chans);
    b->replies = core_calloc(b->n, sizeof *b->replies);
    /* The count is fixed before the first part can answer (parts may answer at once). */
    size_t n = b->n;
    for (size_t i = 0; i < n; i++) {
        bcast_part_t *part = core_calloc(1, sizeof *part);
        part->b = b;
        part->i = i;
        call_t pk = {k->n, bcast_part_done, part};
        publish_one(&pk, json_string_value(json_array_get(chans, i)), data, skip);
    }
}

/* ---- history ---- */

static void history_done(int status, const clu_pub_t *pubs, size_t np, uint64_t top,
                         const char *epoch, void *ud) {
    call_t *k = ud;
    if (status == CORE_EUNRECOVERABLE) {
        answer_error(k, CORE_REPLY_UNRECOVERABLE_POSITION, NULL);
    } else if (status != 0) {
        answer_broker_error(k, status);
    } else {
        core_str_t r = {0};
        core_str_appends(&r, "{\"publications\":[");
        for (size_t i = 0; i < np; i++) {
            if (i)
                core_str_appends(&r, ",");
            chat__json_append_pub(&r, &pubs[i]);
        }
        core_str_appendf(&r, "],\"offset\":%" PRIu64 ",\"epoch\":", top);
        core_str_append_json_string(&r, epoch, strlen(epoch));
        core_str_appends(&r, "}");
        answer_result(k, &r);
        core_str_free(&r);
    }
    free(k);
}

/* The namespace of a channel whose history the call reads or changes; answered (102, 107, 108)
 * and NULL when there is none. */
static const chat_ns_t *history_channel(call_t *k, const char *channel) {
    const chat_ns_t *ns = api_channel(k, channel);
    if (ns && ns->history_size == 0) {
        answer_error(k, CORE_REPLY_NOT_AVAILABLE, "not available: no history in this namespace");
        return NULL;
    }
    return ns;
}

static void m_history(call_t *k, const json_t *params) {
    const char *channel = chat__json_str(params, "channel");
    const chat_ns_t *ns = history_channel(k, channel);
    if (!ns)
        return;
    clu_history_req_t req = {0};
    const json_t *limit = json_object_get(params, "limit");
    if (limit && (!json_is_integer(limit) || json_integer_value(limit) < -1)) {
        answer_error(k, CORE_REPLY_BAD_REQUEST, "bad request: limit must be an integer >= -1");
        return;
    }
    req.limit = limit ? (json_integer_value(limit) > INT32_MAX ? INT32_MAX
                                                               : (int32_t)json_integer_value(limit))
                      : 0;
    req.reverse = json_is_true(json_object_get(params, "reverse"));
    const json_t *since = json_object_get(params, "since");
    if (since) {
        const json_t *off = json_object_get(since, "offset");
        const char *epoch = chat__json_str(since, "epoch");
        if (!json_is_object(since) || (off && !json_is_integer(off)) ||
            json_integer_value(off) < 0 || !epoch) {
            answer_error(k, CORE_REPLY_BAD_REQUEST,
                         "bad request: since must be {\"offset\":N,\"epoch\":E}");
            return;
        }
        req.has_since = true;
        req.since_offset = (uint64_t)json_integer_value(off);
        req.since_epoch = epoch;
    }
    call_t *op = core_calloc(1, sizeof *op);
    *op = *k;
    clu_chan_opts_t o = chat__chan_opts(k->n, ns);
    int rc = clu_history(k->n->broker, channel, &o, &req, history_done, op);
    if (rc != 0)
        history_done(rc, NULL, 0, 0, "", op);
}

/* ---- presence ---- */

static void presence_done(int status, const clu_presence_t *e, size_t ne, void *ud) {
    call_t *k = ud;
    if (status != 0) {
        answer_broker_error(k, status);
    } else {
        core_str_t r = {0};
        core_str_appends(&r, "{\"presence\":{");
        for (size_t i = 0; i < ne; i++) {
            if (i)
                core_str_appends(&r, ",");
            core_str_append_json_string(&r, e[i].client, strlen(e[i].client));
            core_str_appends(&r, ":");
            core_str_append(&r, e[i].info, e[i].info_len);
        }
        core_str_appends(&r, "}}");
        answer_result(k, &r);
        core_str_free(&r);
    }
    free(k);
}

static void presence_stats_done(int status, uint32_t clients, uint32_t users, void *ud) {
    call_t *k = ud;
    if (status != 0) {
        answer_broker_error(k, status);
    } else {
        core_str_t r = {0};
        core_str_appendf(&r, "{\"num_clients\":%" PRIu32 ",\"num_users\":%" PRIu32 "}", clients,
                         users);
        answer_result(k, &r);
        core_str_free(&r);
    }
    free(k);
}

static void m_presence(call_t *k, const json_t *params, bool stats) {
    const char *channel = chat__json_str(params, "channel");
    const chat_ns_t *ns = api_channel(k, channel);
    if (!ns)
        return;
    if (!ns->presence && !ns->join_leave) {
        answer_error(k, CORE_REPLY_NOT_AVAILABLE, "not available: no presence in this namespace");
        return;
    }
    call_t *op = core_calloc(1, sizeof *op);
    *op = *k;
    int rc = stats ? clu_presence_stats(k->n->broker, channel, presence_stats_done, op)
                   : clu_presence(k->n->broker, channel, presence_done, op);
    if (rc != 0) {
        if (stats)
            presence_stats_done(rc, 0, 0, op);
        else
            presence_done(rc, NULL, 0, op);
    }
}

/* ---- channels ---- */

/* Channels with subscribers on this node, with their local subscriber counts; pattern is a
 * prefix filter ("chat:" for the rooms). */
/* ---- channels: a survey of every node ---- */

/* How long a survey waits for the nodes' answers; a node that has not answered by then (dead,
 * or cut off from Redis) is left out of the result. */
#define SURVEY_TIMEOUT_MS 1000
/* A node's answer stays well inside the inter-node envelope (CLU_ENV_MAX_SIZE). */
#define SURVEY_REPLY_MAX (768u * 1024u)

typedef struct {
    call_t k;
    char id[96];
    uint32_t expected, got;
    json_t *channels; /* name -> {"num_clients": N}, summed over the answers */
    uv_timer_t timer;
} chat_survey_t;

static void survey_freed(uv_handle_t *h) {
    free(h->data);
}

/* Takes sv out of the node; it is freed once its timer has closed. */
static void survey_end(chat_survey_t *sv) {
    core_map_del(sv->k.n->surveys, sv->id);
    uv_timer_stop(&sv->timer);
    json_decref(sv->channels);
    uv_close((uv_handle_t *)&sv->timer, survey_freed);
}

static void survey_finish(chat_survey_t *sv) {
    core_str_t r = {0};
    char *body = json_dumps(sv->channels, JSON_COMPACT | JSON_SORT_KEYS);
    core_str_appendf(&r, "{\"channels\":%s}", body);
    free(body);
    if (sv->got < sv->expected)
        CORE_LOGW(MOD, "channels survey incomplete", "answers=%" PRIu32 " nodes=%" PRIu32, sv->got,
                  sv->expected);
    answer_result(&sv->k, &r);
    core_str_free(&r);
    survey_end(sv);
}

static void survey_timeout(uv_timer_t *t) {
    survey_finish(t->data);
}

void chat__surveys_close(chat_node_t *n) {
    void *v;
    core_map_iter_t it = 0;
    while (core_map_next(n->surveys, &it, NULL, &v)) {
        survey_finish(v);
        it = 0; /* finishing removed it from the map */
    }
}

/* What the publish of a survey's request remembers: the survey may be over (all nodes
 * answered, or its timeout) and freed before the broker acknowledges the publish, so the
 * survey is looked up again by its id. */
typedef struct {
    chat_node_t *n;
    char id[96];
} survey_sent_t;

static void survey_sent(int status, uint64_t offset, const char *epoch, void *ud) {
    (void)offset;
    (void)epoch;
    survey_sent_t *ss = ud;
    chat_survey_t *sv = status != 0 ? core_map_get(ss->n->surveys, ss->id) : NULL;
    free(ss);
    if (!sv)
        return;
    /* Not even this node will answer: the broker is away. */
    answer_broker_error(&sv->k, status);
    survey_end(sv);
}

static int control_publish(chat_node_t *n, json_t *act, clu_publish_cb cb, void *ud) {
    char *text = json_dumps(act, JSON_COMPACT);
    json_decref(act);
    clu_pub_t pub = {0, text, strlen(text), NULL, 0, NULL};
    clu_chan_opts_t o = {0};
    int rc = clu_publish(n->broker, CHAT_CONTROL_CHANNEL, &pub, &o, cb, ud);
    free(text);
    return rc;
}

/* channels {pattern}: the channels with subscribers on any node, with their subscriber counts
 * summed. Every node (this one included) answers the survey through the control channel. */
static void m_channels(call_t *k, const json_t *params) {
    const json_t *pat = json_object_get(params, "pattern");
    if (pat && !json_is_string(pat)) {
        answer_error(k, CORE_REPLY_BAD_REQUEST, "bad request: pattern must be a string");
        return;
    }
    chat_node_t *n = k->n;
    chat_survey_t *sv = core_calloc(1, sizeof *sv);
    sv->k = *k;
    snprintf(sv->id, sizeof sv->id, "%.64s/%" PRIu64, n->cfg.node_id ? n->cfg.node_id : "node",
             ++n->survey_seq);
    sv->expected = n->cluster_nodes ? n->cluster_nodes : 1;
    sv->channels = json_object();
    uv_timer_init(n->loop, &sv->timer);
    sv->timer.data = sv;
    uv_timer_start(&sv->timer, survey_timeout, SURVEY_TIMEOUT_MS, 0);
    core_map_put(n->surveys, sv->id, sv);
    json_t *act = json_pack("{s:s, s:s, s:s, s:s}", "op", "survey", "what", "channels", "id",
                            sv->id, "from", n->cfg.node_id ? n->cfg.node_id : "");
    if (pat)
        json_object_set(act, "pattern", (json_t *)pat);
    survey_sent_t *ss = core_calloc(1, sizeof *ss);
    ss->n = n;
    memcpy(ss->id, sv->id, sizeof ss->id);
    int rc = control_publish(n, act, survey_sent, ss);
    if (rc != 0)
        survey_sent(rc, 0, "", ss);
}

static void survey_reply_sent(int status, uint64_t offset, const char *epoch, void *ud) {
    (void)offset, (void)epoch, (void)ud;
    if (status != 0)
        CORE_LOGW(MOD, "channels survey answer not sent", "status=%d", status);
}

/* A survey on this node: its channels matching the pattern (a prefix; a trailing '*', as
 * Centrifugo's glob patterns are written, is dropped). */
static void survey_answer(chat_node_t *n, const json_t *act) {
    const char *pattern = chat__json_str(act, "pattern");
    const char *id = chat__json_str(act, "id"), *from = chat__json_str(act, "from");
    if (!id || !from)
        return;
    size_t plen = pattern ? strlen(pattern) : 0;
    if (plen && pattern[plen - 1] == '*')
        plen--;
    json_t *chans = json_object();
    size_t bytes = 0;
    bool cut = false;
    core_map_iter_t it = 0;
    void *v;
    while (core_map_next(n->channels, &it, NULL, &v)) {
        const chat_channel_t *ch = v;
        if (ch->n == 0 || (plen && strncmp(ch->name, pattern, plen) != 0))
            continue;
        bytes += strlen(ch->name) + 32;
        if (bytes > SURVEY_REPLY_MAX) {
            cut = true;
            break;
        }
        json_object_set_new(chans, ch->name, json_integer(ch->n));
    }
    if (cut)
        CORE_LOGW(MOD, "channels survey answer cut", "channels=%zu", json_object_size(chans));
    json_t *reply =
        json_pack("{s:s, s:s, s:s, s:s, s:o}", "op", "survey_reply", "id", id, "to", from, "node",
                  n->cfg.node_id ? n->cfg.node_id : "", "channels", chans);
    control_publish(n, reply, survey_reply_sent, NULL);
}

static void survey_collect(chat_node_t *n, const json_t *act) {
    const char *to = chat__json_str(act, "to"), *id = chat__json_str(act, "id");
    if (!to || !id || strcmp(to, n->cfg.node_id ? n->cfg.node_id : "") != 0)
        return;
    chat_survey_t *sv = core_map_get(n->surveys, id);
    if (!sv)
        return; /* answered after the timeout */
    const char *name;
    json_t *num;
    json_object_foreach(json_object_get(act, "channels"), name, num) {
        if (!json_is_integer(num))
            continue;
        json_t *have = json_object_get(sv->channels, name);
        json_int_t sum = json_integer_value(num) +
                         (have ? json_integer_value(json_object_get(have, "num_clients")) : 0);
        json_object_set_new(sv->channels, name, json_pack("{s:I}", "num_clients", sum));
    }
    if (++sv->got >= sv->expected)
        survey_finish(sv);
}

/* ---- disconnect and unsubscribe: through the control channel to every node ---- */

/* The broker's answer to an operation whose API result is empty (a control act, a history
 * removal): {} or the broker's error. */
static void empty_done(int status, uint64_t offset, const char *epoch, void *ud) {
    call_t *k = ud;
    (void)offset;
    (void)epoch;
    if (status != 0)
        answer_broker_error(k, status);
    else
        answer_empty(k);
    free(k);
}

/* Sends an act to every node (this one included, through its own subscription). */
static void control_send(call_t *k, json_t *act) {
    call_t *op = core_calloc(1, sizeof *op);
    *op = *k;
    int rc = control_publish(k->n, act, empty_done, op);
    if (rc != 0)
        empty_done(rc, 0, "", op);
}

static bool user_problem(call_t *k, const char *user) {
    if (!user || !*user) {
        answer_error(k, CORE_REPLY_BAD_REQUEST, "bad request: user required");
        return true;
    }
    if (strlen(user) > 1024 || chat__has_control(user)) {
        answer_error(k, CORE_REPLY_BAD_REQUEST, "bad request: invalid user id");
        return true;
    }
    return false;
}

static void m_disconnect(call_t *k, const json_t *params) {
    const char *user = chat__json_str(params, "user");
    if (user_problem(k, user))
        return;
    const char *client = chat__json_str(params, "client");
    const json_t *d = json_object_get(params, "disconnect");
    json_int_t code = CORE_DISCONNECT_FORCE_DISCONNECT;
    const char *reason = "force disconnect";
    if (d) {
        const json_t *jc = json_object_get(d, "code");
        if (!json_is_object(d) || !json_is_integer(jc) || json_integer_value(jc) < 3000 ||
            json_integer_value(jc) > 4999) {
            answer_error(k, CORE_REPLY_BAD_REQUEST,
                         "bad request: disconnect must be {\"code\":3000..4999,\"reason\":R}");
            return;
        }
        code = json_integer_value(jc);
        const char *r = chat__json_str(d, "reason");
        /* A close frame carries 123 bytes of reason at most. */
        if (r && strlen(r) <= 100)
            reason = r;
    }
    json_t *act = json_pack("{s:s, s:s, s:I, s:s}", "op", "disconnect", "user", user, "code", code,
                            "reason", reason);
    if (client)
        json_object_set_new(act, "client", json_string(client));
    CORE_LOGI(MOD, "disconnect", "user=%s client=%s code=%d", user, client ? client : "-",
              (int)code);
    control_send(k, act);
}

static void m_unsubscribe(call_t *k, const json_t *params) {
    const char *user = chat__json_str(params, "user");
    if (user_problem(k, user))
        return;
    const char *channel = chat__json_str(params, "channel");
    if (!api_channel(k, channel))
        return;
    const char *client = chat__json_str(params, "client");
    json_t *act =
        json_pack("{s:s, s:s, s:s}", "op", "unsubscribe", "user", user, "channel", channel);
    if (client)
        json_object_set_new(act, "client", json_string(client));
    CORE_LOGI(MOD, "unsubscribe", "user=%s channel=%s", user, channel);
    control_send(k, act);
}

/* history_remove {channel}: the channel's stored publications go; its position stays, so
 * subscribers recovering from before it learn that history is gone (recovered:false). */
static void m_history_remove(call_t *k, const json_t *params) {
    const char *channel = chat__json_str(params, "channel");
    if (!history_channel(k, channel))
        return;
    call_t *op = core_calloc(1, sizeof *op);
    *op = *k;
    CORE_LOGI(MOD, "history removed", "channel=%s", channel);
    int rc = clu_history_remove(k->n->broker, channel, empty_done, op);
    if (rc != 0)
        empty_done(rc, 0, "", op);
}

/* subscribe {user, channel, client}: every connection of the user (or the one client) joins
 * the channel as a server-side subscription, announced by a subscribe push. Like Centrifugo's,
 * it lasts for the connection: a reconnect subscribes what the token names, not this. */
static void m_subscribe(call_t *k, const json_t *params) {
    const char *user = chat__json_str(params, "user");
    if (user_problem(k, user))
        return;
    const char *channel = chat__json_str(params, "channel");
    if (!api_channel(k, channel))
        return;
    const char *client = chat__json_str(params, "client");
    json_t *act = json_pack("{s:s, s:s, s:s}", "op", "subscribe", "user", user, "channel", channel);
    if (client)
        json_object_set_new(act, "client", json_string(client));
    CORE_LOGI(MOD, "subscribe", "user=%s channel=%s", user, channel);
    control_send(k, act);
}

/* refresh {user, client, expired, expire_at}: expired closes the connections with 3005 (the
 * SDK reconnects with a fresh token); else expire_at (Unix seconds, 0 = never) becomes their
 * expiry. */
static void m_refresh(call_t *k, const json_t *params) {
    const char *user = chat__json_str(params, "user");
    if (user_problem(k, user))
        return;
    const json_t *exp = json_object_get(params, "expire_at");
    const json_t *expired = json_object_get(params, "expired");
    if ((exp && (!json_is_integer(exp) || json_integer_value(exp) < 0)) ||
        (expired && !json_is_boolean(expired))) {
        answer_error(k, CORE_REPLY_BAD_REQUEST,
                     "bad request: expire_at is Unix seconds (0: never), expired a boolean");
        return;
    }
    const char *client = chat__json_str(params, "client");
    json_t *act = json_pack("{s:s, s:s, s:b, s:I}", "op", "refresh", "user", user, "expired",
                            json_is_true(expired), "expire_at",
                            exp ? json_integer_value(exp) : (json_int_t)0);
    if (client)
        json_object_set_new(act, "client", json_string(client));
    CORE_LOGI(MOD, "refresh", "user=%s expired=%d", user, json_is_true(expired));
    control_send(k, act);
}

/* One act on one client of this node; returns whether it applied. */
static bool control_apply_one(chat_node_t *n, chat_client_t *c, const char *op, json_t *act) {
    const char *channel = chat__json_str(act, "channel");
    if (strcmp(op, "disconnect") == 0) {
        const char *reason = chat__json_str(act, "reason");
        chat__client_close_reason(c, (int)json_integer_value(json_object_get(act, "code")),
                                  reason ? reason : "force disconnect");
        return true;
    }
    if (strcmp(op, "unsubscribe") == 0 && channel) {
        chat_sub_t *s = chat__client_find_sub(c, channel);
        if (!s)
            return false;
        core_str_t m = {0};
        c->codec->push(&m, &(chat_push_t){.channel = channel,
                                          .kind = CHAT_PUSH_UNSUBSCRIBE,
                                          .unsub = {CHAT_UNSUB_SERVER, "server unsubscribe"}});
        chat__send_str(c, &m);
        core_str_free(&m);
        chat__sub_remove(s);
        return true;
    }
    if (strcmp(op, "subscribe") == 0 && channel) {
        const chat_ns_t *ns = chat_ns_find(n->cfg.namespaces, n->cfg.n_namespaces, channel);
        if (!ns || chat__client_find_sub(c, channel))
            return false;
        if (c->nsubs >= n->cfg.max_channels_per_conn) {
            CORE_LOGW(MOD, "server subscribe over the channel limit", "client=%s channel=%s", c->id,
                      channel);
            return false;
        }
        chat_sub_t *s = chat__sub_new(c, channel, ns, NULL);
        s->server_side = true;
        s->join_leave = ns->join_leave;
        subop_t *sop = core_calloc(1, sizeof *sop);
        sop->kind = SUBOP_SERVER;
        chat__sub_start(s, sop, false, 0, NULL);
        return true;
    }
    if (strcmp(op, "refresh") == 0) {
        if (json_is_true(json_object_get(act, "expired"))) {
            chat__client_close(c, CORE_DISCONNECT_EXPIRED);
            return true;
        }
        json_int_t at = json_integer_value(json_object_get(act, "expire_at"));
        c->has_exp = at > 0;
        c->exp = at;
        return true;
    }
    return false;
}

/* An act of the control channel, on every node: applies it to this node's clients. */
void chat__control_apply(chat_node_t *n, const clu_pub_t *pub) {
    json_error_t jerr;
    json_t *act = json_loadb(pub->data, pub->data_len, 0, &jerr);
    const char *op = chat__json_str(act, "op");
    if (op && strcmp(op, "survey") == 0) {
        survey_answer(n, act);
        json_decref(act);
        return;
    }
    if (op && strcmp(op, "survey_reply") == 0) {
        survey_collect(n, act);
        json_decref(act);
        return;
    }
    const char *user = chat__json_str(act, "user");
    const char *client = chat__json_str(act, "client");
    if (!op || !user) {
        CORE_LOGW(MOD, "control act dropped", "reason=undecodable");
        json_decref(act);
        return;
    }
    uint32_t hit = 0;
    /* Users are few per node; a user's clients are not listed apart, so the walk is over the
     * node's clients, which an operator's act can afford (microseconds per thousand). */
    for (core_list_t *it = n->all.next, *next; it != &n->all; it = next) {
        next = it->next;
        chat_client_t *c = CORE_CONTAINER_OF(it, chat_client_t, link);
        if (c->state != CL_CONNECTED || strcmp(c->user->name, user) != 0 ||
            (client && strcmp(c->id, client) != 0))
            continue;
        hit += control_apply_one(n, c, op, act);
    }
    if (hit)
        CORE_LOGI(MOD, "control act applied", "op=%s user=%s clients=%" PRIu32, op, user, hit);
    json_decref(act);
}

/* ---- dispatch and batch ---- */

static void call_method(chat_node_t *n, const char *method, const json_t *params, reply_fn done,
                        void *ud);

/* A sequence of commands run one after another, in order, like Centrifugo's sequential batch.
 * batch names each result by its method: {"replies":[{"publish":{...}},{"error":{...}}]}; the
 * line-per-command form (chat_api_lines) answers with the replies one per line. */
typedef struct {
    call_t k;
    json_t *cmds; /* [{"<method>":{params}}, ...], owned */
    bool lines;
    size_t i;
    core_str_t out;
    bool in_step;  /* inside seq_step: an answer given at once continues the loop there */
    bool answered; /* the current command answered */
} seq_t;

static void seq_step(seq_t *q);

static void seq_part_done(void *ud, core_str_t *reply) {
    seq_t *q = ud;
    void *iter = json_object_iter(json_array_get(q->cmds, q->i));
    if (q->i)
        core_str_appends(&q->out, q->lines ? "\n" : ",");
    /* reply is {"result":R} or {"error":E}: in a batch a result goes under the method's name. */
    if (!q->lines && iter && reply->len > 10 && strncmp(reply->ptr, "{\"result\":", 10) == 0) {
        const char *method = json_object_iter_key(iter);
        core_str_appends(&q->out, "{");
        core_str_append_json_string(&q->out, method, strlen(method));
        core_str_appends(&q->out, ":");
        core_str_append(&q->out, reply->ptr + 10, reply->len - 11);
        core_str_appends(&q->out, "}");
    } else {
        core_str_append(&q->out, reply->ptr, reply->len);
    }
    q->i++;
    q->answered = true;
    if (!q->in_step)
        seq_step(q);
}

static void seq_step(seq_t *q) {
    q->in_step = true;
    while (q->i < json_array_size(q->cmds)) {
        const json_t *cmd = json_array_get(q->cmds, q->i);
        void *iter = json_object_iter((json_t *)cmd);
        q->answered = false;
        call_t k = {q->k.n, seq_part_done, q};
        if (!json_is_object(cmd) || json_object_size(cmd) != 1 || !iter)
            answer_error(&k, CORE_REPLY_BAD_REQUEST,
                         q->lines ? "bad request: a line is {\"method\":M,\"params\":{...}}"
                                  : "bad request: a command is {\"<method>\":{params}}");
        else if (strcmp(json_object_iter_key(iter), "batch") == 0)
            answer_error(&k, CORE_REPLY_BAD_REQUEST, "bad request: batch inside batch");
        else
            call_method(q->k.n, json_object_iter_key(iter), json_object_iter_value(iter),
                        seq_part_done, q);
        if (!q->answered) {
            /* Answers later, from the loop: seq_part_done goes on from there. */
            q->in_step = false;
            return;
        }
    }
    core_str_t r = {0};
    if (q->lines) {
        r = q->out;
        q->out = (core_str_t){0};
    } else {
        core_str_appends(&r, "{\"replies\":[");
        core_str_append(&r, q->out.ptr, q->out.len);
        core_str_appends(&r, "]}");
    }
    q->k.done(q->k.ud, &r);
    core_str_free(&r);
    core_str_free(&q->out);
    json_decref(q->cmds);
    free(q);
}

static void seq_start(call_t *k, json_t *cmds, bool lines) {
    seq_t *q = core_calloc(1, sizeof *q);
    q->k = *k;
    q->cmds = cmds;
    q->lines = lines;
    seq_step(q);
}

static void m_batch(call_t *k, const json_t *params) {
    json_t *cmds = json_object_get(params, "commands");
    if (!json_is_array(cmds)) {
        answer_error(k, CORE_REPLY_BAD_REQUEST, "bad request: commands required");
        return;
    }
    if (json_array_size(cmds) > API_BATCH_MAX) {
        answer_error(k, CORE_REPLY_LIMIT_EXCEEDED, "limit exceeded: at most 1000 commands");
        return;
    }
    seq_start(k, json_incref(cmds), false);
}

static const char *const api_methods[CHAT_API_METHOD_COUNT] = {
    "publish",    "broadcast",   "history", "presence",  "presence_stats", "channels",
    "disconnect", "unsubscribe", "batch",   "subscribe", "refresh",        "history_remove"};

static int api_method_index(const char *method) {
    for (int i = 0; i < CHAT_API_METHOD_COUNT; i++)
        if (strcmp(method, api_methods[i]) == 0)
            return i;
    return -1;
}

bool chat_api_has_method(const char *method) {
    return api_method_index(method) >= 0;
}

const char *chat_api_method_name(int i) {
    return i >= 0 && i < CHAT_API_METHOD_COUNT ? api_methods[i] : "unknown";
}

static void call_method(chat_node_t *n, const char *method, const json_t *params, reply_fn done,
                        void *ud) {
    call_t k = {n, done, ud};
    int idx = api_method_index(method);
    if (idx >= 0)
        n->st.api_calls[idx]++;
    if (params && !json_is_object(params)) {
        answer_error(&k, CORE_REPLY_BAD_REQUEST, "bad request: params must be an object");
        return;
    }
    if (strcmp(method, "publish") == 0)
        m_publish(&k, params);
    else if (strcmp(method, "broadcast") == 0)
        m_broadcast(&k, params);
    else if (strcmp(method, "history") == 0)
        m_history(&k, params);
    else if (strcmp(method, "presence") == 0)
        m_presence(&k, params, false);
    else if (strcmp(method, "presence_stats") == 0)
        m_presence(&k, params, true);
    else if (strcmp(method, "channels") == 0)
        m_channels(&k, params);
    else if (strcmp(method, "disconnect") == 0)
        m_disconnect(&k, params);
    else if (strcmp(method, "unsubscribe") == 0)
        m_unsubscribe(&k, params);
    else if (strcmp(method, "batch") == 0)
        m_batch(&k, params);
    else if (strcmp(method, "subscribe") == 0)
        m_subscribe(&k, params);
    else if (strcmp(method, "refresh") == 0)
        m_refresh(&k, params);
    else if (strcmp(method, "history_remove") == 0)
        m_history_remove(&k, params);
    else
        answer_error(&k, CORE_REPLY_METHOD_NOT_FOUND, NULL);
}

/* ---- entry points ---- */

typedef struct {
    chat_api_done_fn done;
    void *ud;
} entry_t;

static void entry_done(void *ud, core_str_t *reply) {
    entry_t *e = ud;
    e->done(e->ud, reply->ptr ? reply->ptr : "", reply->len);
    free(e);
}

static call_t entry_new(chat_node_t *n, chat_api_done_fn done, void *ud) {
    entry_t *e = core_calloc(1, sizeof *e);
    e->done = done;
    e->ud = ud;
    return (call_t){n, entry_done, e};
}

static json_t *parse_params(const char *body, size_t len, core_str_t *err) {
    if (len == 0)
        return json_object();
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        const char *m = root ? "bad request: the body must be a JSON object"
                             : "bad request: the body is not JSON";
        core_str_appendf(err, "{\"error\":{\"code\":%d,\"message\":", CORE_REPLY_BAD_REQUEST);
        core_str_append_json_string(err, m, strlen(m));
        core_str_appends(err, "}}");
        json_decref(root);
        return NULL;
    }
    return root;
}

void chat_api_call(chat_node_t *n, const char *method, const char *body, size_t len,
                   chat_api_done_fn done, void *ud) {
    core_str_t err = {0};
    json_t *params = parse_params(body, len, &err);
    if (!params) {
        n->st.api_errors[core_reply_error_slot(CORE_REPLY_BAD_REQUEST)]++;
        done(ud, err.ptr, err.len);
        core_str_free(&err);
        return;
    }
    call_t k = entry_new(n, done, ud);
    call_method(n, method, params, k.done, k.ud);
    json_decref(params);
}

/* The older form of a batch (cent.js's pipeline, Centrifugo before v5): lines of
 * {"method":M,"params":P} in, lines of {"result":R} or {"error":E} out, in order. Each line
 * becomes a command of the batch form; one that is not a command stays in its place as an
 * empty object, answered with 107. */
void chat_api_lines(chat_node_t *n, const char *body, size_t len, chat_api_done_fn done, void *ud) {
    json_t *cmds = json_array();
    for (size_t pos = 0; pos < len && json_array_size(cmds) <= API_BATCH_MAX;) {
        const char *nl = memchr(body + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - body) : len;
        if (end > pos) {
            json_error_t jerr;
            json_t *line = json_loadb(body + pos, end - pos, JSON_REJECT_DUPLICATES, &jerr);
            const char *method = chat__json_str(line, "method");
            json_t *params = json_object_get(line, "params");
            json_t *cmd = json_object();
            if (method)
                json_object_set_new(cmd, method, params ? json_incref(params) : json_object());
            json_array_append_new(cmds, cmd);
            json_decref(line);
        }
        pos = end + 1;
    }
    if (json_array_size(cmds) > API_BATCH_MAX) {
        json_decref(cmds);
        const char *e = "{\"error\":{\"code\":106,\"message\":\"limit exceeded: at most 1000 "
                        "commands\"}}";
        done(ud, e, strlen(e));
        return;
    }
    call_t k = entry_new(n, done, ud);
    seq_start(&k, cmds, true);
}
