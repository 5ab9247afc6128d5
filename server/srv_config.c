/* server: settings from defaults, a JSON file and the environment, described by one table so
 * that --help, the file keys and the variables cannot drift apart. */
#include "server/server.h"

#include "auth/auth.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef CHAT_SOURCE_DIR
#define CHAT_SOURCE_DIR "."
#endif

typedef enum { T_STR, T_U32, T_JSON } stype_t;

typedef struct {
    const char *env;
    const char *key; /* key in the JSON file */
    stype_t type;
    size_t offset;
    const char *def; /* NULL = unset */
    const char *help;
} setting_t;

#define OFF(f) offsetof(srv_config_t, f)

static const setting_t settings[] = {
    /* Demo mode hands out tokens for any user name to whoever asks: by default only to this
     * machine. With a secret the default is every interface (see srv_config_load). */
    {"CHAT_LISTEN", "listen", T_STR, OFF(listen), "127.0.0.1:8000",
     "public listener host:port (default 0.0.0.0:8000 when CHAT_JWT_SECRET is set)"},
    {"CHAT_ADMIN_LISTEN", "admin_listen", T_STR, OFF(admin_listen), "127.0.0.1:9100",
     "admin listener host:port (metrics, health, API)"},
    {"CHAT_NODE_ID", "node_id", T_STR, OFF(node_id), NULL, "node name (default hostname:port)"},
    {"CHAT_JWT_SECRET", "jwt_secret", T_STR, OFF(jwt_secret), NULL,
     "HS256 secret, or kid:secret,kid:secret (default: random, demo mode)"},
    {"CHAT_JWT_AUDIENCE", "jwt_audience", T_STR, OFF(jwt_audience), NULL,
     "required token audience"},
    {"CHAT_JWT_ISSUER", "jwt_issuer", T_STR, OFF(jwt_issuer), NULL, "required token issuer"},
    {"CHAT_JWT_LEEWAY", "jwt_leeway", T_U32, OFF(jwt_leeway), "30",
     "clock skew allowance for exp/nbf, seconds"},
    {"CHAT_TLS_CERT", "tls_cert", T_STR, OFF(tls_cert), NULL,
     "PEM certificate (chain) file: the public listener serves wss:// and https:// (with "
     "CHAT_TLS_KEY; SIGHUP reloads both)"},
    {"CHAT_TLS_KEY", "tls_key", T_STR, OFF(tls_key), NULL, "PEM private key file of CHAT_TLS_CERT"},
    {"CHAT_ADMIN_TLS", "admin_tls", T_U32, OFF(admin_tls), "0",
     "1: the admin listener takes TLS too, with the same certificate"},
    {"CHAT_API_KEY", "api_key", T_STR, OFF(api_key), NULL,
     "key for /api/* (default: random, printed in demo mode)"},
    {"CHAT_DEMO_TOKENS", "demo_tokens", T_U32, OFF(demo_tokens), "0",
     "1 = serve /demo/token with the configured secret (a demo of several nodes: anyone can "
     "sign in as anyone)"},
    {"CHAT_WEB_ROOT", "web_root", T_STR, OFF(web_root), CHAT_SOURCE_DIR "/web-demo",
     "folder served as the web demo"},
    {"CHAT_LOG_FORMAT", "log_format", T_STR, OFF(log_format), "text", "text or json"},
    {"CHAT_LOG_LEVEL", "log_level", T_STR, OFF(log_level), "info", "error, warn, info, debug"},
    {"CHAT_PING_INTERVAL", "ping_interval", T_U32, OFF(ping_interval), "25",
     "seconds between server pings"},
    {"CHAT_PONG_TIMEOUT", "pong_timeout", T_U32, OFF(pong_timeout), "10",
     "seconds to answer a ping before close 3012"},
    {"CHAT_STALE_TIMEOUT", "stale_timeout", T_U32, OFF(stale_timeout), "10",
     "seconds a new socket has to send connect (close 3502)"},
    {"CHAT_MAX_FRAME_BYTES", "max_frame_bytes", T_U32, OFF(max_frame_bytes), "65536",
     "largest incoming WebSocket message (close 3501)"},
    {"CHAT_MAX_CHANNELS", "max_channels", T_U32, OFF(max_channels), "128",
     "subscriptions per connection (error 106)"},
    {"CHAT_MAX_CONNECTIONS_PER_USER", "max_connections_per_user", T_U32,
     OFF(max_connections_per_user), "64", "connections per user on this node (close 3504)"},
    {"CHAT_ALLOWED_ORIGINS", "allowed_origins", T_STR, OFF(allowed_origins), NULL,
     "origins browsers may open WebSockets from, e.g. \"https://chat.example.com "
     "https://*.example.com\"; others get HTTP 403 (unset: any origin)"},
    {"CHAT_DRAIN_PERIOD_MS", "drain_period_ms", T_U32, OFF(drain_period_ms), "10000",
     "a drain (SIGTERM, chatctl drain) closes its clients over this long, so their reconnects "
     "do not stampede the other nodes; 0 = all at once"},
    {"CHAT_DRAIN_LLM_MS", "drain_llm_ms", T_U32, OFF(drain_llm_ms), "30000",
     "a drain lets running assistant answers finish for this long after the drain period; "
     "asks not started yet end with an llm.error 503 at once"},
    {"CHAT_DRAIN_MIN_RATE", "drain_min_rate", T_U32, OFF(drain_min_rate), "1000",
     "clients a drain closes per second at least (a node with few clients drains at once)"},
    {"CHAT_MAX_CONNECTIONS", "max_connections", T_U32, OFF(max_connections), "0",
     "WebSocket connections on this node; more get HTTP 503 (0 = the open-file limit less 64)"},
    {"CHAT_CONNECT_RATE", "connect_rate", T_U32, OFF(connect_rate), "0",
     "new WebSocket sessions this node takes per second; past it they close at once with 3013 "
     "and the SDKs retry after their backoff (0 = unlimited)"},
    {"CHAT_CONNECT_BURST", "connect_burst", T_U32, OFF(connect_burst), "0",
     "sessions the connect rate lets in at once (0 = one second's worth)"},
    {"CHAT_WRITE_QUEUE_BYTES", "write_queue_bytes", T_U32, OFF(write_queue_bytes), "1048576",
     "bytes queued for one connection before close 3008"},
    {"CHAT_WRITE_QUEUE_MESSAGES", "write_queue_messages", T_U32, OFF(write_queue_messages), "16384",
     "messages queued for one connection before close 3008"},
    {"CHAT_WRITE_DELAY_MS", "write_delay_ms", T_U32, OFF(write_delay_ms), "0",
     "milliseconds new output waits so that one write carries many messages (0 = written once per "
     "loop pass)"},
    {"CHAT_FLUSH_SLICE_US", "flush_slice_us", T_U32, OFF(flush_slice_us), "1000",
     "microseconds of writing after which a flush of many connections lets the loop poll before "
     "it goes on (0 = the whole flush in one pass)"},
    {"CHAT_MAX_ERRORS", "max_errors", T_U32, OFF(max_errors), "100",
     "non-temporary error replies per client within 10 s before close 3509 (0 = off)"},
    {"CHAT_PRESENCE_TTL", "presence_ttl", T_U32, OFF(presence_ttl), "30",
     "seconds a presence entry outlives its node (refreshed every third of it)"},
    {"CHAT_ADVERTISE", "advertise", T_STR, OFF(advertise), NULL,
     "host:port of the public listener as the registry shows it (default: CHAT_LISTEN, the host "
     "name when it listens on 0.0.0.0)"},
    {"CHAT_NODE_TTL", "node_ttl", T_U32, OFF(node_ttl), "9",
     "seconds a node stays in the cluster's registry unless it announces itself again (every "
     "third of it)"},
    {"CHAT_RATE_LIMITS", "rate_limits", T_STR, OFF(rate_limits),
     "free=5/10,plus=10/20,pro=20/40,executive=50/100",
     "per-user publish limit by plan: plan=rate/burst (rate per second)"},
    {"CHAT_TYPING_RATE", "typing_rate", T_STR, OFF(typing_rate), "2/4",
     "typing RPCs per user: rate/burst"},
    {"CHAT_COMMAND_RATE", "command_rate", T_STR, OFF(command_rate), "20/150",
     "subscribe and unsubscribe commands per connection: rate/burst (111 over it, 3013 when "
     "CHAT_MAX_ERRORS of them come within 10 s)"},
    {"CHAT_DEDUPE_WINDOW", "dedupe_window", T_U32, OFF(dedupe_window), "120",
     "seconds a client_msg_id is remembered"},
    {"CHAT_HISTORY_MAX_LIMIT", "history_max_limit", T_U32, OFF(history_max_limit), "1000",
     "most publications one history call returns"},
    {"CHAT_HISTORY_MEMORY_MB", "history_memory_mb", T_U32, OFF(history_memory_mb), "256",
     "MiB of history the in-memory broker keeps over all channels (0 = no cap)"},
    {"CHAT_NAMESPACES", "namespaces", T_JSON, OFF(namespaces), NULL,
     "JSON object of namespaces (default: chat, typing, personal)"},
    {"CHAT_LLM_PROVIDERS", "llm_providers", T_JSON, OFF(llm_providers), NULL,
     "JSON array of LLM providers: name, type (anthropic, openai, mock), base_url, model, keys, "
     "fallback_keys, max_concurrency, fallback, max_tokens (default: the built-in mock)"},
    {"CHAT_LLM_CONCURRENCY", "llm_concurrency", T_U32, OFF(llm_concurrency), "64",
     "assistant streams at once across the cluster"},
    {"CHAT_LLM_QUOTAS", "llm_quotas", T_STR, OFF(llm_quotas),
     "free=50/100000,plus=200/400000,pro=1000/2000000,executive=0/0",
     "assistant allowance per user and UTC day by plan: plan=messages/tokens (0 = unlimited)"},
    {"CHAT_LLM_QUEUE", "llm_queue", T_STR, OFF(llm_queue),
     "free=100/10000,plus=200/20000,pro=400/30000,executive=800/45000",
     "assistant queue per plan on this node: plan=depth/max_wait_ms (full: 503, waited: 504)"},
    {"CHAT_LLM_AGING_MS", "llm_aging_ms", T_U32, OFF(llm_aging_ms), "5000",
     "a queued ask rises one plan per this many ms waited, so free is never starved (0 = off)"},
    {"CHAT_LLM_TTFT_TIMEOUT_MS", "llm_ttft_timeout_ms", T_U32, OFF(llm_ttft_timeout_ms), "20000",
     "time to the first token of an attempt"},
    {"CHAT_LLM_IDLE_TIMEOUT_MS", "llm_idle_timeout_ms", T_U32, OFF(llm_idle_timeout_ms), "30000",
     "longest silence of a provider stream"},
    {"CHAT_LLM_TOTAL_TIMEOUT_MS", "llm_total_timeout_ms", T_U32, OFF(llm_total_timeout_ms),
     "300000", "longest provider stream"},
    {"CHAT_LLM_LEASE_TTL_MS", "llm_lease_ttl_ms", T_U32, OFF(llm_lease_ttl_ms), "30000",
     "a stream's concurrency lease lives this long unless renewed (a killed node's slots come "
     "back within it)"},
    {"CHAT_LLM_COALESCE_MS", "llm_coalesce_ms", T_U32, OFF(llm_coalesce_ms), "16",
     "an answer's deltas are published at most this often"},
    {"CHAT_LLM_PAUSE_BYTES", "llm_pause_bytes", T_U32, OFF(llm_pause_bytes), "262144",
     "a stream stops reading from its provider while a reader of the room on this node has more "
     "than this many bytes queued, and goes on below half (0 = never)"},
    {"CHAT_LLM_CONTEXT_MESSAGES", "llm_context_messages", T_U32, OFF(llm_context_messages), "20",
     "recent room messages sent to the model as context (within 2,000 tokens)"},
    {"CHAT_LLM_SYSTEM_PROMPT", "llm_system_prompt", T_STR, OFF(llm_system_prompt),
     "You are a helpful assistant in a group chat. Answer briefly.",
     "system prompt of the assistant"},
    {"REDIS_URL", "redis_url", T_STR, OFF(redis_url), NULL,
     "redis://A.B.C.D:port[/db]: cluster mode (channels shared through Redis)"},
    {"DATABASE_URL", "database_url", T_STR, OFF(database_url), NULL,
     "PostgreSQL primary (postgresql://user[:password]@A.B.C.D:port/db, numeric host): durable "
     "history; migrations run at start"},
    {"DATABASE_READ_URL", "database_read_url", T_STR, OFF(database_read_url), NULL,
     "PostgreSQL read replica for history reads (the primary while it is down)"},
    {"CHAT_DB_POOL", "db_pool", T_U32, OFF(db_pool), "2",
     "connections to the primary (and to the replica)"},
    {"CHAT_DB_CONNECT_TIMEOUT_MS", "db_connect_timeout_ms", T_U32, OFF(db_connect_timeout_ms),
     "5000", "one database connection attempt"},
    {"CHAT_DB_STATEMENT_TIMEOUT_MS", "db_statement_timeout_ms", T_U32, OFF(db_statement_timeout_ms),
     "10000",
     "one database statement; past it the connection is dropped and the statement retried"},
    {"CHAT_DB_BATCH", "db_batch", T_U32, OFF(db_batch), "500",
     "publications per INSERT (one commit each; at most 10000)"},
    {"CHAT_DB_BATCH_BYTES", "db_batch_bytes", T_U32, OFF(db_batch_bytes), "67108864",
     "bytes of message data and info per INSERT (at most 1 GiB; a larger single message goes "
     "alone)"},
    {"CHAT_DB_START_WAIT_MS", "db_start_wait_ms", T_U32, OFF(db_start_wait_ms), "30000",
     "how long a starting node waits for the database (migrations) before it gives up"},
    {"CHAT_PERSIST_MAX", "persist_max", T_U32, OFF(persist_max), "100000",
     "publications waiting for the database (the Redis persist stream, or this node's memory "
     "without Redis); past it publishes fail with a temporary error"},
    {"CHAT_RETENTION_INTERVAL_MS", "retention_interval_ms", T_U32, OFF(retention_interval_ms),
     "600000",
     "how often the namespaces' retention_days are applied (by one node of the cluster at a "
     "time)"},
    {"CHAT_PERSIST_CLAIM_MS", "persist_claim_ms", T_U32, OFF(persist_claim_ms), "30000",
     "persist stream entries another node left unacknowledged this long are taken over"},
};

