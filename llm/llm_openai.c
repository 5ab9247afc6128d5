/* OpenAI chat completions, streaming (LLM.md 1.2), with the OpenRouter (1.3) and Venice (1.4)
 * variations of the same format. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/llm_provider_int.h"

static json_t *message(const char *role, const char *content) {
    json_t *r = role ? json_string(role) : NULL;
    json_t *c = content ? json_string(content) : NULL;
    if (!r || !c) {
        json_decref(r);
        json_decref(c);
        return NULL;
    }
    json_t *o = json_object();
    json_object_set_new(o, "role", r);
    json_object_set_new(o, "content", c);
    return o;
}

static int build(const llm_request_t *req, llm_outgoing_t *out) {
    memset(out, 0, sizeof *out);
    if (!req->model || !*req->model || !req->api_key || !*req->api_key ||
        !llm__header_safe(req->api_key))
        return CORE_EINVAL;
    json_t *body = json_object();
    json_t *msgs = json_array();
    json_object_set_new(body, "model", json_string(req->model));
    json_object_set_new(body, "stream", json_true());
    json_object_set_new(body, "stream_options", json_pack("{s:b}", "include_usage", 1));
    if (req->max_tokens)
        json_object_set_new(body, "max_tokens", json_integer(req->max_tokens));
    int rc = 0;
    if (req->system && *req->system) {
        json_t *m = message("system", req->system);
        if (m)
            json_array_append_new(msgs, m);
        else
            rc = CORE_EINVAL;
    }
    for (size_t i = 0; i < req->n_messages && rc == 0; i++) {
        json_t *m = message(req->messages[i].role, req->messages[i].content);
        if (m)
            json_array_append_new(msgs, m);
        else
            rc = CORE_EINVAL;
    }
    json_object_set_new(body, "messages", msgs);
    if (req->has_temperature)
        json_object_set_new(body, "temperature", json_real(req->temperature));
    if (rc == 0)
        rc = llm__merge_extra(body, req->extra_json);
    if (rc == 0 && !(out->url = llm__join_url(req->base_url, llm_provider_openai.default_base_url,
                                              "/chat/completions")))
        rc = CORE_EINVAL;
    if (rc == 0)
        rc = llm__dump_body(body, out);
    json_decref(body);
    if (rc != 0) {
        llm_outgoing_free(out);
        return rc;
    }
    size_t n = strlen(req->api_key) + 8;
    char *auth = core_malloc(n);
    snprintf(auth, n, "Bearer %s", req->api_key);
    llm__add_header(out, "Authorization", auth);
    free(auth);
    llm__add_header(out, "Content-Type", "application/json");
    llm__add_header(out, "Accept", "text/event-stream");
    return 0;
}

static int decode(llm_decoder_t *s, const char *event, size_t event_len, const char *data,
                  size_t data_len, llm_chunk_t *out) {
    (void)event; /* OpenAI-compatible streams carry everything in data */
    (void)event_len;
    memset(out, 0, sizeof *out);
    if (data_len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        s->done = true;
        out->flags |= LLM_DEC_DONE;
        return 0;
    }
    json_t *root = json_loadb(data, data_len, 0, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return llm__protocol_error(out, "chunk is not a JSON object");
    }
    const json_t *err = json_object_get(root, "error");
    if (err && !json_is_null(err)) {
        out->flags |= LLM_DEC_ERROR;
        if (json_is_object(err))
            llm__classify_stream_error(err, &out->error);
        else
            llm__error_set(&out->error, LLM_ERR_SERVER, 0, "error", json_string_value(err));
    }
    /* choices can be [], null or missing (the usage-only final chunk); only the first matters
     * because the request asks for one completion. */
    const json_t *c0 = json_array_get(json_object_get(root, "choices"), 0);
    if (json_is_object(c0)) {
        const json_t *content = json_object_get(json_object_get(c0, "delta"), "content");
        if (json_is_string(content))
            llm__set_text(s, out, json_string_value(content), json_string_length(content));
        const char *finish = json_string_value(json_object_get(c0, "finish_reason"));
        if (finish && strcmp(finish, "error") == 0) {
            if (!(out->flags & LLM_DEC_ERROR)) {
                out->flags |= LLM_DEC_ERROR;
                llm__error_set(&out->error, LLM_ERR_SERVER, 0, "finish_reason_error",
                               "the provider ended the completion with an error");
            }
        } else if (finish) {
            snprintf(s->stop_reason, sizeof s->stop_reason, "%s", finish);
            out->flags |= LLM_DEC_STOP;
        }
    }
    const json_t *u = json_object_get(root, "usage");
    if (json_is_object(u)) {
        bool any = llm__take_count(u, "prompt_tokens", &s->usage.input_tokens);
        any |= llm__take_count(u, "completion_tokens", &s->usage.output_tokens);
        any |= llm__take_count(json_object_get(u, "prompt_tokens_details"), "cached_tokens",
                               &s->usage.cache_read_input_tokens);
        if (any)
            out->flags |= LLM_DEC_USAGE;
    }
    json_decref(root);
    return 0;
}

const llm_provider_ops_t llm_provider_openai = {
    .name = "openai",
    .default_base_url = "https://api.openai.com/v1",
    .build = build,
    .decode = decode,
    .classify = llm__classify_http,
};
