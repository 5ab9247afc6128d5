/* llm-load: drives chatd's assistant (the llm.ask RPC) the way a busy deployment would: many
 * rooms, each with a fixed number of subscribed members, one member per room asking again as
 * soon as the previous answer is stored, so that the node holds a steady number of concurrent
 * streams. It measures, per answer and per member, the time from the ask to the first llm.delta
 * the member receives, and compares it with the provider stand-in's own time to the first
 * token, taken by a plain HTTP client calling it directly.
 *
 * The same design as chat-load: one thread, one epoll loop, non-blocking sockets, no JSON parser
 * (the few fields needed are found by scanning), log-bucket histograms. A socket may be a member
 * of several rooms (--conns below rooms x room size), because the open-file limit of the node,
 * not of this tool, is what bounds the number of sockets in one run.
 *
 * Phases: connect and subscribe; measure the direct baseline (--direct-samples requests to the
 * mock, one at a time); print "READY" to stderr and wait for SIGUSR1 (or start at once with
 * --no-wait); ramp the asks over --ramp-seconds; print "STEADY" to stderr and measure until
 * SIGUSR2 or --seconds; stop asking, drain, report. */
#include "chat_load.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_MESSAGE_BYTES (16u << 20)
#define READ_BUF_BYTES (256u << 10)
#define MAX_CODES 32
#define RPC_ID_BASE 1000000u

/* ------------------------------------------------------------------------------------------ */
/* Options */

static struct {
    struct sockaddr_in node;
    char node_host[64];
    int node_port;
    char node_path[256];
    struct sockaddr_in mock;
    bool have_mock;
    char mock_host[64];
    int mock_port;
    const char *secret;
    unsigned rooms;
    unsigned room_size;
    unsigned conns;
    const char *prefix;
    double ramp_seconds;
    double seconds;
    double drain_seconds;
    double retry_seconds;
    unsigned direct_samples;
    unsigned probe_ms;
    unsigned sources;
    unsigned max_inflight;
    int node_pid;
    int mock_pid;
    bool no_wait;
    double timeout;
} opt = {
    .rooms = 2000,
    .room_size = 10,
    .prefix = "chat:llm",
    .ramp_seconds = 3,
    .seconds = 600,
    .drain_seconds = 5,
    .retry_seconds = 1,
    .direct_samples = 100,
    .probe_ms = 100,
    .sources = 4,
    .max_inflight = 256,
    .timeout = 900,
};

static void usage(FILE *out) {
    fprintf(
        out,
        "usage: llm-load --secret S --url ws://IP:PORT/PATH [options]\n"
        "\n"
        "  --url URL             the node's WebSocket endpoint (numeric IPv4 host)\n"
        "  --secret S            HS256 secret for the connection JWTs (plan executive)\n"
        "  --mock URL            http://IP:PORT of llm-mock: the direct TTFT baseline\n"
        "  --rooms N             rooms, one stream each at a time (default 2000)\n"
        "  --room-size M         members per room (default 10); member 0 asks\n"
        "  --conns K             distinct sockets (default rooms x room size); member slot\n"
        "                        s = room x M + j is socket s %% K, so K >= M keeps the members\n"
        "                        of a room distinct and a socket joins ceil(N x M / K) rooms\n"
        "  --prefix P            rooms are P<room> (default chat:llm)\n"
        "  --ramp-seconds S      first asks spread over S seconds (default 3)\n"
        "  --seconds S           measuring window after the ramp, unless SIGUSR2 ends it\n"
        "                        earlier (default 600)\n"
        "  --drain-seconds S     wait for the streams still running at the end (default 5)\n"
        "  --retry-seconds S     a refused or failed ask is repeated after S (default 1)\n"
        "  --direct-samples N    direct requests to the mock before the load (default 100)\n"
        "  --probe-ms P          one direct request to the mock every P ms during the window\n"
        "                        (default 100; 0 = none)\n"
        "  --no-wait             start asking when connected instead of on SIGUSR1\n"
        "  --node-pid PID        node RSS and CPU from /proc\n"
        "  --mock-pid PID        the mock's CPU from /proc\n"
        "  --sources K           source addresses 127.0.0.1..K (default 4)\n"
        "  --max-inflight H      handshakes at once (default 256)\n"
        "  --timeout S           hard limit for the whole run (default 900)\n"
        "\n"
        "Output: DIRECT (baseline before the load), CONNECT, LLM (the window's figures),\n"
        "ERRORS/CLOSES (codes seen). Exit 0 done, 1 usage or no connection, 2 timeout.\n");
}

static int parse_hostport(const char *s, const char *scheme, char host[64], int *port,
                          struct sockaddr_in *addr, char *path, size_t pathlen) {
    size_t sl = strlen(scheme);
    if (strncmp(s, scheme, sl) != 0) {
        return -1;
    }
    int consumed = 0;
    if (sscanf(s + sl, "%63[^:/]:%d%n", host, port, &consumed) != 2 || *port <= 0 ||
        *port > 65535) {
        return -1;
    }
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)*port);
    if (inet_pton(AF_INET, host, &addr->sin_addr) != 1) {
        return -1;
    }
    if (path != NULL) {
        const char *p = s + sl + consumed;
        snprintf(path, pathlen, "%s", *p == '/' ? p : "/connection/websocket");
    }
    return 0;
}

