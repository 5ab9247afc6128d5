/* Unit tests for the provider codecs: request building, stream decoding through the SSE parser
 * with the byte-exact samples of docs LLM.md 1.1-1.3, error classification and rate-limit
 * headers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "llm/llm_provider.h"

/* ---- helpers --------------------------------------------------------------------------------- */

typedef struct {
    const llm_provider_ops_t *ops;
    llm_decoder_t st;
    core_str_t text;
    int pings, errors, stops, dones, usages, protocol_errors;
    llm_error_t last_error;
} run_t;

static int on_event(void *ud, const char *event, size_t elen, const char *data, size_t dlen) {
    run_t *r = ud;
    llm_chunk_t c;
    int rc = r->ops->decode(&r->st, event, elen, data, dlen, &c);
    if (rc == CORE_EPROTO) {
        assert_true(c.flags & LLM_DEC_ERROR);
        assert_int_equal(c.error.cls, LLM_ERR_PROTOCOL);
        r->protocol_errors++;
        return 0;
    }
    assert_int_equal(rc, 0);
    if (c.flags & LLM_DEC_TEXT)
        core_str_append(&r->text, c.text, c.text_len);
    if (c.flags & LLM_DEC_PING)
        r->pings++;
    if (c.flags & LLM_DEC_STOP)
        r->stops++;
    if (c.flags & LLM_DEC_DONE)
        r->dones++;
    if (c.flags & LLM_DEC_USAGE)
        r->usages++;
    if (c.flags & LLM_DEC_ERROR) {
        r->errors++;
        r->last_error = c.error;
    }
    return 0;
}

/* Runs a whole SSE body through the parser and the codec, one byte per feed so that every
 * chunk boundary is exercised. */
static void run_stream(run_t *r, const llm_provider_ops_t *ops, const char *body) {
    memset(r, 0, sizeof *r);
    r->ops = ops;
    llm_decoder_init(&r->st);
    llm_sse_t *p = llm_sse_new(0, 0, on_event, r);
    for (size_t i = 0; body[i]; i++)
        assert_int_equal(llm_sse_feed(p, body + i, 1), 0);
    assert_true(llm_sse_idle(p));
    llm_sse_free(p);
}

static void run_free(run_t *r) {
    llm_decoder_free(&r->st);
    core_str_free(&r->text);
}

static const char *text_of(run_t *r) {
    return r->text.ptr ? r->text.ptr : "";
}

/* ---- Anthropic ------------------------------------------------------------------------------- */

/* LLM.md 1.1, the body of the 200 response, byte for byte. */
static const char anthropic_sample[] =
    "event: message_start\n"
    "data: "
    "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\","
    "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-"
    "20250929\","
    "\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,"
    "\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n"
    "\n"
    "event: content_block_start\n"
    "data: "
    "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":"
    "\"\"}}\n"
    "\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n"
    "\n"
    "event: content_block_delta\n"
    "data: "
    "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
    "\"Hello\"}}\n"
    "\n"
    "event: content_block_delta\n"
    "data: "
    "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!"
    "\"}}\n"
    "\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n"
    "\n"
    "event: message_delta\n"
    "data: "
    "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
    "\"usage\":{\"output_tokens\":15}}\n"
    "\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n"
    "\n";

static void test_anthropic_sample(void **state) {
    (void)state;
    run_t r;
    run_stream(&r, &llm_provider_anthropic, anthropic_sample);
    assert_string_equal(text_of(&r), "Hello!");
    assert_int_equal(r.st.deltas, 2);
    assert_int_equal(r.pings, 1);
    assert_int_equal(r.errors + r.protocol_errors, 0);
    assert_int_equal(r.stops, 1);
    assert_string_equal(r.st.stop_reason, "end_turn");
    assert_int_equal(r.dones, 1);
    assert_true(r.st.done);
    /* message_delta's usage is cumulative: 15, not 1 + 15. */
    assert_int_equal(r.st.usage.input_tokens, 25);
    assert_int_equal(r.st.usage.output_tokens, 15);
    assert_int_equal(r.st.usage.cache_creation_input_tokens, 0);
    assert_int_equal(r.st.usage.cache_read_input_tokens, 0);
    assert_int_equal(r.usages, 2);
    run_free(&r);
}

