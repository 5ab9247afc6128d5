/* The llm_http test server; see http_server.h. */
#include "tests/unit/llm/http_server.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define THS_MAX_INPUT (4 * 1024 * 1024)
#define BIG_CHUNK 16384

enum { R_NONE, R_STREAM, R_DRIP, R_BIG };

typedef struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct ths *s;
    struct conn *prev, *next;
    char *in;
    size_t in_len;
    bool busy; /* a response is under way: later requests wait in `in` */
    bool closing;
    int route;
    int chunks_left; /* R_STREAM */
    int chunk_no;
    uint64_t big_total, big_sent;
    int inflight;
    int handles; /* of tcp and timer, not yet through their close callback */
} conn_t;

struct ths {
    uv_loop_t *loop;
    uv_tcp_t listener;
    conn_t *conns;
    int open; /* handles not yet through their close callback */
    bool closing;
    int port;
    unsigned accepted, peer_closed, requests;
    uint64_t written;
    char *last_head, *last_body;
    size_t last_body_len;
    void (*on_peer_closed)(void *ud);
    void *ud;
};

typedef struct {
    uv_write_t req;
    conn_t *c;
    size_t len;
    char data[];
} wreq_t;

static void try_request(conn_t *c);
static void big_pump(conn_t *c);

static void maybe_free(struct ths *s) {
    if (s->closing && s->open == 0) {
        free(s->last_head);
        free(s->last_body);
        free(s);
    }
}

static void on_conn_handle_closed(uv_handle_t *h) {
    conn_t *c = h->data;
    struct ths *s = c->s;
    s->open--;
    if (--c->handles == 0) {
        free(c->in);
        free(c);
    }
    maybe_free(s);
}

static void conn_close(conn_t *c, bool reset) {
    if (c->closing)
        return;
    c->closing = true;
    struct ths *s = c->s;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    if (reset)
        uv_tcp_close_reset(&c->tcp, on_conn_handle_closed);
    else
        uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_write(uv_write_t *req, int status) {
    wreq_t *w = (wreq_t *)req;
    conn_t *c = w->c;
    c->inflight--;
    if (status == 0)
        c->s->written += w->len;
    free(w);
    if (status == 0 && !c->closing && c->route == R_BIG)
        big_pump(c);
}

static void conn_write(conn_t *c, const char *p, size_t n) {
    wreq_t *w = malloc(sizeof *w + n);
    memcpy(w->data, p, n);
    w->c = c;
    w->len = n;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        free(w);
        return;
    }
    c->inflight++;
}

static void conn_writes(conn_t *c, const char *z) {
    conn_write(c, z, strlen(z));
}

static void write_chunk(conn_t *c, const char *p, size_t n) {
    char hdr[32];
    int k = snprintf(hdr, sizeof hdr, "%zx\r\n", n);
    char *buf = malloc((size_t)k + n + 2);
    memcpy(buf, hdr, (size_t)k);
    memcpy(buf + k, p, n);
    memcpy(buf + k + n, "\r\n", 2);
    conn_write(c, buf, (size_t)k + n + 2);
    free(buf);
}

static void response_done(conn_t *c) {
    c->busy = false;
    c->route = R_NONE;
    uv_timer_stop(&c->timer);
    try_request(c);
}

static const char chunked_head[] = "HTTP/1.1 200 OK\r\n"
                                   "Content-Type: text/event-stream\r\n"
                                   "X-Test: stream\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n";

static void send_event(conn_t *c) {
    char ev[32];
    int n = snprintf(ev, sizeof ev, "data: %d\n\n", c->chunk_no++);
    write_chunk(c, ev, (size_t)n);
}

static void on_tick(uv_timer_t *t) {
    conn_t *c = t->data;
    if (c->route == R_STREAM && c->chunks_left == 0) {
        conn_writes(c, "0\r\n\r\n");
        response_done(c);
        return;
    }
    send_event(c);
    if (c->route == R_STREAM)
        c->chunks_left--;
}

static void big_pump(conn_t *c) {
    if (c->inflight > 0)
        return;
    if (c->big_sent == c->big_total) {
        conn_writes(c, "0\r\n\r\n");
        response_done(c);
        return;
    }
    char buf[BIG_CHUNK];
    size_t n = c->big_total - c->big_sent < BIG_CHUNK ? c->big_total - c->big_sent : BIG_CHUNK;
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)((c->big_sent + i) % 251);
    c->big_sent += n;
    write_chunk(c, buf, n);
}