static int parse_options(int argc, char **argv) {
    enum {
        O_URL = 256,
        O_SECRET,
        O_MOCK,
        O_ROOMS,
        O_SIZE,
        O_CONNS,
        O_PREFIX,
        O_RAMP,
        O_SECONDS,
        O_DRAIN,
        O_RETRY,
        O_DIRECT,
        O_PROBE,
        O_NOWAIT,
        O_PID,
        O_MPID,
        O_SOURCES,
        O_INFLIGHT,
        O_TIMEOUT,
        O_HELP
    };
    static const struct option longopts[] = {
        {"url", required_argument, NULL, O_URL},
        {"secret", required_argument, NULL, O_SECRET},
        {"mock", required_argument, NULL, O_MOCK},
        {"rooms", required_argument, NULL, O_ROOMS},
        {"room-size", required_argument, NULL, O_SIZE},
        {"conns", required_argument, NULL, O_CONNS},
        {"prefix", required_argument, NULL, O_PREFIX},
        {"ramp-seconds", required_argument, NULL, O_RAMP},
        {"seconds", required_argument, NULL, O_SECONDS},
        {"drain-seconds", required_argument, NULL, O_DRAIN},
        {"retry-seconds", required_argument, NULL, O_RETRY},
        {"direct-samples", required_argument, NULL, O_DIRECT},
        {"probe-ms", required_argument, NULL, O_PROBE},
        {"no-wait", no_argument, NULL, O_NOWAIT},
        {"node-pid", required_argument, NULL, O_PID},
        {"mock-pid", required_argument, NULL, O_MPID},
        {"sources", required_argument, NULL, O_SOURCES},
        {"max-inflight", required_argument, NULL, O_INFLIGHT},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    bool have_url = false;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case O_URL:
            if (parse_hostport(optarg, "ws://", opt.node_host, &opt.node_port, &opt.node,
                               opt.node_path, sizeof opt.node_path) != 0) {
                fprintf(stderr, "llm-load: bad --url %s\n", optarg);
                return -1;
            }
            have_url = true;
            break;
        case O_SECRET:
            opt.secret = optarg;
            break;
        case O_MOCK:
            if (parse_hostport(optarg, "http://", opt.mock_host, &opt.mock_port, &opt.mock, NULL,
                               0) != 0) {
                fprintf(stderr, "llm-load: bad --mock %s\n", optarg);
                return -1;
            }
            opt.have_mock = true;
            break;
        case O_ROOMS:
            opt.rooms = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_SIZE:
            opt.room_size = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_CONNS:
            opt.conns = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_PREFIX:
            opt.prefix = optarg;
            break;
        case O_RAMP:
            opt.ramp_seconds = strtod(optarg, NULL);
            break;
        case O_SECONDS:
            opt.seconds = strtod(optarg, NULL);
            break;
        case O_DRAIN:
            opt.drain_seconds = strtod(optarg, NULL);
            break;
        case O_RETRY:
            opt.retry_seconds = strtod(optarg, NULL);
            break;
        case O_DIRECT:
            opt.direct_samples = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_PROBE:
            opt.probe_ms = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_NOWAIT:
            opt.no_wait = true;
            break;
        case O_PID:
            opt.node_pid = atoi(optarg);
            break;
        case O_MPID:
            opt.mock_pid = atoi(optarg);
            break;
        case O_SOURCES:
            opt.sources = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_INFLIGHT:
            opt.max_inflight = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_TIMEOUT:
            opt.timeout = strtod(optarg, NULL);
            break;
        case O_HELP:
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc || !have_url || opt.secret == NULL) {
        usage(stderr);
        return -1;
    }
    if (opt.conns == 0) {
        opt.conns = opt.rooms * opt.room_size;
    }
    if (opt.rooms < 1 || opt.room_size < 1 || opt.conns < opt.room_size ||
        opt.conns > opt.rooms * opt.room_size || opt.sources < 1 || opt.sources > 250 ||
        opt.max_inflight < 1 || opt.seconds <= 0 || opt.timeout <= 0 || strlen(opt.prefix) > 100 ||
        strchr(opt.prefix, '"') != NULL || strchr(opt.prefix, '\\') != NULL) {
        fprintf(stderr, "llm-load: an option is out of range (see --help)\n");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* State */

enum cstate { CS_NEW, CS_TCP, CS_HTTP, CS_CONNECT, CS_SUBSCRIBE, CS_READY, CS_DEAD };
enum ckind { K_MEMBER, K_PROBE };

typedef struct conn {
    int fd;
    uint8_t state;
    uint8_t kind;
    uint8_t want_out;
    uint8_t in_frag;
    uint32_t idx;       /* member socket index */
    uint32_t subs_left; /* subscribe replies still due */
    int64_t t0;         /* probe: request sent */
    char accept[29];
    char *rbuf; /* unconsumed input */
    size_t rlen, rcap;
    char *msg; /* fragmented message */
    size_t mlen, mcap;
    char *wbuf;
    size_t woff, wlen, wcap;
} conn;

enum rstate { R_IDLE, R_ASKED };

typedef struct room {
    uint8_t state;
    uint8_t in_window; /* the current ask was sent inside the measuring window */
    uint8_t ack;       /* the RPC reply came */
    int64_t ask_t;     /* send time of the current ask */
    int64_t next_t;    /* when to ask next (R_IDLE) */
    char req_id[40];   /* from the RPC reply, or from the first push */
    char prev_id[40];  /* the previous answer's: its last deltas may still be on their way */
    uint16_t firsts;   /* members that saw delta 0 of the current ask */
} room;

typedef struct code_count {
    int code;
    uint64_t count;
} code_count;

enum phase { PH_SETUP, PH_DIRECT, PH_WAIT, PH_RAMP, PH_WINDOW, PH_DRAIN, PH_DONE };

static struct {
    conn *conns;
    room *rooms;
    int ep;
    char *scratch;
    uint32_t rng;
    unsigned next_start, inflight, ready, failed;
    unsigned active; /* asks sent and not yet ended */
    code_count errors[MAX_CODES], closes[MAX_CODES];
    uint64_t disconnects;
    enum phase phase;
    int64_t phase_t0, phase_end;
    /* direct baseline */
    conn *probe;
    load_hist direct_idle;
    unsigned direct_done;
    int64_t next_probe;
    /* the window */
    int64_t win_t0, win_t1;
    load_hist ttft, ack, direct_load;
    uint64_t asks, completed, llm_errors, rpc_errors, probe_fail;
    uint64_t tokens, deltas, delta_deliveries, final_deliveries;
    uint64_t no_first; /* asks of the window that ended, or were still open at the end, without
                        * any member having seen their first delta */
    long long node_ticks0, node_ticks1, mock_ticks0, mock_ticks1;
    int64_t self_cpu0, self_cpu1;
    long rss_idle, rss_max;
    double rss_sum, active_sum;
    unsigned rss_n;
    unsigned active_max;
    int64_t next_sample;
} g;

static volatile sig_atomic_t g_go, g_stop, g_interrupted;

static void on_usr1(int s) {
    (void)s;
    g_go = 1;
}
static void on_usr2(int s) {
    (void)s;
    g_stop = 1;
}
static void on_int(int s) {
    (void)s;
    g_interrupted = 1;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (q == NULL && n != 0) {
        fprintf(stderr, "llm-load: out of memory\n");
        abort();
    }
    return q;
}

static void count_code(code_count *tab, int code) {
    for (int i = 0; i < MAX_CODES; i++) {
        if (tab[i].count == 0 || tab[i].code == code) {
            tab[i].code = code;
            tab[i].count++;
            return;
        }
    }
}

static uint32_t xorshift32(void) {
    uint32_t x = g.rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    g.rng = x;
    return x;
}

static unsigned asker_of(unsigned r) {
    return (unsigned)(((uint64_t)r * opt.room_size) % opt.conns);
}

/* ------------------------------------------------------------------------------------------ */
/* Sockets */

static void conn_free(conn *c) {
    free(c->rbuf);
    free(c->msg);
    free(c->wbuf);
    c->rbuf = c->msg = c->wbuf = NULL;
    c->rlen = c->rcap = c->mlen = c->mcap = c->woff = c->wlen = c->wcap = 0;
}

static void conn_kill(conn *c) {
    if (c->state == CS_DEAD || c->state == CS_NEW) {
        return;
    }
    if (c->kind == K_MEMBER) {
        if (c->state == CS_READY) {
            g.ready--;
            g.disconnects++;
        } else {
            g.inflight--;
            g.failed++;
        }
    }
    close(c->fd);
    c->fd = -1;
    c->state = CS_DEAD;
    conn_free(c);
}

static void conn_set_out(conn *c, bool want) {
    if (c->want_out == want) {
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
}

static int conn_flush(conn *c) {
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_set_out(c, true);
            return 0;
        } else {
            conn_kill(c);
            return -1;
        }
    }
    c->woff = c->wlen = 0;
    conn_set_out(c, false);
    return 0;
}

static char *wbuf_reserve(conn *c, size_t n) {
    if (c->woff > 0 && c->woff == c->wlen) {
        c->woff = c->wlen = 0;
    }
    if (c->wlen + n > c->wcap) {
        size_t cap = c->wcap ? c->wcap : 512;
        while (cap < c->wlen + n) {
            cap *= 2;
        }
        c->wbuf = xrealloc(c->wbuf, cap);
        c->wcap = cap;
    }
    return c->wbuf + c->wlen;
}

static void queue_raw(conn *c, const char *p, size_t n) {
    memcpy(wbuf_reserve(c, n), p, n);
    c->wlen += n;
}

/* One masked client frame (RFC 6455 5.3). */
static void ws_queue(conn *c, unsigned opcode, const char *data, size_t len) {
    unsigned char *h = (unsigned char *)wbuf_reserve(c, len + 14);
    size_t hl;
    h[0] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        h[1] = (unsigned char)(0x80 | len);
        hl = 2;
    } else if (len < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
        hl = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++) {
            h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
        }
        hl = 10;
    }
    uint32_t mask = xorshift32();
    memcpy(h + hl, &mask, 4);
    const unsigned char *mb = h + hl;
    hl += 4;
    for (size_t i = 0; i < len; i++) {
        h[hl + i] = (unsigned char)data[i] ^ mb[i & 3];
    }
    c->wlen += hl + len;
}

