/* core: primitives every module needs: error codes, logging, time, refcounted message
 * buffers, an intrusive list, a string-keyed hash map and a latency histogram. */
#ifndef CORE_CORE_H
#define CORE_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* ---- errors -------------------------------------------------------------------------------- */

/* Fallible functions return 0 or a negative code: libuv's UV_E* codes, plus these domain codes
 * placed far below libuv's range. */
enum {
    CORE_EINVAL = UV_EINVAL,
    CORE_ENOMEM = UV_ENOMEM,
    CORE_ENOENT = UV_ENOENT,
    CORE_EEXIST = UV_EEXIST,
    CORE_E2BIG = UV_E2BIG,
    CORE_EAGAIN = UV_EAGAIN,
    CORE_ETIMEDOUT = UV_ETIMEDOUT,
    CORE_EDOMAIN_BASE = -10000,
    CORE_EPROTO = -10001,         /* peer violated a protocol */
    CORE_ELIMIT = -10002,         /* a configured limit was reached */
    CORE_EPERM = -10003,          /* permission denied */
    CORE_EUNRECOVERABLE = -10004, /* requested position is no longer available */
};

/* Human-readable text for a code returned by any module's fallible function. */
const char *core_strerror(int err);

/* ---- invariants ------------------------------------------------------------------------------ */

/* An assertion that stays on in release builds: a state that must never happen logs where it
 * happened and aborts, instead of running on with corrupted data (assert() is compiled out
 * with NDEBUG, so it guards nothing where it matters). Use it for invariants, never for input. */
#define CORE_ASSERT(e) ((e) ? (void)0 : core__assert_fail(#e, __FILE__, __LINE__, __func__))
__attribute__((noreturn)) void core__assert_fail(const char *expr, const char *file, int line,
                                                 const char *func);

/* ---- memory -------------------------------------------------------------------------------- */

/* Allocation helpers that abort with a log line on out-of-memory: every network-fed buffer has
 * a cap, so client input can never reach the abort. */
void *core_malloc(size_t n);
void *core_calloc(size_t n, size_t size);
void *core_realloc(void *p, size_t n);
char *core_strdup(const char *s);
char *core_strndup(const char *s, size_t n);

/* ---- logging ------------------------------------------------------------------------------- */

typedef enum { CORE_LOG_ERROR = 0, CORE_LOG_WARN, CORE_LOG_INFO, CORE_LOG_DEBUG } core_log_level_t;

/* Sets the threshold and the format (json=true gives one JSON object per line). */
void core_log_setup(core_log_level_t level, bool json);
/* Parses "error", "warn", "info", "debug"; returns -1 for anything else. */
int core_log_level_parse(const char *s);
/* The name core_log_level_parse takes for level. */
const char *core_log_level_name(core_log_level_t level);
bool core_log_enabled(core_log_level_t level);
/* Changes the threshold at run time, keeping the format. */
void core_log_set_level(core_log_level_t level);
core_log_level_t core_log_get_level(void);
/* One log line: level, module, message, then key=value fields given as a printf format
 * (e.g. "conn=%llu code=%d"). The fields argument may be NULL. */
void core_log(core_log_level_t level, const char *module, const char *msg, const char *fields, ...)
    __attribute__((format(printf, 4, 5)));

/* What the work running now is about. The node runs one loop, so one context is current at a
 * time: a client command sets it for the span of its handler, and work that continues later (a
 * Redis reply, an LLM stream) carries the trace id and sets it again when it runs. Every log
 * line written meanwhile gets node, trace, conn, user and method fields (those set, and not
 * already among the line's own fields). The strings are borrowed for the span only. */
typedef struct {
    uint64_t trace; /* 0: none */
    const char *conn;
    const char *user;
    const char *method;
} core_log_ctx_t;

/* The node id every line carries from now on (copied; NULL: none). */
void core_log_set_node(const char *node_id);
/* A fresh trace id: never 0, unlikely to repeat across nodes. */
uint64_t core_trace_new(void);
/* Makes ctx current and returns the context it replaces, for core_log_ctx_leave. */
core_log_ctx_t core_log_ctx_enter(core_log_ctx_t ctx);
void core_log_ctx_leave(core_log_ctx_t prev);
/* The current context's trace id (0: none), for work that will continue later. */
uint64_t core_log_trace(void);
/* Formats a trace id as the logs show it (16 hex digits); buf holds 17 bytes. */
const char *core_trace_str(uint64_t trace, char buf[17]);

