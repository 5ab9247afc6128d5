/* server: what the files of chatd's program share: the process state, the per-session data of
 * the listeners, and the functions one file offers the others. Private to server/. */
#ifndef SERVER_SRV_INT_H
#define SERVER_SRV_INT_H

#include <libwebsockets.h>

#include "admin/admin.h"
#include "auth/auth.h"
#include "chat/chat.h"
#include "cluster/cluster.h"
#include "core/core.h"
#include "server/server.h"

#define MOD "server"
#define CHATD_VERSION "0.1.0"

typedef struct srv srv_t;

/* A listening socket whose connections chatd accepts itself and hands to lws (srv_listen.c). */
typedef struct {
    srv_t *srv;
    const char *name;
    int fd;
    int port;         /* bound port */
    unsigned reserve; /* descriptors below the limit this listener leaves free */
    struct lws_vhost *vh;
    uv_poll_t poll;
    uv_timer_t backoff;
    uint64_t logged_ms; /* of the last "connections refused" line */
    uint64_t unlogged;  /* refusals since */
} srv_listener_t;

/* Per-session data of the public protocol: a WebSocket client, or one HTTP exchange. */
typedef struct {
    struct lws *wsi;
    srv_t *srv;
    chat_client_t *client;
    srv_wq_t wq;
    core_str_t rx; /* fragments of an incoming message */
    int close_code;
    char *close_reason; /* set when closing: idle sessions do not carry it */
    bool closing;
    bool close_sent;
    bool want_write;
    bool in_flush;           /* on srv.flush, waiting for the coalescing timer */
    uint32_t mid_frame_pass; /* the last pass in which a read of it ended inside a frame */
    bool rx_paused;          /* reads stopped while a frame is half written (see conn_flush) */
    /* Bytes the socket did not take at once, as they go on the wire (frame bytes, or TLS
     * records): they leave before anything else written to the connection. */
    core_str_t tx;
    size_t tx_off;
    struct srv_tls_out *tls_out; /* the write side of a TLS session (srv_ws.c), or NULL */
    core_list_t flush_link;
    core_list_t reread_link; /* on srv.reread: read again before this pass ends */
    char *body;              /* HTTP response body being written */
    size_t body_len, body_off;
} srv_conn_t;

struct srv {
    uv_loop_t loop;
    srv_config_t cfg;
    struct lws_context *ctx;
    struct lws_vhost *pub_vh, *adm_vh;
    srv_listener_t pub_l, adm_l;
    uint64_t fd_limit;        /* RLIMIT_NOFILE as raised at start */
    uint32_t max_connections; /* node-wide cap on WebSocket sessions */
    uint32_t ws_open;         /* WebSocket sessions open now */
    core_rate_t connect_rate; /* new sessions per second (rate <= 0: unlimited) */
    core_gcra_t connect_gcra;
    chat_node_t *node;
    clu_broker_t *broker;
    struct store *store;            /* NULL without DATABASE_URL */
    struct srv_position *positions; /* channel positions read at start (no Redis) */
    size_t npositions, cap_positions;
    llm_t *llm;
    llm_config_t llm_cfg;
    auth_keyring_t *keys;
    chat_ns_t *ns;
    size_t nns;
    bool demo;
    bool draining;
    srv_stats_t st;
    adm_metrics_t *metrics;
    core_str_t scratch;        /* the frame being written; writes are synchronous so one suffices */
    core_str_t tls_out;        /* the TLS records of that frame, sent with one call (srv_ws.c) */
    srv_conn_t *tls_gathering; /* whose records go to tls_out now, or NULL */
    uv_signal_t sigterm, sigint, sighup;
    uint32_t tls_generation; /* certificate loads so far: each makes a vhost named after it */
    uv_timer_t drain_timer;
    uint64_t drain_deadline;
    uint64_t drain_start_ms;
    uint64_t drain_total;       /* sessions when the drain began */
    uint64_t drain_closed;      /* of them closed so far */
    core_list_t flush;          /* connections with queued output, waiting for a flush */
    core_list_t reread;         /* connections that received in this pass (srv_ws.c) */
    uv_timer_t flush_timer;     /* the flush with a write delay */
    uv_prepare_t flush_prepare; /* the flush without one: once per loop pass */
    uv_idle_t flush_idle;       /* a flush cut into slices: the poll between them must not wait */
    uv_prepare_t loop_watch;    /* measures each pass's work (st.loop_pass) */
    uint64_t watch_hr, watch_idle;
    uint32_t pass; /* loop passes, counted by the loop watch (srv_main.c) */
    adm_registry_t *registry;
    char public_addr[300]; /* host:port of the public listener, as the registry shows it */
    uint64_t started_ms;
    char cookie[128];                             /* the node cookie, set once the id is known */
    struct lws_protocol_vhost_options cookie_hdr; /* the same, for files lws serves itself */
};

/* ---- srv_admin.c: limits changed at run time ---- */

