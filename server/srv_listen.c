/* server: the listening sockets of both listeners. chatd accepts connections itself and hands
 * each to lws (lws_adopt_socket_vhost) instead of letting lws listen, because of what lws 4.1
 * does when the process runs out of descriptors: its accept fails with EMFILE, it logs
 * "accept: errno 24" and returns, and the listening socket, still readable (the connection
 * waits in the backlog), wakes the loop again at once: a busy loop that floods the log, while
 * the admin listener, out of descriptors too, goes dark. lws's own remedy (fd_limit_per_thread)
 * counts only its sockets, not Redis's or the files', and stops accepting on every listener at
 * once, the admin listener included.
 *
 * Here each listener keeps a reserve: a connection accepted into one of the last `reserve`
 * descriptors below the open-file limit is closed at once (the client sees its connection
 * closed instead of waiting in the backlog), so those descriptors stay free for what must always
 * work: the admin listener (whose reserve is smaller), the broker's reconnects, the files the
 * node opens. Should accept fail anyway (EMFILE, ENFILE, ENOBUFS), a spare descriptor held for
 * the purpose is released to accept and close what waits, and the listener pauses for a moment
 * instead of spinning. Refusals are counted and logged at most once a second. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/srv_int.h"

/* Connections accepted per wakeup: enough to drain a burst, few enough to let the loop serve
 * the connections it has between bursts. */
#define ACCEPT_BATCH 64
/* How long a listener rests after accept failed for want of descriptors or memory. */
#define BACKOFF_MS 100
/* Refusals are logged at most this often, with how many there were since the last line. */
#define REFUSED_LOG_MS 1000

static int spare_fd = -1; /* held to be released when accept finds no descriptor */

static void spare_take(void) {
    if (spare_fd < 0)
        spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void note_refused(srv_listener_t *l, int reason, const char *why) {
    srv_t *S = l->srv;
    S->st.refused[reason]++;
    l->unlogged++;
    uint64_t now = core_now_ms();
    if (now - l->logged_ms >= REFUSED_LOG_MS) {
        CORE_LOGW(MOD, "connections refused", "listener=%s reason=%s count=%" PRIu64, l->name, why,
                  l->unlogged);
        l->logged_ms = now;
        l->unlogged = 0;
    }
}

static void on_readable(uv_poll_t *h, int status, int events);

static void backoff_done(uv_timer_t *t) {
    srv_listener_t *l = t->data;
    if (l->fd >= 0)
        uv_poll_start(&l->poll, UV_READABLE, on_readable);
}

/* accept failed for want of descriptors (or kernel memory): the connections waiting in the
 * backlog are refused with the spare descriptor, and the listener rests for a moment so that
 * the loop does not spin on a socket that stays readable. */
static void exhausted(srv_listener_t *l, int err) {
    if (spare_fd >= 0) {
        close(spare_fd);
        spare_fd = -1;
        for (int i = 0; i < ACCEPT_BATCH; i++) {
            int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0)
                break;
            close(fd);
            note_refused(l, SRV_REFUSED_DESCRIPTORS, "descriptors");
        }
        spare_take();
    } else {
        note_refused(l, SRV_REFUSED_DESCRIPTORS, "descriptors");
    }
    if (err != EMFILE)
        CORE_LOGD(MOD, "accept failed", "listener=%s err=%s", l->name, strerror(err));
    uv_poll_stop(&l->poll);
    uv_timer_start(&l->backoff, backoff_done, BACKOFF_MS, 0);
}

static void on_readable(uv_poll_t *h, int status, int events) {
    srv_listener_t *l = h->data;
    srv_t *S = l->srv;
    (void)status;
    (void)events;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                exhausted(l, errno);
            return; /* EAGAIN: the backlog is empty */
        }
        /* The kernel hands out the lowest free descriptor, so this one's number says how close
         * the process is to its limit. */
        if ((uint64_t)fd + l->reserve >= S->fd_limit) {
            close(fd);
            note_refused(l, SRV_REFUSED_DESCRIPTORS, "descriptors");
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* On failure lws has closed the socket. ALLOW_SSL: a vhost with a certificate runs the
         * TLS handshake on it (lws_adopt_socket_vhost leaves TLS out). */
        lws_sock_file_fd_type sfd = {.sockfd = fd};
        if (!lws_adopt_descriptor_vhost(
                l->vh, LWS_ADOPT_SOCKET | LWS_ADOPT_HTTP | LWS_ADOPT_ALLOW_SSL, sfd, NULL, NULL))
            CORE_LOGW(MOD, "cannot adopt a connection", "listener=%s", l->name);
    }
}

int srv__listen_open(srv_t *S, srv_listener_t *l, const char *name, const char *hostport,
                     unsigned reserve) {
    memset(l, 0, sizeof *l);
    l->fd = -1;
    l->srv = S;
    l->name = name;
    l->reserve = reserve;
    spare_take();
    char host[256], port[16];
    int p;
    if (srv_parse_hostport(hostport, host, sizeof host, &p) != 0)
        return CORE_EINVAL;
    snprintf(port, sizeof port, "%d", p);
    struct addrinfo hints = {
        .ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        CORE_LOGE(MOD, "cannot listen", "listener=%s listen=%s err=%s", name, hostport,
                  gai_strerror(rc));
        return CORE_EINVAL;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in sin;
    socklen_t slen = sizeof sin;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &slen) != 0) {
        CORE_LOGE(MOD, "cannot listen", "listener=%s listen=%s err=%s", name, hostport,
                  strerror(errno));
        freeaddrinfo(ai);
        if (fd >= 0)
            close(fd);
        return CORE_EINVAL;
    }
    freeaddrinfo(ai);
    l->fd = fd;
    l->port = ntohs(sin.sin_port);
    uv_poll_init(&S->loop, &l->poll, fd);
    uv_timer_init(&S->loop, &l->backoff);
    l->poll.data = l->backoff.data = l;
    return 0;
}

void srv__listen_start(srv_listener_t *l, struct lws_vhost *vh) {
    l->vh = vh;
    uv_poll_start(&l->poll, UV_READABLE, on_readable);
}

static void poll_closed(uv_handle_t *h) {
    srv_listener_t *l = h->data;
    close(l->fd);
    l->fd = -1;
}

void srv__listen_close(srv_listener_t *l) {
    if (l->fd < 0 || uv_is_closing((uv_handle_t *)&l->poll))
        return;
    uv_close((uv_handle_t *)&l->poll, poll_closed);
    uv_close((uv_handle_t *)&l->backoff, NULL);
}