#define CORE_LOGE(mod, msg, ...) core_log(CORE_LOG_ERROR, mod, msg, __VA_ARGS__)
#define CORE_LOGW(mod, msg, ...) core_log(CORE_LOG_WARN, mod, msg, __VA_ARGS__)
#define CORE_LOGI(mod, msg, ...) core_log(CORE_LOG_INFO, mod, msg, __VA_ARGS__)
#define CORE_LOGD(mod, msg, ...)                                                                   \
    do {                                                                                           \
        if (core_log_enabled(CORE_LOG_DEBUG))                                                      \
            core_log(CORE_LOG_DEBUG, mod, msg, __VA_ARGS__);                                       \
    } while (0)

/* ---- time and randomness --------------------------------------------------------------------- */

/* Monotonic milliseconds and microseconds (not cached per loop turn). */
uint64_t core_now_ms(void);
uint64_t core_now_us(void);
/* Wall-clock seconds and milliseconds since the Unix epoch. */
int64_t core_wall_s(void);
int64_t core_wall_ms(void);
/* Fills buf with cryptographically secure random bytes; aborts if the kernel cannot. */
void core_random(void *buf, size_t n);
/* Writes n random characters from [A-Za-z0-9] plus a terminating NUL into out (n+1 bytes). */
void core_random_id(char *out, size_t n);

/* ---- refcounted message buffer -----------------------------------------------------------------
 */

/* An immutable byte string shared by many owners (a fan-out push referenced by every
 * subscriber's write queue). `head` bytes of headroom precede data so a transport can prepend
 * its framing in place. Created with refcount 1. */
typedef struct core_buf {
    uint32_t refcnt;
    uint32_t len;
    uint32_t cap;
    uint32_t head;
    uint64_t born_us; /* core_now_us() at creation: fan-out latency starts here */
    char *data;       /* = storage + head */
    char storage[];
} core_buf_t;

core_buf_t *core_buf_new(size_t head, size_t cap);
/* A buffer holding a copy of s[0..len). */
core_buf_t *core_buf_from(size_t head, const char *s, size_t len);
core_buf_t *core_buf_ref(core_buf_t *b);
void core_buf_unref(core_buf_t *b);

/* ---- growable string ------------------------------------------------------------------------- */

typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
} core_str_t;

void core_str_reserve(core_str_t *s, size_t extra);
void core_str_append(core_str_t *s, const char *p, size_t n);
void core_str_appends(core_str_t *s, const char *z);
void core_str_appendf(core_str_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends z as a JSON string literal, quotes included. */
void core_str_append_json_string(core_str_t *s, const char *z, size_t n);
void core_str_free(core_str_t *s);

/* ---- intrusive doubly linked list ------------------------------------------------------------ */

typedef struct core_list {
    struct core_list *prev, *next;
} core_list_t;

static inline void core_list_init(core_list_t *h) {
    h->prev = h->next = h;
}
static inline bool core_list_empty(const core_list_t *h) {
    return h->next == h;
}
static inline void core_list_insert_tail(core_list_t *h, core_list_t *n) {
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}
static inline void core_list_remove(core_list_t *n) {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
#define CORE_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* ---- string-keyed hash map ------------------------------------------------------------------- */

/* Open hashing keyed by NUL-terminated strings. The map copies keys; values are borrowed. */
typedef struct core_map core_map_t;

core_map_t *core_map_new(void);
/* A map that keeps the key pointers it is given instead of copies: for keys that live in their
 * values (a client's id, a channel's name), which saves an allocation per entry. A key must stay
 * valid and unchanged while its entry is in the map. */
core_map_t *core_map_new_borrowed(void);
/* Frees the map and its key copies; values are the caller's. */
void core_map_free(core_map_t *m);
void *core_map_get(const core_map_t *m, const char *key);
/* Inserts or replaces; returns the previous value or NULL. */
void *core_map_put(core_map_t *m, const char *key, void *value);
/* Removes the key; returns its value or NULL. */
void *core_map_del(core_map_t *m, const char *key);
size_t core_map_size(const core_map_t *m);

/* Iteration: start with it = 0; returns false when done. Deleting the current key during
 * iteration is allowed; inserting is not. */
typedef size_t core_map_iter_t;
bool core_map_next(const core_map_t *m, core_map_iter_t *it, const char **key, void **value);

uint64_t core_hash(const void *p, size_t n);

/* ---- histogram ------------------------------------------------------------------------------- */

#define CORE_HIST_MAX_BUCKETS 16

/* Cumulative-bucket histogram with fixed upper bounds, as Prometheus exposes it. */
typedef struct {
    size_t nbuckets;
    double bounds[CORE_HIST_MAX_BUCKETS];
    uint64_t counts[CORE_HIST_MAX_BUCKETS]; /* non-cumulative per bucket */
    uint64_t inf;                           /* above the last bound */
    uint64_t total;
    double sum;
} core_hist_t;

void core_hist_init(core_hist_t *h, const double *bounds, size_t n);
void core_hist_observe(core_hist_t *h, double v);

#endif
