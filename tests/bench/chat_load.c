/* chat-load: a load generator for chatd that speaks the Centrifugo v2 JSON client protocol over
 * a minimal WebSocket client of its own.
 *
 * The tool shares two cores with the node it measures, so it is built to cost far less per
 * message than the server: one thread, one epoll loop, non-blocking sockets, no JSON parser on
 * the receive path (it scans each line for the few bytes it needs), one shared read buffer so
 * that 19,000 idle connections hold almost no memory, and a log-bucket histogram instead of
 * stored samples. */
#include "chat_load.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_RATES 32
#define MAX_CODES 32
/* Nodes one run can spread its connections over (--url), and processes it can watch
 * (--node-pid, --admin). */
#define MAX_NODES 16
/* The server's messages are small, but a slow reader can be handed one large frame holding a
 * whole backlog; past this size something is wrong and the connection is dropped. */
#define MAX_MESSAGE_BYTES (64u << 20)
/* A publisher whose socket is not drained by the server stops queueing here, so a stalled node
 * cannot make the tool grow without bound. */
#define MAX_WBUF_BYTES (16u << 20)
#define HTTP_MAX_HEADER 16384
/* An incomplete frame up to this size is cheaper to copy in front of the next large read than to
 * finish with reads of its own. */
#define SMALL_FRAME_BYTES 16384

/* ------------------------------------------------------------------------------------------ */
/* Options */

/* One node to connect to: --url. */
typedef struct target {
    char host[64];
    int port;
    char path[256];
    struct sockaddr_in addr;
    bool tls; /* wss:// */
} target;

typedef struct options {
    target urls[MAX_NODES];
    unsigned nurls;
    const char *secret;
    unsigned subscribers;
    unsigned publishers;
    const char *channel;
    unsigned rooms; /* --rooms: 0 = every subscriber in one channel */
    unsigned rates[MAX_RATES];
    unsigned nrates;
    double step_seconds;
    double drain_seconds;
    unsigned payload_bytes;
    bool idle;
    bool protobuf; /* --protobuf: the Protobuf client protocol (?cf_protocol=protobuf) */
    double hold_seconds;
    unsigned sources;
    int node_pids[MAX_NODES];
    unsigned nnode_pids;
    const char *admins[MAX_NODES];
    unsigned nadmins;
    int redis_pid;
    bool host_cpu;
    double timeout;
    unsigned max_inflight;
    double connect_timeout;
    unsigned batch_us;
    unsigned measure_every;
} options;

static options opt = {
    .subscribers = 1000,
    .publishers = 10,
    .channel = "chat:bench",
    .rates = {1000},
    .nrates = 1,
    .step_seconds = 10,
    .drain_seconds = 2,
    .payload_bytes = 64,
    .hold_seconds = 10,
    .sources = 4,
    .timeout = 600,
    .max_inflight = 256,
    .connect_timeout = 30,
    .measure_every = 1,
};

static void usage(FILE *out) {
    fprintf(
        out,
        "usage: chat-load --secret S [options]\n"
        "\n"
        "Opens subscriber and publisher WebSocket connections to a chatd node (Centrifugo v2 JSON\n"
        "protocol), publishes at stepped total rates and measures end-to-end delivery.\n"
        "\n"
        "  --url URL             ws://HOST:PORT/PATH or wss:// (TLS), numeric IPv4 host\n"
        "                        (default ws://127.0.0.1:8000/connection/websocket);\n"
        "                        repeat it or give a comma list for a cluster: subscriber i\n"
        "                        and publisher j go to URL i %% n and j %% n\n"
        "  --secret S            HS256 secret used to mint the connection JWTs (required)\n"
        "  --subscribers N       subscriber connections (default 1000)\n"
        "  --publishers M        publisher connections (default 10)\n"
        "  --channel C           channel every subscriber joins (default chat:bench)\n"
        "  --rooms R             spread the subscribers over R channels C-0 .. C-(R-1):\n"
        "                        subscriber i joins room i %% R; room r belongs to publisher\n"
        "                        r %% M, which subscribes to its rooms (the chat namespace\n"
        "                        lets only subscribers publish) and publishes into them in\n"
        "                        turn, so each room gets rate / R publications/s; needs\n"
        "                        M <= R <= N (default: one channel)\n"
        "  --rates LIST          total publications/s per step, e.g. 1000,5000,10000\n"
        "                        (default 1000); publishers share each rate evenly\n"
        "  --step-seconds S      length of each publishing step (default 10)\n"
        "  --drain-seconds S     wait after a step's last publish before counting losses\n"
        "                        (default 2)\n"
        "  --payload-bytes B     length of each message text, 24..4000 (default 64)\n"
        "  --protobuf            speak the Protobuf form of the protocol (binary frames,\n"
        "                        ?cf_protocol=protobuf) instead of JSON\n"
        "  --idle                only open the subscribers, hold them, report memory\n"
        "  --hold-seconds S      how long --idle holds the connections (default 10)\n"
        "  --sources K           spread connections over source addresses 127.0.0.1..K\n"
        "                        (default 4; each gives about 28,000 ephemeral ports)\n"
        "  --max-inflight H      most handshakes in progress at once (default 256)\n"
        "  --connect-timeout S   time one connection may take to be subscribed (default 30)\n"
        "  --node-pid PID        report the node's RSS and CPU from /proc/PID; repeat it or\n"
        "                        give a comma list for several nodes (sums, and per node\n"
        "                        when there are several URLs)\n"
        "  --admin URL           http://HOST:PORT of the admin listener: also report the\n"
        "                        server's own publication counters per step (optional);\n"
        "                        repeat it or give a comma list: the counters are summed\n"
        "  --redis-pid PID       also report this process's CPU and RSS (redis-server)\n"
        "  --host-cpu            also report the whole machine's busy CPU per step and what\n"
        "                        of it was neither the node(s), Redis nor this tool\n"
        "  --timeout S           hard limit for the whole run (default 600)\n"
        "  --batch-us U          after handling a batch of events, wait until U us have\n"
        "                        passed before reading again, so each read takes several\n"
        "                        messages: less tool CPU at high rates, up to U us more\n"
        "                        measured latency (default 0: read at once)\n"
        "  --measure-every N     only every Nth subscriber (0, N, 2N, ...) decodes and checks\n"
        "                        what it receives; the others, once subscribed, read their\n"
        "                        socket's bytes and drop them undecoded (over TLS without\n"
        "                        decrypting) and send a pong every 5 s. The node serves them\n"
        "                        all the same, and the tool's CPU goes to the node's side\n"
        "                        of the measurement (default 1: every subscriber; not with\n"
        "                        --rooms or several URLs)\n"
        "  --help                this text\n"
        "\n"
        "Output (stdout), one line each, key=value:\n"
        "  CONNECT  connections established and failed, by failure kind\n"
        "  STEP     per rate: target, achieved publications/s, deliveries/s, latency\n"
        "           p50/p99/p999/max in ms, lost (not received by the end of the drain),\n"
        "           dup (duplicate or out of order), late (arrived after being counted\n"
        "           lost), node RSS and CPU, tool CPU\n"
        "  URL      with several URLs: per URL, subscribers and publishers connected\n"
        "  IDLE     with --idle: connections, node RSS before and after, KiB per connection\n"
        "  CLOSES/ERRORS  close codes and error reply codes seen, when any\n"
        "  DISCONNECTS    live connections lost during the run, when any\n"
        "  TOTALS   with several URLs: publications and deliveries over the whole run\n"
        "Exit status: 0 done, 1 bad usage or no connection, 2 global timeout or interrupted.\n");
}

static int parse_url(target *t, const char *url) {
    char host[64];
    int port = 0;
    int consumed = 0;
    bool tls = strncmp(url, "wss://", 6) == 0;
    if (sscanf(url, tls ? "wss://%63[^:/]:%d%n" : "ws://%63[^:/]:%d%n", host, &port, &consumed) !=
            2 ||
        port <= 0 || port > 65535) {
        return -1;
    }
    t->tls = tls;
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) != 1) {
        return -1;
    }
    snprintf(t->host, sizeof t->host, "%s", host);
    t->port = port;
    const char *path = url + consumed;
    snprintf(t->path, sizeof t->path, "%s", *path == '/' ? path : "/connection/websocket");
    memset(&t->addr, 0, sizeof t->addr);
    t->addr.sin_family = AF_INET;
    t->addr.sin_port = htons((uint16_t)port);
    t->addr.sin_addr = a;
    return 0;
}

/* Splits a comma list in place and hands each item to add(); -1 when one is refused or there
 * are more than MAX_NODES in all. */
static int parse_list(char *s, unsigned *count, int (*add)(const char *item, unsigned i)) {
    for (char *save = NULL, *item = strtok_r(s, ",", &save); item != NULL;
         item = strtok_r(NULL, ",", &save)) {
        if (*count == MAX_NODES || add(item, *count) != 0) {
            return -1;
        }
        (*count)++;
    }
    return 0;
}

static int add_url(const char *item, unsigned i) {
    return parse_url(&opt.urls[i], item);
}

static int add_node_pid(const char *item, unsigned i) {
    char *end = NULL;
    long pid = strtol(item, &end, 10);
    if (end == item || *end != '\0' || pid <= 0) {
        return -1;
    }
    opt.node_pids[i] = (int)pid;
    return 0;
}

static int add_admin(const char *item, unsigned i) {
    opt.admins[i] = item;
    return 0;
}

static int parse_rates(const char *s) {
    opt.nrates = 0;
    while (*s != '\0') {
        char *end = NULL;
        unsigned long r = strtoul(s, &end, 10);
        if (end == s || r == 0 || r > 10000000 || opt.nrates == MAX_RATES) {
            return -1;
        }
        opt.rates[opt.nrates++] = (unsigned)r;
        s = end;
        if (*s == ',') {
            s++;
        } else if (*s != '\0') {
            return -1;
        }
    }
    return opt.nrates > 0 ? 0 : -1;
}

