/* server: chatd's process lifecycle: settings, the libwebsockets context on the program's own
 * libuv loop, the listeners, the chat node and its broker, the ready line, drain on SIGTERM and
 * an orderly shutdown. */
#include <inttypes.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "server/srv_int.h"

/* How long a drain waits for closed sockets to go, past its period. */
#define DRAIN_MAX_MS 5000
/* Descriptors below the open-file limit that each listener leaves free (srv_listen.c): the
 * public one room for the admin listener, the broker's reconnects and the files the node opens;
 * the admin one room for the broker at least. */
#define PUBLIC_FD_RESERVE 32
#define ADMIN_FD_RESERVE 8

static void drain_finish(srv_t *S);

/* Clients a drain has closed by `elapsed`: spread evenly over the period, but at least the
 * minimum rate, so a node with few clients is not held back by the period. */
static uint64_t drain_due(const srv_t *S, uint64_t elapsed) {
    uint64_t total = S->drain_total, period = S->cfg.drain_period_ms;
    if (period == 0 || elapsed >= period)
        return total;
    uint64_t by_period = total * elapsed / period;
    uint64_t by_rate = (uint64_t)S->cfg.drain_min_rate * elapsed / 1000;
    uint64_t due = by_period > by_rate ? by_period : by_rate;
    return due < total ? due : total;
}

static void drain_tick(uv_timer_t *t) {
    srv_t *S = t->data;
    uint64_t now = core_now_ms();
    uint64_t due = drain_due(S, now - S->drain_start_ms);
    if (due > S->drain_closed) {
        if (due >= S->drain_total)
            chat_node_close_all(S->node, 3001, "shutdown");
        else
            chat_node_close_some(S->node, (size_t)(due - S->drain_closed), 3001, "shutdown");
        S->drain_closed = due;
    }
    chat_stats_t cs;
    chat_node_stats(S->node, &cs);
    /* Running assistant answers go on after their askers left (the answer is the room's) for
     * up to CHAT_DRAIN_LLM_MS past the period; what still runs then is cut by llm_close and
     * stored as cancelled. Clients left past the drain's own deadline are cut too. */
    bool clients_gone = S->drain_closed >= S->drain_total && cs.sessions == 0;
    uint32_t answers = S->llm ? llm_live_requests(S->llm) : 0;
    uint64_t llm_deadline = S->drain_start_ms + S->cfg.drain_period_ms + S->cfg.drain_llm_ms;
    if ((clients_gone && (answers == 0 || now >= llm_deadline)) ||
        (!clients_gone && now >= S->drain_deadline))
        drain_finish(S);
}

static void node_closed(void *ud) {
    (void)ud;
}

/* The broker fails what it still has pending (publishes, rate takes, fills) while closing, and
 * those callbacks reach into the node: the node goes only after the broker. */
static void broker_closed(void *ud) {
    srv_t *S = ud;
    chat_node_close(S->node, node_closed, S);
}

/* The dispatcher stored what its cancelled streams had said and its leases are given back: the
 * broker may go. */
static void llm_closed(void *ud) {
    srv_t *S = ud;
    S->llm = NULL;
    clu_close(S->broker, broker_closed, S);
}

/* The node has left the registry (or Redis could not be told). The clients are gone, so their
 * requests were cancelled; the dispatcher closes next, while the broker still carries its last
 * publications. */
static void registry_closed(void *ud) {
    srv_t *S = ud;
    llm_close(S->llm, llm_closed, S);
}

/* Runs last before each poll (prepare handles run newest first, and the flush's is started
 * anew in every pass that writes, so the flush is counted): the time since the previous call
 * minus the time spent in poll is the work of the pass, timers, reads, broker answers and
 * writes included. */
static void loop_watch_cb(uv_prepare_t *p) {
    srv_t *S = p->data;
    S->pass++;
    uint64_t hr = uv_hrtime();
    uint64_t idle = uv_metrics_idle_time(&S->loop);
    if (S->watch_hr)
        core_hist_observe(&S->st.loop_pass,
                          (double)((hr - S->watch_hr) - (idle - S->watch_idle)) / 1e9);
    S->watch_hr = hr;
    S->watch_idle = idle;
}

