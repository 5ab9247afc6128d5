/* core: error text, allocation, logging, time, randomness, buffers, strings, histogram. */
#include "core/core.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>
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
static char *log_node;
static core_log_ctx_t log_ctx;
static uint64_t trace_state;

void core_log_set_node(const char *node_id) {
    free(log_node);
    log_node = node_id ? core_strdup(node_id) : NULL;
}

uint64_t core_trace_new(void) {
    /* splitmix64 over a counter seeded from the kernel: distinct per command without a
     * syscall each, and nodes start far apart. */
    if (trace_state == 0)
        core_random(&trace_state, sizeof trace_state);
    uint64_t z = (trace_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z ? z : 1;
}

core_log_ctx_t core_log_ctx_enter(core_log_ctx_t ctx) {
    core_log_ctx_t prev = log_ctx;
    log_ctx = ctx;
    return prev;
}

void core_log_ctx_leave(core_log_ctx_t prev) {
    log_ctx = prev;
}

uint64_t core_log_trace(void) {
    return log_ctx.trace;
}

const char *core_trace_str(uint64_t trace, char buf[17]) {
    snprintf(buf, 17, "%016" PRIx64, trace);
    return buf;
}

void core_log_setup(core_log_level_t level, bool json) {
    log_level = level;
    log_json = json;
}

static const char *const log_level_names[] = {"error", "warn", "info", "debug"};

int core_log_level_parse(const char *s) {
    for (int i = 0; i < 4; i++)
        if (strcmp(s, log_level_names[i]) == 0)
            return i;
    return -1;
}

const char *core_log_level_name(core_log_level_t level) {
    return log_level_names[level];
}

void core_log_set_level(core_log_level_t level) {
    log_level = level;
}

core_log_level_t core_log_get_level(void) {
    return log_level;
}

bool core_log_enabled(core_log_level_t level) {
    return level <= log_level;
}

/* Log lines carry values from the network (user ids, channel names, peer addresses, reasons),
 * so no value may end a line, open a field or close the quotes it sits in. Every %s value is
 * escaped: backslash and double quote, \n \r \t, other C0 controls and DEL as \xNN, C1
 * controls and the line, paragraph and bidirectional formatting characters as \uNNNN, bytes
 * that are not UTF-8 as \xNN. A value outside quotes in the format is quoted when it holds a
 * space, '=', a quote or anything escaped, so "k=v" pairs split unambiguously. */

/* Longest value, in input bytes, one field shows; the rest is cut with "...". */
#define LOG_VALUE_MAX 1024

/* The length of the valid UTF-8 character at p (n bytes left), or 0. */
static size_t utf8_char_len(const unsigned char *p, size_t n) {
    if (p[0] < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    /* Overlong forms, surrogates and code points past U+10FFFF are not UTF-8. */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* The code point of a valid UTF-8 character of len bytes. */
static uint32_t utf8_decode(const unsigned char *p, size_t len) {
    static const unsigned char lead_mask[] = {0, 0x7f, 0x1f, 0x0f, 0x07};
    uint32_t cp = p[0] & lead_mask[len];
    for (size_t i = 1; i < len; i++)
        cp = (cp << 6) | (p[i] & 0x3f);
    return cp;
}

static bool log_cp_escaped(uint32_t cp) {
    return (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 ||
           (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

/* Appends s (n bytes) escaped. */
static void log_escape(core_str_t *out, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c == '\\' || c == '"') {
            char e[2] = {'\\', (char)c};
            core_str_append(out, e, 2);
            i++;
        } else if (c == '\n' || c == '\r' || c == '\t') {
            char e[2] = {'\\', c == '\n' ? 'n' : c == '\r' ? 'r' : 't'};
            core_str_append(out, e, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
            core_str_append(out, e, 4);
            i++;
        } else {
            size_t len = utf8_char_len(p + i, n - i);
            if (len == 0) {
                char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
                core_str_append(out, e, 4);
                i++;
                continue;
            }
            uint32_t cp = len > 1 ? utf8_decode(p + i, len) : c;
            if (log_cp_escaped(cp))
                core_str_appendf(out, "\\u%04x", (unsigned)cp);
            else
                core_str_append(out, s + i, len);
            i += len;
        }
    }
}

/* Whether a value outside quotes must be quoted to stay one field. */
static bool log_needs_quotes(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if (c <= 0x20 || c == 0x7f || c == '"' || c == '=' || c == '\\')
            return true;
        size_t len = utf8_char_len(p + i, n - i);
        if (len == 0 || (len > 1 && log_cp_escaped(utf8_decode(p + i, len))))
            return true;
        i += len;
    }
    return false;
}

static void log_value(core_str_t *out, const char *s, size_t n, bool in_quotes) {
    bool cut = n > LOG_VALUE_MAX;
    if (cut) {
        n = LOG_VALUE_MAX;
        /* Not in the middle of a character: back up to its first byte. */
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    bool quote = !in_quotes && (cut || log_needs_quotes(s, n));
    if (quote)
        core_str_appends(out, "\"");
    log_escape(out, s, n);
    if (cut)
        core_str_appends(out, "...");
    if (quote)
        core_str_appends(out, "\"");
}

/* Formats the fields: literal text of the format as it is, numbers by printf, strings (%s, %c)
 * escaped by log_value. The caller's format is checked at compile time (core_log's format
 * attribute); each single conversion cut from it is passed to snprintf with the argument type
 * the conversion names, which is what printf itself would read. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static void log_format_fields(core_str_t *out, const char *fmt, va_list ap) {
    bool in_quotes = false;
    const char *f = fmt;
    while (*f) {
        if (*f != '%') {
            if (*f == '"')
                in_quotes = !in_quotes;
            core_str_append(out, f, 1);
            f++;
            continue;
        }
        /* One conversion: %[flags][width][.precision][length]conv */
        const char *start = f++;
        while (*f && strchr("-+ #0", *f))
            f++;
        int width = -1, prec = -1;
        bool width_arg = false, prec_arg = false;
        if (*f == '*') {
            width_arg = true;
            width = va_arg(ap, int);
            f++;
        } else {
            while (*f >= '0' && *f <= '9')
                f++;
        }
        if (*f == '.') {
            f++;
            if (*f == '*') {
                prec_arg = true;
                prec = va_arg(ap, int);
                f++;
            } else {
                prec = 0;
                while (*f >= '0' && *f <= '9')
                    prec = prec * 10 + (*f++ - '0');
            }
        }
        char len[3] = "";
        if (*f == 'h' || *f == 'l') {
            len[0] = *f++;
            if (*f == len[0])
                len[1] = *f++;
        } else if (*f && strchr("jztL", *f)) {
            len[0] = *f++;
        }
        char conv = *f ? *f++ : '\0';
        /* The conversion alone, stars kept: its arguments are passed again below. */
        char spec[32];
        size_t sl = (size_t)(f - start);
        if (sl >= sizeof spec || conv == '\0' || conv == 'n')
            return; /* a format this logger does not take: the rest of the fields are dropped */
        memcpy(spec, start, sl);
        spec[sl] = '\0';
        char num[128];
        int nl = 0;
#define LOG_NUM(T)                                                                                 \
    do {                                                                                           \
        T v_ = va_arg(ap, T);                                                                      \
        if (width_arg && prec_arg)                                                                 \
            nl = snprintf(num, sizeof num, spec, width, prec, v_);                                 \
        else if (width_arg)                                                                        \
            nl = snprintf(num, sizeof num, spec, width, v_);                                       \
        else if (prec_arg)                                                                         \
            nl = snprintf(num, sizeof num, spec, prec, v_);                                        \
        else                                                                                       \
            nl = snprintf(num, sizeof num, spec, v_);                                              \
    } while (0)
        switch (conv) {
        case '%':
            core_str_appends(out, "%");
            continue;
        case 's': {
            const char *v = va_arg(ap, const char *);
            if (!v)
                v = "(null)";
            size_t n = prec >= 0 ? strnlen(v, (size_t)prec) : strlen(v);
            log_value(out, v, n, in_quotes);
            continue;
        }
        case 'c': {
            char ch = (char)va_arg(ap, int);
            log_value(out, &ch, 1, in_quotes);
            continue;
        }
        case 'd':
        case 'i':
            if (strcmp(len, "l") == 0)
                LOG_NUM(long);
            else if (strcmp(len, "ll") == 0)
                LOG_NUM(long long);
            else if (strcmp(len, "j") == 0)
                LOG_NUM(intmax_t);
            else if (strcmp(len, "z") == 0)
                LOG_NUM(ssize_t);
            else if (strcmp(len, "t") == 0)
                LOG_NUM(ptrdiff_t);
            else
                LOG_NUM(int);
            break;
        case 'u':
        case 'o':
        case 'x':
        case 'X':
            if (strcmp(len, "l") == 0)
                LOG_NUM(unsigned long);
            else if (strcmp(len, "ll") == 0)
                LOG_NUM(unsigned long long);
            else if (strcmp(len, "j") == 0)
                LOG_NUM(uintmax_t);
            else if (strcmp(len, "z") == 0)
                LOG_NUM(size_t);
            else if (strcmp(len, "t") == 0)
                LOG_NUM(ptrdiff_t);
            else
                LOG_NUM(unsigned);
            break;
        case 'e':
        case 'E':
        case 'f':
        case 'F':
        case 'g':
        case 'G':
        case 'a':
        case 'A':
            if (strcmp(len, "L") == 0)
                LOG_NUM(long double);
            else
                LOG_NUM(double);
            break;
        case 'p':
            LOG_NUM(void *);
            break;
        default:
            return; /* unknown conversion: its argument type is unknown, stop here */
        }
#undef LOG_NUM
        if (nl > 0)
            core_str_append(out, num, (size_t)nl < sizeof num ? (size_t)nl : sizeof num - 1);
    }
}

#pragma GCC diagnostic pop

/* Reads one field value of the formatted text at *p (a bare word, or a quoted and escaped
 * string) into val, unescaped as far as JSON can carry it. */
static void log_read_value(const char **p, core_str_t *val) {
    const char *s = *p;
    if (*s != '"') {
        const char *e = s;
        while (*e && *e != ' ')
            e++;
        core_str_append(val, s, (size_t)(e - s));
        *p = e;
        return;
    }
    s++;
    while (*s && *s != '"') {
        if (*s != '\\' || !s[1]) {
            core_str_append(val, s++, 1);
            continue;
        }
        char c = s[1];
        unsigned v;
        if ((c == 'x' && sscanf(s + 2, "%2x", &v) == 1 && v < 0x80) ||
            (c == 'u' && sscanf(s + 2, "%4x", &v) == 1)) {
            /* Code points back as UTF-8; bytes that were not UTF-8 stay written as \xNN. */
            char u[4];
            size_t n;
            if (v < 0x80) {
                u[0] = (char)v;
                n = 1;
            } else if (v < 0x800) {
                u[0] = (char)(0xc0 | (v >> 6));
                u[1] = (char)(0x80 | (v & 0x3f));
                n = 2;
            } else {
                u[0] = (char)(0xe0 | (v >> 12));
                u[1] = (char)(0x80 | ((v >> 6) & 0x3f));
                u[2] = (char)(0x80 | (v & 0x3f));
                n = 3;
            }
            core_str_append(val, u, n);
            s += c == 'x' ? 4 : 6;
            continue;
        }
        char r = c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : c;
        if (c == 'x' || c == 'u') {
            core_str_append(val, s, 2);
        } else {
            core_str_append(val, &r, 1);
        }
        s += 2;
    }
    if (*s == '"')
        s++;
    *p = s;
}

/* Whether the formatted fields already hold key=. */
static bool log_has_field(const core_str_t *fb, const char *key) {
    size_t kl = strlen(key);
    for (const char *p = fb->ptr; p && (p = strstr(p, key)) != NULL; p += kl)
        if ((p == fb->ptr || p[-1] == ' ') && p[kl] == '=')
            return true;
    return false;
}

static void log_add_field(core_str_t *fb, const char *key, const char *val) {
    if (!val || log_has_field(fb, key))
        return;
    core_str_appendf(fb, "%s%s=\"", fb->len ? " " : "", key);
    log_escape(fb, val, strlen(val));
    core_str_appends(fb, "\"");
}

/* The node and the current context, after the line's own fields. */
static void log_context_fields(core_str_t *fb) {
    char tb[17];
    log_add_field(fb, "node", log_node);
    log_add_field(fb, "trace", log_ctx.trace ? core_trace_str(log_ctx.trace, tb) : NULL);
    log_add_field(fb, "conn", log_ctx.conn);
    log_add_field(fb, "user", log_ctx.user);
    log_add_field(fb, "method", log_ctx.method);
}

void core_log(core_log_level_t level, const char *module, const char *msg, const char *fields,
              ...) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (level > log_level)
        return;
    core_str_t fb = {0};
    if (fields) {
        va_list ap;
        va_start(ap, fields);
        log_format_fields(&fb, fields, ap);
        va_end(ap);
    }
    log_context_fields(&fb);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char tbuf[64];
    snprintf(tbuf, sizeof tbuf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    core_str_t s = {0};
    if (!log_json) {
        core_str_t mod = {0};
        log_escape(&mod, module, strlen(module));
        core_str_appendf(&s, "%s %-5s %-7s ", tbuf, names[level], mod.ptr ? mod.ptr : "");
        core_str_free(&mod);
        log_escape(&s, msg, strlen(msg));
        if (fb.len) {
            core_str_appends(&s, " ");
            core_str_append(&s, fb.ptr, fb.len);
        }
        core_str_appends(&s, "\n");
    } else {
        /* JSON lines: the fields' key=value pairs, each value a string. */
        core_str_appendf(&s, "{\"ts\":\"%s\",\"level\":\"%s\",\"module\":", tbuf, names[level]);
        core_str_append_json_string(&s, module, strlen(module));
        core_str_appends(&s, ",\"msg\":");
        core_str_append_json_string(&s, msg, strlen(msg));
        const char *p = fb.ptr ? fb.ptr : "";
        core_str_t val = {0};
        while (*p) {
            while (*p == ' ')
                p++;
            const char *key = p;
            while (*p && *p != '=' && *p != ' ')
                p++;
            if (*p != '=') {
                continue; /* a word without '=': not a field */
            }
            size_t klen = (size_t)(p - key);
            p++;
            val.len = 0;
            log_read_value(&p, &val);
            /* Whatever follows a quoted value up to the next space belongs to no field. */
            while (*p && *p != ' ')
                p++;
            if (klen == 0)
                continue;
            core_str_appends(&s, ",");
            core_str_append_json_string(&s, key, klen);
            core_str_appends(&s, ":");
            core_str_append_json_string(&s, val.ptr ? val.ptr : "", val.len);
        }
        core_str_free(&val);
        core_str_appends(&s, "}\n");
    }
    fwrite(s.ptr, 1, s.len, stderr);
    core_str_free(&s);
    core_str_free(&fb);
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

static void random_fill(void *buf, size_t n) {
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

/* Small requests are served from a pool filled by one getrandom call: a node asks for random
 * bytes on every publish (the epoch candidate), and a system call each time was a measurable
 * share of a busy node. The pool is per thread and every byte is handed out once, so the bytes
 * stay as unpredictable as getrandom's own. */
#define RANDOM_POOL 4096

void core_random(void *buf, size_t n) {
    static _Thread_local uint8_t pool[RANDOM_POOL];
    static _Thread_local size_t left;
    if (n > RANDOM_POOL / 4) {
        random_fill(buf, n);
        return;
    }
    if (left < n) {
        random_fill(pool, sizeof pool);
        left = sizeof pool;
    }
    memcpy(buf, pool + sizeof pool - left, n);
    /* Handed-out bytes are wiped from the pool, so a later memory disclosure cannot show
     * a key or id already given out. */
    memset(pool + sizeof pool - left, 0, n);
    left -= n;
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