static int parse_options(int argc, char **argv) {
    enum {
        O_URL = 256,
        O_SECRET,
        O_SUBS,
        O_PUBS,
        O_CHANNEL,
        O_ROOMS,
        O_RATES,
        O_STEP,
        O_DRAIN,
        O_PAYLOAD,
        O_IDLE,
        O_PROTOBUF,
        O_HOLD,
        O_SOURCES,
        O_INFLIGHT,
        O_CTIMEOUT,
        O_PID,
        O_ADMIN,
        O_REDIS_PID,
        O_HOST_CPU,
        O_TIMEOUT,
        O_BATCH,
        O_MEASURE,
        O_HELP
    };
    static const struct option longopts[] = {
        {"url", required_argument, NULL, O_URL},
        {"secret", required_argument, NULL, O_SECRET},
        {"subscribers", required_argument, NULL, O_SUBS},
        {"publishers", required_argument, NULL, O_PUBS},
        {"channel", required_argument, NULL, O_CHANNEL},
        {"rooms", required_argument, NULL, O_ROOMS},
        {"rates", required_argument, NULL, O_RATES},
        {"step-seconds", required_argument, NULL, O_STEP},
        {"drain-seconds", required_argument, NULL, O_DRAIN},
        {"payload-bytes", required_argument, NULL, O_PAYLOAD},
        {"idle", no_argument, NULL, O_IDLE},
        {"protobuf", no_argument, NULL, O_PROTOBUF},
        {"hold-seconds", required_argument, NULL, O_HOLD},
        {"sources", required_argument, NULL, O_SOURCES},
        {"max-inflight", required_argument, NULL, O_INFLIGHT},
        {"connect-timeout", required_argument, NULL, O_CTIMEOUT},
        {"node-pid", required_argument, NULL, O_PID},
        {"admin", required_argument, NULL, O_ADMIN},
        {"redis-pid", required_argument, NULL, O_REDIS_PID},
        {"host-cpu", no_argument, NULL, O_HOST_CPU},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"batch-us", required_argument, NULL, O_BATCH},
        {"measure-every", required_argument, NULL, O_MEASURE},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case O_URL:
            if (parse_list(optarg, &opt.nurls, add_url) != 0) {
                fprintf(stderr,
                        "chat-load: bad --url (want ws://IPV4:PORT/PATH, at most %d in all)\n",
                        MAX_NODES);
                return -1;
            }
            break;
        case O_SECRET:
            opt.secret = optarg;
            break;
        case O_SUBS:
            opt.subscribers = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_PUBS:
            opt.publishers = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_CHANNEL:
            opt.channel = optarg;
            break;
        case O_ROOMS:
            opt.rooms = (unsigned)strtoul(optarg, NULL, 10);
            if (opt.rooms == 0) {
                fprintf(stderr, "chat-load: --rooms must be at least 1\n");
                return -1;
            }
            break;
        case O_RATES:
            if (parse_rates(optarg) != 0) {
                fprintf(stderr, "chat-load: bad --rates %s\n", optarg);
                return -1;
            }
            break;
        case O_STEP:
            opt.step_seconds = strtod(optarg, NULL);
            break;
        case O_DRAIN:
            opt.drain_seconds = strtod(optarg, NULL);
            break;
        case O_PAYLOAD:
            opt.payload_bytes = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_PROTOBUF:
            opt.protobuf = true;
            break;
        case O_IDLE:
            opt.idle = true;
            break;
        case O_HOLD:
            opt.hold_seconds = strtod(optarg, NULL);
            break;
        case O_SOURCES:
            opt.sources = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_INFLIGHT:
            opt.max_inflight = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_CTIMEOUT:
            opt.connect_timeout = strtod(optarg, NULL);
            break;
        case O_PID:
            if (parse_list(optarg, &opt.nnode_pids, add_node_pid) != 0) {
                fprintf(stderr, "chat-load: bad --node-pid (at most %d in all)\n", MAX_NODES);
                return -1;
            }
            break;
        case O_ADMIN:
            if (parse_list(optarg, &opt.nadmins, add_admin) != 0) {
                fprintf(stderr, "chat-load: too many --admin URLs (at most %d)\n", MAX_NODES);
                return -1;
            }
            break;
        case O_REDIS_PID:
            opt.redis_pid = atoi(optarg);
            break;
        case O_HOST_CPU:
            opt.host_cpu = true;
            break;
        case O_TIMEOUT:
            opt.timeout = strtod(optarg, NULL);
            break;
        case O_MEASURE:
            opt.measure_every = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case O_BATCH:
            opt.batch_us = (unsigned)strtoul(optarg, NULL, 10);
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
    if (optind != argc) {
        fprintf(stderr, "chat-load: unexpected argument %s\n", argv[optind]);
        return -1;
    }
    if (opt.secret == NULL) {
        fprintf(stderr, "chat-load: --secret is required\n");
        return -1;
    }
    if (opt.nurls == 0) {
        parse_url(&opt.urls[0], "ws://127.0.0.1:8000/connection/websocket");
        opt.nurls = 1;
    }
    if (opt.idle) {
        opt.publishers = 0;
    } else if (opt.publishers == 0) {
        fprintf(stderr, "chat-load: --publishers must be at least 1 (or use --idle)\n");
        return -1;
    }
    if (opt.payload_bytes < 24 || opt.payload_bytes > 4000) {
        fprintf(stderr, "chat-load: --payload-bytes must be within 24..4000\n");
        return -1;
    }
    if (opt.sources < 1 || opt.sources > 250 || opt.max_inflight < 1 || opt.step_seconds <= 0 ||
        opt.drain_seconds < 0 || opt.hold_seconds < 0 || opt.timeout <= 0 ||
        opt.connect_timeout <= 0 || strlen(opt.channel) > 200) {
        fprintf(stderr, "chat-load: an option is out of range (see --help)\n");
        return -1;
    }
    if (opt.measure_every < 1 || opt.measure_every > opt.subscribers ||
        (opt.measure_every > 1 && (opt.rooms > 0 || opt.nurls > 1))) {
        fprintf(stderr, "chat-load: --measure-every must be within 1..--subscribers, and above 1 "
                        "only with one URL and without --rooms\n");
        return -1;
    }
    if (opt.rooms > 0) {
        if (opt.rooms > opt.subscribers || (!opt.idle && opt.rooms < opt.publishers)) {
            fprintf(stderr, "chat-load: --rooms must be within --publishers .. --subscribers\n");
            return -1;
        }
        unsigned per_pub = opt.idle ? 0 : (opt.rooms + opt.publishers - 1) / opt.publishers;
        if (per_pub > 128) {
            fprintf(stderr,
                    "chat-load: warning: a publisher subscribes to up to %u rooms; chatd allows "
                    "128 subscriptions per connection by default (CHAT_MAX_CHANNELS) and a "
                    "burst of 150 subscribes (CHAT_COMMAND_RATE): add publishers\n",
                    per_pub);
        }
    }
    /* The channel goes into the commands verbatim, so it must need no JSON escaping. */
    for (const char *p = opt.channel; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) {
            fprintf(stderr, "chat-load: --channel must not contain quotes, backslashes or "
                            "control characters\n");
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Connections */

enum conn_state {
    CS_NEW,       /* not started yet */
    CS_TCP,       /* TCP connect in progress */
    CS_HTTP,      /* upgrade request sent, waiting for 101 */
    CS_CONNECT,   /* connect command sent */
    CS_SUBSCRIBE, /* subscribe command sent */
    CS_READY,     /* connected and subscribed */
    CS_DEAD,
};

enum role { ROLE_SUB, ROLE_PUB };

/* Why a connection never became ready; printed on the CONNECT line. */
enum fail_kind {
    FAIL_LOCAL,   /* socket/bind/connect refused locally (fds, ports) */
    FAIL_TCP,     /* the TCP connect failed */
    FAIL_HTTP,    /* the upgrade was refused or malformed */
    FAIL_CONNECT, /* connect command answered with an error */
    FAIL_SUB,     /* subscribe command answered with an error */
    FAIL_CLOSED,  /* the server closed the socket during setup */
    FAIL_TIMEOUT, /* setup took longer than --connect-timeout */
    FAIL_KINDS,
};
static const char *const fail_names[FAIL_KINDS] = {"local",   "tcp",    "http",   "connect_err",
                                                   "sub_err", "closed", "timeout"};

typedef struct conn {
    int fd;
    uint8_t state;
    uint8_t role;
    uint8_t want_out;      /* EPOLLOUT is registered */
    uint8_t in_frag;       /* a fragmented message is being assembled */
    uint8_t was_ready;     /* reached CS_READY once: its losses count even after it died */
    uint8_t got_close;     /* the server sent a close frame before the socket ended */
    uint8_t node;          /* index of its --url: subscriber i and publisher j go to i % n, j % n */
    uint8_t sink;          /* an unmeasured subscriber (--measure-every): reads and drops bytes */
    uint32_t idx;          /* subscriber index or publisher index */
    uint32_t seq;          /* publisher: last sequence number sent (with --rooms: publishes sent) */
    uint32_t next_id;      /* publisher: next command id */
    uint32_t subs_pending; /* subscribe replies still awaited during setup */
    int64_t deadline;      /* setup deadline, monotonic us */
    char *accept;          /* expected Sec-WebSocket-Accept during the handshake */
    char *rpend;           /* bytes of an incomplete frame left over from the last read */
    uint32_t rpend_len;
    uint32_t rpend_cap;
    uint32_t msg_len; /* fragmented message assembly */
    uint32_t msg_cap;
    char *msg;
    char *wbuf; /* bytes not yet accepted by the socket */
    uint32_t woff;
    uint32_t wlen;
    uint32_t wcap;
    SSL *ssl;       /* wss://: the connection's TLS state */
    uint8_t tls_hs; /* the TLS handshake is under way */
} conn;

/* What one subscriber has seen of one publisher. `hi` is the highest sequence number received
 * or written off as lost at a step's end; `rx` the highest actually received. A publication
 * between the two arrived after it had been counted as lost: it is late, not duplicated. */
typedef struct seq_cell {
    uint32_t hi;
    uint32_t rx;
} seq_cell;

typedef struct code_count {
    int code;
    uint64_t count;
} code_count;

/* Counters of one step. They are reset when a step starts; `window_*` snapshots are taken when
 * its publishing ends so rates are computed over the publishing window only. */
typedef struct step_stats {
    uint64_t sent;
    uint64_t ok;
    uint64_t err;
    uint64_t dropped; /* publishes not sent: publisher dead or its buffer full */
    uint64_t deliveries;
    uint64_t sink_bytes; /* read and dropped by the unmeasured subscribers (--measure-every) */
    uint64_t lost;
    uint64_t dup;
    uint64_t late;
    /* With --rooms: the deliveries the refused publishes would have made, the sum of the
     * subscribers of each one's room (without rooms that is err x subscribers). */
    uint64_t err_deliveries;
    load_hist hist;
    /* With several URLs: deliveries and latency by the subscriber's node. */
    uint64_t node_deliveries[MAX_NODES];
    load_hist node_hist[MAX_NODES];
} step_stats;

static struct {
    conn *conns;
    unsigned nconns;
    seq_cell *cells; /* subscribers x publishers; with --rooms one per subscriber */
    int ep;
    int timer_fd;
    char *scratch;
    size_t scratch_cap;
    uint32_t rng;

    unsigned next_start;
    unsigned inflight;
    unsigned ready_subs; /* sinks included */
    unsigned ready_pubs;
    unsigned ever_ready_subs;
    unsigned ready_sinks;
    unsigned ever_ready_sinks;
    unsigned dead_after_ready;
    unsigned dropped_without_close; /* live connections that ended by EOF or reset */
    uint64_t fails[FAIL_KINDS];
    code_count closes[MAX_CODES];
    code_count errors[MAX_CODES];
    uint64_t pings;
    uint64_t push_disconnects;
    /* Over the whole run, for the TOTALS line of a multi-URL run. */
    uint64_t total_sent;
    uint64_t total_ok;
    uint64_t total_err;
    uint64_t total_deliveries;
    uint64_t total_lost;
    uint64_t total_dup;
    uint64_t total_late;

    /* With --rooms, per room: the last sequence number sent (each room has one publisher, so
     * the room numbers its publications), the same at the start of the step, publishes refused
     * over the run, subscribers that were ever ready, and a scratch count of live ones. */
    uint32_t *room_seq;
    uint32_t *room_seq0;
    uint64_t *room_err;
    uint32_t *room_ever;
    uint32_t *room_live;
    uint64_t pub_slot; /* publications scheduled over the run, sent or dropped */

    step_stats st;
    char *pad;           /* payload padding, payload_bytes of 'x' */
    size_t text_hint;    /* where the text was found in the last publication line */
    size_t pb_text_hint; /* the same within the data of the last Protobuf publication */
} g;

static volatile sig_atomic_t g_interrupted;

static void on_signal(int sig) {
    (void)sig;
    g_interrupted = 1;
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

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (q == NULL && n != 0) {
        fprintf(stderr, "chat-load: out of memory (%zu bytes)\n", n);
        abort();
    }
    return q;
}

static uint32_t xorshift32(void) {
    uint32_t x = g.rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    g.rng = x;
    return x;
}

static bool in_setup(const conn *c) {
    return c->state >= CS_TCP && c->state <= CS_SUBSCRIBE;
}

/* With --rooms, room r belongs to publisher r % M: publisher p owns rooms p, p + M, p + 2M, ...
 * below R. It subscribes to them with ids 2 .. 1 + n and its publishes start at id 2 + n. */
static unsigned pub_nrooms(unsigned p) {
    if (opt.rooms == 0) {
        return 1;
    }
    return p < opt.rooms ? (opt.rooms - p + opt.publishers - 1) / opt.publishers : 0;
}

static uint32_t pub_first_id(unsigned p) {
    return 2 + pub_nrooms(p);
}

/* ---- wss://: the same reads and writes through OpenSSL (certificates are not verified: the
 * tool measures the server's cost of TLS, not a deployment's trust) ---- */

static SSL_CTX *g_tls;

/* send() and recv() with their errno conventions, over TLS when the connection has it. */
static ssize_t io_send(conn *c, const char *p, size_t n) {
    if (!c->ssl)
        return send(c->fd, p, n, MSG_NOSIGNAL);
    ERR_clear_error();
    int r = SSL_write(c->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    errno = e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? EAGAIN : EPIPE;
    return -1;
}

static ssize_t io_recv(conn *c, char *p, size_t n) {
    if (!c->ssl)
        return recv(c->fd, p, n, 0);
    ERR_clear_error();
    int r = SSL_read(c->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    errno = e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? EAGAIN : ECONNRESET;
    return -1;
}

static void conn_free_buffers(conn *c) {
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    free(c->accept);
    free(c->rpend);
    free(c->msg);
    free(c->wbuf);
    c->accept = c->rpend = c->msg = c->wbuf = NULL;
    c->rpend_len = c->rpend_cap = c->msg_len = c->msg_cap = 0;
    c->woff = c->wlen = c->wcap = 0;
}

/* Ends a connection. During setup it counts as a failure of the given kind; after it was ready it
 * counts as a loss of a live connection (its missed publications show up as lost). */
static void conn_kill(conn *c, enum fail_kind why) {
    if (c->state == CS_DEAD || c->state == CS_NEW) {
        return;
    }
    if (in_setup(c)) {
        g.inflight--;
        g.fails[why]++;
    } else if (c->state == CS_READY) {
        g.dead_after_ready++;
        if (!c->got_close) {
            g.dropped_without_close++;
        }
        if (c->role == ROLE_SUB) {
            g.ready_subs--;
            g.ready_sinks -= c->sink;
        } else {
            g.ready_pubs--;
        }
    }
    close(c->fd);
    c->fd = -1;
    c->state = CS_DEAD;
    conn_free_buffers(c);
}

static void conn_set_out(conn *c, bool want) {
    if (c->want_out == want) {
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
}

/* Writes what the socket takes now and leaves the rest for EPOLLOUT. Returns -1 when the
 * connection was killed. */
static int conn_flush(conn *c) {
    while (c->woff < c->wlen) {
        ssize_t n = io_send(c, c->wbuf + c->woff, c->wlen - c->woff);
        if (n > 0) {
            c->woff += (uint32_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_set_out(c, true);
            return 0;
        } else {
            conn_kill(c, FAIL_CLOSED);
            return -1;
        }
    }
    c->woff = c->wlen = 0;
    conn_set_out(c, false);
    return 0;
}

/* Makes room for n more bytes at the end of the write buffer. The sent prefix is dropped only
 * when it is at least as long as what is still queued, so a backlog of megabytes behind a slow
 * reader is not moved again for every small frame appended to it. */
static char *wbuf_reserve(conn *c, size_t n) {
    if (c->wlen + n > c->wcap && c->woff > 0 && c->woff >= c->wlen - c->woff) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff;
        c->woff = 0;
    }
    if (c->wlen + n > c->wcap) {
        size_t cap = c->wcap ? c->wcap : 256;
        while (cap < c->wlen + n) {
            cap *= 2;
        }
        c->wbuf = xrealloc(c->wbuf, cap);
        c->wcap = (uint32_t)cap;
    }
    return c->wbuf + c->wlen;
}

/* Queues one masked client frame (RFC 6455 5.3: every client frame is masked). The mask comes
 * from a cheap PRNG: it only has to defeat proxy cache poisoning, not an attacker on loopback. */
static void ws_queue(conn *c, unsigned opcode, const char *data, size_t len) {
    char *h = wbuf_reserve(c, len + 14);
    size_t hl;
    h[0] = (char)(0x80 | opcode);
    if (len < 126) {
        h[1] = (char)(0x80 | len);
        hl = 2;
    } else if (len < 65536) {
        h[1] = (char)(0x80 | 126);
        h[2] = (char)(len >> 8);
        h[3] = (char)len;
        hl = 4;
    } else {
        h[1] = (char)(0x80 | 127);
        for (int i = 0; i < 8; i++) {
            h[2 + i] = (char)((uint64_t)len >> (56 - 8 * i));
        }
        hl = 10;
    }
    uint32_t mask = xorshift32();
    memcpy(h + hl, &mask, 4);
    hl += 4;
    unsigned char *dst = (unsigned char *)h + hl;
    const unsigned char *src = (const unsigned char *)data;
    uint64_t m64 = (uint64_t)mask << 32 | mask;
    size_t i = 0;
    /* Eight bytes at a time: the mask repeats every four bytes, so the doubled word lines up. */
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= m64;
        memcpy(dst + i, &w, 8);
    }
    const unsigned char *mb = (const unsigned char *)&mask;
    for (; i < len; i++) {
        dst[i] = src[i] ^ mb[i & 3];
    }
    c->wlen += (uint32_t)(hl + len);
}

static int ws_send_text(conn *c, const char *data, size_t len) {
    ws_queue(c, 0x1, data, len);
    return conn_flush(c);
}

/* The protocol's pong, an empty command: "{}" in JSON, a zero length prefix in Protobuf. */
static void send_pong(conn *c) {
    if (opt.protobuf) {
        uint8_t pong = 0;
        ws_queue(c, 0x2, (const char *)&pong, 1);
        conn_flush(c);
    } else {
        ws_send_text(c, "{}", 2);
    }
}

static void arm_epoll(conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev);
}

/* Starts the TCP connect of one connection from source address 127.0.0.(1 + i % sources).
 * IP_BIND_ADDRESS_NO_PORT defers the port choice to connect(), so each source address offers
 * its whole ephemeral range towards the one server address. */
static void conn_start(conn *c, unsigned i, int64_t now) {
    c->state = CS_TCP;
    c->deadline = now + (int64_t)(opt.connect_timeout * 1e6);
    g.inflight++;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        conn_kill(c, FAIL_LOCAL);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.sources > 1) {
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000001u + i % opt.sources);
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) != 0) {
            conn_kill(c, FAIL_LOCAL);
            return;
        }
    }
    const struct sockaddr_in *dst = &opt.urls[c->node].addr;
    if (connect(c->fd, (const struct sockaddr *)dst, sizeof *dst) != 0 && errno != EINPROGRESS) {
        conn_kill(c, FAIL_LOCAL);
        return;
    }
    arm_epoll(c, EPOLLIN | EPOLLOUT);
    c->want_out = 1;
}

