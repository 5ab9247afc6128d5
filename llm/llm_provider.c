/* The provider registry and the helpers both wire formats share to build requests and decode
 * streams. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/llm_provider_int.h"

const llm_provider_ops_t *llm_provider_find(const char *name) {
    if (!name)
        return NULL;
    if (strcmp(name, "anthropic") == 0)
        return &llm_provider_anthropic;
    if (strcmp(name, "openai") == 0 || strcmp(name, "openrouter") == 0 ||
        strcmp(name, "venice") == 0 || strcmp(name, "openai-compatible") == 0)
        return &llm_provider_openai;
    return NULL;
}

void llm_outgoing_free(llm_outgoing_t *o) {
    free(o->url);
    for (size_t i = 0; i < o->n_headers; i++)
        free(o->headers[i]);
    free(o->body);
    memset(o, 0, sizeof *o);
}

void llm_decoder_init(llm_decoder_t *s) {
    memset(s, 0, sizeof *s);
    s->usage.input_tokens = s->usage.output_tokens = -1;
    s->usage.cache_creation_input_tokens = s->usage.cache_read_input_tokens = -1;
}

void llm_decoder_free(llm_decoder_t *s) {
    core_str_free(&s->text);
}

bool llm__header_safe(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

char *llm__join_url(const char *base, const char *def, const char *path) {
    if (!base || !*base)
        base = def;
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/')
        n--;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)base[i] <= 0x20 || base[i] == 0x7f)
            return NULL;
    if (n == 0)
        return NULL;
    size_t plen = strlen(path);
    char *url = core_malloc(n + plen + 1);
    memcpy(url, base, n);
    memcpy(url + n, path, plen + 1);
    return url;
}

int llm__merge_extra(json_t *body, const char *extra) {
    if (!extra || !*extra)
        return 0;
    json_t *x = json_loads(extra, 0, NULL);
    if (!json_is_object(x)) {
        json_decref(x);
        return CORE_EINVAL;
    }
    json_object_update(body, x);
    json_decref(x);
    return 0;
}

int llm__dump_body(json_t *body, llm_outgoing_t *out) {
    char *s = json_dumps(body, JSON_COMPACT);
    if (!s)
        return CORE_EINVAL;
    out->body = s;
    out->body_len = strlen(s);
    return 0;
}

void llm__add_header(llm_outgoing_t *out, const char *name, const char *value) {
    /* Every codec adds a fixed handful; running out is a programming error. */
    if (out->n_headers >= LLM_MAX_HEADERS)
        abort();
    size_t n = strlen(name) + strlen(value) + 3;
    char *h = core_malloc(n);
    snprintf(h, n, "%s: %s", name, value);
    out->headers[out->n_headers++] = h;
}

void llm__set_text(llm_decoder_t *s, llm_chunk_t *out, const char *text, size_t len) {
    if (!text || len == 0)
        return;
    s->text.len = 0;
    core_str_append(&s->text, text, len);
    s->deltas++;
    out->flags |= LLM_DEC_TEXT;
    out->text = s->text.ptr;
    out->text_len = len;
}

bool llm__take_count(const json_t *obj, const char *key, int64_t *dst) {
    const json_t *v = json_object_get(obj, key);
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *dst = json_integer_value(v);
        return true;
    }
    if (json_is_real(v) && json_real_value(v) >= 0 && json_real_value(v) < 9e15) {
        *dst = (int64_t)json_real_value(v);
        return true;
    }
    return false;
}