#define NSETTINGS (sizeof settings / sizeof settings[0])

static char **str_field(srv_config_t *cfg, const setting_t *s) {
    return (char **)((char *)cfg + s->offset);
}

static uint32_t *u32_field(srv_config_t *cfg, const setting_t *s) {
    return (uint32_t *)((char *)cfg + s->offset);
}

static int set_value(srv_config_t *cfg, const setting_t *s, const char *v, char *err,
                     size_t errlen) {
    if (s->type == T_U32) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(v, &end, 10);
        if (errno || end == v || *end || n > UINT32_MAX || v[0] == '-') {
            snprintf(err, errlen, "%s: expected a non-negative integer, got \"%s\"", s->env, v);
            return CORE_EINVAL;
        }
        *u32_field(cfg, s) = (uint32_t)n;
        return 0;
    }
    char **f = str_field(cfg, s);
    free(*f);
    *f = v ? core_strdup(v) : NULL;
    return 0;
}

int srv_parse_hostport(const char *s, char *host, size_t hostlen, int *port) {
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= hostlen || colon == s)
        return CORE_EINVAL;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || p < 0 || p > 65535)
        return CORE_EINVAL;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    *port = (int)p;
    return 0;
}

#define ORIGIN_SEPARATORS ", \t\n"

/* The pattern p (pe its end) against the whole of s, as srv_origin_allowed describes. */
static bool origin_match(const char *p, const char *pe, const char *s) {
    while (p < pe) {
        if (*p == '*') {
            p++;
            for (const char *t = s;; t++) {
                if (origin_match(p, pe, t))
                    return true;
                if (!*t || *t == '/' || *t == ':')
                    return false;
            }
        }
        if (!*s || tolower((unsigned char)*p) != tolower((unsigned char)*s))
            return false;
        p++;
        s++;
    }
    return *s == '\0';
}