static int ws_send(conn *c, const char *data, size_t len) {
    ws_queue(c, 0x1, data, len);
    return conn_flush(c);
}

/* Opens a non-blocking TCP connection from 127.0.0.(1 + i % sources). */
static int tcp_open(conn *c, const struct sockaddr_in *dst, unsigned i) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.sources > 1) {
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000001u + i % opt.sources);
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0) {
            return -1;
        }
    }
    if (connect(c->fd, (const struct sockaddr *)dst, sizeof *dst) != 0 && errno != EINPROGRESS) {
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->want_out = 1;
    c->state = CS_TCP;
    return 0;
}

static void member_start(conn *c) {
    g.inflight++;
    c->state = CS_TCP; /* so that a failure below is counted */
    if (tcp_open(c, &opt.node, c->idx) != 0) {
        if (c->fd >= 0) {
            close(c->fd);
        }
        c->fd = -1;
        c->state = CS_DEAD;
        g.inflight--;
        g.failed++;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Direct requests to the mock: time from the request to the first content_block_delta */

static void probe_start(int64_t now) {
    conn *c = xrealloc(NULL, sizeof *c);
    memset(c, 0, sizeof *c);
    c->kind = K_PROBE;
    c->fd = -1;
    if (tcp_open(c, &opt.mock, 0) != 0) {
        if (c->fd >= 0) {
            close(c->fd);
        }
        free(c);
        g.probe_fail++;
        return;
    }
    (void)now;
    g.probe = c;
}

static void probe_end(conn *c, int64_t lat_us) {
    if (lat_us >= 0) {
        if (g.phase == PH_DIRECT) {
            load_hist_record(&g.direct_idle, (uint64_t)lat_us);
            g.direct_done++;
        } else if (g.phase == PH_WINDOW) {
            load_hist_record(&g.direct_load, (uint64_t)lat_us);
        }
    } else {
        g.probe_fail++;
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    conn_free(c);
    if (g.probe == c) {
        g.probe = NULL;
    }
    free(c);
}

static void probe_on_event(conn *c, uint32_t events) {
    if (c->state == CS_TCP) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            probe_end(c, -1);
            return;
        }
        static const char body[] = "{\"model\":\"claude-bench\",\"max_tokens\":1024,"
                                   "\"stream\":true,\"messages\":[{\"role\":\"user\","
                                   "\"content\":\"q\"}]}";
        char req[512];
        int n = snprintf(req, sizeof req,
                         "POST /v1/messages HTTP/1.1\r\nHost: %s:%d\r\nx-api-key: bench\r\n"
                         "anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
                         "content-length: %zu\r\n\r\n%s",
                         opt.mock_host, opt.mock_port, sizeof body - 1, body);
        c->state = CS_HTTP;
        c->t0 = load_now_us();
        queue_raw(c, req, (size_t)n);
        if (conn_flush(c) != 0) {
            probe_end(c, -1);
        }
        return;
    }
    if ((events & EPOLLOUT) && conn_flush(c) != 0) {
        probe_end(c, -1);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
        return;
    }
    char buf[16384];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        probe_end(c, -1);
        return;
    }
    int64_t now = load_now_us();
    /* Keep the last bytes too, so a marker split across two reads is still found. */
    size_t keep = c->rlen < 32 ? c->rlen : 32;
    char *tail = c->rbuf != NULL ? c->rbuf + c->rlen - keep : NULL;
    char win[32 + sizeof buf];
    if (keep > 0) {
        memcpy(win, tail, keep);
    }
    memcpy(win + keep, buf, (size_t)n);
    if (memmem(win, keep + (size_t)n, "content_block_delta", 19) != NULL) {
        probe_end(c, now - c->t0);
        return;
    }
    if (c->rcap < 32) {
        c->rbuf = xrealloc(c->rbuf, 32);
        c->rcap = 32;
    }
    size_t total = keep + (size_t)n;
    size_t last = total < 32 ? total : 32;
    memcpy(c->rbuf, win + total - last, last);
    c->rlen = last;
}

