/* Error classes and the classification of provider errors, shared by both wire formats. */
#include <string.h>

#include "llm/llm_provider_int.h"

static const struct {
    const char *name;
    bool retryable, disables_key, breaker_failure, provider_wide;
} classes[] = {
#define XX(code, name, retry, disable, breaker, wide) {name, retry, disable, breaker, wide},
    LLM_ERR_CLASS_MAP(XX)
#undef XX
};

static bool valid(llm_err_class_t c) {
    return (unsigned)c < LLM_ERR_CLASS_COUNT;
}

const char *llm_err_class_name(llm_err_class_t c) {
    return valid(c) ? classes[c].name : "unknown";
}
bool llm_err_class_retryable(llm_err_class_t c) {
    return valid(c) && classes[c].retryable;
}
bool llm_err_class_disables_key(llm_err_class_t c) {
    return valid(c) && classes[c].disables_key;
}
bool llm_err_class_breaker_failure(llm_err_class_t c) {
    return valid(c) && classes[c].breaker_failure;
}
bool llm_err_class_provider_wide(llm_err_class_t c) {
    return valid(c) && classes[c].provider_wide;
}

/* Copies at most cap-1 bytes of src, backing off so a multibyte character is never cut. */
static void copy_utf8(char *dst, size_t cap, const char *src) {
    size_t n = src ? strlen(src) : 0;
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

void llm__error_set(llm_error_t *e, llm_err_class_t cls, int status, const char *type,
                    const char *message) {
    e->cls = cls;
    e->status = status;
    e->retryable = llm_err_class_retryable(cls);
    e->wait_ms = -1;
    copy_utf8(e->type, sizeof e->type, type);
    copy_utf8(e->message, sizeof e->message, message);
}

int llm__protocol_error(llm_chunk_t *out, const char *what) {
    out->flags |= LLM_DEC_ERROR;
    llm__error_set(&out->error, LLM_ERR_PROTOCOL, 0, "protocol", what);
    return CORE_EPROTO;
}

llm_err_class_t llm__class_from_status(int status) {
    if (status >= 200 && status < 300)
        return LLM_ERR_NONE;
    switch (status) {
    case 401:
    case 403:
        return LLM_ERR_AUTH;
    case 402:
        return LLM_ERR_PAYMENT;
    case 408:
        return LLM_ERR_TIMEOUT;
    case 409: /* a conflict the SDKs retry; the provider's, not the request's, fault */
        return LLM_ERR_SERVER;
    case 429:
        return LLM_ERR_RATE_LIMIT;
    case 503:
    case 529:
        return LLM_ERR_OVERLOADED;
    default:
        break;
    }
    if (status >= 500 && status < 600)
        return LLM_ERR_SERVER;
    /* 400, 404, 413, 422 and anything unexpected (a redirect means a wrong base URL): retrying
     * the same request cannot help. */
    return LLM_ERR_BAD_REQUEST;
}

static const char *str_member(const json_t *o, const char *key) {
    return json_string_value(json_object_get(o, key));
}

static bool contains(const char *hay, const char *needle) {
    return hay && strstr(hay, needle) != NULL;
}

/* Refines a class with what the error object says. `status` is the HTTP status, or the numeric
 * code of an error event (0 if it had none). */
static llm_err_class_t refine(llm_err_class_t cls, int status, const json_t *err) {
    const char *type = str_member(err, "type");
    const char *code = str_member(err, "code");
    const char *message = str_member(err, "message");
    const char *detail = str_member(json_object_get(err, "details"), "error_code");
    if (contains(detail, "spend_limit") || contains(code, "spend_limit"))
        return LLM_ERR_SPEND_CAP;
    if ((type && strcmp(type, "insufficient_quota") == 0) ||
        (code && strcmp(code, "insufficient_quota") == 0))
        return LLM_ERR_QUOTA;
    if (cls == LLM_ERR_BAD_REQUEST && (contains(message, "prompt is too long") ||
                                       (code && strcmp(code, "context_length_exceeded") == 0)))
        return LLM_ERR_CONTEXT;
    /* OpenRouter's moderation refusals are 403 with the flagged input in metadata: the
     * request's fault, not a bad key. */
    const json_t *meta = json_object_get(err, "metadata");
    if (status == 403 &&
        (json_object_get(meta, "reasons") || json_object_get(meta, "flagged_input")))
        return LLM_ERR_BAD_REQUEST;
    return cls;
}

void llm__classify_http(int status, const llm_headers_t *h, const char *body, size_t body_len,
                        llm_error_t *out) {
    llm_err_class_t cls = llm__class_from_status(status);
    json_t *root = body && body_len ? json_loadb(body, body_len, 0, NULL) : NULL;
    const json_t *err = json_object_get(root, "error");
    if (!json_is_object(err))
        err = NULL;
    if (err)
        cls = refine(cls, status, err);
    const char *type = str_member(err, "type");
    if (!type)
        type = str_member(err, "code");
    llm__error_set(out, cls, status, type, str_member(err, "message"));
    if (h) {
        if (h->should_retry >= 0 && cls != LLM_ERR_NONE)
            out->retryable = h->should_retry == 1;
        out->wait_ms = llm_headers_wait_ms(h);
    }
    json_decref(root);
}

void llm__classify_stream_error(const json_t *err, llm_error_t *out) {
    const json_t *code = json_object_get(err, "code");
    const char *type = str_member(err, "type");
    int status = json_is_integer(code) ? (int)json_integer_value(code) : 0;
    llm_err_class_t cls = LLM_ERR_SERVER;
    if (status >= 400 && status < 600) {
        cls = llm__class_from_status(status);
    } else if (type) {
        static const struct {
            const char *type;
            llm_err_class_t cls;
        } map[] = {
            {"overloaded_error", LLM_ERR_OVERLOADED},
            {"rate_limit_error", LLM_ERR_RATE_LIMIT},
            {"rate_limit_exceeded", LLM_ERR_RATE_LIMIT},
            {"api_error", LLM_ERR_SERVER},
            {"server_error", LLM_ERR_SERVER},
            {"timeout_error", LLM_ERR_TIMEOUT},
            {"invalid_request_error", LLM_ERR_BAD_REQUEST},
            {"request_too_large", LLM_ERR_BAD_REQUEST},
            {"not_found_error", LLM_ERR_BAD_REQUEST},
            {"authentication_error", LLM_ERR_AUTH},
            {"permission_error", LLM_ERR_AUTH},
            {"billing_error", LLM_ERR_PAYMENT},
        };
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (strcmp(type, map[i].type) == 0)
                cls = map[i].cls;
    }
    if (json_is_object(err))
        cls = refine(cls, status, err);
    if (!type)
        type = str_member(err, "code");
    llm__error_set(out, cls, status, type ? type : "error", str_member(err, "message"));
}
