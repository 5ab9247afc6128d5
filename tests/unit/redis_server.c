/* Test fixture: a redis-server child process on a free loopback port. */
#include "tests/unit/redis_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pid_t child = -1;
static int port_;
static char url_[64];

void trs_loopback_addr(int port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

int trs_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    trs_loopback_addr(0, &sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    return ntohs(sa.sin_port);
}

bool trs_can_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa;
    trs_loopback_addr(port, &sa);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

void trs_sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int trs_restart(const char *who) {
    char port[16];
    snprintf(port, sizeof port, "%d", port_);
    child = fork();
    if (child < 0)
        return -1;
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, STDOUT_FILENO); /* its log goes to stdout; failures show in stderr */
        execlp("redis-server", "redis-server", "--bind", "127.0.0.1", "--port", port, "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    /* Bounded wait: 5 s is far beyond its usual start time of ~10 ms. */
    for (int i = 0; i < 250; i++) {
        int st;
        if (waitpid(child, &st, WNOHANG) == child) {
            fprintf(stderr,
                    "%s: redis-server exited early (status %d); is it installed (Debian package "
                    "redis-server)?\n",
                    who, st);
            child = -1;
            return -1;
        }
        if (trs_can_connect(port_))
            return 0;
        trs_sleep_ms(20);
    }
    fprintf(stderr, "%s: redis-server did not accept on port %d within 5 s\n", who, port_);
    return -1;
}

int trs_start(const char *who) {
    port_ = trs_free_port();
    if (port_ <= 0)
        return -1;
    snprintf(url_, sizeof url_, "redis://127.0.0.1:%d", port_);
    return trs_restart(who);
}

void trs_stop(void) {
    if (child <= 0)
        return;
    kill(child, SIGTERM);
    for (int i = 0; i < 100 && waitpid(child, NULL, WNOHANG) == 0; i++)
        trs_sleep_ms(20);
    if (kill(child, 0) == 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
    child = -1;
}

int trs_port(void) {
    return port_;
}

const char *trs_url(void) {
    return url_;
}

void trs_signal(int sig) {
    if (child > 0)
        kill(child, sig);
}