/* The endpoint with ?cf_protocol=protobuf: what the mobile SDKs ask the Protobuf form by. */
static const char *pb_path(const char *path) {
    static char buf[600];
    snprintf(buf, sizeof buf, "%s%scf_protocol=protobuf", path, strchr(path, '?') ? "&" : "?");
    return buf;
}

static void send_upgrade(conn *c);

/* Advances the TLS handshake; once done, the WebSocket upgrade goes out. */
static void tls_handshake(conn *c) {
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->tls_hs = 0;
        send_upgrade(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        conn_set_out(c, false);
    else if (e == SSL_ERROR_WANT_WRITE)
        conn_set_out(c, true);
    else
        conn_kill(c, FAIL_TCP);
}

static void conn_on_tcp_connected(conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        conn_kill(c, FAIL_TCP);
        return;
    }
    if (opt.urls[c->node].tls) {
        c->ssl = SSL_new(g_tls);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
            conn_kill(c, FAIL_LOCAL);
            return;
        }
        SSL_set_connect_state(c->ssl);
        SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        c->tls_hs = 1;
        c->state = CS_HTTP; /* in setup; the upgrade follows the handshake */
        tls_handshake(c);
        return;
    }
    send_upgrade(c);
}

static void send_upgrade(conn *c) {
    char key[25];
    c->accept = xrealloc(NULL, 29);
    if (load_ws_key(key, c->accept) != 0) {
        conn_kill(c, FAIL_LOCAL);
        return;
    }
    const target *t = &opt.urls[c->node];
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     opt.protobuf ? pb_path(t->path) : t->path, t->host, t->port, key);
    memcpy(wbuf_reserve(c, (size_t)n), req, (size_t)n);
    c->wlen += (uint32_t)n;
    c->state = CS_HTTP;
    conn_flush(c);
}

/* ---- the Protobuf form: commands encoded by hand, replies read field by field ---- */