static void test_anthropic_variants(void **state) {
    (void)state;
    run_t r;
    /* Newer API versions repeat input and cache counts in message_delta: the last value wins
     * per field; non-text deltas are ignored; two message_deltas do not add up. */
    run_stream(&r, &llm_provider_anthropic,
               "event: message_start\r\n"
               "data: "
               "{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_"
               "tokens\":1}}}\r\n\r\n"
               "event: content_block_delta\r\n"
               "data: "
               "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_"
               "delta\",\"thinking\":\"hmm\"}}\r\n\r\n"
               "event: content_block_delta\r\n"
               "data: "
               "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_"
               "delta\",\"signature\":\"x\"}}\r\n\r\n"
               "event: content_block_delta\r\n"
               "data: "
               "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_"
               "delta\",\"partial_json\":\"{\"}}\r\n\r\n"
               "event: content_block_delta\r\n"
               "data: "
               "{\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"text_delta\","
               "\"text\":\"h\xC3\xA9\"}}\r\n\r\n"
               "event: some_future_event\r\n"
               "data: {\"type\":\"some_future_event\",\"text\":\"no\"}\r\n\r\n"
               "event: message_delta\r\n"
               "data: "
               "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_"
               "tokens\":7}}\r\n\r\n"
               "event: message_delta\r\n"
               "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},"
               "\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":4,\"output_tokens\":9}}"
               "\r\n\r\n");
    assert_string_equal(text_of(&r), "h\xC3\xA9");
    assert_int_equal(r.st.deltas, 1);
    assert_int_equal(r.st.usage.input_tokens, 12);
    assert_int_equal(r.st.usage.output_tokens, 9);
    assert_int_equal(r.st.usage.cache_read_input_tokens, 4);
    assert_int_equal(r.st.usage.cache_creation_input_tokens, -1);
    assert_string_equal(r.st.stop_reason, "max_tokens");
    assert_false(r.st.done); /* no message_stop: a cut stream */
    run_free(&r);
}

static void test_anthropic_errors_in_stream(void **state) {
    (void)state;
    run_t r;
    run_stream(&r, &llm_provider_anthropic,
               "event: message_start\n"
               "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\n\n"
               "event: error\n"
               "data: "
               "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":"
               "\"Overloaded\"}}\n\n");
    assert_int_equal(r.errors, 1);
    assert_int_equal(r.last_error.cls, LLM_ERR_OVERLOADED);
    assert_true(r.last_error.retryable);
    assert_string_equal(r.last_error.type, "overloaded_error");
    assert_string_equal(r.last_error.message, "Overloaded");
    assert_true(llm_err_class_provider_wide(r.last_error.cls));
    run_free(&r);

    run_stream(&r, &llm_provider_anthropic,
               "event: error\n"
               "data: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Internal "
               "server error\"}}\n\n");
    assert_int_equal(r.last_error.cls, LLM_ERR_SERVER);
    run_free(&r);

    /* Malformed data is a protocol error, not a crash and not a silent skip. */
    run_stream(&r, &llm_provider_anthropic,
               "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\n\n"
               "event: ping\ndata: [1,2]\n\n"
               "event: ping\ndata: \"ping\"\n\n");
    assert_int_equal(r.protocol_errors, 3);
    run_free(&r);
}

static void test_anthropic_build(void **state) {
    (void)state;
    const llm_message_t msgs[] = {
        {"user", "Hello"}, {"assistant", "Hi"}, {"user", "\xE2\x82\xAC?"}};
    llm_request_t req = {.api_key = "sk-ant-test",
                         .model = "claude-sonnet-4-5",
                         .system = "You are a helpful chat bot.",
                         .messages = msgs,
                         .n_messages = 3,
                         .max_tokens = 1024};
    llm_outgoing_t o;
    assert_int_equal(llm_provider_anthropic.build(&req, &o), 0);
    assert_string_equal(o.url, "https://api.anthropic.com/v1/messages");
    assert_int_equal(o.n_headers, 4);
    assert_string_equal(o.headers[0], "x-api-key: sk-ant-test");
    assert_string_equal(o.headers[1], "anthropic-version: 2023-06-01");
    assert_string_equal(o.headers[2], "content-type: application/json");
    assert_string_equal(
        o.body, "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":1024,\"stream\":true,"
                "\"system\":\"You are a helpful chat bot.\",\"messages\":[{\"role\":\"user\","
                "\"content\":\"Hello\"},{\"role\":\"assistant\",\"content\":\"Hi\"},"
                "{\"role\":\"user\",\"content\":\"\xE2\x82\xAC?\"}]}");
    assert_int_equal(o.body_len, strlen(o.body));
    llm_outgoing_free(&o);

    /* Base URLs as the SDK takes them, trailing slashes tolerated; extra body fields merged. */
    req.base_url = "http://127.0.0.1:8089//";
    req.system = NULL;
    req.has_temperature = true;
    req.temperature = 0;
    req.extra_json = "{\"metadata\":{\"user_id\":\"u1\"}}";
    assert_int_equal(llm_provider_anthropic.build(&req, &o), 0);
    assert_string_equal(o.url, "http://127.0.0.1:8089/v1/messages");
    json_t *b = json_loads(o.body, 0, NULL);
    assert_non_null(b);
    assert_null(json_object_get(b, "system"));
    assert_true(json_is_real(json_object_get(b, "temperature")));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(b, "metadata"), "user_id")), "u1");
    json_decref(b);
    llm_outgoing_free(&o);

    /* Refusals: a key that would split the header, invalid UTF-8, a non-object extra. */
    llm_request_t bad = req;
    bad.api_key = "sk\r\nx-evil: 1";
    assert_int_equal(llm_provider_anthropic.build(&bad, &o), CORE_EINVAL);
    bad = req;
    bad.model = NULL;
    assert_int_equal(llm_provider_anthropic.build(&bad, &o), CORE_EINVAL);
    const llm_message_t badmsg[] = {{"user", "\xC3("}};
    bad = req;
    bad.messages = badmsg;
    bad.n_messages = 1;
    assert_int_equal(llm_provider_anthropic.build(&bad, &o), CORE_EINVAL);
    bad = req;
    bad.extra_json = "[1]";
    assert_int_equal(llm_provider_anthropic.build(&bad, &o), CORE_EINVAL);
    bad = req;
    bad.base_url = "http://x y";
    assert_int_equal(llm_provider_anthropic.build(&bad, &o), CORE_EINVAL);
}

