/* Response headers that steer retries and key choice: retry-after(-ms), x-should-retry and the
 * rate-limit families of Anthropic (RFC 3339 resets) and OpenAI-compatible providers (duration
 * resets). Header values come from the network, so every parser here accepts junk quietly. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "llm/llm_provider_int.h"

#define ABSENT INT64_MIN
/* Ten years: anything longer is junk, and the cap keeps every product below int64 range. */
#define MAX_MS (10LL * 365 * 24 * 3600 * 1000)

void llm_headers_init(llm_headers_t *h) {
    memset(h, 0, sizeof *h);
    h->should_retry = -1;
    for (int i = 0; i < LLM_RL_COUNT; i++)
        h->rl[i].limit = h->rl[i].remaining = h->rl[i].reset_ms = -1;
    h->ra_ms_header = h->ra_header = ABSENT;
}

static void trim(const char **s, size_t *n) {
    while (*n && isspace((unsigned char)**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n && isspace((unsigned char)(*s)[*n - 1]))
        (*n)--;
}

/* A finite decimal number with nothing else around it; false for junk. */
static bool parse_number(const char *s, size_t n, double *out) {
    char buf[64];
    trim(&s, &n);
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    for (size_t i = 0; i < n; i++) /* no hex, no "inf", no "nan", no exponent games */
        if (!isdigit((unsigned char)buf[i]) && buf[i] != '.' && buf[i] != '-' && buf[i] != '+')
            return false;
    char *end = NULL;
    double v = strtod(buf, &end);
    if (end != buf + n || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static int64_t ceil_ms(double ms) {
    if (ms > (double)MAX_MS)
        return MAX_MS;
    if (ms < -(double)MAX_MS)
        return -MAX_MS;
    int64_t t = (int64_t)ms;
    return (double)t < ms ? t + 1 : t;
}

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* Reads exactly `digits` decimal digits at s[*i]. */
static bool fixed(const char *s, size_t n, size_t *i, int digits, int *out) {
    int v = 0;
    for (int k = 0; k < digits; k++, (*i)++) {
        if (*i >= n || !isdigit((unsigned char)s[*i]))
            return false;
        v = v * 10 + (s[*i] - '0');
    }
    *out = v;
    return true;
}

static bool expect(const char *s, size_t n, size_t *i, char c) {
    if (*i < n && (s[*i] == c || (isalpha((unsigned char)c) && s[*i] == tolower(c)))) {
        (*i)++;
        return true;
    }
    return false;
}

int64_t llm_parse_rfc3339_ms(const char *s, size_t n) {
    trim(&s, &n);
    size_t i = 0;
    int Y, M, D, h, m, sec;
    if (!fixed(s, n, &i, 4, &Y) || !expect(s, n, &i, '-') || !fixed(s, n, &i, 2, &M) ||
        !expect(s, n, &i, '-') || !fixed(s, n, &i, 2, &D))
        return -1;
    if (!expect(s, n, &i, 'T') && !expect(s, n, &i, ' '))
        return -1;
    if (!fixed(s, n, &i, 2, &h) || !expect(s, n, &i, ':') || !fixed(s, n, &i, 2, &m) ||
        !expect(s, n, &i, ':') || !fixed(s, n, &i, 2, &sec))
        return -1;
    if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return -1;
    int frac_ms = 0;
    if (i < n && s[i] == '.') {
        i++;
        int scale = 100, digits = 0;
        while (i < n && isdigit((unsigned char)s[i])) {
            frac_ms += (s[i] - '0') * scale;
            scale /= 10;
            i++;
            digits++;
        }
        if (digits == 0)
            return -1;
    }
    int offset_min = 0;
    if (expect(s, n, &i, 'Z')) {
        /* UTC */
    } else if (i < n && (s[i] == '+' || s[i] == '-')) {
        int sign = s[i] == '-' ? -1 : 1, oh, om;
        i++;
        if (!fixed(s, n, &i, 2, &oh) || !expect(s, n, &i, ':') || !fixed(s, n, &i, 2, &om) ||
            oh > 23 || om > 59)
            return -1;
        offset_min = sign * (oh * 60 + om);
    } else {
        return -1;
    }
    if (i != n)
        return -1;
    int64_t days = days_from_civil(Y, (unsigned)M, (unsigned)D);
    int64_t secs = days * 86400 + h * 3600 + m * 60 + sec - (int64_t)offset_min * 60;
    return secs * 1000 + frac_ms;
}

/* "Wed, 21 Oct 2015 07:28:00 GMT" (RFC 9110 IMF-fixdate) into epoch milliseconds, -1 for junk. */
static int64_t parse_http_date_ms(const char *s, size_t n) {
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    trim(&s, &n);
    const char *comma = memchr(s, ',', n);
    if (!comma)
        return -1;
    size_t i = (size_t)(comma - s) + 1;
    int D, Y, h, m, sec, M = 0;
    if (!expect(s, n, &i, ' ') || !fixed(s, n, &i, 2, &D) || !expect(s, n, &i, ' ') || i + 3 > n)
        return -1;
    for (int k = 0; k < 12; k++)
        if (strncasecmp(s + i, months + 3 * k, 3) == 0)
            M = k + 1;
    i += 3;
    if (!M || !expect(s, n, &i, ' ') || !fixed(s, n, &i, 4, &Y) || !expect(s, n, &i, ' ') ||
        !fixed(s, n, &i, 2, &h) || !expect(s, n, &i, ':') || !fixed(s, n, &i, 2, &m) ||
        !expect(s, n, &i, ':') || !fixed(s, n, &i, 2, &sec) || !expect(s, n, &i, ' ') ||
        n - i != 3 || strncasecmp(s + i, "GMT", 3) != 0)
        return -1;
    if (D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return -1;
    return (days_from_civil(Y, (unsigned)M, (unsigned)D) * 86400 + h * 3600 + m * 60 + sec) * 1000;
}

int64_t llm_parse_duration_ms(const char *s, size_t n) {
    trim(&s, &n);
    if (n == 0)
        return -1;
    if (n == 1 && s[0] == '0')
        return 0;
    double total = 0;
    size_t i = 0;
    while (i < n) {
        double v = 0, scale = 1;
        bool any = false, dot = false;
        for (; i < n && (isdigit((unsigned char)s[i]) || s[i] == '.'); i++) {
            if (s[i] == '.') {
                if (dot)
                    return -1;
                dot = true;
                continue;
            }
            any = true;
            if (dot)
                v += (s[i] - '0') * (scale /= 10);
            else if (v < 1e12)
                v = v * 10 + (s[i] - '0');
        }
        if (!any)
            return -1;
        double unit;
        if (i + 1 < n && s[i] == 'm' && s[i + 1] == 's')
            unit = 1, i += 2;
        else if (i + 1 < n && (s[i] == 'u' || s[i] == 'n') && s[i + 1] == 's')
            unit = s[i] == 'u' ? 1e-3 : 1e-6, i += 2;
        else if (i + 2 < n && (unsigned char)s[i] == 0xC2 && (unsigned char)s[i + 1] == 0xB5 &&
                 s[i + 2] == 's')
            unit = 1e-3, i += 3; /* "µs" */
        else if (i < n && s[i] == 'h')
            unit = 3600e3, i++;
        else if (i < n && s[i] == 'm')
            unit = 60e3, i++;
        else if (i < n && s[i] == 's')
            unit = 1e3, i++;
        else
            return -1;
        total += v * unit;
        if (total > (double)MAX_MS)
            return MAX_MS;
    }
    return ceil_ms(total);
}

/* A reset in any of the forms seen: RFC 3339 (Anthropic), a duration (OpenAI), or a bare
 * number, taken as seconds, or as a Unix timestamp when it is that large. */
static int64_t parse_reset_ms(const char *s, size_t n, int64_t now_ms) {
    trim(&s, &n);
    double v;
    if (n >= 10 && s[4] == '-') {
        int64_t at = llm_parse_rfc3339_ms(s, n);
        return at < 0 ? -1 : (at > now_ms ? at - now_ms : 0);
    }
    if (parse_number(s, n, &v)) {
        if (v < 0)
            return -1;
        if (v >= 1e9)
            return v * 1000 > (double)now_ms ? ceil_ms(v * 1000 - (double)now_ms) : 0;
        return ceil_ms(v * 1000);
    }
    return llm_parse_duration_ms(s, n);
}

static bool parse_count(const char *s, size_t n, int64_t *out) {
    double v;
    if (!parse_number(s, n, &v) || v < 0 || v > 9e15)
        return false;
    *out = (int64_t)v;
    return true;
}

static void derive(llm_headers_t *h) {
    int64_t v = h->ra_ms_header != ABSENT ? h->ra_ms_header : h->ra_header;
    h->retry_after_present = v != ABSENT;
    h->retry_after_ms = h->retry_after_present ? v : -1;
    h->retry_after_honoured = h->retry_after_present && v > 0 && v <= 60000;
}

/* Sets one bucket field from a header named like "<bucket>-<field>" (Anthropic) or
 * "<field>-<bucket>" (OpenAI); `rest` is the name after the family prefix. */
static void take_rl(llm_headers_t *h, const char *rest, bool field_first, const char *v, size_t vn,
                    int64_t now_ms) {
    static const char *const buckets[LLM_RL_COUNT] = {"requests", "tokens", "input-tokens",
                                                      "output-tokens"};
    static const char *const fields[] = {"limit", "remaining", "reset"};
    for (int b = 0; b < LLM_RL_COUNT; b++) {
        for (int f = 0; f < 3; f++) {
            char want[48];
            if (field_first)
                snprintf(want, sizeof want, "%s-%s", fields[f], buckets[b]);
            else
                snprintf(want, sizeof want, "%s-%s", buckets[b], fields[f]);
            if (strcmp(rest, want) != 0)
                continue;
            int64_t x;
            if (f == 2) {
                x = parse_reset_ms(v, vn, now_ms);
                if (x >= 0)
                    h->rl[b].reset_ms = x;
            } else if (parse_count(v, vn, &x)) {
                if (f == 0)
                    h->rl[b].limit = x;
                else
                    h->rl[b].remaining = x;
            }
            return;
        }
    }
}

void llm_headers_add(llm_headers_t *h, const char *name, size_t name_len, const char *value,
                     size_t value_len, int64_t now_wall_ms) {
    char lname[64];
    trim(&name, &name_len);
    trim(&value, &value_len);
    if (name_len == 0 || name_len >= sizeof lname)
        return;
    for (size_t i = 0; i < name_len; i++)
        lname[i] = (char)tolower((unsigned char)name[i]);
    lname[name_len] = '\0';
    double v;
    if (strcmp(lname, "retry-after-ms") == 0) {
        if (parse_number(value, value_len, &v))
            h->ra_ms_header = ceil_ms(v);
        derive(h);
    } else if (strcmp(lname, "retry-after") == 0) {
        int64_t at;
        if (parse_number(value, value_len, &v))
            h->ra_header = ceil_ms(v * 1000);
        else if ((at = parse_http_date_ms(value, value_len)) >= 0)
            h->ra_header = at - now_wall_ms;
        derive(h);
    } else if (strcmp(lname, "x-should-retry") == 0) {
        if (value_len == 4 && strncasecmp(value, "true", 4) == 0)
            h->should_retry = 1;
        else if (value_len == 5 && strncasecmp(value, "false", 5) == 0)
            h->should_retry = 0;
    } else if (strcmp(lname, "request-id") == 0 || strcmp(lname, "x-request-id") == 0) {
        size_t n = value_len < sizeof h->request_id - 1 ? value_len : sizeof h->request_id - 1;
        memcpy(h->request_id, value, n);
        h->request_id[n] = '\0';
    } else if (strncmp(lname, "anthropic-ratelimit-", 20) == 0) {
        take_rl(h, lname + 20, false, value, value_len, now_wall_ms);
    } else if (strncmp(lname, "x-ratelimit-", 12) == 0) {
        take_rl(h, lname + 12, true, value, value_len, now_wall_ms);
    }
}

void llm_headers_add_line(llm_headers_t *h, const char *line, size_t len, int64_t now_wall_ms) {
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line)
        return;
    llm_headers_add(h, line, (size_t)(colon - line), colon + 1, len - (size_t)(colon - line) - 1,
                    now_wall_ms);
}

int64_t llm_headers_wait_ms(const llm_headers_t *h) {
    if (h->retry_after_honoured)
        return h->retry_after_ms;
    int64_t wait = -1;
    for (int b = 0; b < LLM_RL_COUNT; b++)
        if (h->rl[b].remaining == 0 && h->rl[b].reset_ms > wait)
            wait = h->rl[b].reset_ms;
    return wait;
}