/* ------------------------------------------------------------------------------------------ */
/* Asking */

static void ask(unsigned r, int64_t now) {
    room *rm = &g.rooms[r];
    conn *c = &g.conns[asker_of(r)];
    if (c->state != CS_READY) {
        rm->next_t = now + (int64_t)(opt.retry_seconds * 1e6);
        return;
    }
    char cmd[512];
    int n = snprintf(cmd, sizeof cmd,
                     "{\"id\":%u,\"rpc\":{\"method\":\"llm.ask\",\"data\":{\"channel\":\"%s%u\","
                     "\"prompt\":\"q\"}}}",
                     RPC_ID_BASE + r, opt.prefix, r);
    rm->state = R_ASKED;
    rm->ack = 0;
    rm->firsts = 0;
    rm->req_id[0] = '\0';
    rm->ask_t = load_now_us();
    rm->in_window = g.phase == PH_WINDOW;
    if (rm->in_window) {
        g.asks++;
    }
    g.active++;
    ws_send(c, cmd, (size_t)n);
}

/* The current ask of room r ended (answer stored, failed or refused); the room asks again at
 * once after a stored answer, after --retry-seconds otherwise. */
static void ask_ended(unsigned r, bool ok, int64_t now) {
    room *rm = &g.rooms[r];
    if (rm->state != R_ASKED) {
        return;
    }
    rm->state = R_IDLE;
    if (rm->in_window && rm->firsts == 0) {
        g.no_first++;
    }
    memcpy(rm->prev_id, rm->req_id, sizeof rm->prev_id);
    g.active--;
    rm->next_t = ok ? now : now + (int64_t)(opt.retry_seconds * 1e6);
}

/* ------------------------------------------------------------------------------------------ */
/* Receive path */

static uint64_t parse_u64(const char **pp, const char *end) {
    const char *p = *pp;
    uint64_t v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        v = v * 10 + (uint64_t)(*p - '0');
        p++;
    }
    *pp = p;
    return v;
}

static long find_num(const char *p, size_t n, const char *key) {
    size_t kl = strlen(key);
    const char *k = memmem(p, n, key, kl);
    if (k == NULL) {
        return -1;
    }
    const char *v = k + kl;
    const char *end = p + n;
    if (v >= end || *v < '0' || *v > '9') {
        return -1;
    }
    return (long)parse_u64(&v, end);
}

/* Copies the JSON string value after key (no escapes expected) into out. */
static bool find_str(const char *p, size_t n, const char *key, char *out, size_t cap) {
    size_t kl = strlen(key);
    const char *k = memmem(p, n, key, kl);
    if (k == NULL) {
        return false;
    }
    const char *v = k + kl;
    const char *end = p + n;
    size_t i = 0;
    while (v < end && *v != '"' && i + 1 < cap) {
        out[i++] = *v++;
    }
    out[i] = '\0';
    return v < end && *v == '"';
}

static void on_push(conn *c, const char *p, size_t n, int64_t now) {
    static char key[128];
    static size_t key_len;
    if (key_len == 0) {
        key_len = (size_t)snprintf(key, sizeof key, "\"channel\":\"%s", opt.prefix);
    }
    const char *ch = memmem(p, n, key, key_len);
    if (ch == NULL) {
        if (memmem(p, n, "\"disconnect\"", 12) != NULL) {
            g.disconnects++;
        }
        return; /* personal channel (llm.queued) and anything else */
    }
    const char *q = ch + key_len;
    const char *end = p + n;
    uint64_t r = parse_u64(&q, end);
    if (q >= end || *q != '"' || r >= opt.rooms) {
        return;
    }
    const char *t = memmem(q, (size_t)(end - q), "\"type\":\"", 8);
    if (t == NULL) {
        return;
    }
    t += 8;
    size_t rest = (size_t)(end - t);
    room *rm = &g.rooms[r];
    bool asker = c->idx == asker_of((unsigned)r);
    char rid[40];
    if (rest > 10 && memcmp(t, "llm.delta\"", 10) == 0) {
        if (rm->state != R_ASKED || !find_str(t, rest, "\"request_id\":\"", rid, sizeof rid)) {
            return;
        }
        /* Another member may still be receiving the previous answer's last deltas when the
         * asker has seen its stored message and asked again. */
        if (strcmp(rid, rm->prev_id) == 0) {
            return;
        }
        if (rm->req_id[0] == '\0') {
            snprintf(rm->req_id, sizeof rm->req_id, "%s", rid);
        } else if (strcmp(rm->req_id, rid) != 0) {
            return;
        }
        if (g.phase == PH_WINDOW || g.phase == PH_DRAIN) {
            g.delta_deliveries++;
        }
        long idx = find_num(t, rest, "\"index\":");
        if (idx == 0) {
            rm->firsts++;
            if (rm->in_window) {
                load_hist_record(&g.ttft, (uint64_t)(now - rm->ask_t));
            }
        }
        if (asker && g.phase == PH_WINDOW) {
            /* Every token after the first of an answer starts with a space (llm-mock's text:
             * the one-word prompt, then " token2", " token3", ...). */
            g.deltas++;
            const char *tx = memmem(t, rest, "\"text\":\"", 8);
            if (tx != NULL) {
                uint64_t k = idx == 0 ? 1 : 0;
                for (const char *s = tx + 8; s < end && *s != '"'; s++) {
                    k += *s == ' ';
                }
                g.tokens += k;
            }
        }
    } else if (rest > 8 && memcmp(t, "message\"", 8) == 0) {
        if (memmem(t, rest, "\"role\":\"assistant\"", 18) == NULL || rm->state != R_ASKED) {
            return;
        }
        if (find_str(t, rest, "\"request_id\":\"", rid, sizeof rid) &&
            (strcmp(rid, rm->prev_id) == 0 ||
             (rm->req_id[0] != '\0' && strcmp(rm->req_id, rid) != 0))) {
            return;
        }
        if (g.phase == PH_WINDOW || g.phase == PH_DRAIN) {
            g.final_deliveries++;
        }
        if (asker) {
            if (rm->in_window) {
                g.completed++;
            }
            ask_ended((unsigned)r, true, now);
        }
    } else if (rest > 10 && memcmp(t, "llm.error\"", 10) == 0) {
        if (asker && rm->state == R_ASKED &&
            find_str(t, rest, "\"request_id\":\"", rid, sizeof rid) &&
            strcmp(rid, rm->prev_id) != 0) {
            long code = find_num(t, rest, "\"code\":");
            count_code(g.errors, (int)(1000 + code)); /* 1000 + code: a stream error */
            if (rm->in_window) {
                g.llm_errors++;
            }
            ask_ended((unsigned)r, false, now);
        }
    }
}

