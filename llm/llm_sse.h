/* llm_sse: an incremental parser for text/event-stream (WHATWG HTML "Server-sent events"), fed
 * with whatever pieces the transport delivers.
 *
 * Lines end in "\n", "\r\n" or a lone "\r", also when the "\r" ends one chunk and the "\n" starts
 * the next. A line starting with ':' is a comment (keep-alives such as ": ping" or
 * ": OPENROUTER PROCESSING") and is skipped. "field: value" loses one space after the colon;
 * a line without a colon is a field with an empty value. "data" lines accumulate joined by "\n";
 * "event" sets the event name; other fields are ignored. A blank line dispatches the event if it
 * had at least one data line. A UTF-8 BOM at the very start of the stream is dropped. The parser
 * works on bytes, so a chunk boundary inside a multibyte character is harmless. At the end of
 * the stream, a partial line or an event without its blank line is never dispatched.
 *
 * Memory is bounded: a line longer than max_line or an event (name plus data) larger than
 * max_event stops the parser with CORE_ELIMIT instead of growing without end. */
#ifndef LLM_LLM_SSE_H
#define LLM_LLM_SSE_H

#include <stdbool.h>
#include <stddef.h>

#define LLM_SSE_DEFAULT_MAX_LINE (1024 * 1024)
#define LLM_SSE_DEFAULT_MAX_EVENT (1024 * 1024)

/* Called once per dispatched event. `event` is the name given by the last "event:" field of the
 * event, or "" when there was none (the WHATWG default name "message" is left to the caller).
 * Both strings are NUL-terminated and borrowed for the duration of the call. Return 0 to go on;
 * any other value stops parsing and is returned by llm_sse_feed (and by every later call). The
 * callback must not free or reset the parser it is called from. */
typedef int (*llm_sse_event_cb)(void *ud, const char *event, size_t event_len, const char *data,
                                size_t data_len);

typedef struct llm_sse llm_sse_t;

/* Creates a parser; a cap of 0 selects the default above. */
llm_sse_t *llm_sse_new(size_t max_line, size_t max_event, llm_sse_event_cb cb, void *ud);
void llm_sse_free(llm_sse_t *p);

/* Feeds the next len bytes of the stream, dispatching every event they complete. Returns 0, or
 * CORE_ELIMIT when a line or an event exceeds its cap, or the callback's non-zero value. Once an
 * error was returned, the parser is stuck in it: every later feed returns the same value. */
int llm_sse_feed(llm_sse_t *p, const char *buf, size_t len);

/* True when the parser holds nothing: no partial line and no undispatched field. A stream that
 * ends while this is false was cut in the middle of an event. */
bool llm_sse_idle(const llm_sse_t *p);

/* Forgets everything, as if no byte had been fed (the next byte may again be a BOM). */
void llm_sse_reset(llm_sse_t *p);

#endif