bool srv_origin_allowed(const char *list, const char *origin) {
    if (!list || !origin)
        return true;
    for (const char *p = list + strspn(list, ORIGIN_SEPARATORS); *p;) {
        size_t n = strcspn(p, ORIGIN_SEPARATORS);
        if ((n == 1 && *p == '*') || origin_match(p, p + n, origin))
            return true;
        p += n;
        p += strspn(p, ORIGIN_SEPARATORS);
    }
    return false;
}

/* Every entry is "*" or scheme://host[:port]: a bare host would never match a browser's
 * Origin, which is a mistake better told at start. */
static bool origins_valid(const char *list) {
    bool any = false;
    for (const char *p = list + strspn(list, ORIGIN_SEPARATORS); *p;) {
        size_t n = strcspn(p, ORIGIN_SEPARATORS);
        char entry[256];
        if (n >= sizeof entry)
            return false;
        memcpy(entry, p, n);
        entry[n] = '\0';
        const char *sep = strstr(entry, "://");
        if (strcmp(entry, "*") != 0 &&
            (!sep || sep == entry || !sep[3] || strchr(sep + 3, '/') != NULL))
            return false;
        any = true;
        p += n;
        p += strspn(p, ORIGIN_SEPARATORS);
    }
    return any;
}

int srv_config_load(srv_config_t *cfg, const char *path, char *err, size_t errlen) {
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NSETTINGS; i++)
        if (settings[i].def && set_value(cfg, &settings[i], settings[i].def, err, errlen))
            return CORE_EINVAL;
    bool listen_given = false;
    if (path) {
        json_error_t je;
        json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
        if (!root) {
            snprintf(err, errlen, "config %s: line %d: %s", path, je.line, je.text);
            return CORE_EINVAL;
        }
        if (!json_is_object(root)) {
            json_decref(root);
            snprintf(err, errlen, "config %s: must be a JSON object", path);
            return CORE_EINVAL;
        }
        const char *key;
        json_t *v;
        json_object_foreach(root, key, v) {
            const setting_t *s = NULL;
            for (size_t i = 0; i < NSETTINGS; i++)
                if (strcmp(settings[i].key, key) == 0)
                    s = &settings[i];
            if (!s) {
                snprintf(err, errlen, "config %s: unknown setting \"%s\"", path, key);
                json_decref(root);
                return CORE_EINVAL;
            }
            char num[32];
            char *dumped = NULL;
            const char *text;
            if (json_is_string(v))
                text = json_string_value(v);
            else if (json_is_integer(v)) {
                snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
                text = num;
            } else if (s->type == T_JSON) {
                text = dumped = json_dumps(v, JSON_COMPACT);
            } else {
                snprintf(err, errlen, "config %s: \"%s\" must be a string or integer", path, key);
                json_decref(root);
                return CORE_EINVAL;
            }
            listen_given |= s->offset == OFF(listen);
            int rc = set_value(cfg, s, text, err, errlen);
            free(dumped);
            if (rc) {
                json_decref(root);
                return rc;
            }
        }
        json_decref(root);
    }
    for (size_t i = 0; i < NSETTINGS; i++) {
        const char *v = getenv(settings[i].env);
        if (!v || !*v)
            continue;
        listen_given |= settings[i].offset == OFF(listen);
        if (set_value(cfg, &settings[i], v, err, errlen))
            return CORE_EINVAL;
    }
    if (!listen_given && cfg->jwt_secret) {
        free(cfg->listen);
        cfg->listen = core_strdup("0.0.0.0:8000");
    }
    char host[256];
    int port;
    if (srv_parse_hostport(cfg->listen, host, sizeof host, &port) ||
        srv_parse_hostport(cfg->admin_listen, host, sizeof host, &port)) {
        snprintf(err, errlen, "CHAT_LISTEN and CHAT_ADMIN_LISTEN must be host:port");
        return CORE_EINVAL;
    }
    if (cfg->allowed_origins && !origins_valid(cfg->allowed_origins)) {
        snprintf(err, errlen,
                 "CHAT_ALLOWED_ORIGINS: expected origins like https://chat.example.com or "
                 "https://*.example.com, or *");
        return CORE_EINVAL;
    }
    if (cfg->node_ttl > 86400) {
        snprintf(err, errlen, "CHAT_NODE_TTL must be at most 86400 seconds");
        return CORE_EINVAL;
    }
    if (cfg->node_id && !srv_node_id_ok(cfg->node_id)) {
        snprintf(err, errlen, "CHAT_NODE_ID must be 1-64 of [A-Za-z0-9._:-]");
        return CORE_EINVAL;
    }
    if (!cfg->tls_cert != !cfg->tls_key) {
        snprintf(err, errlen, "CHAT_TLS_CERT and CHAT_TLS_KEY go together");
        return CORE_EINVAL;
    }
    if (cfg->admin_tls && !cfg->tls_cert) {
        snprintf(err, errlen, "CHAT_ADMIN_TLS needs CHAT_TLS_CERT and CHAT_TLS_KEY");
        return CORE_EINVAL;
    }
    if (core_log_level_parse(cfg->log_level) < 0) {
        snprintf(err, errlen, "CHAT_LOG_LEVEL must be error, warn, info or debug");
        return CORE_EINVAL;
    }
    if (strcmp(cfg->log_format, "text") != 0 && strcmp(cfg->log_format, "json") != 0) {
        snprintf(err, errlen, "CHAT_LOG_FORMAT must be text or json");
        return CORE_EINVAL;
    }
    if (cfg->ping_interval == 0 || cfg->pong_timeout == 0 || cfg->stale_timeout == 0 ||
        cfg->max_frame_bytes < 1024 || cfg->write_queue_bytes < 1024 ||
        cfg->write_queue_messages == 0 || cfg->max_channels == 0 ||
        cfg->max_connections_per_user == 0 || cfg->presence_ttl == 0 || cfg->node_ttl == 0) {
        snprintf(err, errlen,
                 "timeouts and limits must be positive (frame and queue bytes at "
                 "least 1024)");
        return CORE_EINVAL;
    }
    return 0;
}