static void member_subscribe_all(conn *c) {
    /* Member slots s = idx, idx + K, idx + 2K, ... belong to rooms s / room_size. */
    uint64_t total = (uint64_t)opt.rooms * opt.room_size;
    unsigned id = 2;
    c->subs_left = 0;
    for (uint64_t s = c->idx; s < total; s += opt.conns) {
        char cmd[256];
        int n = snprintf(cmd, sizeof cmd, "{\"id\":%u,\"subscribe\":{\"channel\":\"%s%u\"}}", id++,
                         opt.prefix, (unsigned)(s / opt.room_size));
        ws_queue(c, 0x1, cmd, (size_t)n);
        c->subs_left++;
    }
    c->state = CS_SUBSCRIBE;
    conn_flush(c);
}

static void on_reply(conn *c, const char *p, size_t n, int64_t now) {
    long id = find_num(p, n, "\"id\":");
    bool is_err = memmem(p, n, "\"error\":", 8) != NULL;
    long code = is_err ? find_num(p, n, "\"code\":") : 0;
    if (is_err) {
        count_code(g.errors, (int)code);
    }
    if (id == 1 && c->state == CS_CONNECT) {
        if (is_err) {
            conn_kill(c);
        } else {
            member_subscribe_all(c);
        }
    } else if (id >= 2 && id < (long)RPC_ID_BASE && c->state == CS_SUBSCRIBE) {
        if (is_err) {
            conn_kill(c);
        } else if (--c->subs_left == 0) {
            c->state = CS_READY;
            g.inflight--;
            g.ready++;
        }
    } else if (id >= (long)RPC_ID_BASE && (unsigned long)id < RPC_ID_BASE + opt.rooms) {
        unsigned r = (unsigned)(id - RPC_ID_BASE);
        room *rm = &g.rooms[r];
        if (rm->state != R_ASKED) {
            return;
        }
        if (is_err) {
            if (rm->in_window) {
                g.rpc_errors++;
            }
            ask_ended(r, false, now);
            return;
        }
        rm->ack = 1;
        if (rm->in_window) {
            load_hist_record(&g.ack, (uint64_t)(now - rm->ask_t));
        }
        char rid[40];
        if (rm->req_id[0] == '\0' && find_str(p, n, "\"request_id\":\"", rid, sizeof rid)) {
            snprintf(rm->req_id, sizeof rm->req_id, "%s", rid);
        }
    }
}

static void on_line(conn *c, const char *p, size_t n, int64_t now) {
    if (n == 2 && p[0] == '{' && p[1] == '}') {
        ws_send(c, "{}", 2); /* the server's ping */
        return;
    }
    if (n > 8 && memcmp(p, "{\"push\":", 8) == 0) {
        on_push(c, p, n, now);
        return;
    }
    on_reply(c, p, n, now);
}

static void on_message(conn *c, const char *p, size_t n, int64_t now) {
    size_t off = 0;
    while (off < n && c->state != CS_DEAD) {
        const char *nl = memchr(p + off, '\n', n - off);
        size_t le = nl != NULL ? (size_t)(nl - p) : n;
        if (le > off) {
            on_line(c, p + off, le - off, now);
        }
        off = le + 1;
    }
}

static void msg_append(conn *c, const char *p, size_t n) {
    if (c->mlen + n > c->mcap) {
        size_t cap = c->mcap ? c->mcap : 4096;
        while (cap < c->mlen + n) {
            cap *= 2;
        }
        c->msg = xrealloc(c->msg, cap);
        c->mcap = cap;
    }
    memcpy(c->msg + c->mlen, p, n);
    c->mlen += n;
}