static size_t pb_varint(uint8_t *out, uint64_t v) {
    size_t n = 0;
    do {
        out[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            out[n] |= 0x80;
        n++;
    } while (v);
    return n;
}

/* Appends field num as a length-delimited value. */
static size_t pb_bytes(uint8_t *out, unsigned num, const void *p, size_t len) {
    size_t n = pb_varint(out, (uint64_t)num << 3 | 2);
    n += pb_varint(out + n, len);
    memcpy(out + n, p, len);
    return n + len;
}

/* A Command {id, <method field>: request} with its length prefix, into out. */
static size_t pb_command(uint8_t *out, uint32_t id, unsigned method, const uint8_t *req,
                         size_t rlen) {
    uint8_t body[4600];
    size_t n = 0;
    if (id) {
        n += pb_varint(body + n, 1 << 3 | 0);
        n += pb_varint(body + n, id);
    }
    n += pb_bytes(body + n, method, req, rlen);
    size_t h = pb_varint(out, n);
    memcpy(out + h, body, n);
    return h + n;
}

/* Sends a command given as its method field and request bytes. */
static int pb_send(conn *c, uint32_t id, unsigned method, const uint8_t *req, size_t rlen) {
    uint8_t out[4700];
    size_t n = pb_command(out, id, method, req, rlen);
    ws_queue(c, 0x2, (const char *)out, n);
    return conn_flush(c);
}

/* memmem for the short needles searched in every received message: glibc's memmem clears a
 * 256-byte shift table on each call, which cost the tool about a tenth of its CPU at 4 million
 * messages/s; memchr for the first byte and a compare is cheaper on these short lines. */
static const char *find_str(const void *hay, size_t n, const char *needle, size_t nl) {
    const char *p = hay, *end = p + n;
    while (nl <= (size_t)(end - p)) {
        const char *q = memchr(p, needle[0], (size_t)(end - p) - nl + 1);
        if (q == NULL) {
            return NULL;
        }
        if (memcmp(q + 1, needle + 1, nl - 1) == 0) {
            return q;
        }
        p = q + 1;
    }
    return NULL;
}

/* Where a publication's text ("text":"L...) starts in p, or NULL. Every publication of the
 * bench channel has the same prefix, so the text usually sits where it was last time (*hint)
 * and one compare replaces the search. */
static const char *find_text(const void *p, size_t n, size_t *hint) {
    static const char mark[] = "\"text\":\"L";
    const size_t ml = sizeof mark - 1;
    const char *s = p;
    if (*hint + ml <= n && memcmp(s + *hint, mark, ml) == 0) {
        return s + *hint;
    }
    const char *t = find_str(s, n, mark, ml);
    if (t != NULL) {
        *hint = (size_t)(t - s);
    }
    return t;
}

/* Reads the varint at *p (advanced); false past end. */
static bool pb_read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    *v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

/* Finds field num of the message [p, end): a varint in *v, or a length-delimited value in
 * *fp, *flen. Returns its wire type, -1 when absent or malformed. */
static int pb_find(const uint8_t *p, const uint8_t *end, unsigned num, uint64_t *v,
                   const uint8_t **fp, size_t *flen) {
    while (p < end) {
        uint64_t key, x;
        if (!pb_read_varint(&p, end, &key))
            return -1;
        unsigned wt = (unsigned)(key & 7);
        if (wt == 0) {
            if (!pb_read_varint(&p, end, &x))
                return -1;
            if ((key >> 3) == num) {
                *v = x;
                return 0;
            }
        } else if (wt == 2) {
            if (!pb_read_varint(&p, end, &x) || x > (uint64_t)(end - p))
                return -1;
            if ((key >> 3) == num) {
                *fp = p;
                *flen = (size_t)x;
                return 2;
            }
            p += x;
        } else {
            return -1;
        }
    }
    return -1;
}

static void on_reply_parsed(conn *c, long id, bool is_err, long code);
static void on_publication(conn *c, const char *t, const char *end, int64_t now);

/* One Reply: a ping (empty), a push (our publications: their data holds the text), or a reply. */
static void pb_on_reply(conn *c, const uint8_t *p, size_t n, int64_t now) {
    const uint8_t *end = p + n, *f, *g2, *d;
    size_t fl, gl, dl;
    uint64_t v = 0;
    if (n == 0) {
        g.pings++;
        send_pong(c);
        return;
    }
    if (pb_find(p, end, 4, &v, &f, &fl) == 2) {
        if (pb_find(f, f + fl, 4, &v, &g2, &gl) == 2 && pb_find(g2, g2 + gl, 4, &v, &d, &dl) == 2) {
            const char *t = find_text(d, dl, &g.pb_text_hint);
            if (t)
                on_publication(c, t + 9, (const char *)d + dl, now);
        } else if (pb_find(f, f + fl, 11, &v, &g2, &gl) == 2) {
            g.push_disconnects++;
        }
        return;
    }
    long id = pb_find(p, end, 1, &v, &f, &fl) == 0 ? (long)v : 0;
    long code = -1;
    bool is_err = pb_find(p, end, 2, &v, &f, &fl) == 2;
    if (is_err && pb_find(f, f + fl, 1, &v, &g2, &gl) == 0)
        code = (long)v;
    on_reply_parsed(c, id, is_err, code);
}

static void pb_on_message(conn *c, const char *buf, size_t n, int64_t now) {
    const uint8_t *p = (const uint8_t *)buf, *end = p + n;
    while (p < end && c->state != CS_DEAD) {
        uint64_t len;
        if (!pb_read_varint(&p, end, &len) || len > (uint64_t)(end - p))
            return;
        pb_on_reply(c, p, (size_t)len, now);
        p += len;
    }
}

static void send_connect(conn *c) {
    char sub[32];
    if (c->role == ROLE_SUB) {
        snprintf(sub, sizeof sub, "load-%u", c->idx);
    } else {
        snprintf(sub, sizeof sub, "load-pub-%u", c->idx);
    }
    char *tok = load_jwt_mint(opt.secret, sub);
    if (tok == NULL) {
        conn_kill(c, FAIL_LOCAL);
        return;
    }
    c->state = CS_CONNECT;
    if (opt.protobuf) {
        uint8_t req[1024];
        size_t rl = pb_bytes(req, 1, tok, strlen(tok));
        free(tok);
        pb_send(c, 1, 4, req, rl);
        return;
    }
    char cmd[1024];
    int n = snprintf(cmd, sizeof cmd, "{\"id\":1,\"connect\":{\"token\":\"%s\"}}", tok);
    free(tok);
    ws_send_text(c, cmd, (size_t)n);
}

static void conn_ready(conn *c) {
    c->state = CS_READY;
    c->was_ready = 1;
    g.inflight--;
    if (c->role == ROLE_SUB) {
        g.ready_subs++;
        g.ever_ready_subs++;
        if (c->idx % opt.measure_every != 0) {
            c->sink = 1;
            g.ready_sinks++;
            g.ever_ready_sinks++;
        }
        if (opt.rooms > 0) {
            g.room_ever[c->idx % opt.rooms]++;
        }
    } else {
        g.ready_pubs++;
    }
}

/* After the connect reply. A subscriber joins its channel (with --rooms: room idx % R). Publishers
 * subscribe too, to every channel they publish into: the chat namespace lets only subscribers
 * publish (allow_publish). Their copies of the publications are read but not counted. With
 * --rooms a publisher's subscribes go out at once, ids 2 .. 1 + n. */
static void send_subscribes(conn *c) {
    unsigned n = c->role == ROLE_PUB ? pub_nrooms(c->idx) : 1;
    c->state = CS_SUBSCRIBE;
    c->subs_pending = n;
    for (unsigned j = 0; j < n; j++) {
        char cmd[320];
        int len;
        if (opt.protobuf) {
            char ch[300];
            int cl = opt.rooms == 0 ? snprintf(ch, sizeof ch, "%s", opt.channel)
                                    : snprintf(ch, sizeof ch, "%s-%u", opt.channel,
                                               c->role == ROLE_PUB ? c->idx + opt.publishers * j
                                                                   : c->idx % opt.rooms);
            uint8_t req[320], out[340];
            size_t rl = pb_bytes(req, 1, ch, (size_t)cl);
            size_t ol = pb_command(out, opt.rooms == 0 ? 2 : 2 + j, 5, req, rl);
            ws_queue(c, 0x2, (const char *)out, ol);
            continue;
        }
        if (opt.rooms == 0) {
            len = snprintf(cmd, sizeof cmd, "{\"id\":2,\"subscribe\":{\"channel\":\"%s\"}}",
                           opt.channel);
        } else {
            unsigned room = c->role == ROLE_PUB ? c->idx + opt.publishers * j : c->idx % opt.rooms;
            len = snprintf(cmd, sizeof cmd, "{\"id\":%u,\"subscribe\":{\"channel\":\"%s-%u\"}}",
                           2 + j, opt.channel, room);
        }
        ws_queue(c, 0x1, cmd, (size_t)len);
    }
    conn_flush(c);
}

/* Case-insensitive search for a header name at a line start; returns its value or NULL. */
static const char *http_header(const char *head, size_t len, const char *name) {
    size_t nl = strlen(name);
    for (const char *p = head; p + nl < head + len;) {
        const char *eol = memchr(p, '\n', (size_t)(head + len - p));
        if (eol == NULL) {
            break;
        }
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ' || *v == '\t') {
                v++;
            }
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

/* Consumes the 101 response. Returns the header length, 0 when incomplete, -1 when killed. */
static long http_consume(conn *c, const char *buf, size_t len) {
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (end == NULL) {
        if (len > HTTP_MAX_HEADER) {
            conn_kill(c, FAIL_HTTP);
            return -1;
        }
        return 0;
    }
    size_t hl = (size_t)(end - buf) + 4;
    const char *acc = http_header(buf, hl, "Sec-WebSocket-Accept");
    if (strncmp(buf, "HTTP/1.1 101", 12) != 0 || acc == NULL || strncmp(acc, c->accept, 28) != 0) {
        conn_kill(c, FAIL_HTTP);
        return -1;
    }
    free(c->accept);
    c->accept = NULL;
    send_connect(c);
    return c->state == CS_DEAD ? -1 : (long)hl;
}

/* ------------------------------------------------------------------------------------------ */
/* Receive path: lines of a text message */

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

/* A publication for a subscriber: the text is "L<publisher>.<seq>.<send us>." then padding. */
static void on_publication(conn *c, const char *t, const char *end, int64_t now) {
    const char *p = t;
    uint64_t pub = parse_u64(&p, end);
    if (p >= end || *p++ != '.') {
        return;
    }
    uint64_t seq = parse_u64(&p, end);
    if (p >= end || *p++ != '.') {
        return;
    }
    uint64_t ts = parse_u64(&p, end);
    /* With --rooms the first number is the room, which numbers its own publications. */
    if (p >= end || *p != '.' || pub >= (opt.rooms > 0 ? opt.rooms : opt.publishers) ||
        c->role != ROLE_SUB) {
        return;
    }
    g.st.deliveries++;
    uint64_t lat = now > (int64_t)ts ? (uint64_t)(now - (int64_t)ts) : 0;
    load_hist_record(&g.st.hist, lat);
    if (opt.nurls > 1) {
        g.st.node_deliveries[c->node]++;
        load_hist_record(&g.st.node_hist[c->node], lat);
    }
    seq_cell *cell;
    if (opt.rooms > 0) {
        if (pub != c->idx % opt.rooms) {
            g.st.dup++; /* another room's publication: delivered where nobody expects it */
            return;
        }
        cell = &g.cells[c->idx];
    } else {
        cell = &g.cells[(size_t)c->idx * opt.publishers + pub];
    }
    if (seq > cell->hi) {
        g.st.lost += seq - cell->hi - 1;
        cell->hi = cell->rx = (uint32_t)seq;
    } else if (seq > cell->rx) {
        g.st.late++;
        cell->rx = (uint32_t)seq;
    } else {
        g.st.dup++; /* a duplicate, or out of order after a gap */
    }
}

/* Parses the number after `"key":` somewhere in the line; -1 when absent. */
static long find_num(const char *p, size_t n, const char *key) {
    const char *k = find_str(p, n, key, strlen(key));
    if (k == NULL) {
        return -1;
    }
    const char *v = k + strlen(key);
    const char *end = p + n;
    while (v < end && *v == ' ') {
        v++;
    }
    if (v >= end || *v < '0' || *v > '9') {
        return -1;
    }
    return (long)parse_u64(&v, end);
}

/* With --rooms: a publish of publisher c was refused. Its id tells the room (see publish_room);
 * every subscriber of that room that was ever ready sees the gap. */
static void count_room_refused(const conn *c, long id) {
    unsigned nrooms = pub_nrooms(c->idx);
    uint32_t first = pub_first_id(c->idx);
    if (nrooms == 0 || id < (long)first) {
        return;
    }
    unsigned room = c->idx + opt.publishers * (unsigned)(((uint32_t)id - first) % nrooms);
    g.room_err[room]++;
    g.st.err_deliveries += g.room_ever[room];
}

static void on_reply(conn *c, const char *p, size_t n) {
    bool is_err = find_str(p, n, "\"error\":", 8) != NULL;
    on_reply_parsed(c, find_num(p, n, "\"id\":"), is_err,
                    is_err ? find_num(p, n, "\"code\":") : -1);
}

static void on_reply_parsed(conn *c, long id, bool is_err, long code) {
    if (is_err)
        count_code(g.errors, (int)code);
    if (id == 1 && c->state == CS_CONNECT) {
        if (is_err) {
            conn_kill(c, FAIL_CONNECT);
        } else {
            send_subscribes(c);
        }
    } else if (c->state == CS_SUBSCRIBE && id >= 2 &&
               id < 2 + (long)(c->role == ROLE_PUB ? pub_nrooms(c->idx) : 1)) {
        if (is_err) {
            conn_kill(c, FAIL_SUB);
        } else if (--c->subs_pending == 0) {
            conn_ready(c);
        }
    } else if (c->role == ROLE_PUB && id > 1) {
        if (is_err) {
            g.st.err++;
            if (opt.rooms > 0) {
                count_room_refused(c, id);
            }
        } else {
            g.st.ok++;
        }
    }
}

static void on_line(conn *c, const char *p, size_t n, int64_t now) {
    if (n == 2 && p[0] == '{' && p[1] == '}') {
        /* The server's ping; the protocol wants the same empty object back. */
        g.pings++;
        send_pong(c);
        return;
    }
    if (find_str(p, n < 16 ? n : 16, "\"push\"", 6) != NULL) {
        /* Only our own publications carry a text starting with 'L' in the bench channel, so
         * one search finds them; join/leave and other pushes fall through cheaply. */
        const char *t = find_text(p, n, &g.text_hint);
        if (t != NULL) {
            on_publication(c, t + 9, p + n, now);
        } else if (find_str(p, n, "\"disconnect\"", 12) != NULL) {
            g.push_disconnects++;
        }
        return;
    }
    on_reply(c, p, n);
}

static void on_message(conn *c, const char *p, size_t n, int64_t now) {
    if (opt.protobuf) {
        pb_on_message(c, p, n, now);
        return;
    }
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

/* ------------------------------------------------------------------------------------------ */
/* Receive path: WebSocket frames */

/* Header length of the frame at buf, its payload length in *plen; 0 when the header is not
 * complete yet. */
static size_t frame_header(const unsigned char *b, size_t len, uint64_t *plen) {
    if (len < 2) {
        return 0;
    }
    size_t hl = 2;
    uint64_t l = b[1] & 0x7f;
    if (l == 126) {
        if (len < 4) {
            return 0;
        }
        l = (uint64_t)b[2] << 8 | b[3];
        hl = 4;
    } else if (l == 127) {
        if (len < 10) {
            return 0;
        }
        l = 0;
        for (int i = 0; i < 8; i++) {
            l = l << 8 | b[2 + i];
        }
        hl = 10;
    }
    if (b[1] & 0x80) {
        hl += 4;
    }
    *plen = l;
    return hl;
}

static void on_close_frame(conn *c, const unsigned char *p, size_t n) {
    int code = n >= 2 ? (p[0] << 8 | p[1]) : 1005;
    count_code(g.closes, code);
    c->got_close = 1;
    /* Answering the close is polite but not needed for the measurement; closing the socket at
     * once keeps the failure path short. */
    conn_kill(c, FAIL_CLOSED);
}

static void msg_append(conn *c, const char *p, size_t n) {
    if (c->msg_len + n > c->msg_cap) {
        size_t cap = c->msg_cap ? c->msg_cap : 4096;
        while (cap < c->msg_len + n) {
            cap *= 2;
        }
        c->msg = xrealloc(c->msg, cap);
        c->msg_cap = (uint32_t)cap;
    }
    memcpy(c->msg + c->msg_len, p, n);
    c->msg_len += (uint32_t)n;
}

/* Handles every complete frame in buf. Returns the bytes consumed, or -1 when the connection
 * was killed. Unfragmented text frames are handled in place, without a copy. */
static long ws_consume(conn *c, char *buf, size_t len, int64_t now) {
    size_t off = 0;
    while (c->state != CS_DEAD) {
        unsigned char *b = (unsigned char *)buf + off;
        uint64_t plen = 0;
        size_t hl = frame_header(b, len - off, &plen);
        if (hl == 0) {
            break;
        }
        if (plen > MAX_MESSAGE_BYTES) {
            conn_kill(c, FAIL_CLOSED);
            return -1;
        }
        if (len - off < hl + plen) {
            break;
        }
        bool fin = b[0] & 0x80;
        unsigned op = b[0] & 0x0f;
        char *pl = (char *)b + hl;
        if (b[1] & 0x80) {
            /* Servers must not mask (RFC 6455 5.1); unmask anyway rather than misparse. */
            const unsigned char *mk = b + hl - 4;
            for (uint64_t i = 0; i < plen; i++) {
                pl[i] = (char)(pl[i] ^ mk[i & 3]);
            }
        }
        off += hl + (size_t)plen;
        switch (op) {
        case 0x0: /* continuation */
            if (!c->in_frag || c->msg_len + plen > MAX_MESSAGE_BYTES) {
                conn_kill(c, FAIL_CLOSED);
                return -1;
            }
            msg_append(c, pl, (size_t)plen);
            if (fin) {
                c->in_frag = 0;
                if (c->msg_len > 0) {
                    on_message(c, c->msg, c->msg_len, now);
                }
                c->msg_len = 0;
            }
            break;
        case 0x1: /* text */
        case 0x2: /* binary: the JSON protocol never sends it, treat it like text */
            if (c->in_frag) {
                conn_kill(c, FAIL_CLOSED);
                return -1;
            }
            if (fin) {
                on_message(c, pl, (size_t)plen, now);
            } else {
                c->in_frag = 1;
                c->msg_len = 0;
                msg_append(c, pl, (size_t)plen);
            }
            break;
        case 0x8:
            on_close_frame(c, (unsigned char *)pl, (size_t)plen);
            return -1;
        case 0x9: /* ping: answer with a pong carrying the same payload */
            ws_queue(c, 0xA, pl, (size_t)plen);
            conn_flush(c);
            break;
        case 0xA:
            break;
        default:
            conn_kill(c, FAIL_CLOSED);
            return -1;
        }
    }
    return c->state == CS_DEAD ? -1 : (long)off;
}

/* Total length of the frame starting at buf, or 0 when its header is not complete yet (or the
 * connection is still in the HTTP handshake). */
static size_t frame_total(const conn *c, const char *buf, size_t len) {
    if (c->state <= CS_HTTP) {
        return 0;
    }
    uint64_t plen = 0;
    size_t hl = frame_header((const unsigned char *)buf, len, &plen);
    return hl > 0 ? hl + (size_t)plen : 0;
}

/* What a read's result n means for its connection: READ_DATA (n bytes), READ_AGAIN (EINTR), or
 * READ_STOP: the socket is drained, or it ended (EOF, an error) and the connection is killed. */
enum { READ_STOP, READ_AGAIN, READ_DATA };

static int read_outcome(conn *c, ssize_t n) {
    if (n > 0) {
        return READ_DATA;
    }
    if (n < 0 && errno == EINTR) {
        return READ_AGAIN;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        conn_kill(c, FAIL_CLOSED);
    }
    return READ_STOP;
}

/* Reads into the shared scratch buffer, so idle connections own no read buffer and a busy one
 * takes up to 256 KiB per recv. What is left of an incomplete frame is kept per connection: a
 * small one is copied back in front of the scratch buffer for the next read, a large one
 * (a backlog flushed as one big frame) gets a buffer of its full size and later reads land right
 * behind it, so its bytes are copied once rather than once per read. */
static void conn_on_readable(conn *c) {
    /* TLS records can hold what the socket no longer shows as readable: read on while any is
     * left, within a larger bound. */
    for (int round = 0; round < (c->ssl ? 64 : 8) && c->state != CS_DEAD; round++) {
        char *buf = g.scratch;
        size_t have = 0;
        size_t cap = g.scratch_cap;
        if (c->rpend_len > 0) {
            size_t total = frame_total(c, c->rpend, c->rpend_len);
            if (total <= SMALL_FRAME_BYTES) {
                memcpy(g.scratch, c->rpend, c->rpend_len);
                have = c->rpend_len;
            } else {
                if (c->rpend_cap < total) {
                    c->rpend = xrealloc(c->rpend, total);
                    c->rpend_cap = (uint32_t)total;
                }
                buf = c->rpend;
                have = c->rpend_len;
                cap = c->rpend_cap;
            }
        }
        size_t room = cap - have;
        ssize_t n = io_recv(c, buf + have, room);
        int what = read_outcome(c, n);
        if (what == READ_AGAIN) {
            continue;
        }
        if (what == READ_STOP) {
            return;
        }
        have += (size_t)n;
        int64_t now = load_now_us();
        size_t used = 0;
        if (c->state == CS_HTTP) {
            long hl = http_consume(c, buf, have);
            if (hl < 0) {
                return; /* killed: buf may be freed */
            }
            used = (size_t)hl;
        }
        if (c->state > CS_HTTP) {
            long r = ws_consume(c, buf + used, have - used, now);
            if (r < 0) {
                return;
            }
            used += (size_t)r;
        }
        size_t left = have - used;
        if (left == 0) {
            free(c->rpend);
            c->rpend = NULL;
            c->rpend_cap = 0;
        } else if (buf == g.scratch) {
            size_t total = frame_total(c, buf + used, left);
            size_t want = total > left ? total : left;
            if (c->rpend_cap < want) {
                free(c->rpend);
                c->rpend = xrealloc(NULL, want);
                c->rpend_cap = (uint32_t)want;
            }
            memcpy(c->rpend, buf + used, left);
        } else if (used > 0) {
            memmove(c->rpend, c->rpend + used, left);
        }
        c->rpend_len = (uint32_t)left;
        if ((size_t)n < room && !(c->ssl && SSL_has_pending(c->ssl))) {
            return; /* The socket is drained; level-triggered epoll reports more later. */
        }
    }
}

/* An unmeasured subscriber (--measure-every): what the socket holds is read and dropped, over TLS
 * without decrypting it (the session's read side is never used again; its write side still
 * carries the pongs). A bounded number of reads per event, as for a measured one. */
static void sink_on_readable(conn *c) {
    for (int round = 0; round < 8; round++) {
        ssize_t n = recv(c->fd, g.scratch, g.scratch_cap, 0);
        int what = read_outcome(c, n);
        if (what == READ_AGAIN) {
            continue;
        }
        if (what == READ_STOP) {
            return;
        }
        g.st.sink_bytes += (uint64_t)n;
        if ((size_t)n < g.scratch_cap) {
            return;
        }
    }
}

/* The node closes a client that sends nothing within its pong timeout after a ping; a sink does
 * not see the pings, so it sends the protocol's pong (an empty command) every 5 s, which the
 * node takes as traffic whenever it comes. */
#define SINK_PONG_US 5000000

static void sinks_pong(void) {
    for (unsigned i = 0; i < opt.subscribers; i++) {
        conn *c = &g.conns[i];
        if (c->sink && c->state == CS_READY) {
            send_pong(c);
        }
    }
}

static void conn_on_event(conn *c, uint32_t events) {
    if (c->state == CS_DEAD) {
        return; /* killed earlier in this batch of events */
    }
    if (c->state == CS_TCP) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
            conn_on_tcp_connected(c);
        }
        return;
    }
    if (c->tls_hs) {
        tls_handshake(c);
        return;
    }
    if ((events & EPOLLOUT) && conn_flush(c) != 0) {
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (c->sink) {
            sink_on_readable(c);
        } else {
            conn_on_readable(c);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Publishing */

/* With --rooms: publication slot k (counted over the run, sent or dropped) goes to room k % R,
 * so every room gets rate / R, and is sent by the room's publisher p = room % M. Its command id
 * is the slot's place in p's own rotation over its n rooms, first + (k / R) * n + room / M, so
 * a refused publish's reply names its room even when earlier slots were dropped. */
/* A publish in the Protobuf form: the data is the same JSON chat message as in JSON. */
static void pb_publish(conn *c, uint32_t id, const char *ch, size_t cl, const char *text, int tl) {
    char data[4200];
    int dl = snprintf(data, sizeof data, "{\"type\":\"message\",\"text\":\"%.*s\"}", tl, text);
    uint8_t req[4500];
    size_t rl = pb_bytes(req, 1, ch, cl);
    rl += pb_bytes(req + rl, 2, data, (size_t)dl);
    pb_send(c, id, 7, req, rl);
}

static void publish_room(int64_t now) {
    uint64_t k = g.pub_slot++;
    unsigned room = (unsigned)(k % opt.rooms);
    unsigned p = room % opt.publishers;
    conn *c = &g.conns[opt.subscribers + p];
    if (c->state != CS_READY || c->wlen - c->woff > MAX_WBUF_BYTES) {
        g.st.dropped++;
        return;
    }
    uint32_t id =
        pub_first_id(p) + (uint32_t)(k / opt.rooms) * pub_nrooms(p) + room / opt.publishers;
    char text[4096];
    char cmd[4500];
    c->seq++;
    uint32_t seq = ++g.room_seq[room];
    int tl = snprintf(text, sizeof text, "L%u.%u.%" PRId64 ".", room, seq, now);
    if ((unsigned)tl < opt.payload_bytes) {
        memcpy(text + tl, g.pad, opt.payload_bytes - (unsigned)tl);
        tl = (int)opt.payload_bytes;
    }
    g.st.sent++;
    if (opt.protobuf) {
        char ch[300];
        int cl = snprintf(ch, sizeof ch, "%s-%u", opt.channel, room);
        pb_publish(c, id, ch, (size_t)cl, text, tl);
        return;
    }
    int n = snprintf(cmd, sizeof cmd,
                     "{\"id\":%u,\"publish\":{\"channel\":\"%s-%u\",\"data\":{\"type\":"
                     "\"message\",\"text\":\"%.*s\"}}}",
                     id, opt.channel, room, tl, text);
    ws_send_text(c, cmd, (size_t)n);
}

static void publish_one(unsigned k, int64_t now) {
    if (opt.rooms > 0) {
        publish_room(now);
        return;
    }
    conn *c = &g.conns[opt.subscribers + k % opt.publishers];
    if (c->state != CS_READY || c->wlen - c->woff > MAX_WBUF_BYTES) {
        g.st.dropped++;
        return;
    }
    char text[4096];
    char cmd[4500];
    c->seq++;
    int tl = snprintf(text, sizeof text, "L%u.%u.%" PRId64 ".", c->idx, c->seq, now);
    if ((unsigned)tl < opt.payload_bytes) {
        memcpy(text + tl, g.pad, opt.payload_bytes - (unsigned)tl);
        tl = (int)opt.payload_bytes;
    }
    g.st.sent++;
    if (opt.protobuf) {
        pb_publish(c, c->next_id++, opt.channel, strlen(opt.channel), text, tl);
        return;
    }
    int n = snprintf(cmd, sizeof cmd,
                     "{\"id\":%u,\"publish\":{\"channel\":\"%s\",\"data\":{\"type\":\"message\","
                     "\"text\":\"%.*s\"}}}",
                     c->next_id++, opt.channel, tl, text);
    ws_send_text(c, cmd, (size_t)n);
}

/* ------------------------------------------------------------------------------------------ */
/* Phases and reporting */

enum phase { PH_SETUP, PH_HOLD, PH_STEP, PH_DRAIN, PH_DONE };

/* One scrape of the admin listener's /metrics, run on a helper thread: a busy node can take a
 * second or more to answer, and the loop must keep reading its sockets meanwhile, or the tool
 * itself would become the slow consumer it is trying to measure. */
typedef struct metrics_job {
    pthread_t thread;
    bool started;
    int rc;
    const char *url;
    load_metrics m;
} metrics_job;

static void *metrics_thread(void *arg) {
    metrics_job *j = arg;
    j->rc = load_metrics_fetch(j->url, 3000, &j->m);
    return NULL;
}

/* One scrape per --admin URL, all at once. */
static void metrics_start(metrics_job *jobs) {
    for (unsigned i = 0; i < opt.nadmins; i++) {
        metrics_job *j = &jobs[i];
        if (!j->started) {
            j->rc = -1;
            j->url = opt.admins[i];
            j->started = pthread_create(&j->thread, NULL, metrics_thread, j) == 0;
        }
    }
}

/* Waits for the scrapes (each bounded by its own 3 s timeout) and sums their counters into
 * *sum; true when every one succeeded. */
static bool metrics_finish(metrics_job *jobs, load_metrics *sum) {
    bool ok = opt.nadmins > 0;
    load_metrics total = {0};
    for (unsigned i = 0; i < opt.nadmins; i++) {
        metrics_job *j = &jobs[i];
        if (!j->started) {
            ok = false;
            continue;
        }
        pthread_join(j->thread, NULL);
        j->started = false;
        if (j->rc != 0) {
            ok = false;
            continue;
        }
        total.pubs_in += j->m.pubs_in;
        total.pubs_out += j->m.pubs_out;
        total.disconnects += j->m.disconnects;
        total.write_calls += j->m.write_calls;
        total.rate_limited += j->m.rate_limited;
    }
    if (sum != NULL) {
        *sum = total;
    }
    return ok;
}

/* The watched nodes' CPU ticks and RSS, summed; -1 when there is none or one cannot be read
 * (a node that died). */
static long long nodes_cpu_ticks(long long *each) {
    long long sum = opt.nnode_pids > 0 ? 0 : -1;
    for (unsigned i = 0; i < opt.nnode_pids; i++) {
        long long t = load_proc_cpu_ticks(opt.node_pids[i]);
        each[i] = t;
        sum = (sum < 0 || t < 0) ? -1 : sum + t;
    }
    return sum;
}

static long nodes_rss_kib(long *each) {
    long sum = opt.nnode_pids > 0 ? 0 : -1;
    for (unsigned i = 0; i < opt.nnode_pids; i++) {
        long k = load_proc_rss_kib(opt.node_pids[i]);
        if (each != NULL) {
            each[i] = k;
        }
        sum = (sum < 0 || k < 0) ? -1 : sum + k;
    }
    return sum;
}

typedef struct run {
    enum phase phase;
    int64_t started;
    int64_t phase_end;
    int64_t setup_started;
    unsigned step;
    /* publishing */
    int64_t pub_t0;
    uint64_t pub_k;
    double rate;
    /* window snapshots */
    int64_t win_t0;
    long long node_ticks0;
    long long node_ticks0_each[MAX_NODES];
    long long redis_ticks0;
    long long host_ticks0;
    int64_t self_cpu0;
    metrics_job m0[MAX_NODES];
    double win_secs;
    uint64_t win_sent;
    uint64_t win_ok;
    uint64_t win_deliv;
    uint64_t win_sink_bytes;
    uint64_t win_node_deliv[MAX_NODES];
    double node_cpu;
    double node_cpu_each[MAX_NODES];
    double tool_cpu;
    double redis_cpu;
    double host_cpu;
    long node_rss;
    long node_rss_each[MAX_NODES];
    long redis_rss;
    metrics_job m1[MAX_NODES];
    long rss_before;
} run;

static double pct(long long ticks, double secs) {
    return secs > 0 ? 100.0 * (double)ticks / (double)sysconf(_SC_CLK_TCK) / secs : 0;
}

static void print_mib(const char *key, long kib) {
    if (kib < 0) {
        printf(" %s=-", key);
    } else {
        printf(" %s=%.1f", key, (double)kib / 1024.0);
    }
}

static void print_codes(const char *label, const code_count *tab) {
    if (tab[0].count == 0) {
        return;
    }
    printf("%s", label);
    for (int i = 0; i < MAX_CODES && tab[i].count > 0; i++) {
        printf(" %d=%" PRIu64, tab[i].code, tab[i].count);
    }
    printf("\n");
}

static void report_connect(const run *r, int64_t now) {
    unsigned want_subs = opt.subscribers;
    uint64_t failed = 0;
    for (int i = 0; i < FAIL_KINDS; i++) {
        failed += g.fails[i];
    }
    double secs = (double)(now - r->setup_started) / 1e6;
    printf("CONNECT subs=%u subs_wanted=%u pubs=%u pubs_wanted=%u failed=%" PRIu64, g.ready_subs,
           want_subs, g.ready_pubs, opt.publishers, failed);
    for (int i = 0; i < FAIL_KINDS; i++) {
        printf(" %s=%" PRIu64, fail_names[i], g.fails[i]);
    }
    printf(" secs=%.2f conn/s=%.0f\n", secs,
           secs > 0 ? (double)(g.ready_subs + g.ready_pubs) / secs : 0);
    if (opt.rooms > 0) {
        /* How the subscribers that got ready are spread over the rooms, and the most rooms one
         * publisher owns (and is subscribed to). */
        unsigned lo = UINT32_MAX, hi = 0;
        for (unsigned q = 0; q < opt.rooms; q++) {
            lo = g.room_ever[q] < lo ? g.room_ever[q] : lo;
            hi = g.room_ever[q] > hi ? g.room_ever[q] : hi;
        }
        printf("ROOMS rooms=%u channels=%s-0..%s-%u subs_per_room_min=%u subs_per_room_max=%u "
               "rooms_per_pub=%u\n",
               opt.rooms, opt.channel, opt.channel, opt.rooms - 1, lo, hi,
               opt.publishers > 0 ? pub_nrooms(0) : 0);
    }
    if (opt.nurls > 1) {
        /* Where the connections went: one line per URL, numbered from 1. */
        for (unsigned u = 0; u < opt.nurls; u++) {
            unsigned subs = 0, pubs = 0, subs_wanted = 0, pubs_wanted = 0, nfailed = 0;
            for (unsigned i = 0; i < g.nconns; i++) {
                const conn *c = &g.conns[i];
                if (c->node != u) {
                    continue;
                }
                unsigned *wanted = c->role == ROLE_SUB ? &subs_wanted : &pubs_wanted;
                unsigned *ready = c->role == ROLE_SUB ? &subs : &pubs;
                (*wanted)++;
                if (c->state == CS_READY) {
                    (*ready)++;
                } else if (!c->was_ready) {
                    nfailed++;
                }
            }
            const target *t = &opt.urls[u];
            printf("URL %u url=ws://%s:%d%s subs=%u subs_wanted=%u pubs=%u pubs_wanted=%u "
                   "failed=%u\n",
                   u + 1, t->host, t->port, t->path, subs, subs_wanted, pubs, pubs_wanted, nfailed);
        }
    }
    fflush(stdout);
}

static void window_begin(run *r, int64_t now) {
    r->win_t0 = now;
    r->node_ticks0 = nodes_cpu_ticks(r->node_ticks0_each);
    r->redis_ticks0 = opt.redis_pid > 0 ? load_proc_cpu_ticks(opt.redis_pid) : -1;
    r->host_ticks0 = opt.host_cpu ? load_host_busy_ticks() : -1;
    r->self_cpu0 = load_self_cpu_us();
    metrics_start(r->m0);
}

static void window_end(run *r, int64_t now) {
    r->win_secs = (double)(now - r->win_t0) / 1e6;
    r->win_sent = g.st.sent;
    r->win_ok = g.st.ok;
    r->win_deliv = g.st.deliveries;
    r->win_sink_bytes = g.st.sink_bytes;
    memcpy(r->win_node_deliv, g.st.node_deliveries, sizeof r->win_node_deliv);
    long long each[MAX_NODES];
    long long t1 = nodes_cpu_ticks(each);
    r->node_cpu = (r->node_ticks0 >= 0 && t1 >= 0) ? pct(t1 - r->node_ticks0, r->win_secs) : -1;
    for (unsigned i = 0; i < opt.nnode_pids; i++) {
        r->node_cpu_each[i] = (r->node_ticks0_each[i] >= 0 && each[i] >= 0)
                                  ? pct(each[i] - r->node_ticks0_each[i], r->win_secs)
                                  : -1;
    }
    long long rt1 = opt.redis_pid > 0 ? load_proc_cpu_ticks(opt.redis_pid) : -1;
    r->redis_cpu =
        (r->redis_ticks0 >= 0 && rt1 >= 0) ? pct(rt1 - r->redis_ticks0, r->win_secs) : -1;
    r->tool_cpu = 100.0 * (double)(load_self_cpu_us() - r->self_cpu0) / 1e6 / r->win_secs;
    long long ht1 = opt.host_cpu ? load_host_busy_ticks() : -1;
    r->host_cpu = (r->host_ticks0 >= 0 && ht1 >= 0) ? pct(ht1 - r->host_ticks0, r->win_secs) : -1;
    r->node_rss = nodes_rss_kib(r->node_rss_each);
    r->redis_rss = opt.redis_pid > 0 ? load_proc_rss_kib(opt.redis_pid) : -1;
    metrics_start(r->m1);
}

static void timer_set(int64_t period_us) {
    struct itimerspec its = {0};
    if (period_us > 0) {
        its.it_interval.tv_sec = period_us / 1000000;
        its.it_interval.tv_nsec = (period_us % 1000000) * 1000;
        its.it_value = its.it_interval;
    }
    timerfd_settime(g.timer_fd, 0, &its, NULL);
}

static void step_begin(run *r, int64_t now) {
    memset(&g.st, 0, sizeof g.st);
    if (opt.rooms > 0) {
        memcpy(g.room_seq0, g.room_seq, sizeof(uint32_t) * opt.rooms);
    }
    r->rate = opt.rates[r->step];
    r->phase = PH_STEP;
    window_begin(r, now);
    now = load_now_us(); /* the metrics scrape may have taken a moment */
    r->win_t0 = now;
    r->pub_t0 = now;
    r->pub_k = 0;
    r->phase_end = now + (int64_t)(opt.step_seconds * 1e6);
    /* One tick per publication up to 4,000/s; above that several per tick, which still spreads
     * the sends within a quarter of a millisecond and keeps the tool's wakeups affordable. */
    int64_t period = (int64_t)(1e6 / r->rate);
    timer_set(period < 250 ? 250 : period);
}

static void on_tick(run *r) {
    uint64_t expirations;
    if (read(g.timer_fd, &expirations, sizeof expirations) < 0 || r->phase != PH_STEP) {
        return;
    }
    int64_t now = load_now_us();
    int64_t upto = now < r->phase_end ? now : r->phase_end;
    uint64_t due = (uint64_t)((double)(upto - r->pub_t0) * r->rate / 1e6);
    while (r->pub_k < due) {
        publish_one((unsigned)r->pub_k, now);
        r->pub_k++;
    }
}

/* Counts, per subscriber and publisher, the publications of this step that never arrived, then
 * marks them as accounted so that a very late arrival is counted as late rather than as a gap
 * of the next step. */
static uint64_t account_tail_losses(void) {
    uint64_t lost = 0;
    for (unsigned s = 0; s < opt.subscribers; s++) {
        const conn *sc = &g.conns[s];
        if (!sc->was_ready || sc->sink) {
            continue;
        }
        if (opt.rooms > 0) {
            seq_cell *cell = &g.cells[s];
            uint32_t sent = g.room_seq[s % opt.rooms];
            if (cell->hi < sent) {
                lost += sent - cell->hi;
                cell->hi = sent;
            }
            continue;
        }
        seq_cell *row = &g.cells[(size_t)s * opt.publishers];
        for (unsigned p = 0; p < opt.publishers; p++) {
            uint32_t sent = g.conns[opt.subscribers + p].seq;
            if (row[p].hi < sent) {
                lost += sent - row[p].hi;
                row[p].hi = sent;
            }
        }
    }
    return lost;
}

static void print_cpu(const char *key, double v) {
    if (v >= 0) {
        printf(" %s=%.1f", key, v);
    } else {
        printf(" %s=-", key);
    }
}

static void step_report(run *r) {
    step_stats *st = &g.st;
    uint64_t lost = st->lost + account_tail_losses();
    /* A publish the server refused is never delivered, and every subscriber (with --rooms: of
     * its room) saw it as a gap. */
    uint64_t refused =
        opt.rooms > 0 ? st->err_deliveries : st->err * (g.ever_ready_subs - g.ever_ready_sinks);
    lost = lost > refused ? lost - refused : 0;
    g.total_sent += st->sent;
    g.total_ok += st->ok;
    g.total_err += st->err;
    g.total_deliveries += st->deliveries;
    g.total_lost += lost;
    g.total_dup += st->dup;
    g.total_late += st->late;
    double s = r->win_secs;
    /* What the live subscribers should have received of the window's publications: with
     * --rooms, per room its publications (nothing is sent in the drain) x its live subscribers. */
    double expect = (double)r->win_sent * (g.ready_subs - g.ready_sinks);
    if (opt.rooms > 0) {
        memset(g.room_live, 0, sizeof(uint32_t) * opt.rooms);
        for (unsigned i = 0; i < opt.subscribers; i++) {
            if (g.conns[i].state == CS_READY) {
                g.room_live[i % opt.rooms]++;
            }
        }
        expect = 0;
        for (unsigned q = 0; q < opt.rooms; q++) {
            expect += (double)(g.room_seq[q] - g.room_seq0[q]) * g.room_live[q];
        }
    }
    printf("STEP %u rate=%.0f sent/s=%.1f ok/s=%.1f deliv/s=%.0f expect/s=%.0f", r->step + 1,
           r->rate, (double)r->win_sent / s, (double)r->win_ok / s, (double)r->win_deliv / s,
           expect / s);
    printf(" p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f",
           (double)load_hist_quantile(&st->hist, 0.50) / 1000.0,
           (double)load_hist_quantile(&st->hist, 0.99) / 1000.0,
           (double)load_hist_quantile(&st->hist, 0.999) / 1000.0, (double)st->hist.max / 1000.0);
    printf(" lost=%" PRIu64 " dup=%" PRIu64 " late=%" PRIu64 " pub_err=%" PRIu64
           " pub_drop=%" PRIu64 " subs=%u",
           lost, st->dup, st->late, st->err, st->dropped, g.ready_subs);
    if (opt.measure_every > 1) {
        printf(" sinks=%u sink_mib/s=%.1f", g.ready_sinks,
               (double)r->win_sink_bytes / s / (1024.0 * 1024.0));
    }
    print_mib("node_rss_mib", r->node_rss);
    if (r->node_cpu >= 0) {
        printf(" node_cpu=%.1f", r->node_cpu);
    } else {
        printf(" node_cpu=-");
    }
    printf(" tool_cpu=%.1f", r->tool_cpu);
    load_metrics a, b;
    bool ok0 = metrics_finish(r->m0, &a);
    bool ok1 = metrics_finish(r->m1, &b);
    if (ok0 && ok1) {
        printf(" srv_in/s=%.1f srv_out/s=%.0f srv_disc=%.0f srv_writes/s=%.0f",
               (b.pubs_in - a.pubs_in) / s, (b.pubs_out - a.pubs_out) / s,
               b.disconnects - a.disconnects, (b.write_calls - a.write_calls) / s);
    }
    /* Everything below is only printed when asked for, so a single-node run's line is
     * unchanged. */
    if (opt.redis_pid > 0) {
        print_cpu("redis_cpu", r->redis_cpu);
        print_mib("redis_rss_mib", r->redis_rss);
    }
    if (opt.host_cpu) {
        /* Percent of one core like the others, so up to 100 x cores. `other_cpu` is what the
         * rest of the machine used meanwhile: anything well above a few percent means the
         * figures shared the cores with something else. */
        print_cpu("host_cpu", r->host_cpu);
        double other = -1;
        if (r->host_cpu >= 0 && r->node_cpu >= 0) {
            other = r->host_cpu - r->node_cpu - r->tool_cpu - (r->redis_cpu > 0 ? r->redis_cpu : 0);
            other = other < 0 ? 0 : other;
        }
        print_cpu("other_cpu", other);
    }
    if (opt.nurls > 1) {
        /* Per node (URL k, numbered from 1): its live subscribers, the deliveries they received
         * in the window, their latency, and the node's CPU and RSS when its PID was given in
         * the same order. */
        unsigned subs[MAX_NODES] = {0};
        for (unsigned i = 0; i < opt.subscribers; i++) {
            if (g.conns[i].state == CS_READY) {
                subs[g.conns[i].node]++;
            }
        }
        for (unsigned u = 0; u < opt.nurls; u++) {
            const load_hist *h = &st->node_hist[u];
            printf(" n%u_subs=%u n%u_deliv/s=%.0f n%u_p50_ms=%.3f n%u_p99_ms=%.3f", u + 1, subs[u],
                   u + 1, (double)r->win_node_deliv[u] / s, u + 1,
                   (double)load_hist_quantile(h, 0.50) / 1000.0, u + 1,
                   (double)load_hist_quantile(h, 0.99) / 1000.0);
            if (u < opt.nnode_pids) {
                char key[32];
                snprintf(key, sizeof key, "n%u_cpu", u + 1);
                print_cpu(key, r->node_cpu_each[u]);
                snprintf(key, sizeof key, "n%u_rss_mib", u + 1);
                print_mib(key, r->node_rss_each[u]);
            }
        }
    }
    printf("\n");
    fflush(stdout);
}

static void report_idle(const run *r, int64_t now) {
    long after = nodes_rss_kib(NULL);
    unsigned conns = g.ready_subs;
    printf("IDLE conns=%u wanted=%u dropped_during_hold=%u", conns, opt.subscribers,
           g.dead_after_ready);
    print_mib("rss_before_mib", r->rss_before);
    print_mib("rss_after_mib", after);
    if (after >= 0 && r->rss_before >= 0 && conns > 0) {
        printf(" kib_per_conn=%.2f", (double)(after - r->rss_before) / conns);
    } else {
        printf(" kib_per_conn=-");
    }
    double secs = (double)(now - r->win_t0) / 1e6;
    long long each[MAX_NODES];
    long long t1 = nodes_cpu_ticks(each);
    if (r->node_ticks0 >= 0 && t1 >= 0) {
        printf(" node_cpu=%.1f", pct(t1 - r->node_ticks0, secs));
    }
    printf(" pings=%" PRIu64 "\n", g.pings);
    fflush(stdout);
}

/* Starts as many handshakes as the in-flight bound allows. */
static void setup_pump(int64_t now) {
    while (g.inflight < opt.max_inflight && g.next_start < g.nconns) {
        unsigned i = g.next_start++;
        conn_start(&g.conns[i], i, now);
    }
}

static void setup_timeouts(int64_t now) {
    for (unsigned i = 0; i < g.next_start; i++) {
        conn *c = &g.conns[i];
        if (in_setup(c) && now > c->deadline) {
            conn_kill(c, FAIL_TIMEOUT);
        }
    }
}

static void advance(run *r, int64_t now) {
    switch (r->phase) {
    case PH_SETUP:
        setup_pump(now);
        if (g.next_start < g.nconns || g.inflight > 0) {
            return;
        }
        report_connect(r, now);
        if (opt.idle) {
            r->phase = PH_HOLD;
            r->win_t0 = now;
            r->node_ticks0 = nodes_cpu_ticks(r->node_ticks0_each);
            r->phase_end = now + (int64_t)(opt.hold_seconds * 1e6);
        } else if (g.ready_subs == 0 || g.ready_pubs == 0) {
            fprintf(stderr, "chat-load: no subscriber or no publisher is connected; stopping\n");
            r->phase = PH_DONE;
        } else {
            step_begin(r, now);
        }
        return;
    case PH_HOLD:
        if (now >= r->phase_end) {
            report_idle(r, now);
            r->phase = PH_DONE;
        }
        return;
    case PH_STEP:
        if (now >= r->phase_end) {
            /* Send whatever the schedule still owed so every step publishes rate x seconds. */
            uint64_t due = (uint64_t)(r->rate * opt.step_seconds);
            while (r->pub_k < due) {
                publish_one((unsigned)r->pub_k, now);
                r->pub_k++;
            }
            timer_set(0);
            window_end(r, now);
            r->phase = PH_DRAIN;
            r->phase_end = load_now_us() + (int64_t)(opt.drain_seconds * 1e6);
        }
        return;
    case PH_DRAIN:
        if (now >= r->phase_end) {
            step_report(r);
            if (++r->step < opt.nrates) {
                step_begin(r, load_now_us());
            } else {
                r->phase = PH_DONE;
            }
        }
        return;
    case PH_DONE:
        return;
    }
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
        rl.rlim_cur < (rlim_t)opt.subscribers + opt.publishers + 16) {
        fprintf(stderr,
                "chat-load: warning: open-file limit %llu is below the %u connections asked for; "
                "the rest will fail as 'local'\n",
                (unsigned long long)rl.rlim_cur, opt.subscribers + opt.publishers);
    }
}

static void cleanup(void) {
    for (unsigned i = 0; i < g.nconns; i++) {
        conn *c = &g.conns[i];
        if (c->fd >= 0) {
            close(c->fd);
        }
        conn_free_buffers(c);
    }
    free(g.conns);
    free(g.cells);
    free(g.room_seq);
    free(g.room_seq0);
    free(g.room_err);
    free(g.room_ever);
    free(g.room_live);
    free(g.scratch);
    free(g.pad);
    close(g.timer_fd);
    close(g.ep);
}

int main(int argc, char **argv) {
    if (parse_options(argc, argv) != 0) {
        return 1;
    }
    raise_nofile();
    for (unsigned i = 0; i < opt.nurls; i++) {
        if (opt.urls[i].tls && !g_tls) {
            g_tls = SSL_CTX_new(TLS_client_method());
            if (!g_tls) {
                fprintf(stderr, "chat-load: cannot set up TLS\n");
                return 1;
            }
            SSL_CTX_set_verify(g_tls, SSL_VERIFY_NONE, NULL);
            SSL_CTX_set_min_proto_version(g_tls, TLS1_2_VERSION);
            /* Without read-ahead OpenSSL reads a record's header and then its body, two
             * syscalls per record, and the tool (one thread) becomes the bottleneck it is
             * meant to measure. With it, one recv takes up to 64 KiB of records. */
            SSL_CTX_set_read_ahead(g_tls, 1);
            SSL_CTX_set_default_read_buffer_len(g_tls, 64 * 1024);
        }
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    g.nconns = opt.subscribers + opt.publishers;
    g.conns = xrealloc(NULL, sizeof(conn) * (g.nconns ? g.nconns : 1));
    for (unsigned i = 0; i < g.nconns; i++) {
        conn *c = &g.conns[i];
        memset(c, 0, sizeof *c);
        c->fd = -1;
        c->role = i < opt.subscribers ? ROLE_SUB : ROLE_PUB;
        c->idx = i < opt.subscribers ? i : i - opt.subscribers;
        c->node = (uint8_t)(c->idx % opt.nurls);
        c->next_id = 2;
    }
    size_t ncells =
        (size_t)opt.subscribers * (opt.rooms > 0 ? 1 : (opt.publishers ? opt.publishers : 1));
    g.cells = calloc(ncells ? ncells : 1, sizeof(seq_cell));
    if (opt.rooms > 0) {
        g.room_seq = calloc(opt.rooms, sizeof(uint32_t));
        g.room_seq0 = calloc(opt.rooms, sizeof(uint32_t));
        g.room_err = calloc(opt.rooms, sizeof(uint64_t));
        g.room_ever = calloc(opt.rooms, sizeof(uint32_t));
        g.room_live = calloc(opt.rooms, sizeof(uint32_t));
        if (!g.room_seq || !g.room_seq0 || !g.room_err || !g.room_ever || !g.room_live) {
            fprintf(stderr, "chat-load: out of memory for %u rooms\n", opt.rooms);
            return 1;
        }
    }
    g.scratch_cap = 1 << 18;
    g.scratch = xrealloc(NULL, g.scratch_cap);
    g.pad = xrealloc(NULL, opt.payload_bytes);
    memset(g.pad, 'x', opt.payload_bytes);
    g.rng = (uint32_t)load_now_us() | 1u;
    g.ep = epoll_create1(EPOLL_CLOEXEC);
    g.timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (g.cells == NULL || g.ep < 0 || g.timer_fd < 0) {
        fprintf(stderr, "chat-load: cannot set up: %s\n", strerror(errno));
        return 1;
    }
    static int timer_tag;
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = &timer_tag};
    epoll_ctl(g.ep, EPOLL_CTL_ADD, g.timer_fd, &tev);

    run r = {.phase = PH_SETUP};
    r.started = load_now_us();
    r.setup_started = r.started;
    /* The node's baseline is taken before the first socket opens so that --idle reports only
     * what the connections cost. */
    r.rss_before = nodes_rss_kib(NULL);
    int64_t deadline = r.started + (int64_t)(opt.timeout * 1e6);
    int64_t next_timeout_scan = r.started;
    int64_t next_progress = r.started + 2000000;
    int64_t next_sink_pong = 0;
    struct epoll_event evs[512];
    int rc = 0;

    while (r.phase != PH_DONE) {
        int64_t now = load_now_us();
        if (now > deadline || g_interrupted) {
            fprintf(stderr, "chat-load: %s; stopping\n",
                    g_interrupted ? "interrupted" : "global --timeout reached");
            if (r.phase == PH_SETUP) {
                report_connect(&r, now);
            }
            rc = 2;
            break;
        }
        advance(&r, now);
        if (r.phase == PH_DONE) {
            break;
        }
        if (r.phase == PH_SETUP && now >= next_timeout_scan) {
            setup_timeouts(now);
            next_timeout_scan = now + 250000;
        }
        if (opt.measure_every > 1 && r.phase != PH_SETUP && now >= next_sink_pong) {
            sinks_pong();
            next_sink_pong = now + SINK_PONG_US;
        }
        if (r.phase == PH_SETUP && now >= next_progress) {
            fprintf(stderr, "chat-load: setup: %u subs, %u pubs ready, %u in flight, %u to go\n",
                    g.ready_subs, g.ready_pubs, g.inflight, g.nconns - g.next_start);
            next_progress = now + 2000000;
        }
        int wait_ms = 50;
        if (r.phase != PH_SETUP) {
            int64_t left = (r.phase_end - now) / 1000;
            wait_ms = left < 0 ? 0 : (left > 100 ? 100 : (int)left + 1);
        }
        int n = epoll_wait(g.ep, evs, (int)(sizeof evs / sizeof evs[0]), wait_ms);
        int64_t woke = load_now_us();
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &timer_tag) {
                on_tick(&r);
            } else {
                conn_on_event(evs[i].data.ptr, evs[i].events);
            }
        }
        if (opt.batch_us > 0 && n > 0 && r.phase != PH_SETUP) {
            int64_t rest = (int64_t)opt.batch_us - (load_now_us() - woke);
            if (rest > 0) {
                struct timespec ts = {.tv_sec = 0, .tv_nsec = rest * 1000};
                nanosleep(&ts, NULL);
            }
        }
    }
    print_codes("CLOSES", g.closes);
    print_codes("ERRORS", g.errors);
    if (g.dead_after_ready > 0) {
        printf("DISCONNECTS after_ready=%u without_close_frame=%u\n", g.dead_after_ready,
               g.dropped_without_close);
    }
    if (g.push_disconnects > 0) {
        printf("PUSH_DISCONNECTS %" PRIu64 "\n", g.push_disconnects);
    }
    if (opt.nurls > 1 && !opt.idle) {
        uint64_t expected = (g.total_sent - g.total_err) * g.ever_ready_subs;
        if (opt.rooms > 0) {
            expected = 0;
            for (unsigned q = 0; q < opt.rooms; q++) {
                expected += (g.room_seq[q] - g.room_err[q]) * g.room_ever[q];
            }
        }
        /* The whole run's books: with nothing lost, duplicated or refused and no subscriber
         * gone, deliveries = publications sent x subscribers, whichever node each publication
         * entered and each subscriber sat on. */
        printf("TOTALS sent=%" PRIu64 " ok=%" PRIu64 " pub_err=%" PRIu64
               " subs=%u deliveries=%" PRIu64 " expected=%" PRIu64 " lost=%" PRIu64 " dup=%" PRIu64
               " late=%" PRIu64 "\n",
               g.total_sent, g.total_ok, g.total_err, g.ever_ready_subs, g.total_deliveries,
               expected, g.total_lost, g.total_dup, g.total_late);
    }
    fflush(stdout);
    if (rc == 0 && !opt.idle && (g.ready_subs == 0 || g.ready_pubs == 0) && r.step < opt.nrates) {
        rc = 1;
    }
    metrics_finish(r.m0, NULL);
    metrics_finish(r.m1, NULL);
    cleanup();
    return rc;
}