/* ---- OpenAI ---------------------------------------------------------------------------------- */

#define CHUNK_HEAD                                                                                 \
    "data: {\"id\":\"chatcmpl-9xA1\",\"object\":\"chat.completion.chunk\",\"created\":1727000000," \
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_f85bea6784\","

/* LLM.md 1.2, the body of the 200 response, byte for byte. */
static const char openai_sample[] = CHUNK_HEAD
    "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\","
    "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n"
    "\n" CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,"
    "\"finish_reason\":null}],\"usage\":null}\n"
    "\n" CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":null,"
    "\"finish_reason\":null}],\"usage\":null}\n"
    "\n" CHUNK_HEAD "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
    "\"finish_reason\":\"stop\"}],\"usage\":null}\n"
    "\n" CHUNK_HEAD "\"choices\":[],\"usage\":{\"prompt_tokens\":9,"
    "\"completion_tokens\":2,\"total_tokens\":11}}\n"
    "\n"
    "data: [DONE]\n"
    "\n";

static void test_openai_sample(void **state) {
    (void)state;
    run_t r;
    run_stream(&r, &llm_provider_openai, openai_sample);
    assert_string_equal(text_of(&r), "Hello!");
    assert_int_equal(r.st.deltas, 2); /* the empty role chunk is not a delta */
    assert_int_equal(r.errors + r.protocol_errors, 0);
    assert_string_equal(r.st.stop_reason, "stop");
    assert_int_equal(r.st.usage.input_tokens, 9);
    assert_int_equal(r.st.usage.output_tokens, 2);
    assert_int_equal(r.usages, 1);
    assert_int_equal(r.dones, 1);
    assert_true(r.st.done);
    run_free(&r);
}

static void test_openai_usage_variants(void **state) {
    (void)state;
    /* The usage-only final chunk with choices null, and with choices missing; OpenRouter
     * keep-alive comments between chunks; cached tokens. */
    const char *finals[] = {
        "data: "
        "{\"id\":\"x\",\"choices\":null,\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,"
        "\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n",
        "data: {\"id\":\"x\",\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,"
        "\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n",
    };
    for (int i = 0; i < 2; i++) {
        char body[1024];
        snprintf(
            body, sizeof body,
            ": OPENROUTER PROCESSING\n\n"
            "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n"
            ": OPENROUTER PROCESSING\n\n"
            "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":null},"
            "\"finish_reason\":\"length\"}]}\n\n"
            "%s"
            "data: [DONE]\n\n",
            finals[i]);
        run_t r;
        run_stream(&r, &llm_provider_openai, body);
        assert_string_equal(text_of(&r), "a");
        assert_string_equal(r.st.stop_reason, "length");
        assert_int_equal(r.st.usage.input_tokens, 5);
        assert_int_equal(r.st.usage.output_tokens, 3);
        assert_int_equal(r.st.usage.cache_read_input_tokens, 2);
        assert_true(r.st.done);
        assert_int_equal(r.errors + r.protocol_errors, 0);
        run_free(&r);
    }
}

