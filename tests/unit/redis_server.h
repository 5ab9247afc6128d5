/* Test fixture shared by the tests that need Redis: one redis-server child process on a free
 * loopback port, started and stopped by PID. */
#ifndef TESTS_UNIT_REDIS_SERVER_H
#define TESTS_UNIT_REDIS_SERVER_H

#include <netinet/in.h>
#include <stdbool.h>

/* Fills sa with 127.0.0.1:port. */
void trs_loopback_addr(int port, struct sockaddr_in *sa);
/* A loopback port nothing listens on right now, or -1. */
int trs_free_port(void);
bool trs_can_connect(int port);
void trs_sleep_ms(long ms);
/* Picks a free port and starts redis-server on it (no persistence); waits, bounded, until it
 * accepts. Returns 0, or -1 with a reason on stderr naming `who`. */
int trs_start(const char *who);
/* Starts redis-server again on the port of trs_start (after trs_stop), for outage tests. */
int trs_restart(const char *who);
/* Stops the child: SIGTERM, then SIGKILL after 2 s; waits for it. */
void trs_stop(void);
int trs_port(void);
/* Sends a signal to the child (SIGSTOP/SIGCONT to make it hang and come back). */
void trs_signal(int sig);
/* "redis://127.0.0.1:PORT" */
const char *trs_url(void);

#endif