uint32_t srv_max_connections(const srv_config_t *cfg, uint64_t fd_limit) {
    if (cfg->max_connections)
        return cfg->max_connections;
    uint64_t n = fd_limit > 2 * SRV_FD_MARGIN ? fd_limit - SRV_FD_MARGIN : fd_limit / 2;
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

bool srv_node_id_ok(const char *id) {
    size_t n = strlen(id);
    return n > 0 && n <= SRV_NODE_ID_MAX && strspn(id, SRV_NODE_ID_CHARS) == n;
}

void srv_node_id_default(const char *hostname, int port, char *out, size_t outlen) {
    char hn[51];
    snprintf(hn, sizeof hn, "%s", hostname);
    /* Whatever the host name holds, the id must be cookie- and key-safe (and its only ':' the
     * one before the port). */
    for (char *q = hn; *q; q++)
        if (*q == ':' || !strchr(SRV_NODE_ID_CHARS, *q))
            *q = '-';
    snprintf(out, outlen, "%s:%d", hn, port);
}

void srv_node_cookie(const char *node_id, char *out, size_t outlen) {
    /* Node ids are checked to be cookie-safe and at most 64 bytes (srv_node_id_ok). */
    snprintf(out, outlen, SRV_NODE_COOKIE "=%s; Path=/; HttpOnly; SameSite=Lax", node_id);
}

bool srv_listen_is_loopback(const char *listen) {
    char host[256];
    int port;
    if (srv_parse_hostport(listen, host, sizeof host, &port) != 0)
        return false;
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "localhost") == 0;
}