static void test_openai_errors_in_stream(void **state) {
    (void)state;
    run_t r;
    /* OpenAI's envelope. */
    run_stream(
        &r, &llm_provider_openai,
        "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\","
        "\"param\":null,\"code\":null}}\n\n");
    assert_int_equal(r.errors, 1);
    assert_int_equal(r.last_error.cls, LLM_ERR_SERVER);
    assert_true(r.last_error.retryable);
    assert_string_equal(r.last_error.message, "The server had an error");
    run_free(&r);
    /* OpenRouter: numeric code equal to an HTTP status. */
    run_stream(&r, &llm_provider_openai,
               "data: {\"error\":{\"code\":429,\"message\":\"Rate limited upstream\"}}\n\n");
    assert_int_equal(r.last_error.cls, LLM_ERR_RATE_LIMIT);
    assert_int_equal(r.last_error.status, 429);
    run_free(&r);
    run_stream(&r, &llm_provider_openai,
               "data: {\"id\":\"g\",\"object\":\"chat.completion.chunk\",\"error\":{\"code\":502,"
               "\"message\":\"Provider returned error\"},\"choices\":[{\"index\":0,\"delta\":"
               "{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n");
    assert_int_equal(r.errors, 1); /* one error, though both forms are in the chunk */
    assert_int_equal(r.last_error.cls, LLM_ERR_SERVER);
    assert_int_equal(r.last_error.status, 502);
    assert_string_equal(r.st.stop_reason, "");
    run_free(&r);
    /* finish_reason "error" alone. */
    run_stream(&r, &llm_provider_openai,
               "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n"
               "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"error\"}]}\n\n");
    assert_string_equal(text_of(&r), "par");
    assert_int_equal(r.errors, 1);
    assert_int_equal(r.last_error.cls, LLM_ERR_SERVER);
    assert_false(r.st.done);
    run_free(&r);
    /* Malformed chunks, and a keep-alive passed as data by a broken proxy. */
    run_stream(&r, &llm_provider_openai,
               "data: {\"choices\":[\n\ndata: OPENROUTER PROCESSING\n\ndata: [DONE] \n\n");
    assert_int_equal(r.protocol_errors, 3);
    run_free(&r);
}

static void test_openai_build(void **state) {
    (void)state;
    const llm_message_t msgs[] = {{"user", "Hello"}};
    llm_request_t req = {.api_key = "sk-test",
                         .model = "gpt-4o-mini",
                         .system = "Be brief.",
                         .messages = msgs,
                         .n_messages = 1,
                         .max_tokens = 512};
    llm_outgoing_t o;
    assert_int_equal(llm_provider_openai.build(&req, &o), 0);
    assert_string_equal(o.url, "https://api.openai.com/v1/chat/completions");
    assert_string_equal(o.headers[0], "Authorization: Bearer sk-test");
    assert_string_equal(o.headers[1], "Content-Type: application/json");
    assert_string_equal(o.body,
                        "{\"model\":\"gpt-4o-mini\",\"stream\":true,\"stream_options\":"
                        "{\"include_usage\":true},\"max_tokens\":512,\"messages\":[{\"role\":"
                        "\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":"
                        "\"Hello\"}]}");
    llm_outgoing_free(&o);
    req.base_url = "https://openrouter.ai/api/v1/";
    assert_int_equal(llm_provider_openai.build(&req, &o), 0);
    assert_string_equal(o.url, "https://openrouter.ai/api/v1/chat/completions");
    llm_outgoing_free(&o);
    req.base_url = "https://api.venice.ai/api/v1";
    req.extra_json = "{\"venice_parameters\":{\"include_venice_system_prompt\":false}}";
    assert_int_equal(llm_provider_openai.build(&req, &o), 0);
    assert_string_equal(o.url, "https://api.venice.ai/api/v1/chat/completions");
    assert_non_null(
        strstr(o.body, "\"venice_parameters\":{\"include_venice_system_prompt\":false}"));
    llm_outgoing_free(&o);
    req.api_key = "";
    assert_int_equal(llm_provider_openai.build(&req, &o), CORE_EINVAL);

    assert_ptr_equal(llm_provider_find("anthropic"), &llm_provider_anthropic);
    assert_ptr_equal(llm_provider_find("openrouter"), &llm_provider_openai);
    assert_ptr_equal(llm_provider_find("venice"), &llm_provider_openai);
    assert_null(llm_provider_find("gemini"));
    assert_null(llm_provider_find(NULL));
}

/* ---- classification -------------------------------------------------------------------------- */

static const int64_t NOW = 1755780058000; /* 2025-08-21T12:40:58Z */

static void classify(const char *status_and_headers, const char *body, llm_error_t *e) {
    llm_headers_t h;
    llm_headers_init(&h);
    int status = atoi(status_and_headers + 9); /* "HTTP/1.1 429 ..." */
    const char *p = strchr(status_and_headers, '\n') + 1;
    while (*p) {
        const char *nl = strchr(p, '\n');
        llm_headers_add_line(&h, p, (size_t)(nl - p + 1), NOW);
        p = nl + 1;
    }
    llm_provider_anthropic.classify(status, &h, body, body ? strlen(body) : 0, e);
}

