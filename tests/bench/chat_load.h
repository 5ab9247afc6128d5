/* Internal contract of the chat-load benchmark tool: helpers shared by its source files.
 * Nothing here is part of the server; the tool links only libc and libcrypto. */
#ifndef CHAT_LOAD_H
#define CHAT_LOAD_H

#include <stddef.h>
#include <stdint.h>

/* Microseconds of CLOCK_MONOTONIC. Publishers and subscribers run in one process on one host, so
 * a send timestamp taken from this clock can be compared with the receive time directly. */
int64_t load_now_us(void);

/* Wall-clock seconds since the epoch, for JWT `exp`. */
int64_t load_wall_s(void);

/* Base64url without padding, as JWT wants it. Writes a NUL-terminated string into out, which must
 * hold at least 4 * ((len + 2) / 3) + 1 bytes. Returns the length written. */
size_t load_b64url(char *out, const void *in, size_t len);

/* Mints an HS256 connection token for user `sub` with plan "executive", valid for one hour.
 * Returns a malloc'd NUL-terminated string, or NULL when HMAC fails. */
char *load_jwt_mint(const char *secret, const char *sub);

/* Fills key (25 bytes incl. NUL) with a fresh Sec-WebSocket-Key and accept (29 bytes incl. NUL)
 * with the Sec-WebSocket-Accept value a correct server must answer. Returns 0 or -1. */
int load_ws_key(char key[25], char accept[29]);

/* A log-bucketed latency histogram in microseconds, HDR-like: values below 128 are exact and
 * above that every power of two is split into 64 buckets, so any quantile is within about 1.6 %
 * of the true value. Recording is one shift and one increment, which matters at millions of
 * deliveries per second. */
#define LOAD_HIST_BUCKETS (64 * 32)
typedef struct load_hist {
    uint64_t counts[LOAD_HIST_BUCKETS];
    uint64_t total;
    uint64_t max;
} load_hist;

void load_hist_reset(load_hist *h);
void load_hist_record(load_hist *h, uint64_t us);
/* The value (microseconds) at quantile q in [0, 1]; 0 when the histogram is empty. */
uint64_t load_hist_quantile(const load_hist *h, double q);

/* Resident set size in KiB of process pid from /proc/pid/status, or -1. */
long load_proc_rss_kib(int pid);
/* utime + stime of process pid in clock ticks from /proc/pid/stat, or -1. */
long long load_proc_cpu_ticks(int pid);
/* CPU time (user + system) used by this process so far, microseconds. */
int64_t load_self_cpu_us(void);
/* Busy time of the whole machine (every core: user, nice, system, irq, softirq, steal) from
 * /proc/stat, in clock ticks, or -1. */
long long load_host_busy_ticks(void);

/* Server-side counters read from the admin listener's /metrics, for cross-checking what the
 * tool counted. A field is -1 when the metric was absent. */
typedef struct load_metrics {
    double pubs_in;
    double pubs_out;
    double disconnects;
    double write_calls;
    double rate_limited;
} load_metrics;

/* Fetches http://host:port/metrics (blocking, bounded by timeout_ms) and fills m. Loopback only;
 * the call happens between measurement windows, never on the hot path. Returns 0 or -1. */
int load_metrics_fetch(const char *admin_url, int timeout_ms, load_metrics *m);

#endif