void srv_public_address(const srv_config_t *cfg, const char *hostname, int port, char *out,
                        size_t outlen) {
    char host[256];
    int unused;
    if (cfg->advertise) {
        snprintf(out, outlen, "%s", cfg->advertise);
        return;
    }
    srv_parse_hostport(cfg->listen, host, sizeof host, &unused);
    /* On every interface the host name is the best guess of how peers reach the node. */
    snprintf(out, outlen, "%s:%d", strcmp(host, "0.0.0.0") == 0 ? hostname : host, port);
}

void srv_config_free(srv_config_t *cfg) {
    for (size_t i = 0; i < NSETTINGS; i++)
        if (settings[i].type != T_U32)
            free(*str_field(cfg, &settings[i]));
    memset(cfg, 0, sizeof *cfg);
}

void srv_config_help(FILE *out) {
    fprintf(out, "usage: chatd [--config FILE] [--help] [--version]\n\n"
                 "With no settings chatd runs alone as a complete single node (in-memory\n"
                 "broker, demo mode with a random secret and a printed demo token).\n\n"
                 "Every setting is an environment variable and a key of the JSON config file\n"
                 "(the variable wins). CHAT_CONFIG names the file as --config does.\n\n");
    for (size_t i = 0; i < NSETTINGS; i++)
        fprintf(out, "  %-30s %s\n  %-30s   file key \"%s\", default: %s\n", settings[i].env,
                settings[i].help, "", settings[i].key, settings[i].def ? settings[i].def : "unset");
}

