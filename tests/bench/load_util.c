/* Helpers of chat-load that are not on the per-message path: clocks, tokens, the WebSocket key,
 * the latency histogram, /proc readings and the optional /metrics scrape. */
#include "chat_load.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t load_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t load_wall_s(void) {
    return (int64_t)time(NULL);
}

size_t load_b64url(char *out, const void *in, size_t len) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = in;
    size_t o = 0;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

char *load_jwt_mint(const char *secret, const char *sub) {
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    char payload[256];
    int plen =
        snprintf(payload, sizeof payload, "{\"sub\":\"%s\",\"plan\":\"executive\",\"exp\":%lld}",
                 sub, (long long)(load_wall_s() + 3600));
    if (plen < 0 || (size_t)plen >= sizeof payload) {
        return NULL;
    }
    size_t cap = 4 * (sizeof header + 2) / 3 + 4 * ((size_t)plen + 2) / 3 + 64;
    char *tok = malloc(cap);
    if (tok == NULL) {
        return NULL;
    }
    size_t n = load_b64url(tok, header, sizeof header - 1);
    tok[n++] = '.';
    n += load_b64url(tok + n, payload, (size_t)plen);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)tok, n, mac,
             &maclen) == NULL) {
        free(tok);
        return NULL;
    }
    tok[n++] = '.';
    load_b64url(tok + n, mac, maclen);
    return tok;
}

int load_ws_key(char key[25], char accept[29]) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char raw[16];
    /* The key only has to be unpredictable enough for caches; RAND_bytes is cheap at 19,000
     * handshakes and avoids carrying a second random source. */
    if (RAND_bytes(raw, sizeof raw) != 1) {
        return -1;
    }
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof raw);
    char cat[24 + sizeof guid];
    memcpy(cat, key, 24);
    memcpy(cat + 24, guid, sizeof guid - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(cat, 24 + sizeof guid - 1, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20) {
        return -1;
    }
    EVP_EncodeBlock((unsigned char *)accept, md, 20);
    return 0;
}

void load_hist_reset(load_hist *h) {
    memset(h, 0, sizeof *h);
}

/* Bucket b < 128 holds value b. Above, b = shift * 64 + (v >> shift) where shift makes
 * v >> shift fall in [64, 128), so each doubling of the value gets 64 buckets. */
static unsigned hist_index(uint64_t v) {
    if (v < 128) {
        return (unsigned)v;
    }
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - 6;
    if (shift > 30) {
        return LOAD_HIST_BUCKETS - 1;
    }
    return shift * 64 + (unsigned)(v >> shift);
}

static uint64_t hist_value(unsigned b) {
    if (b < 128) {
        return b;
    }
    unsigned shift = b / 64 - 1;
    uint64_t m = b - shift * 64;
    /* The middle of the bucket's range halves the worst-case error. */
    return (m << shift) + ((1ull << shift) >> 1);
}

void load_hist_record(load_hist *h, uint64_t us) {
    h->counts[hist_index(us)]++;
    h->total++;
    if (us > h->max) {
        h->max = us;
    }
}

uint64_t load_hist_quantile(const load_hist *h, double q) {
    if (h->total == 0) {
        return 0;
    }
    uint64_t rank = (uint64_t)(q * (double)h->total);
    if (rank >= h->total) {
        rank = h->total - 1;
    }
    uint64_t seen = 0;
    for (unsigned b = 0; b < LOAD_HIST_BUCKETS; b++) {
        seen += h->counts[b];
        if (seen > rank) {
            uint64_t v = hist_value(b);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

long load_proc_rss_kib(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

long long load_proc_cpu_ticks(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may contain spaces and parentheses, so count fields from the
     * last ')'. utime and stime are fields 14 and 15, i.e. the 12th and 13th after it. */
    char *p = strrchr(buf, ')');
    if (p == NULL) {
        return -1;
    }
    p++;
    for (int field = 3; field < 14; field++) {
        p = strchr(p + 1, ' ');
        if (p == NULL) {
            return -1;
        }
    }
    char *end = NULL;
    long long ut = strtoll(p, &end, 10);
    long long st = strtoll(end, NULL, 10);
    return ut + st;
}

int64_t load_self_cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

long long load_host_busy_ticks(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL) {
        return -1;
    }
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 7) {
        return -1;
    }
    /* user nice system idle iowait irq softirq steal: all but idle and iowait. */
    return (long long)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
}

/* Sums every sample of a metric family (all label sets) in a Prometheus text body. */
static double metric_sum(const char *body, const char *name) {
    size_t nl = strlen(name);
    double sum = -1;
    for (const char *p = body; p != NULL && *p != '\0';) {
        const char *eol = strchr(p, '\n');
        if (*p != '#' && strncmp(p, name, nl) == 0 && (p[nl] == ' ' || p[nl] == '{')) {
            const char *v = p + nl;
            if (*v == '{') {
                v = strchr(v, '}');
            }
            if (v != NULL) {
                double x = strtod(v + 1, NULL);
                sum = (sum < 0 ? 0 : sum) + x;
            }
        }
        p = eol != NULL ? eol + 1 : NULL;
    }
    return sum;
}

int load_metrics_fetch(const char *admin_url, int timeout_ms, load_metrics *m) {
    char host[64];
    int port = 0;
    if (sscanf(admin_url, "http://%63[^:/]:%d", host, &port) != 2) {
        return -1;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    /* A blocking socket with send/receive timeouts is enough: the scrape runs between
     * measurement windows and the admin listener is on loopback. */
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int rl =
        snprintf(req, sizeof req,
                 "GET /metrics HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n", host, port);
    if (write(fd, req, (size_t)rl) != rl) {
        close(fd);
        return -1;
    }
    size_t cap = 1 << 20;
    size_t len = 0;
    char *body = malloc(cap + 1);
    if (body == NULL) {
        close(fd);
        return -1;
    }
    for (;;) {
        ssize_t n = read(fd, body + len, cap - len);
        if (n <= 0) {
            break;
        }
        len += (size_t)n;
        if (len == cap) {
            break;
        }
    }
    close(fd);
    body[len] = '\0';
    if (strncmp(body, "HTTP/1.1 200", 12) != 0 && strncmp(body, "HTTP/1.0 200", 12) != 0) {
        free(body);
        return -1;
    }
    m->pubs_in = metric_sum(body, "chat_publications_in_total");
    m->pubs_out = metric_sum(body, "chat_publications_out_total");
    m->disconnects = metric_sum(body, "chat_disconnects_total");
    m->write_calls = metric_sum(body, "chat_write_calls_total");
    m->rate_limited = metric_sum(body, "chat_rate_limited_total");
    free(body);
    return 0;
}