static void test_classify(void **state) {
    (void)state;
    llm_error_t e;
    /* The 429 sample of LLM.md 1.1. */
    classify(
        "HTTP/1.1 429 Too Many Requests\r\n"
        "content-type: application/json\r\n"
        "retry-after: 12\r\n"
        "anthropic-ratelimit-requests-remaining: 0\r\n"
        "anthropic-ratelimit-requests-reset: 2025-08-21T12:41:00Z\r\n"
        "request-id: req_018EeWyXxfu5pfWkrYcMdjWG\r\n",
        "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"This request "
        "would exceed the rate limit for your organization\"},\"request_id\":"
        "\"req_018EeWyXxfu5pfWkrYcMdjWG\"}",
        &e);
    assert_int_equal(e.cls, LLM_ERR_RATE_LIMIT);
    assert_int_equal(e.status, 429);
    assert_true(e.retryable);
    assert_int_equal(e.wait_ms, 12000);
    assert_string_equal(e.type, "rate_limit_error");
    assert_false(llm_err_class_breaker_failure(e.cls));
    assert_false(llm_err_class_disables_key(e.cls));
    /* No retry-after: the reset of the exhausted bucket. */
    classify("HTTP/1.1 429 Too Many Requests\n"
             "anthropic-ratelimit-requests-remaining: 0\n"
             "anthropic-ratelimit-requests-reset: 2025-08-21T12:41:00Z\n",
             NULL, &e);
    assert_int_equal(e.cls, LLM_ERR_RATE_LIMIT);
    assert_int_equal(e.wait_ms, 2000);
    /* Spend cap: a 429 that must not be retried. */
    classify("HTTP/1.1 429 x\n",
             "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"spend\","
             "\"details\":{\"error_code\":\"enforced_spend_limit_reached\"}}}",
             &e);
    assert_int_equal(e.cls, LLM_ERR_SPEND_CAP);
    assert_false(e.retryable);
    assert_true(llm_err_class_disables_key(e.cls));
    /* OpenAI quota, and OpenAI's ordinary 429. */
    classify("HTTP/1.1 429 x\n",
             "{\"error\":{\"message\":\"You exceeded your current quota\",\"type\":"
             "\"insufficient_quota\",\"param\":null,\"code\":\"insufficient_quota\"}}",
             &e);
    assert_int_equal(e.cls, LLM_ERR_QUOTA);
    assert_false(e.retryable);
    assert_true(llm_err_class_disables_key(e.cls));
    classify("HTTP/1.1 429 x\nretry-after-ms: 644\n",
             "{\"error\":{\"message\":\"Rate limit reached for gpt-4o\",\"type\":\"tokens\","
             "\"param\":null,\"code\":\"rate_limit_exceeded\"}}",
             &e);
    assert_int_equal(e.cls, LLM_ERR_RATE_LIMIT);
    assert_int_equal(e.wait_ms, 644);
    /* Keys to disable. */
    classify("HTTP/1.1 401 x\n",
             "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\",\"message\":"
             "\"invalid x-api-key\"}}",
             &e);
    assert_int_equal(e.cls, LLM_ERR_AUTH);
    assert_false(e.retryable);
    assert_true(llm_err_class_disables_key(e.cls));
    assert_false(llm_err_class_breaker_failure(e.cls));
    classify("HTTP/1.1 403 x\n", "{\"type\":\"error\",\"error\":{\"type\":\"permission_error\"}}",
             &e);
    assert_int_equal(e.cls, LLM_ERR_AUTH);
    classify("HTTP/1.1 402 x\n", "{\"error\":{\"code\":402,\"message\":\"Insufficient credits\"}}",
             &e);
    assert_int_equal(e.cls, LLM_ERR_PAYMENT);
    assert_false(e.retryable);
    assert_true(llm_err_class_disables_key(e.cls));
    /* OpenRouter moderation: the request's fault. */
    classify("HTTP/1.1 403 x\n",
             "{\"error\":{\"code\":403,\"message\":\"flagged\",\"metadata\":{\"reasons\":[\"x\"],"
             "\"flagged_input\":\"...\"}}}",
             &e);
    assert_int_equal(e.cls, LLM_ERR_BAD_REQUEST);
    /* Overload and server errors. */
    classify(
        "HTTP/1.1 529 x\n",
        "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"},"
        "\"request_id\":\"req_1\"}",
        &e);
    assert_int_equal(e.cls, LLM_ERR_OVERLOADED);
    assert_true(e.retryable);
    assert_true(llm_err_class_provider_wide(e.cls));
    assert_true(llm_err_class_breaker_failure(e.cls));
    assert_string_equal(e.message, "Overloaded");
    classify("HTTP/1.1 503 x\nretry-after: 3\n", "<html>no</html>", &e);
    assert_int_equal(e.cls, LLM_ERR_OVERLOADED);
    assert_int_equal(e.wait_ms, 3000);
    classify("HTTP/1.1 500 x\n",
             "{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Internal server "
             "error\"}}",
             &e);
    assert_int_equal(e.cls, LLM_ERR_SERVER);
    assert_true(e.retryable);
    assert_int_equal(e.wait_ms, -1);
    classify("HTTP/1.1 502 x\n", "", &e);
    assert_int_equal(e.cls, LLM_ERR_SERVER);
    classify("HTTP/1.1 408 x\n", NULL, &e);
    assert_int_equal(e.cls, LLM_ERR_TIMEOUT);
    assert_true(e.retryable);
    /* The request's fault: never retried, never a breaker failure. */
    const char *bad[] = {"HTTP/1.1 400 x\n", "HTTP/1.1 404 x\n", "HTTP/1.1 413 x\n",
                         "HTTP/1.1 422 x\n"};
    for (size_t i = 0; i < 4; i++) {
        classify(bad[i], "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\"}}", &e);
        assert_int_equal(e.cls, LLM_ERR_BAD_REQUEST);
        assert_false(e.retryable);
        assert_false(llm_err_class_breaker_failure(e.cls));
    }
    classify("HTTP/1.1 400 x\n",
             "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":"
             "\"prompt is too long: 210000 tokens > 200000 maximum\"}}",
             &e);
    assert_int_equal(e.cls, LLM_ERR_CONTEXT);
    /* x-should-retry overrides the class default both ways. */
    classify("HTTP/1.1 500 x\nx-should-retry: false\n", NULL, &e);
    assert_int_equal(e.cls, LLM_ERR_SERVER);
    assert_false(e.retryable);
    classify("HTTP/1.1 409 x\nX-Should-Retry: true\n", NULL, &e);
    assert_true(e.retryable);
    classify("HTTP/1.1 400 x\nx-should-retry: true\n", NULL, &e);
    assert_true(e.retryable);
    /* Junk bodies and long messages. */
    classify("HTTP/1.1 500 x\n", "{\"error\":\"just a string\"}", &e);
    assert_int_equal(e.cls, LLM_ERR_SERVER);
    assert_string_equal(e.type, "");
    char longmsg[1200];
    strcpy(longmsg, "{\"error\":{\"message\":\"");
    for (int i = 0; i < 300; i++)
        strcat(longmsg, "\xE2\x82\xAC"); /* 3-byte characters: truncation must not cut one */
    strcat(longmsg, "\"}}");
    classify("HTTP/1.1 500 x\n", longmsg, &e);
    assert_int_equal(strlen(e.message), 255);
    assert_int_equal(strlen(e.message) % 3, 0);
    for (int c = 0; c < LLM_ERR_CLASS_COUNT; c++)
        assert_non_null(llm_err_class_name((llm_err_class_t)c));
    assert_string_equal(llm_err_class_name(LLM_ERR_QUOTA), "insufficient_quota");
}

