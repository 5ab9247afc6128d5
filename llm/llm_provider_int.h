/* Helpers shared by the provider codecs of the llm module; not part of its contract. */
#ifndef LLM_LLM_PROVIDER_INT_H
#define LLM_LLM_PROVIDER_INT_H

#include <jansson.h>

#include "llm/llm_provider.h"

/* Fills an error; type and message are copied, truncated at a UTF-8 character boundary. */
void llm__error_set(llm_error_t *e, llm_err_class_t cls, int status, const char *type,
                    const char *message);
/* The class an HTTP status alone implies (200-299 give NONE). */
llm_err_class_t llm__class_from_status(int status);
/* Classifies an HTTP error response of either format: Anthropic's
 * {"type":"error","error":{"type","message","details"}}, OpenAI's {"error":{"message","type",
 * "code"}} and OpenRouter's {"error":{"code":<status>,"message","metadata"}}. */
void llm__classify_http(int status, const llm_headers_t *h, const char *body, size_t body_len,
                        llm_error_t *out);
/* Classifies the error object of an error event inside a 200 stream (any of the forms above). */
void llm__classify_stream_error(const json_t *err, llm_error_t *out);
/* Marks `out` as a protocol error (malformed event) and returns CORE_EPROTO. */
int llm__protocol_error(llm_chunk_t *out, const char *what);

/* base (or def when base is NULL or empty) without trailing slashes, then path. NULL when the
 * result would contain a control character or a space. */
char *llm__join_url(const char *base, const char *def, const char *path);
/* True when s can go into a header value: no control characters. */
bool llm__header_safe(const char *s);
/* Merges the object in extra (NULL = nothing) into body. CORE_EINVAL if it is not an object. */
int llm__merge_extra(json_t *body, const char *extra);
/* Serialises body into out->body. */
int llm__dump_body(json_t *body, llm_outgoing_t *out);
/* Appends a header "name: value" to out. */
void llm__add_header(llm_outgoing_t *out, const char *name, const char *value);
/* Records a text delta of the stream and points out at it; empty text is not a delta. */
void llm__set_text(llm_decoder_t *s, llm_chunk_t *out, const char *text, size_t len);
/* Reads an integer member that is a non-negative JSON number into *dst (assignment, so the last
 * value seen wins); returns true if it did. */
bool llm__take_count(const json_t *obj, const char *key, int64_t *dst);

#endif