static void route(conn_t *c, const char *path) {
    int n;
    unsigned long long big;
    if (strcmp(path, "/fixed") == 0) {
        conn_writes(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: fixed\r\n\r\nhello");
        response_done(c);
    } else if (strcmp(path, "/echo") == 0) {
        char head[128];
        snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n",
                 c->s->last_body_len);
        conn_writes(c, head);
        conn_write(c, c->s->last_body, c->s->last_body_len);
        response_done(c);
    } else if (sscanf(path, "/stream/%d", &n) == 1) {
        conn_writes(c, chunked_head);
        c->route = R_STREAM;
        c->chunks_left = n;
        uv_timer_start(&c->timer, on_tick, 1, 1);
    } else if (strcmp(path, "/drip") == 0) {
        conn_writes(c, chunked_head);
        c->route = R_DRIP;
        uv_timer_start(&c->timer, on_tick, 10, 10);
    } else if (strcmp(path, "/stall") == 0) {
        conn_writes(c, chunked_head);
        send_event(c);
    } else if (strcmp(path, "/hang") == 0) {
        /* nothing */
    } else if (sscanf(path, "/big/%llu", &big) == 1) {
        /* A small send buffer makes the stall of a paused reader show up early. */
        int sz = 16384;
        uv_send_buffer_size((uv_handle_t *)&c->tcp, &sz);
        conn_writes(c, chunked_head);
        c->route = R_BIG;
        c->big_total = big;
        c->big_sent = 0;
        big_pump(c);
    } else if (strcmp(path, "/reset") == 0) {
        conn_writes(c, chunked_head);
        send_event(c);
        c->route = R_NONE;
        conn_close(c, true);
    } else if (strcmp(path, "/bighead") == 0) {
        conn_writes(c, "HTTP/1.1 200 OK\r\n");
        char line[1100];
        memset(line, 'a', sizeof line);
        memcpy(line, "X-Pad: ", 7);
        memcpy(line + sizeof line - 2, "\r\n", 2);
        for (int i = 0; i < 70; i++)
            conn_write(c, line, sizeof line);
        conn_writes(c, "Content-Length: 0\r\n\r\n");
        response_done(c);
    } else if (strcmp(path, "/status/503") == 0) {
        conn_writes(c, "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\n"
                       "Content-Length: 4\r\n\r\nbusy");
        response_done(c);
    } else {
        conn_writes(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        response_done(c);
    }
}

/* Answers the next complete request in c->in, if there is one and c is idle. */
static void try_request(conn_t *c) {
    if (c->busy || c->closing || c->in_len == 0)
        return;
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (end == NULL)
        return;
    size_t head_len = (size_t)(end - c->in) + 4;
    size_t body_len = 0;
    for (char *p = c->in; p < end; p++) {
        if (*p == '\n' && strncasecmp(p + 1, "content-length:", 15) == 0)
            body_len = strtoul(p + 16, NULL, 10);
    }
    if (c->in_len < head_len + body_len)
        return;
    struct ths *s = c->s;
    free(s->last_head);
    free(s->last_body);
    s->last_head = strndup(c->in, head_len);
    s->last_body = malloc(body_len + 1);
    memcpy(s->last_body, c->in + head_len, body_len);
    s->last_body[body_len] = '\0';
    s->last_body_len = body_len;
    s->requests++;
    memmove(c->in, c->in + head_len + body_len, c->in_len - head_len - body_len);
    c->in_len -= head_len + body_len;

    char path[256] = "";
    sscanf(s->last_head, "%*s %255s", path);
    c->busy = true;
    c->chunk_no = 0;
    route(c, path);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
    (void)h;
    buf->base = malloc(hint);
    buf->len = hint;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = st->data;
    if (nread < 0) {
        free(buf->base);
        struct ths *s = c->s;
        s->peer_closed++;
        conn_close(c, false);
        if (s->on_peer_closed)
            s->on_peer_closed(s->ud);
        return;
    }
    if (nread > 0 && c->in_len + (size_t)nread <= THS_MAX_INPUT) {
        c->in = realloc(c->in, c->in_len + (size_t)nread);
        memcpy(c->in + c->in_len, buf->base, (size_t)nread);
        c->in_len += (size_t)nread;
    }
    free(buf->base);
    try_request(c);
}

static void on_connection(uv_stream_t *l, int status) {
    struct ths *s = l->data;
    if (status < 0)
        return;
    conn_t *c = calloc(1, sizeof *c);
    c->s = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    s->open += 2;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
        uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
        return;
    }
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->accepted++;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_listener_closed(uv_handle_t *h) {
    struct ths *s = h->data;
    s->open--;
    maybe_free(s);
}

ths_t *ths_start(uv_loop_t *loop) {
    struct ths *s = calloc(1, sizeof *s);
    s->loop = loop;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->open = 1;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_tcp_bind(&s->listener, (const struct sockaddr *)&sa, 0) != 0 ||
        uv_listen((uv_stream_t *)&s->listener, 511, on_connection) != 0) {
        s->closing = true;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return NULL;
    }
    int len = sizeof sa;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&sa, &len);
    s->port = ntohs(sa.sin_port);
    return s;
}

int ths_port(const ths_t *s) {
    return s->port;
}

void ths_on_peer_closed(ths_t *s, void (*cb)(void *ud), void *ud) {
    s->on_peer_closed = cb;
    s->ud = ud;
}

void ths_close(ths_t *s) {
    if (s->closing)
        return;
    s->closing = true;
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    while (s->conns)
        conn_close(s->conns, false);
}

unsigned ths_accepted(const ths_t *s) {
    return s->accepted;
}
unsigned ths_peer_closed(const ths_t *s) {
    return s->peer_closed;
}
unsigned ths_requests(const ths_t *s) {
    return s->requests;
}
uint64_t ths_written(const ths_t *s) {
    return s->written;
}
const char *ths_last_head(const ths_t *s) {
    return s->last_head ? s->last_head : "";
}
const char *ths_last_body(const ths_t *s, size_t *len) {
    *len = s->last_body_len;
    return s->last_body ? s->last_body : "";
}