/* ---- headers --------------------------------------------------------------------------------- */

static void add(llm_headers_t *h, const char *name, const char *value) {
    llm_headers_add(h, name, strlen(name), value, strlen(value), NOW);
}

static void test_retry_after(void **state) {
    (void)state;
    llm_headers_t h;
    llm_headers_init(&h);
    assert_false(h.retry_after_present);
    assert_int_equal(llm_headers_wait_ms(&h), -1);
    assert_int_equal(h.should_retry, -1);
    /* retry-after-ms wins whatever the order. */
    add(&h, "retry-after-ms", "250.5");
    add(&h, "Retry-After", "7");
    assert_true(h.retry_after_present);
    assert_int_equal(h.retry_after_ms, 251);
    assert_true(h.retry_after_honoured);
    llm_headers_init(&h);
    add(&h, "retry-after", "1.5");
    assert_int_equal(h.retry_after_ms, 1500);
    add(&h, "RETRY-AFTER-MS", " 40 ");
    assert_int_equal(h.retry_after_ms, 40);
    /* HTTP-date, relative to now. */
    llm_headers_init(&h);
    add(&h, "retry-after", "Thu, 21 Aug 2025 12:41:08 GMT");
    assert_int_equal(h.retry_after_ms, 10000);
    assert_true(h.retry_after_honoured);
    /* Outside 0 < v <= 60 s: reported, not honoured. */
    llm_headers_init(&h);
    add(&h, "retry-after", "61");
    assert_true(h.retry_after_present);
    assert_int_equal(h.retry_after_ms, 61000);
    assert_false(h.retry_after_honoured);
    assert_int_equal(llm_headers_wait_ms(&h), -1);
    llm_headers_init(&h);
    add(&h, "retry-after", "60");
    assert_true(h.retry_after_honoured);
    llm_headers_init(&h);
    add(&h, "retry-after", "0");
    assert_true(h.retry_after_present);
    assert_false(h.retry_after_honoured);
    llm_headers_init(&h);
    add(&h, "retry-after", "Thu, 21 Aug 2025 12:40:00 GMT"); /* in the past */
    assert_true(h.retry_after_ms < 0);
    assert_false(h.retry_after_honoured);
    /* Junk is ignored. */
    const char *junk[] = {"", "abc", "1x", "0x10", "inf", "nan", "1e3", "Thu, 99 Foo 2025", "--1"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        llm_headers_init(&h);
        add(&h, "retry-after", junk[i]);
        add(&h, "retry-after-ms", junk[i]);
        assert_false(h.retry_after_present);
    }
    llm_headers_init(&h);
    add(&h, "retry-after", "-1");
    assert_false(h.retry_after_honoured);
    add(&h, "x-should-retry", "TRUE");
    assert_int_equal(h.should_retry, 1);
    add(&h, "x-should-retry", "maybe");
    assert_int_equal(h.should_retry, 1);
    add(&h, "x-should-retry", "false");
    assert_int_equal(h.should_retry, 0);
}