static void drain_finish(srv_t *S) {
    uv_timer_stop(&S->drain_timer);
    srv__listen_close(&S->pub_l);
    srv__listen_close(&S->adm_l);
    uv_close((uv_handle_t *)&S->sigterm, NULL);
    uv_close((uv_handle_t *)&S->sigint, NULL);
    uv_close((uv_handle_t *)&S->sighup, NULL);
    uv_close((uv_handle_t *)&S->flush_timer, NULL);
    uv_close((uv_handle_t *)&S->flush_prepare, NULL);
    uv_close((uv_handle_t *)&S->flush_idle, NULL);
    uv_close((uv_handle_t *)&S->loop_watch, NULL);
    srv__store_stop(S);
    /* The first destroy closes every remaining socket, so every chat client is freed before
     * the node goes. */
    lws_context_destroy(S->ctx);
    adm_registry_t *reg = S->registry;
    S->registry = NULL;
    adm_registry_close(reg, registry_closed, S);
    uv_close((uv_handle_t *)&S->drain_timer, NULL);
}

void srv__begin_drain(srv_t *S) {
    if (S->draining)
        return;
    S->draining = true;
    chat_stats_t cs;
    chat_node_stats(S->node, &cs);
    CORE_LOGI(MOD, "draining", "sessions=%" PRIu64, cs.sessions);
    /* New clients are refused from now on; the admin listener stays, so that /readyz tells
     * balancers the node drains. */
    srv__listen_close(&S->pub_l);
    if (S->registry)
        adm_registry_beat(S->registry); /* balancers and peers learn it now, not at the next tick */
    if (S->llm)
        llm_drain(S->llm);
    /* Clients leave in batches over the drain period (close 3001, which SDKs answer with a
     * jittered reconnect): the other nodes take them at a bounded rate instead of all at once. */
    S->drain_start_ms = core_now_ms();
    S->drain_total = cs.sessions;
    S->drain_closed = 0;
    S->drain_deadline = S->drain_start_ms + S->cfg.drain_period_ms + DRAIN_MAX_MS;
    /* The first batch a tick later: this may run inside an lws callback (the admin API's
     * drain), where the context must not be torn down, and that call's answer is still to be
     * written when a node without clients is done at the first tick. */
    uv_timer_start(&S->drain_timer, drain_tick, 10, 10);
}

static void on_signal(uv_signal_t *h, int signum) {
    (void)signum;
    srv__begin_drain(h->data);
}

/* Raises the soft open-file limit to the hard one; returns the limit in force. */
/* libwebsockets' own lines go through the node's logger, so that CHAT_LOG_FORMAT=json output
 * stays one JSON object per line. */
static void lws_log_emit(int level, const char *line) {
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
        n--;
    while (n && *line == ' ')
        line++, n--;
    char msg[512];
    snprintf(msg, sizeof msg, "%.*s", (int)(n < sizeof msg ? n : sizeof msg - 1), line);
    core_log(level & LLL_ERR    ? CORE_LOG_ERROR
             : level & LLL_WARN ? CORE_LOG_WARN
                                : CORE_LOG_DEBUG,
             "lws", msg, NULL);
}

/* The registry's count of live nodes: what a server API survey waits for, and the share of the
 * assistant's concurrency a node takes alone while Redis does not answer. */
static void cluster_size_changed(void *ud, size_t nodes) {
    srv_t *S = ud;
    uint32_t n = nodes ? (uint32_t)nodes : 1;
    chat_node_set_cluster_size(S->node, n);
    if (S->llm)
        llm_set_cluster_size(S->llm, n);
}

static uint64_t raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    return rl.rlim_cur == RLIM_INFINITY ? UINT32_MAX : (uint64_t)rl.rlim_cur;
}

/* A vhost without a listening socket of its own: its listener (srv_listen.c) hands it the
 * connections it accepts. lws 4.1 moves a request to the vhost its Host header names, or else
 * to the first vhost with the same listen port, which for vhosts without a listener is the
 * kind of non-port they were created with: each vhost needs a different one (port), or the
 * admin listener's requests would be served by the public vhost. */
/* TLS 1.2 and 1.3 only; for 1.2, forward-secret AEAD suites only (1.3's are all of that
 * kind). */
#define TLS_CIPHERS                                                                                \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* A vhost for listener l (TLS with the configured certificate when tls): l's accepted sockets
 * are adopted into it from now on. A vhost made to reload the certificate gets a new name;
 * connections stay on the vhost that accepted them. */