/* Handles the complete frames in buf; returns the bytes consumed or -1 when killed. */
static long ws_consume(conn *c, char *buf, size_t len, int64_t now) {
    size_t off = 0;
    while (c->state != CS_DEAD && len - off >= 2) {
        unsigned char *b = (unsigned char *)buf + off;
        size_t hl = 2;
        uint64_t pl = b[1] & 0x7f;
        if (pl == 126) {
            if (len - off < 4) {
                break;
            }
            pl = (uint64_t)b[2] << 8 | b[3];
            hl = 4;
        } else if (pl == 127) {
            if (len - off < 10) {
                break;
            }
            pl = 0;
            for (int i = 0; i < 8; i++) {
                pl = pl << 8 | b[2 + i];
            }
            hl = 10;
        }
        if (pl > MAX_MESSAGE_BYTES) {
            conn_kill(c);
            return -1;
        }
        if (len - off < hl + pl) {
            break;
        }
        bool fin = b[0] & 0x80;
        unsigned op = b[0] & 0x0f;
        char *payload = (char *)b + hl;
        off += hl + (size_t)pl;
        switch (op) {
        case 0x0:
            msg_append(c, payload, (size_t)pl);
            if (fin) {
                c->in_frag = 0;
                on_message(c, c->msg, c->mlen, now);
                c->mlen = 0;
            }
            break;
        case 0x1:
        case 0x2:
            if (fin) {
                on_message(c, payload, (size_t)pl, now);
            } else {
                c->in_frag = 1;
                c->mlen = 0;
                msg_append(c, payload, (size_t)pl);
            }
            break;
        case 0x8: {
            int code =
                pl >= 2 ? ((unsigned char)payload[0] << 8 | (unsigned char)payload[1]) : 1005;
            count_code(g.closes, code);
            conn_kill(c);
            return -1;
        }
        case 0x9:
            ws_queue(c, 0xA, payload, (size_t)pl);
            conn_flush(c);
            break;
        default:
            break;
        }
    }
    return c->state == CS_DEAD ? -1 : (long)off;
}

static void send_connect(conn *c) {
    char sub[32];
    snprintf(sub, sizeof sub, "llm-%u", c->idx);
    char *tok = load_jwt_mint(opt.secret, sub);
    if (tok == NULL) {
        conn_kill(c);
        return;
    }
    char cmd[1024];
    int n = snprintf(cmd, sizeof cmd, "{\"id\":1,\"connect\":{\"token\":\"%s\"}}", tok);
    free(tok);
    c->state = CS_CONNECT;
    ws_send(c, cmd, (size_t)n);
}

/* Reads into the shared buffer (prefixed with what was left over) and handles what is complete. */
static void member_readable(conn *c) {
    for (int round = 0; round < 4 && c->state != CS_DEAD; round++) {
        char *buf = g.scratch;
        size_t have = 0;
        if (c->rlen > 0) {
            if (c->rlen > READ_BUF_BYTES / 2) {
                /* A frame larger than the shared buffer: grow a buffer of its own. */
                if (c->rcap < c->rlen + READ_BUF_BYTES) {
                    c->rbuf = xrealloc(c->rbuf, c->rlen + READ_BUF_BYTES);
                    c->rcap = c->rlen + READ_BUF_BYTES;
                }
                buf = c->rbuf;
            } else {
                memcpy(buf, c->rbuf, c->rlen);
            }
            have = c->rlen;
        }
        size_t room_left = (buf == g.scratch ? READ_BUF_BYTES : c->rcap) - have;
        ssize_t n = recv(c->fd, buf + have, room_left, 0);
        if (n == 0) {
            conn_kill(c);
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_kill(c);
            }
            return;
        }
        have += (size_t)n;
        int64_t now = load_now_us();
        size_t used = 0;
        if (c->state == CS_HTTP) {
            const char *e = memmem(buf, have, "\r\n\r\n", 4);
            if (e == NULL) {
                if (have > 16384) {
                    conn_kill(c);
                    return;
                }
            } else {
                used = (size_t)(e - buf) + 4;
                const char *acc = memmem(buf, used, "Sec-WebSocket-Accept: ", 22);
                if (strncmp(buf, "HTTP/1.1 101", 12) != 0 || acc == NULL ||
                    strncmp(acc + 22, c->accept, 28) != 0) {
                    conn_kill(c);
                    return;
                }
                send_connect(c);
                if (c->state == CS_DEAD) {
                    return;
                }
            }
        }
        if (c->state > CS_HTTP) {
            long k = ws_consume(c, buf + used, have - used, now);
            if (k < 0) {
                return;
            }
            used += (size_t)k;
        }
        size_t left = have - used;
        if (left > 0 && buf == g.scratch) {
            if (c->rcap < left) {
                c->rbuf = xrealloc(c->rbuf, left);
                c->rcap = left;
            }
            memcpy(c->rbuf, buf + used, left);
        } else if (left > 0) {
            memmove(c->rbuf, c->rbuf + used, left);
        } else if (c->rcap > 65536) {
            free(c->rbuf);
            c->rbuf = NULL;
            c->rcap = 0;
        }
        c->rlen = left;
        if ((size_t)n < room_left) {
            return;
        }
    }
}