/* "free=5/10,plus=10/20" into per-plan rates. */
static int parse_rates(const char *spec, chat_rate_t *rates, char *err, size_t errlen) {
    char *copy = core_strdup(spec), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        double rate;
        unsigned burst;
        int plan = eq ? (*eq = '\0', auth_plan_parse(tok)) : -1;
        if (plan < 0 || sscanf(eq + 1, "%lf/%u", &rate, &burst) != 2 || rate < 0 || !burst) {
            snprintf(err, errlen, "CHAT_RATE_LIMITS: expected plan=rate/burst, got \"%s\"", tok);
            rc = CORE_EINVAL;
            break;
        }
        rates[plan] = (chat_rate_t){rate, burst};
    }
    free(copy);
    return rc;
}

int srv_config_chat(const srv_config_t *cfg, chat_config_t *cc, chat_ns_t **ns, size_t *nns,
                    char *err, size_t errlen) {
    *cc = (chat_config_t){0};
    *ns = NULL;
    *nns = 0;
    if (cfg->namespaces) {
        json_error_t je;
        json_t *obj = json_loads(cfg->namespaces, 0, &je);
        char why[400];
        if (!obj || chat_namespaces_parse(obj, ns, nns, why, sizeof why) != 0) {
            snprintf(err, errlen, "CHAT_NAMESPACES: %s", obj ? why : je.text);
            json_decref(obj);
            return CORE_EINVAL;
        }
        json_decref(obj);
    } else {
        chat_namespaces_default(ns, nns);
    }
    if (parse_rates(cfg->rate_limits, cc->plan_rate, err, errlen) != 0)
        goto fail;
    unsigned tburst;
    if (sscanf(cfg->typing_rate, "%lf/%u", &cc->typing_rate.rate, &tburst) != 2 || !tburst) {
        snprintf(err, errlen, "CHAT_TYPING_RATE: expected rate/burst");
        goto fail;
    }
    cc->typing_rate.burst = tburst;
    unsigned cburst;
    if (cfg->command_rate &&
        (sscanf(cfg->command_rate, "%lf/%u", &cc->command_rate.rate, &cburst) != 2 || !cburst)) {
        snprintf(err, errlen, "CHAT_COMMAND_RATE: expected rate/burst");
        goto fail;
    }
    cc->command_rate.burst = cfg->command_rate ? cburst : 0;
    cc->namespaces = *ns;
    cc->n_namespaces = *nns;
    cc->audience = cfg->jwt_audience;
    cc->issuer = cfg->jwt_issuer;
    cc->jwt_leeway_s = cfg->jwt_leeway;
    cc->ping_interval_s = cfg->ping_interval;
    cc->pong_timeout_s = cfg->pong_timeout;
    cc->stale_timeout_s = cfg->stale_timeout;
    cc->max_channels_per_conn = cfg->max_channels;
    cc->max_conns_per_user = cfg->max_connections_per_user;
    cc->dedupe_window_s = cfg->dedupe_window;
    cc->max_recover = cfg->history_max_limit;
    cc->max_errors = cfg->max_errors;
    cc->presence_ttl_s = cfg->presence_ttl;
    cc->node_id = "";
    return 0;
fail:
    chat_namespaces_free(*ns, *nns);
    *ns = NULL;
    *nns = 0;
    return CORE_EINVAL;
}

