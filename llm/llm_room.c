/* llm: what a request publishes: llm.start, the coalesced llm.delta publications and the stored
 * answer or llm.error into the room, queue positions into the requester's personal channel; and
 * the backpressure that stops a stream while a reader of the room is behind. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/llm_int.h"

#define MOD "llm"

/* ---- publishing into rooms ------------------------------------------------------------------- */

static void published(int status, uint64_t offset, const char *epoch, void *ud) {
    (void)offset;
    (void)epoch;
    llm_req_t *r = ud;
    LLM_TRACE(r);
    if (status != 0)
        CORE_LOGW(MOD, "publication failed", "request=%s status=%s", r->id, core_strerror(status));
    llm__req_back(r);
}

static void publish_json(llm_req_t *r, const char *channel, const core_str_t *data, bool stored) {
    llm_t *l = r->l;
    core_str_t info = {0};
    core_str_appends(&info, "{\"user\":\"assistant\",\"client\":");
    core_str_append_json_string(&info, r->id, strlen(r->id));
    core_str_appends(&info, "}");
    /* The answer is kept as long as the asker's plan keeps messages (retention). */
    clu_pub_t pub = {.data = data->ptr,
                     .data_len = data->len,
                     .info = info.ptr,
                     .info_len = info.len,
                     .plan = llm_plan_name(r->plan)};
    clu_chan_opts_t opts = stored ? r->room_opts : (clu_chan_opts_t){0};
    r->pending_ops++;
    int rc = clu_publish(l->broker, channel, &pub, &opts, published, r);
    if (rc != 0) {
        r->pending_ops--;
        CORE_LOGW(MOD, "publication failed", "request=%s status=%s", r->id, core_strerror(rc));
    }
    core_str_free(&info);
}

static void json_head(core_str_t *s, const char *type, const llm_req_t *r) {
    core_str_appends(s, "{\"type\":\"");
    core_str_appends(s, type);
    core_str_appends(s, "\",\"request_id\":");
    core_str_append_json_string(s, r->id, strlen(r->id));
}

const char *llm__req_model(const llm_req_t *r) {
    return r->l->provs[r->prov].cfg->model;
}

void llm__publish_start(llm_req_t *r) {
    core_str_t s = {0};
    json_head(&s, "llm.start", r);
    core_str_appends(&s, ",\"model\":");
    core_str_append_json_string(&s, llm__req_model(r), strlen(llm__req_model(r)));
    core_str_appends(&s, "}");
    publish_json(r, r->channel, &s, false);
    core_str_free(&s);
}

/* ---- backpressure ------------------------------------------------------------------------------
 * A room whose slowest reader on this node is far behind would only grow that reader's queue
 * until it is closed as slow (3008). The stream stops reading from the provider instead: the
 * provider's bytes wait in the kernel and the stream picks up where it stopped once the reader
 * has caught up to half the bound. Readers on other nodes are not probed: each node protects its
 * own. */

void llm__set_paused(llm_req_t *r, bool paused) {
    llm_t *l = r->l;
    if (r->paused == paused)
        return;
    r->paused = paused;
    if (paused) {
        l->st.pauses++;
        l->st.paused++;
    } else
        l->st.paused--;
}

static void maybe_pause(llm_req_t *r) {
    llm_t *l = r->l;
    if (r->paused || !r->stream || !l->backlog || l->cfg.pause_backlog_bytes == 0)
        return;
    if (l->backlog(l->backlog_ud, r->channel) <= l->cfg.pause_backlog_bytes)
        return;
    llm__set_paused(r, true);
    l->provs[r->prov].ops->pause(r->stream);
}

void llm__maybe_resume(llm_req_t *r) {
    llm_t *l = r->l;
    if (!r->paused || !r->stream)
        return;
    if (l->backlog(l->backlog_ud, r->channel) > l->cfg.pause_backlog_bytes / 2)
        return;
    llm__set_paused(r, false);
    l->provs[r->prov].ops->resume(r->stream);
}

void llm_set_usage_sink(llm_t *l, llm_settled_fn fn, void *ud) {
    l->usage = fn;
    l->usage_ud = ud;
}

void llm_set_backlog_probe(llm_t *l, llm_backlog_fn fn, void *ud) {
    l->backlog = fn;
    l->backlog_ud = ud;
}

/* Publishes the text not yet sent as one delta; the room's readers are checked at the same pace
 * (not per token: a big room costs one walk of its members per publication). */
void llm__flush_delta(llm_req_t *r) {
    if (r->flushed >= r->text.len)
        return;
    core_str_t s = {0};
    json_head(&s, "llm.delta", r);
    core_str_appendf(&s, ",\"index\":%u,\"text\":", r->delta_index++);
    core_str_append_json_string(&s, r->text.ptr + r->flushed, r->text.len - r->flushed);
    core_str_appends(&s, "}");
    r->flushed = r->text.len;
    publish_json(r, r->channel, &s, false);
    core_str_free(&s);
    maybe_pause(r);
}

/* The stored answer: complete, interrupted by a provider failure, or cancelled. */
void llm__publish_final(llm_req_t *r, const char *marker) {
    core_str_t s = {0};
    core_str_appends(&s, "{\"type\":\"message\",\"role\":\"assistant\",\"text\":");
    core_str_append_json_string(&s, r->text.ptr ? r->text.ptr : "", r->text.len);
    core_str_appends(&s, ",\"request_id\":");
    core_str_append_json_string(&s, r->id, strlen(r->id));
    core_str_appends(&s, ",\"model\":");
    core_str_append_json_string(&s, llm__req_model(r), strlen(llm__req_model(r)));
    core_str_appendf(&s, ",\"usage\":{\"input_tokens\":%u,\"output_tokens\":%u}", r->in_tokens,
                     r->out_tokens);
    if (marker)
        core_str_appendf(&s, ",\"%s\":true", marker);
    /* Dated like every chat message (chat_message_normalize): the server's clock. */
    core_str_appendf(&s, ",\"ts\":%" PRId64 "}", core_wall_ms());
    publish_json(r, r->channel, &s, true);
    core_str_free(&s);
}

void llm__publish_error(llm_req_t *r, int code, const char *message) {
    core_str_t s = {0};
    json_head(&s, "llm.error", r);
    core_str_appendf(&s, ",\"code\":%d,\"message\":", code);
    core_str_append_json_string(&s, message, strlen(message));
    core_str_appends(&s, "}");
    publish_json(r, r->channel, &s, false);
    core_str_free(&s);
}

void llm__publish_position(llm_req_t *r, uint32_t pos) {
    if (!r->personal || pos == r->last_position)
        return;
    r->last_position = pos;
    core_str_t s = {0};
    json_head(&s, "llm.queued", r);
    core_str_appendf(&s, ",\"queue_position\":%u}", pos);
    publish_json(r, r->personal, &s, false);
    core_str_free(&s);
}