static struct lws_vhost *make_vhost(srv_t *S, srv_listener_t *l, int port,
                                    const struct lws_protocols *protos,
                                    const struct lws_protocol_vhost_options *pvo,
                                    const struct lws_protocol_vhost_options *headers, bool tls) {
    char name[64];
    if (S->tls_generation)
        snprintf(name, sizeof name, "%s-%" PRIu32, l->name, S->tls_generation);
    else
        snprintf(name, sizeof name, "%s", l->name);
    struct lws_context_creation_info info = {
        .vhost_name = name,
        .port = port,
        .protocols = protos,
        .pvo = pvo,
        .headers = headers,
        .options = LWS_SERVER_OPTION_DISABLE_IPV6,
        .keepalive_timeout = 30,
    };
    if (tls) {
        /* lws reads this option from the vhost's info as well as from the context's. */
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = S->cfg.tls_cert;
        info.ssl_private_key_filepath = S->cfg.tls_key;
        info.ssl_cipher_list = TLS_CIPHERS;
        info.ssl_options_set = SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1 |
                               SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION;
    }
    struct lws_vhost *vh = lws_create_vhost(S->ctx, &info);
    if (!vh)
        CORE_LOGE(MOD, "cannot create the vhost", "vhost=%s tls=%d", name, tls);
    else
        srv__listen_start(l, vh);
    return vh;
}

/* SIGHUP: the certificate files are read again. New connections get the new certificate
 * (fresh vhosts take the listeners' sockets); those already open keep theirs. A certificate
 * that does not load leaves the old one in use. */
static void on_sighup(uv_signal_t *h, int signum) {
    (void)signum;
    srv_t *S = h->data;
    if (!S->cfg.tls_cert || S->draining)
        return;
    S->tls_generation++;
    /* A vhost that cannot be made leaves its listener on the vhost it had. */
    struct lws_vhost *np =
        make_vhost(S, &S->pub_l, CONTEXT_PORT_NO_LISTEN_SERVER, srv__public_protocols,
                   &srv__public_pvo, &S->cookie_hdr, true);
    if (!np) {
        CORE_LOGE(MOD, "certificate not reloaded", "cert=%s", S->cfg.tls_cert);
        return;
    }
    S->pub_vh = np;
    if (S->cfg.admin_tls) {
        struct lws_vhost *na = make_vhost(S, &S->adm_l, CONTEXT_PORT_NO_LISTEN_SERVER,
                                          srv__admin_protocols, NULL, NULL, true);
        if (na)
            S->adm_vh = na;
    }
    CORE_LOGI(MOD, "certificate reloaded", "cert=%s generation=%" PRIu32, S->cfg.tls_cert,
              S->tls_generation);
}

/* Decides what names this node once its listeners are bound (the default id and address
 * carry the public port, which may have been chosen by the kernel): its id, the cookie every
 * public response carries, and the address the registry shows. */
static void decide_identity(srv_t *S) {
    char host[256];
    int port;
    srv_parse_hostport(S->cfg.listen, host, sizeof host, &port);
    port = S->pub_l.port;
    if (!S->cfg.node_id) {
        char hn[128] = "node";
        gethostname(hn, sizeof hn);
        hn[sizeof hn - 1] = '\0';
        char id[SRV_NODE_ID_MAX + 1];
        srv_node_id_default(hn, port, id, sizeof id);
        S->cfg.node_id = core_strdup(id);
    }
    core_log_set_node(S->cfg.node_id);
    srv_node_cookie(S->cfg.node_id, S->cookie, sizeof S->cookie);
    char hn[128] = "localhost";
    if (!S->cfg.advertise && strcmp(host, "0.0.0.0") == 0) {
        gethostname(hn, sizeof hn);
        hn[sizeof hn - 1] = '\0';
    }
    srv_public_address(&S->cfg, hn, port, S->public_addr, sizeof S->public_addr);
}