static void member_on_event(conn *c, uint32_t events) {
    if (c->state == CS_DEAD) {
        return;
    }
    if (c->state == CS_TCP) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            conn_kill(c);
            return;
        }
        char key[25];
        if (load_ws_key(key, c->accept) != 0) {
            conn_kill(c);
            return;
        }
        char req[512];
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n",
                         opt.node_path, opt.node_host, opt.node_port, key);
        queue_raw(c, req, (size_t)n);
        c->state = CS_HTTP;
        conn_flush(c);
        return;
    }
    if ((events & EPOLLOUT) && conn_flush(c) != 0) {
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        member_readable(c);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Phases and the report */

static void sample(int64_t now) {
    if (now < g.next_sample) {
        return;
    }
    g.next_sample = now + 1000000;
    long rss = opt.node_pid > 0 ? load_proc_rss_kib(opt.node_pid) : -1;
    if (rss >= 0) {
        g.rss_sum += (double)rss;
        if (rss > g.rss_max) {
            g.rss_max = rss;
        }
    }
    g.active_sum += g.active;
    g.rss_n++;
}

static void window_begin(int64_t now) {
    g.phase = PH_WINDOW;
    g.win_t0 = now;
    g.phase_end = now + (int64_t)(opt.seconds * 1e6);
    g.node_ticks0 = opt.node_pid > 0 ? load_proc_cpu_ticks(opt.node_pid) : -1;
    g.mock_ticks0 = opt.mock_pid > 0 ? load_proc_cpu_ticks(opt.mock_pid) : -1;
    g.self_cpu0 = load_self_cpu_us();
    g.next_sample = now;
    g.next_probe = now;
    fprintf(stderr, "STEADY\n");
}

static void window_end(int64_t now) {
    g.win_t1 = now;
    g.node_ticks1 = opt.node_pid > 0 ? load_proc_cpu_ticks(opt.node_pid) : -1;
    g.mock_ticks1 = opt.mock_pid > 0 ? load_proc_cpu_ticks(opt.mock_pid) : -1;
    g.self_cpu1 = load_self_cpu_us();
    g.phase = PH_DRAIN;
    g.phase_end = now + (int64_t)(opt.drain_seconds * 1e6);
    fprintf(stderr, "WINDOW_END\n");
}

static double ms(uint64_t us) {
    return (double)us / 1000.0;
}

static void print_codes(const char *tag, const code_count *tab) {
    if (tab[0].count == 0) {
        return;
    }
    printf("%s", tag);
    for (int i = 0; i < MAX_CODES && tab[i].count > 0; i++) {
        printf(" %d=%" PRIu64, tab[i].code, tab[i].count);
    }
    printf("\n");
}

static void report(void) {
    unsigned open_asks = 0;
    for (unsigned r = 0; r < opt.rooms; r++) {
        const room *rm = &g.rooms[r];
        if (rm->state == R_ASKED && rm->in_window) {
            open_asks++;
            if (rm->firsts == 0) {
                g.no_first++;
            }
        }
    }
    double secs = (double)(g.win_t1 - g.win_t0) / 1e6;
    long tck = sysconf(_SC_CLK_TCK);
    double node_cpu_s = g.node_ticks0 >= 0 && g.node_ticks1 >= 0
                            ? (double)(g.node_ticks1 - g.node_ticks0) / (double)tck
                            : -1;
    double mock_cpu_s = g.mock_ticks0 >= 0 && g.mock_ticks1 >= 0
                            ? (double)(g.mock_ticks1 - g.mock_ticks0) / (double)tck
                            : -1;
    double active_avg = g.rss_n ? g.active_sum / g.rss_n : 0;
    double rss_avg = g.rss_n ? g.rss_sum / g.rss_n : -1;
    printf("LLM rooms=%u room_size=%u conns=%u window_s=%.1f asks=%" PRIu64 " completed=%" PRIu64
           " llm_err=%" PRIu64 " rpc_err=%" PRIu64 " active_avg=%.0f active_max=%u",
           opt.rooms, opt.room_size, opt.conns, secs, g.asks, g.completed, g.llm_errors,
           g.rpc_errors, active_avg, g.active_max);
    uint64_t t50 = load_hist_quantile(&g.ttft, 0.5), t99 = load_hist_quantile(&g.ttft, 0.99);
    printf(" open_at_end=%u no_first=%" PRIu64, open_asks, g.no_first);
    printf(" ttft_n=%" PRIu64
           " ttft_p50_ms=%.2f ttft_p99_ms=%.2f ttft_p999_ms=%.2f ttft_max_ms=%.2f",
           g.ttft.total, ms(t50), ms(t99), ms(load_hist_quantile(&g.ttft, 0.999)), ms(g.ttft.max));
    printf(" ack_p50_ms=%.2f ack_p99_ms=%.2f", ms(load_hist_quantile(&g.ack, 0.5)),
           ms(load_hist_quantile(&g.ack, 0.99)));
    uint64_t i50 = load_hist_quantile(&g.direct_idle, 0.5);
    uint64_t i99 = load_hist_quantile(&g.direct_idle, 0.99);
    uint64_t d50 = load_hist_quantile(&g.direct_load, 0.5);
    uint64_t d99 = load_hist_quantile(&g.direct_load, 0.99);
    printf(" direct_idle_p50_ms=%.2f direct_idle_p99_ms=%.2f", ms(i50), ms(i99));
    printf(" direct_load_n=%" PRIu64 " direct_load_p50_ms=%.2f direct_load_p99_ms=%.2f",
           g.direct_load.total, ms(d50), ms(d99));
    if (g.ttft.total > 0 && g.direct_idle.total > 0) {
        printf(" added_p50_ms=%.2f added_p99_ms=%.2f", ms(t50) - ms(i50), ms(t99) - ms(i99));
    } else {
        printf(" added_p50_ms=- added_p99_ms=-");
    }
    if (g.ttft.total > 0 && g.direct_load.total > 0) {
        printf(" added_vs_load_p50_ms=%.2f added_vs_load_p99_ms=%.2f", ms(t50) - ms(d50),
               ms(t99) - ms(d99));
    } else {
        printf(" added_vs_load_p50_ms=- added_vs_load_p99_ms=-");
    }
    printf(" tokens=%" PRIu64 " tokens/s=%.0f deltas/s=%.0f delta_deliv/s=%.0f", g.tokens,
           (double)g.tokens / secs, (double)g.deltas / secs,
           (double)g.delta_deliveries / (secs + opt.drain_seconds));
    if (node_cpu_s >= 0) {
        printf(" node_cpu=%.1f node_cpu_s=%.2f", 100.0 * node_cpu_s / secs, node_cpu_s);
        if (g.tokens > 0) {
            printf(" cpu_ms_per_1k_tokens=%.1f", 1000.0 * node_cpu_s / ((double)g.tokens / 1000.0));
        }
    }
    if (mock_cpu_s >= 0) {
        printf(" mock_cpu=%.1f", 100.0 * mock_cpu_s / secs);
    }
    printf(" tool_cpu=%.1f", 100.0 * (double)(g.self_cpu1 - g.self_cpu0) / 1e6 / secs);
    if (g.rss_idle >= 0 && rss_avg >= 0) {
        printf(" rss_idle_mib=%.1f rss_avg_mib=%.1f rss_max_mib=%.1f", g.rss_idle / 1024.0,
               rss_avg / 1024.0, g.rss_max / 1024.0);
        if (active_avg > 0) {
            printf(" kib_per_stream=%.1f", (rss_avg - (double)g.rss_idle) / active_avg);
        }
    }
    printf(" subs=%u disconnects=%" PRIu64 " probe_fail=%" PRIu64 "\n", g.ready, g.disconnects,
           g.probe_fail);
    print_codes("ERRORS", g.errors);
    print_codes("CLOSES", g.closes);
    fflush(stdout);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.conns + 32) {
        fprintf(stderr, "llm-load: warning: open-file limit %llu is below %u sockets\n",
                (unsigned long long)rl.rlim_cur, opt.conns);
    }
}

