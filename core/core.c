/* core: error text, allocation, logging, time, randomness, buffers, strings, histogram. */
#include "core/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

const char *core_strerror(int err) {
    switch (err) {
    case 0:
        return "ok";
    case CORE_EPROTO:
        return "protocol error";
    case CORE_ELIMIT:
        return "limit exceeded";
    case CORE_EPERM:
        return "permission denied";
    case CORE_EUNRECOVERABLE:
        return "unrecoverable position";
    default:
        return err < 0 && err > CORE_EDOMAIN_BASE ? uv_strerror(err) : "unknown error";
    }
}

void core__assert_fail(const char *expr, const char *file, int line, const char *func) {
    core_log(CORE_LOG_ERROR, "core", "assertion failed", "expr=\"%s\" at=%s:%d func=%s", expr, file,
             line, func);
    abort();
}

static void oom(size_t n) {
    fprintf(stderr, "fatal: out of memory allocating %zu bytes\n", n);
    abort();
}

void *core_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *core_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom(n * size);
    return p;
}

void *core_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *core_strdup(const char *s) {
    return core_strndup(s, strlen(s));
}

char *core_strndup(const char *s, size_t n) {
    char *p = core_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ---- logging ---- */

static core_log_level_t log_level = CORE_LOG_INFO;
static bool log_json;

void core_log_setup(core_log_level_t level, bool json) {
    log_level = level;
    log_json = json;
}

int core_log_level_parse(const char *s) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

bool core_log_enabled(core_log_level_t level) {
    return level <= log_level;
}

void core_log(core_log_level_t level, const char *module, const char *msg, const char *fields,
              ...) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (level > log_level)
        return;
    char fbuf[1024] = "";
    if (fields) {
        va_list ap;
        va_start(ap, fields);
        vsnprintf(fbuf, sizeof fbuf, fields, ap);
        va_end(ap);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char tbuf[64];
    snprintf(tbuf, sizeof tbuf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    if (!log_json) {
        fprintf(stderr, "%s %-5s %-7s %s%s%s\n", tbuf, names[level], module, msg, *fbuf ? " " : "",
                fbuf);
        return;
    }
    /* JSON lines: fields are key=value pairs separated by spaces; values become strings. */
    core_str_t s = {0};
    core_str_appendf(&s, "{\"ts\":\"%s\",\"level\":\"%s\",\"module\":", tbuf, names[level]);
    core_str_append_json_string(&s, module, strlen(module));
    core_str_appends(&s, ",\"msg\":");
    core_str_append_json_string(&s, msg, strlen(msg));
    char *save = NULL;
    for (char *tok = strtok_r(fbuf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq)
            continue;
        core_str_appends(&s, ",");
        core_str_append_json_string(&s, tok, (size_t)(eq - tok));
        core_str_appends(&s, ":");
        core_str_append_json_string(&s, eq + 1, strlen(eq + 1));
    }
    core_str_appends(&s, "}\n");
    fwrite(s.ptr, 1, s.len, stderr);
    core_str_free(&s);
}

/* ---- time ---- */

uint64_t core_now_ms(void) {
    return uv_hrtime() / 1000000u;
}

uint64_t core_now_us(void) {
    return uv_hrtime() / 1000u;
}

int64_t core_wall_s(void) {
    return (int64_t)time(NULL);
}

int64_t core_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void core_random(void *buf, size_t n) {
    char *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "fatal: getrandom failed: %s\n", strerror(errno));
            abort();
        }
        p += r;
        n -= (size_t)r;
    }
}

void core_random_id(char *out, size_t n) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    uint8_t rnd[64];
    size_t i = 0;
    while (i < n) {
        core_random(rnd, sizeof rnd);
        for (size_t j = 0; j < sizeof rnd && i < n; j++) {
            /* 248 = 4 * 62: rejecting above it keeps the choice uniform. */
            if (rnd[j] < 248)
                out[i++] = alphabet[rnd[j] % 62];
        }
    }
    out[n] = '\0';
}

/* ---- buffers ---- */

core_buf_t *core_buf_new(size_t head, size_t cap) {
    core_buf_t *b = core_malloc(sizeof *b + head + cap + 1);
    b->refcnt = 1;
    b->len = 0;
    b->cap = (uint32_t)cap;
    b->head = (uint32_t)head;
    b->born_us = core_now_us();
    b->data = b->storage + head;
    b->data[0] = '\0';
    return b;
}

core_buf_t *core_buf_from(size_t head, const char *s, size_t len) {
    core_buf_t *b = core_buf_new(head, len);
    memcpy(b->data, s, len);
    b->data[len] = '\0';
    b->len = (uint32_t)len;
    return b;
}

core_buf_t *core_buf_ref(core_buf_t *b) {
    b->refcnt++;
    return b;
}

void core_buf_unref(core_buf_t *b) {
    if (b && --b->refcnt == 0)
        free(b);
}

/* ---- strings ---- */

void core_str_reserve(core_str_t *s, size_t extra) {
    if (s->len + extra + 1 <= s->cap)
        return;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < s->len + extra + 1)
        cap *= 2;
    s->ptr = core_realloc(s->ptr, cap);
    s->cap = cap;
}

void core_str_append(core_str_t *s, const char *p, size_t n) {
    core_str_reserve(s, n);
    memcpy(s->ptr + s->len, p, n);
    s->len += n;
    s->ptr[s->len] = '\0';
}

void core_str_appends(core_str_t *s, const char *z) {
    core_str_append(s, z, strlen(z));
}

void core_str_appendf(core_str_t *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    core_str_reserve(s, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(s->ptr + s->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    s->len += (size_t)n;
}

void core_str_append_json_string(core_str_t *s, const char *z, size_t n) {
    static const char hex[] = "0123456789abcdef";
    core_str_reserve(s, n + 2);
    s->ptr[s->len++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)z[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            core_str_append(s, esc, 2);
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            core_str_append(s, esc, 6);
        } else {
            core_str_reserve(s, 1);
            s->ptr[s->len++] = (char)c;
        }
    }
    core_str_reserve(s, 1);
    s->ptr[s->len++] = '"';
    s->ptr[s->len] = '\0';
}

void core_str_free(core_str_t *s) {
    free(s->ptr);
    s->ptr = NULL;
    s->len = s->cap = 0;
}

/* ---- histogram ---- */

void core_hist_init(core_hist_t *h, const double *bounds, size_t n) {
    memset(h, 0, sizeof *h);
    if (n > CORE_HIST_MAX_BUCKETS)
        n = CORE_HIST_MAX_BUCKETS;
    h->nbuckets = n;
    memcpy(h->bounds, bounds, n * sizeof *bounds);
}

void core_hist_observe(core_hist_t *h, double v) {
    size_t i = 0;
    while (i < h->nbuckets && v > h->bounds[i])
        i++;
    if (i < h->nbuckets)
        h->counts[i]++;
    else
        h->inf++;
    h->total++;
    h->sum += v;
}