/* The ready line the scripts and tests wait for (docs/RUNTIME.md), after the demo banner. */
static void print_ready(srv_t *S) {
    char host[256], ahost[256];
    int port, aport;
    srv_parse_hostport(S->cfg.listen, host, sizeof host, &port);
    srv_parse_hostport(S->cfg.admin_listen, ahost, sizeof ahost, &aport);
    port = S->pub_l.port;
    aport = S->adm_l.port;
    const char *shown = strcmp(host, "0.0.0.0") == 0 ? "localhost" : host;
    if (S->demo) {
        char *tok = srv__mint_demo_token(S, "demo");
        printf("chatd %s: demo mode (random secret)\n"
               "  web demo:   http://%s:%d/\n"
               "  demo token: %s\n"
               "  api key:    %s\n",
               CHATD_VERSION, shown, port, tok, S->cfg.api_key);
        free(tok);
    }
    printf("chatd ready public=%s:%d admin=%s:%d node=%s\n", host, port, ahost, aport,
           S->cfg.node_id);
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *config_path = getenv("CHAT_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            srv_config_help(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("chatd %s\n", CHATD_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else {
            fprintf(stderr, "chatd: unknown argument %s (see --help)\n", argv[i]);
            return 2;
        }
    }
    static srv_t srv;
    srv_t *S = &srv;
    char err[512];
    if (srv_config_load(&S->cfg, config_path, err, sizeof err) != 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    core_log_setup((core_log_level_t)core_log_level_parse(S->cfg.log_level),
                   strcmp(S->cfg.log_format, "json") == 0);
    if (S->cfg.database_read_url && !S->cfg.database_url) {
        fprintf(stderr, "chatd: DATABASE_READ_URL needs DATABASE_URL (the primary)\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    S->fd_limit = raise_fd_limit();
    S->max_connections = srv_max_connections(&S->cfg, S->fd_limit);
    srv__set_connect_rate(S, S->cfg.connect_rate, S->cfg.connect_burst);

    S->keys = auth_keyring_new();
    if (S->cfg.jwt_secret) {
        if (auth_keyring_parse(S->keys, S->cfg.jwt_secret) != 0) {
            fprintf(stderr, "chatd: CHAT_JWT_SECRET: expected a secret or kid:secret,...\n");
            return 2;
        }
    } else {
        char secret[49];
        core_random_id(secret, 48);
        auth_keyring_add(S->keys, NULL, secret, strlen(secret));
        S->demo = true;
    }
    if ((S->demo || S->cfg.demo_tokens) && !srv_listen_is_loopback(S->cfg.listen))
        CORE_LOGW(MOD,
                  "demo tokens are served on a non-loopback address: anyone who reaches it can "
                  "sign in as any user",
                  "listen=%s /demo/token=on%s", S->cfg.listen,
                  S->demo ? " (no CHAT_JWT_SECRET: demo mode)" : " (CHAT_DEMO_TOKENS=1)");
    if (!S->cfg.api_key) {
        char key[33];
        core_random_id(key, 32);
        S->cfg.api_key = core_strdup(key);
    }
    chat_config_t cc;
    if (srv_config_chat(&S->cfg, &cc, &S->ns, &S->nns, err, sizeof err) != 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    if (srv_config_llm(&S->cfg, &S->llm_cfg, err, sizeof err) != 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }

    uv_loop_init(&S->loop);
    /* The loop keeps the time it spends waiting in poll: what remains of a pass is work. */
    uv_loop_configure(&S->loop, UV_METRICS_IDLE_TIME);
    int src = srv__store_start(S);
    if (src != 0)
        return src;
    void *loops[1] = {&S->loop};
    struct lws_context_creation_info info = {
        .options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                   LWS_SERVER_OPTION_UV_NO_SIGSEGV_SIGFPE_SPIN |
                   (S->cfg.tls_cert ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0),
        .foreign_loops = loops,
        .user = S,
        .port = CONTEXT_PORT_NO_LISTEN,
        .max_http_header_data = SRV_HEADER_BUFFER,
        .token_limits = srv__token_limits(),
    };
    lws_set_log_level(core_log_enabled(CORE_LOG_DEBUG) ? LLL_ERR | LLL_WARN | LLL_NOTICE : LLL_ERR,
                      lws_log_emit);
    S->ctx = lws_create_context(&info);
    if (!S->ctx) {
        fprintf(stderr, "chatd: cannot create the libwebsockets context\n");
        return 1;
    }

    cc.keys = S->keys;
    cc.version = CHATD_VERSION;

    srv_stats_init(&S->st);

    /* lws reads the value at each response; it is filled in once the node id is known. */
    S->cookie_hdr.name = "set-cookie:";
    S->cookie_hdr.value = S->cookie;
    if (srv__listen_open(S, &S->pub_l, "public", S->cfg.listen, PUBLIC_FD_RESERVE) != 0 ||
        srv__listen_open(S, &S->adm_l, "admin", S->cfg.admin_listen, ADMIN_FD_RESERVE) != 0) {
        lws_context_destroy(S->ctx);
        return 1;
    }
    bool tls = S->cfg.tls_cert != NULL;
    S->pub_vh = make_vhost(S, &S->pub_l, CONTEXT_PORT_NO_LISTEN_SERVER, srv__public_protocols,
                           &srv__public_pvo, &S->cookie_hdr, tls);
    /* lws sets up TLS only on a vhost it counts as a server's (NO_LISTEN_SERVER). */
    S->adm_vh = make_vhost(
        S, &S->adm_l, S->cfg.admin_tls ? CONTEXT_PORT_NO_LISTEN_SERVER : CONTEXT_PORT_NO_LISTEN,
        srv__admin_protocols, NULL, NULL, tls && S->cfg.admin_tls);
    if (!S->pub_vh || !S->adm_vh) {
        lws_context_destroy(S->ctx);
        return 1;
    }
    decide_identity(S);
    print_ready(S);
    cc.node_id = S->cfg.node_id;

    S->node = chat_node_new(&S->loop, &cc);
    if (S->cfg.redis_url) {
        /* Cluster mode: channels, history and presence live in Redis and are shared with every
         * node on it. The node starts even while Redis is down and reports not ready. */
        S->broker = clu_redis_new(&S->loop, chat_node_broker_events(), S->node, S->cfg.redis_url,
                                  S->cfg.node_id, S->cfg.history_max_limit);
        if (!S->broker) {
            fprintf(stderr, "chatd: REDIS_URL must be redis://A.B.C.D[:port][/db]\n");
            return 2;
        }
    } else {
        S->broker =
            clu_memory_new(&S->loop, chat_node_broker_events(), S->node, S->cfg.history_max_limit);
        clu_memory_set_max_bytes(S->broker, (size_t)S->cfg.history_memory_mb << 20);
    }
    srv__store_wrap(S);
    chat_node_set_broker(S->node, S->broker);
    S->llm_cfg.node_id = S->cfg.node_id;
    S->llm = llm_new(&S->loop, S->broker, &S->llm_cfg);
    srv_llm_wire(S->node, S->llm);
    srv__store_llm(S);
    S->started_ms = core_now_ms();
    S->registry =
        adm_registry_new(&S->loop, S->broker, S->cfg.node_id,
                         (uint32_t)((uint64_t)S->cfg.node_ttl * 1000), srv__node_self_info, S);
    adm_registry_on_nodes(S->registry, cluster_size_changed, S);
    S->metrics = adm_metrics_new();
    adm_metrics_add(S->metrics, srv__node_metrics, S);
    adm_metrics_add(S->metrics, srv_metrics_chat, S->node);
    adm_metrics_add(S->metrics, srv_metrics_transport, &S->st);
    adm_metrics_add(S->metrics, srv_metrics_broker, S->broker);
    adm_metrics_add(S->metrics, srv_metrics_llm, S->llm);
    adm_metrics_add(S->metrics, srv__store_metrics, S);

    uv_signal_init(&S->loop, &S->sigterm);
    uv_signal_init(&S->loop, &S->sigint);
    uv_signal_init(&S->loop, &S->sighup);
    S->sigterm.data = S->sigint.data = S->sighup.data = S;
    uv_signal_start(&S->sigterm, on_signal, SIGTERM);
    uv_signal_start(&S->sigint, on_signal, SIGINT);
    uv_signal_start(&S->sighup, on_sighup, SIGHUP);
    uv_timer_init(&S->loop, &S->drain_timer);
    S->drain_timer.data = S;
    core_list_init(&S->flush);
    core_list_init(&S->reread);
    uv_timer_init(&S->loop, &S->flush_timer);
    S->flush_timer.data = S;
    uv_prepare_init(&S->loop, &S->flush_prepare);
    S->flush_prepare.data = S;
    uv_idle_init(&S->loop, &S->flush_idle);
    S->flush_idle.data = S;
    uv_prepare_init(&S->loop, &S->loop_watch);
    S->loop_watch.data = S;
    uv_prepare_start(&S->loop_watch, loop_watch_cb);
    uv_unref((uv_handle_t *)&S->loop_watch);

    CORE_LOGI(MOD, "started",
              "node=%s broker=%s public=%s admin=%s max_connections=%" PRIu32
              " open_file_limit=%" PRIu64,
              S->cfg.node_id, S->broker->name, S->cfg.listen, S->cfg.admin_listen,
              S->max_connections, S->fd_limit);
    uv_run(&S->loop, UV_RUN_DEFAULT);
    /* On a foreign loop lws finishes its teardown (and unloads its event-loop plugin) only on a
     * second destroy once its handles are closed, which is when uv_run returns. */
    lws_context_destroy(S->ctx);
    int rc = uv_loop_close(&S->loop);
    if (rc != 0)
        CORE_LOGW(MOD, "loop not closed cleanly", "err=%s", uv_strerror(rc));
    core_str_free(&S->scratch);
    core_str_free(&S->tls_out);
    adm_metrics_free(S->metrics);
    auth_keyring_free(S->keys);
    chat_namespaces_free(S->ns, S->nns);
    llm_config_free(&S->llm_cfg);
    srv_config_free(&S->cfg);
    CORE_LOGI(MOD, "stopped", NULL);
    core_log_set_node(NULL);
    return 0;
}