int srv_config_llm(const srv_config_t *cfg, llm_config_t *lc, char *err, size_t errlen) {
    llm_config_default(lc);
    char why[400];
    if (cfg->llm_providers && llm_providers_parse(lc, cfg->llm_providers, why, sizeof why) != 0) {
        snprintf(err, errlen, "CHAT_LLM_PROVIDERS: %s", why);
        goto fail;
    }
    if (llm_quotas_parse(lc, cfg->llm_quotas, err, errlen) != 0 ||
        llm_queue_parse(lc, cfg->llm_queue, err, errlen) != 0)
        goto fail;
    if (cfg->llm_concurrency == 0 || cfg->llm_lease_ttl_ms < 3000 ||
        cfg->llm_ttft_timeout_ms == 0) {
        snprintf(err, errlen,
                 "CHAT_LLM_CONCURRENCY and CHAT_LLM_TTFT_TIMEOUT_MS must be > 0, "
                 "CHAT_LLM_LEASE_TTL_MS at least 3000");
        goto fail;
    }
    lc->concurrency = cfg->llm_concurrency;
    lc->queue.aging_ms = cfg->llm_aging_ms;
    for (int p = 0; p < LLM_PLANS; p++)
        lc->ttft_timeout_ms[p] = cfg->llm_ttft_timeout_ms;
    lc->idle_timeout_ms = cfg->llm_idle_timeout_ms;
    lc->total_timeout_ms = cfg->llm_total_timeout_ms;
    lc->lease_ttl_ms = cfg->llm_lease_ttl_ms;
    lc->coalesce_ms = cfg->llm_coalesce_ms;
    lc->pause_backlog_bytes = cfg->llm_pause_bytes;
    lc->context_messages = cfg->llm_context_messages;
    lc->system_prompt = cfg->llm_system_prompt;
    lc->node_id = cfg->node_id;
    return 0;
fail:
    llm_config_free(lc);
    return CORE_EINVAL;
}