static void test_anthropic_ratelimit_headers(void **state) {
    (void)state;
    /* The 200 headers of LLM.md 1.1, as raw lines. */
    static const char *lines[] = {
        "HTTP/1.1 200 OK\r\n",
        "content-type: text/event-stream; charset=utf-8\r\n",
        "request-id: req_011CSLsW7mFqvHHnzrKdKjAE\r\n",
        "anthropic-ratelimit-requests-limit: 1000\r\n",
        "anthropic-ratelimit-requests-remaining: 999\r\n",
        "anthropic-ratelimit-requests-reset: 2025-08-21T12:40:59Z\r\n",
        "anthropic-ratelimit-input-tokens-limit: 80000\r\n",
        "anthropic-ratelimit-input-tokens-remaining: 80000\r\n",
        "anthropic-ratelimit-input-tokens-reset: 2025-08-21T12:40:59Z\r\n",
        "anthropic-ratelimit-output-tokens-limit: 16000\r\n",
        "anthropic-ratelimit-output-tokens-remaining: 16000\r\n",
        "anthropic-ratelimit-output-tokens-reset: 2025-08-21T12:41:00Z\r\n",
        "anthropic-ratelimit-tokens-limit: 96000\r\n",
        "anthropic-ratelimit-tokens-remaining: 96000\r\n",
        "anthropic-ratelimit-tokens-reset: 2025-08-21T12:40:59Z\r\n",
        "\r\n",
    };
    llm_headers_t h;
    llm_headers_init(&h);
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        llm_headers_add_line(&h, lines[i], strlen(lines[i]), NOW);
    assert_string_equal(h.request_id, "req_011CSLsW7mFqvHHnzrKdKjAE");
    assert_int_equal(h.rl[LLM_RL_REQUESTS].limit, 1000);
    assert_int_equal(h.rl[LLM_RL_REQUESTS].remaining, 999);
    assert_int_equal(h.rl[LLM_RL_REQUESTS].reset_ms, 1000);
    assert_int_equal(h.rl[LLM_RL_INPUT_TOKENS].limit, 80000);
    assert_int_equal(h.rl[LLM_RL_INPUT_TOKENS].reset_ms, 1000);
    assert_int_equal(h.rl[LLM_RL_OUTPUT_TOKENS].remaining, 16000);
    assert_int_equal(h.rl[LLM_RL_OUTPUT_TOKENS].reset_ms, 2000);
    assert_int_equal(h.rl[LLM_RL_TOKENS].limit, 96000);
    assert_int_equal(h.rl[LLM_RL_TOKENS].reset_ms, 1000);
    assert_false(h.retry_after_present);
    assert_int_equal(llm_headers_wait_ms(&h), -1); /* nothing exhausted */
    /* A reset in the past is "now", not negative; junk leaves the last good value. */
    add(&h, "anthropic-ratelimit-tokens-reset", "2025-08-21T12:00:00Z");
    assert_int_equal(h.rl[LLM_RL_TOKENS].reset_ms, 0);
    add(&h, "anthropic-ratelimit-tokens-reset", "2025-13-21T12:00:00Z");
    add(&h, "anthropic-ratelimit-tokens-limit", "-1");
    add(&h, "anthropic-ratelimit-tokens-remaining", "lots");
    assert_int_equal(h.rl[LLM_RL_TOKENS].reset_ms, 0);
    assert_int_equal(h.rl[LLM_RL_TOKENS].limit, 96000);
    assert_int_equal(h.rl[LLM_RL_TOKENS].remaining, 96000);
    add(&h, "anthropic-ratelimit-input-tokens-remaining", "0");
    assert_int_equal(llm_headers_wait_ms(&h), 1000);

    assert_int_equal(llm_parse_rfc3339_ms("1970-01-01T00:00:00Z", 20), 0);
    assert_int_equal(llm_parse_rfc3339_ms("2025-08-21T12:40:58.250Z", 24), NOW + 250);
    assert_int_equal(llm_parse_rfc3339_ms("2025-08-21T14:40:58+02:00", 25), NOW);
    assert_int_equal(llm_parse_rfc3339_ms("2025-08-21t12:40:58z", 20), NOW);
    const char *bad[] = {"",
                         "2025-08-21",
                         "2025-08-21T12:40:58",
                         "2025-08-21T12:40:58Zx",
                         "2025-08-21T25:00:00Z",
                         "2025-8-21T12:40:58Z",
                         "2025-08-21T12:40:58.Z"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(llm_parse_rfc3339_ms(bad[i], strlen(bad[i])), -1);
}

static void test_openai_ratelimit_headers(void **state) {
    (void)state;
    llm_headers_t h;
    llm_headers_init(&h);
    add(&h, "x-request-id", "req_7b2f");
    add(&h, "x-ratelimit-limit-requests", "5000");
    add(&h, "x-ratelimit-limit-tokens", "160000");
    add(&h, "x-ratelimit-remaining-requests", "4999");
    add(&h, "x-ratelimit-remaining-tokens", "159976");
    add(&h, "x-ratelimit-reset-requests", "12ms");
    add(&h, "x-ratelimit-reset-tokens", "6m0s");
    assert_string_equal(h.request_id, "req_7b2f");
    assert_int_equal(h.rl[LLM_RL_REQUESTS].limit, 5000);
    assert_int_equal(h.rl[LLM_RL_REQUESTS].remaining, 4999);
    assert_int_equal(h.rl[LLM_RL_REQUESTS].reset_ms, 12);
    assert_int_equal(h.rl[LLM_RL_TOKENS].limit, 160000);
    assert_int_equal(h.rl[LLM_RL_TOKENS].remaining, 159976);
    assert_int_equal(h.rl[LLM_RL_TOKENS].reset_ms, 360000);
    add(&h, "x-ratelimit-remaining-tokens", "0");
    assert_int_equal(llm_headers_wait_ms(&h), 360000);
    /* The Azure junk of LLM.md 1.2: -1 and 0 do not crash, -1 is ignored. */
    add(&h, "x-ratelimit-remaining-requests", "-1");
    assert_int_equal(h.rl[LLM_RL_REQUESTS].remaining, 4999);
    add(&h, "x-ratelimit-reset-requests", "0");
    assert_int_equal(h.rl[LLM_RL_REQUESTS].reset_ms, 0);
    /* Venice-style bare numbers: seconds, or a Unix timestamp when that large. */
    add(&h, "x-ratelimit-reset-requests", "2.5");
    assert_int_equal(h.rl[LLM_RL_REQUESTS].reset_ms, 2500);
    add(&h, "x-ratelimit-reset-requests", "1755780060");
    assert_int_equal(h.rl[LLM_RL_REQUESTS].reset_ms, 2000);
    /* A header name too long or of another family is ignored. */
    add(&h, "x-ratelimit-reset-requests-and-a-very-long-tail-beyond-the-name-buffer-size", "1s");
    add(&h, "x-ratelimit-limit-widgets", "1");
    assert_int_equal(h.rl[LLM_RL_REQUESTS].reset_ms, 2000);

    static const struct {
        const char *in;
        int64_t ms;
    } d[] = {{"1s", 1000},
             {"12ms", 12},
             {"6m0s", 360000},
             {"1.5s", 1500},
             {"1h2m3.5s", 3723500},
             {"0", 0},
             {"0s", 0},
             {"250us", 1},
             {"2\xC2\xB5s", 1},
             {"3ns", 1},
             {" 9ms ", 9},
             {"0.001s", 1},
             {"", -1},
             {"-1", -1},
             {"abc", -1},
             {"1", -1},
             {"1x", -1},
             {"1.2.3s", -1},
             {"s", -1},
             {"1m1", -1},
             {".s", -1},
             {"99999999999999999999h", 10LL * 365 * 24 * 3600 * 1000}};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) {
        int64_t got = llm_parse_duration_ms(d[i].in, strlen(d[i].in));
        if (got != d[i].ms)
            fail_msg("duration \"%s\": got %lld, want %lld", d[i].in, (long long)got,
                     (long long)d[i].ms);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_anthropic_sample),
        cmocka_unit_test(test_anthropic_variants),
        cmocka_unit_test(test_anthropic_errors_in_stream),
        cmocka_unit_test(test_anthropic_build),
        cmocka_unit_test(test_openai_sample),
        cmocka_unit_test(test_openai_usage_variants),
        cmocka_unit_test(test_openai_errors_in_stream),
        cmocka_unit_test(test_openai_build),
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_anthropic_ratelimit_headers),
        cmocka_unit_test(test_openai_ratelimit_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
