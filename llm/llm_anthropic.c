/* Anthropic Messages API, streaming (LLM.md 1.1). */
#include <stdio.h>
#include <string.h>

#include "llm/llm_provider_int.h"

static bool is(const char *s, size_t n, const char *lit) {
    return s && n == strlen(lit) && memcmp(s, lit, n) == 0;
}

static int build(const llm_request_t *req, llm_outgoing_t *out) {
    memset(out, 0, sizeof *out);
    if (!req->model || !*req->model || !req->api_key || !*req->api_key ||
        !llm__header_safe(req->api_key))
        return CORE_EINVAL;
    json_t *body = json_object();
    json_t *msgs = json_array();
    json_object_set_new(body, "model", json_string(req->model));
    json_object_set_new(body, "max_tokens", json_integer(req->max_tokens));
    json_object_set_new(body, "stream", json_true());
    int rc = 0;
    if (req->system && *req->system) {
        json_t *sys = json_string(req->system);
        if (!sys)
            rc = CORE_EINVAL;
        json_object_set_new(body, "system", sys ? sys : json_null());
    }
    for (size_t i = 0; i < req->n_messages && rc == 0; i++) {
        const llm_message_t *m = &req->messages[i];
        json_t *role = m->role ? json_string(m->role) : NULL;
        json_t *content = m->content ? json_string(m->content) : NULL;
        if (!role || !content) {
            json_decref(role);
            json_decref(content);
            rc = CORE_EINVAL;
            break;
        }
        json_t *o = json_object();
        json_object_set_new(o, "role", role);
        json_object_set_new(o, "content", content);
        json_array_append_new(msgs, o);
    }
    json_object_set_new(body, "messages", msgs);
    if (req->has_temperature)
        json_object_set_new(body, "temperature", json_real(req->temperature));
    if (rc == 0)
        rc = llm__merge_extra(body, req->extra_json);
    if (rc == 0 && !(out->url = llm__join_url(
                         req->base_url, llm_provider_anthropic.default_base_url, "/v1/messages")))
        rc = CORE_EINVAL;
    if (rc == 0)
        rc = llm__dump_body(body, out);
    json_decref(body);
    if (rc != 0) {
        llm_outgoing_free(out);
        return rc;
    }
    llm__add_header(out, "x-api-key", req->api_key);
    llm__add_header(out, "anthropic-version", "2023-06-01");
    llm__add_header(out, "content-type", "application/json");
    llm__add_header(out, "accept", "text/event-stream");
    return 0;
}

/* Usage objects are cumulative: assign every field present. */
static bool take_usage(llm_decoder_t *s, const json_t *u) {
    if (!json_is_object(u))
        return false;
    bool any = llm__take_count(u, "input_tokens", &s->usage.input_tokens);
    any |= llm__take_count(u, "output_tokens", &s->usage.output_tokens);
    any |= llm__take_count(u, "cache_creation_input_tokens", &s->usage.cache_creation_input_tokens);
    any |= llm__take_count(u, "cache_read_input_tokens", &s->usage.cache_read_input_tokens);
    return any;
}

static int decode(llm_decoder_t *s, const char *event, size_t event_len, const char *data,
                  size_t data_len, llm_chunk_t *out) {
    memset(out, 0, sizeof *out);
    json_t *root = json_loadb(data, data_len, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return llm__protocol_error(out, "event data is not a JSON object");
    }
    /* The JSON type and the SSE event name agree; the JSON is authoritative. */
    const char *type = json_string_value(json_object_get(root, "type"));
    size_t tlen = type ? strlen(type) : 0;
    if (!type) {
        type = event;
        tlen = event_len;
    }
    if (is(type, tlen, "content_block_delta")) {
        const json_t *delta = json_object_get(root, "delta");
        const json_t *text = json_object_get(delta, "text");
        if (is(json_string_value(json_object_get(delta, "type")),
               json_string_length(json_object_get(delta, "type")), "text_delta") &&
            json_is_string(text))
            llm__set_text(s, out, json_string_value(text), json_string_length(text));
    } else if (is(type, tlen, "message_start")) {
        if (take_usage(s, json_object_get(json_object_get(root, "message"), "usage")))
            out->flags |= LLM_DEC_USAGE;
    } else if (is(type, tlen, "content_block_start")) {
        const json_t *block = json_object_get(root, "content_block");
        const json_t *text = json_object_get(block, "text");
        if (is(json_string_value(json_object_get(block, "type")),
               json_string_length(json_object_get(block, "type")), "text") &&
            json_is_string(text))
            llm__set_text(s, out, json_string_value(text), json_string_length(text));
    } else if (is(type, tlen, "message_delta")) {
        const char *reason =
            json_string_value(json_object_get(json_object_get(root, "delta"), "stop_reason"));
        if (reason) {
            snprintf(s->stop_reason, sizeof s->stop_reason, "%s", reason);
            out->flags |= LLM_DEC_STOP;
        }
        if (take_usage(s, json_object_get(root, "usage")))
            out->flags |= LLM_DEC_USAGE;
    } else if (is(type, tlen, "message_stop")) {
        s->done = true;
        out->flags |= LLM_DEC_DONE;
    } else if (is(type, tlen, "ping")) {
        out->flags |= LLM_DEC_PING;
    } else if (is(type, tlen, "error")) {
        out->flags |= LLM_DEC_ERROR;
        llm__classify_stream_error(json_object_get(root, "error"), &out->error);
    }
    json_decref(root);
    return 0;
}

const llm_provider_ops_t llm_provider_anthropic = {
    .name = "anthropic",
    .default_base_url = "https://api.anthropic.com",
    .build = build,
    .decode = decode,
    .classify = llm__classify_http,
};