static void advance(int64_t now) {
    switch (g.phase) {
    case PH_SETUP:
        while (g.inflight < opt.max_inflight && g.next_start < opt.conns) {
            member_start(&g.conns[g.next_start++]);
        }
        if (g.next_start == opt.conns && g.inflight == 0) {
            printf("CONNECT conns=%u wanted=%u failed=%u rooms=%u room_size=%u memberships=%u "
                   "secs=%.2f\n",
                   g.ready, opt.conns, g.failed, opt.rooms, opt.room_size,
                   opt.rooms * opt.room_size, (double)(now - g.phase_t0) / 1e6);
            fflush(stdout);
            g.phase = PH_DIRECT;
            g.phase_t0 = now;
        } else if (now - g.phase_t0 > 120000000) {
            fprintf(stderr, "llm-load: setup took over 120 s; stopping\n");
            g.phase = PH_DONE;
        }
        return;
    case PH_DIRECT:
        if (!opt.have_mock || g.direct_done >= opt.direct_samples ||
            g.probe_fail > opt.direct_samples) {
            if (opt.have_mock) {
                printf("DIRECT n=%u fail=%" PRIu64 " p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
                       g.direct_done, g.probe_fail, ms(load_hist_quantile(&g.direct_idle, 0.5)),
                       ms(load_hist_quantile(&g.direct_idle, 0.99)), ms(g.direct_idle.max));
                fflush(stdout);
                g.probe_fail = 0;
            }
            g.rss_idle = opt.node_pid > 0 ? load_proc_rss_kib(opt.node_pid) : -1;
            g.phase = PH_WAIT;
            fprintf(stderr, "READY\n");
        } else if (g.probe == NULL) {
            probe_start(now);
        }
        return;
    case PH_WAIT:
        if (g.probe != NULL) {
            return;
        }
        if (g_go || opt.no_wait) {
            g.phase = PH_RAMP;
            g.phase_t0 = now;
            g.phase_end = now + (int64_t)(opt.ramp_seconds * 1e6);
            for (unsigned r = 0; r < opt.rooms; r++) {
                g.rooms[r].next_t =
                    now + (int64_t)(opt.ramp_seconds * 1e6 * (double)r / (double)opt.rooms);
            }
        }
        return;
    case PH_RAMP:
    case PH_WINDOW:
        for (unsigned r = 0; r < opt.rooms; r++) {
            if (g.rooms[r].state == R_IDLE && g.rooms[r].next_t <= now) {
                ask(r, now);
            }
        }
        if (g.active > g.active_max) {
            g.active_max = g.active;
        }
        if (g.phase == PH_RAMP && now >= g.phase_end) {
            window_begin(now);
        } else if (g.phase == PH_WINDOW) {
            sample(now);
            if (opt.have_mock && opt.probe_ms > 0 && g.probe == NULL && now >= g.next_probe) {
                g.next_probe = now + (int64_t)opt.probe_ms * 1000;
                probe_start(now);
            }
            if (now >= g.phase_end || g_stop) {
                window_end(now);
            }
        }
        return;
    case PH_DRAIN:
        if (g.active == 0 || now >= g.phase_end) {
            g.phase = PH_DONE;
        }
        return;
    case PH_DONE:
        return;
    }
}

int main(int argc, char **argv) {
    if (parse_options(argc, argv) != 0) {
        return 1;
    }
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_int);
    signal(SIGTERM, on_int);
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    g.conns = calloc(opt.conns, sizeof(conn));
    g.rooms = calloc(opt.rooms, sizeof(room));
    g.scratch = xrealloc(NULL, READ_BUF_BYTES);
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    if (g.conns == NULL || g.rooms == NULL || g.ep < 0) {
        fprintf(stderr, "llm-load: cannot set up: %s\n", strerror(errno));
        return 1;
    }
    for (unsigned i = 0; i < opt.conns; i++) {
        g.conns[i].fd = -1;
        g.conns[i].idx = i;
        g.conns[i].kind = K_MEMBER;
    }
    g.rng = (uint32_t)load_now_us() | 1u;
    g.rss_idle = -1;
    int64_t start = load_now_us();
    g.phase = PH_SETUP;
    g.phase_t0 = start;
    int64_t deadline = start + (int64_t)(opt.timeout * 1e6);
    struct epoll_event evs[512];
    int rc = 0;
    while (g.phase != PH_DONE) {
        int64_t now = load_now_us();
        if (now > deadline || g_interrupted) {
            fprintf(stderr, "llm-load: %s; stopping\n",
                    g_interrupted ? "interrupted" : "global --timeout reached");
            rc = 2;
            break;
        }
        advance(now);
        if (g.phase == PH_DONE) {
            break;
        }
        if (g.phase == PH_SETUP && g.ready + g.failed == 0 && now - start > 30000000) {
            fprintf(stderr, "llm-load: no connection within 30 s\n");
            rc = 1;
            break;
        }
        /* 1 ms wakeups while asking: the asks are scheduled to the millisecond. */
        int wait_ms = g.phase == PH_RAMP || g.phase == PH_WINDOW ? 1 : 20;
        int n = epoll_wait(g.ep, evs, (int)(sizeof evs / sizeof evs[0]), wait_ms);
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->kind == K_PROBE) {
                probe_on_event(c, evs[i].events);
            } else {
                member_on_event(c, evs[i].events);
            }
        }
    }
    if (g.win_t1 == 0 && g.win_t0 != 0) {
        window_end(load_now_us());
    }
    if (g.win_t0 != 0) {
        report();
    } else {
        print_codes("ERRORS", g.errors);
        print_codes("CLOSES", g.closes);
        if (rc == 0) {
            rc = 1;
        }
    }
    if (g.probe != NULL) {
        probe_end(g.probe, -1);
    }
    for (unsigned i = 0; i < opt.conns; i++) {
        if (g.conns[i].fd >= 0) {
            close(g.conns[i].fd);
        }
        conn_free(&g.conns[i]);
    }
    free(g.conns);
    free(g.rooms);
    free(g.scratch);
    close(g.ep);
    return rc;
}