/* Sets the connect rate from sessions per second and burst (burst 0 = one second's worth). */
void srv__set_connect_rate(srv_t *S, uint32_t rate, uint32_t burst);

/* ---- srv_listen.c: the listening sockets ---- */

/* Binds and listens on hostport (host:port, IPv4); connections accepted into the last `reserve`
 * descriptors below S->fd_limit are closed at once. Returns 0, or CORE_EINVAL (logged). */
int srv__listen_open(srv_t *S, srv_listener_t *l, const char *name, const char *hostport,
                     unsigned reserve);
/* Starts accepting, handing connections to vh. */
void srv__listen_start(srv_listener_t *l, struct lws_vhost *vh);
/* Stops accepting and closes the socket (from the loop). */
void srv__listen_close(srv_listener_t *l);

/* ---- srv_ws.c: the chat protocol on the public listener ---- */

/* The public listener's protocols (WebSocket chat clients and HTTP) and their vhost options. */
extern const struct lws_protocols srv__public_protocols[];
extern const struct lws_protocol_vhost_options srv__public_pvo;

/* ---- srv_http.c: HTTP responses of both listeners ---- */

/* Request headers. lws 4.1 holds a request's headers in one buffer per connection being parsed
 * (max_http_header_data) and, when they overflow it, closes the connection without an answer;
 * it cannot be made to answer instead. What it can do is cut each header field it knows at a
 * length of its own (token_limits) and carry on: chatd sets that length one byte over
 * SRV_HEADER_FIELD_MAX, so that a field over the limit, the common case of a cookie grown too
 * large above all, arrives cut and is answered 431 (414 for the request target) by
 * srv__header_limit_status, and sizes the buffer so that several fields of that size fit. */
#define SRV_HEADER_FIELD_MAX 8192
#define SRV_HEADER_BUFFER 16384
/* 0, or the status that answers a request with a header field over SRV_HEADER_FIELD_MAX (414 for
 * the request target, 431 for any other field). */
unsigned int srv__header_limit_status(struct lws *wsi);
/* Answers 431 or 414 (in *rc, the callback's return) when srv__header_limit_status says so;
 * returns 1 when it did. */
int srv__http_refuse_headers(struct lws *wsi, srv_conn_t *c, int *rc);
/* The per-field lengths lws cuts known header fields at (SRV_HEADER_FIELD_MAX + 1). */
const struct lws_token_limits *srv__token_limits(void);

/* Adds the node cookie header (when the node id is known) to a response being built. Returns
 * non-zero when it did not fit. */
int srv__add_node_cookie(struct lws *wsi, unsigned char **p, unsigned char *end);
/* Sends status and headers now and body (taken, freed later) from the writeable callback. */
int srv__http_respond(struct lws *wsi, srv_conn_t *c, unsigned int status, const char *ctype,
                      char *body, size_t len);
/* The same with a copy of a plain-text body. */
int srv__http_respond_text(struct lws *wsi, srv_conn_t *c, unsigned int status, const char *text);
/* The shared tail of both listeners' callbacks: writes bodies, frees them, and passes the rest
 * (static files among it) to lws. */
int srv__http_common(struct lws *wsi, enum lws_callback_reasons reason, srv_conn_t *c, void *in,
                     size_t len);
/* Answers an HTTP request of the public listener: /healthz, /demo/token, the web demo's files
 * (from cfg.web_root), 404 for anything else. */
int srv__public_http(srv_t *S, struct lws *wsi, srv_conn_t *c);
/* A day-long token for user signed with the node's first key; the caller frees it. */
char *srv__mint_demo_token(srv_t *S, const char *user);

/* Starts the drain: new clients refused, /readyz failing, every client closed with 3001, exit
 * once the sockets are gone (srv_main.c; SIGTERM, SIGINT and the admin API's drain). */
void srv__begin_drain(srv_t *S);

/* ---- srv_admin.c: the admin listener ---- */

extern const struct lws_protocols srv__admin_protocols[];
/* The node's registry entry, an adm_self_fn taking srv_t. */
void srv__node_self_info(void *ud, core_str_t *out);
/* The node's own metric families (identity, ready, draining, cluster size), an
 * adm_metrics_render_fn taking srv_t. */
void srv__node_metrics(void *ud, adm_metrics_writer_t *w);

/* ---- the database (srv_store.c) ---- */

/* With DATABASE_URL: applies the migrations and opens the store, before anything is served
 * (runs the loop until done). Returns 0, or prints why and returns an exit code. */
int srv__store_start(srv_t *S);
/* Puts the store behind the broker just made (positions into the memory broker, or the Redis
 * broker's persist stream). */
void srv__store_wrap(srv_t *S);
void srv__store_metrics(void *ud, adm_metrics_writer_t *w);
/* Records every settled assistant request in the usage ledger. */
void srv__store_llm(srv_t *S);
/* Stops the retention timer (shutdown). */
void srv__store_stop(srv_t *S);

#endif
