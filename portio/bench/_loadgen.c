/* The echo load generator: C, one thread, epoll, so that the client is not what is measured.
 *
 * Every connection sends a stream whose byte at offset i is pattern[(seed + i) % PATTERN]; the
 * pattern is random, the seed differs per connection, so a byte echoed on the wrong connection
 * or at the wrong offset is caught by a memcmp of everything received.  A "message" is
 * message_size bytes; up to `window` of them are in flight per connection (1: ping-pong, more:
 * streaming); its latency runs from when its first byte is queued to when its last byte is back.
 * Latencies go into a 1 us histogram up to 1 s (4 MiB, so no sampling and no allocation in the
 * loop); slower ones land in the last bucket.
 *
 * The module also carries the reference echo server, lg_echo_serve (the peer "c-epoll" in
 * peers.py): the floor every Python server is measured against.  It sits here because this is
 * the one C extension the benchmark already builds.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_loadgen.cdef.h"

#define PATTERN (1 << 20)           /* 1 MiB of random bytes, stored twice for contiguous slices */
#define HIST_BUCKETS 1000000        /* 1 us each: up to 1 s */
#define RECV_CHUNK (256 * 1024)

struct lg_conn {
    int fd;
    int failed;
    uint64_t seed;
    uint64_t queued;                /* stream bytes the client decided to send */
    uint64_t sent;                  /* stream bytes written to the socket */
    uint64_t received;              /* stream bytes echoed and verified */
    double *started;                /* ring of `window` start times, one per message in flight */
    uint64_t first_inflight;        /* index of the oldest message in flight */
    int want_out;
};

struct lg_session {
    int epfd;
    int nconn;
    int msg;
    int window;
    int sending;                    /* 0 once the drain has begun */
    unsigned char *pattern;
    unsigned char *rbuf;
    uint32_t *hist;
    uint64_t hist_n;
    double hist_max;
    uint64_t messages;
    uint64_t bytes;
    struct lg_conn *conns;
    struct lg_totals totals;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double thread_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void set_events(struct lg_session *s, struct lg_conn *c, int want_out) {
    struct epoll_event ev;
    if (c->want_out == want_out)
        return;
    c->want_out = want_out;
    ev.events = EPOLLIN | (want_out ? EPOLLOUT : 0);
    ev.data.ptr = c;
    epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void fail(struct lg_session *s, struct lg_conn *c, int mismatch) {
    if (c->failed)
        return;
    c->failed = 1;
    if (mismatch)
        s->totals.mismatches++;
    else
        s->totals.errors++;
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
}

/* Queue new messages up to the window, then write what the socket takes. */
static void pump_out(struct lg_session *s, struct lg_conn *c) {
    uint64_t w = (uint64_t)s->window, m = (uint64_t)s->msg;
    while (s->sending && (c->queued - c->received) / m < w) {
        uint64_t index = c->queued / m;
        c->started[index % w] = now();
        c->queued += m;
    }
    while (c->sent < c->queued) {
        uint64_t off = (c->seed + c->sent) % PATTERN;
        uint64_t n = c->queued - c->sent;
        if (n > PATTERN)
            n = PATTERN;
        ssize_t k = send(c->fd, s->pattern + off, (size_t)n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_events(s, c, 1);
                return;
            }
            fail(s, c, 0);
            return;
        }
        c->sent += (uint64_t)k;
        s->totals.bytes_sent += (uint64_t)k;
    }
    set_events(s, c, 0);
}

static void record(struct lg_session *s, double latency) {
    double us = latency * 1e6;
    uint64_t b = us < 0 ? 0 : (uint64_t)us;
    if (b >= HIST_BUCKETS)
        b = HIST_BUCKETS - 1;
    s->hist[b]++;
    s->hist_n++;
    if (us > s->hist_max)
        s->hist_max = us;
}

static void pump_in(struct lg_session *s, struct lg_conn *c) {
    uint64_t m = (uint64_t)s->msg, w = (uint64_t)s->window;
    for (;;) {
        ssize_t k = recv(c->fd, s->rbuf, RECV_CHUNK, 0);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            fail(s, c, 0);
            return;
        }
        if (k == 0 || c->received + (uint64_t)k > c->sent) {
            fail(s, c, k != 0);     /* EOF before the echo, or bytes nobody sent */
            return;
        }
        uint64_t done = 0;
        while (done < (uint64_t)k) {
            uint64_t off = (c->seed + c->received + done) % PATTERN;
            uint64_t n = (uint64_t)k - done;
            if (n > PATTERN)
                n = PATTERN;
            if (memcmp(s->rbuf + done, s->pattern + off, (size_t)n) != 0) {
                fail(s, c, 1);
                return;
            }
            done += n;
        }
        c->received += (uint64_t)k;
        s->totals.bytes_verified += (uint64_t)k;
        s->bytes += (uint64_t)k;
        double t = 0;
        while ((c->first_inflight + 1) * m <= c->received) {
            if (t == 0)
                t = now();
            record(s, t - c->started[c->first_inflight % w]);
            c->first_inflight++;
            s->messages++;
        }
        if ((size_t)k < RECV_CHUNK)
            break;
    }
    pump_out(s, c);
}

static int step(struct lg_session *s, int timeout_ms) {
    struct epoll_event events[256];
    int n = epoll_wait(s->epfd, events, 256, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    for (int i = 0; i < n; i++) {
        struct lg_conn *c = events[i].data.ptr;
        if (c->failed)
            continue;
        if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            pump_in(s, c);
        if (!c->failed && (events[i].events & EPOLLOUT))
            pump_out(s, c);
    }
    return 0;
}

struct lg_session *lg_open(const char *ipv4, int port, int connections, int message_size,
                           int window, char *error, int error_size) {
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (connections < 1 || message_size < 1 || window < 1 || inet_pton(AF_INET, ipv4, &addr.sin_addr) != 1) {
        snprintf(error, (size_t)error_size, "bad arguments");
        return NULL;
    }
    struct lg_session *s = calloc(1, sizeof *s);
    s->nconn = connections;
    s->msg = message_size;
    s->window = window;
    s->sending = 1;
    s->pattern = malloc(2 * PATTERN);
    s->rbuf = malloc(RECV_CHUNK);
    s->hist = calloc(HIST_BUCKETS, sizeof(uint32_t));
    s->conns = calloc((size_t)connections, sizeof(struct lg_conn));
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    for (int i = 0; i < PATTERN; i++) {     /* xorshift64: random enough to catch a shifted echo */
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        s->pattern[i] = s->pattern[i + PATTERN] = (unsigned char)(x >> 32);
    }
    for (int i = 0; i < connections; i++) {
        struct lg_conn *c = &s->conns[i];
        c->fd = -1;
        c->started = calloc((size_t)window, sizeof(double));
        c->seed = (uint64_t)i * 7919u;
    }
    for (int i = 0; i < connections; i++) {
        struct lg_conn *c = &s->conns[i];
        int one = 1;
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            snprintf(error, (size_t)error_size, "connection %d: %s", i, strerror(errno));
            lg_close(s, 0, NULL);
            return NULL;
        }
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev;
        ev.events = EPOLLIN;
        ev.data.ptr = c;
        epoll_ctl(s->epfd, EPOLL_CTL_ADD, c->fd, &ev);
    }
    for (int i = 0; i < connections; i++)
        pump_out(s, &s->conns[i]);
    return s;
}

int lg_run_for(struct lg_session *s, double seconds, struct lg_stats *out) {
    memset(s->hist, 0, HIST_BUCKETS * sizeof(uint32_t));
    s->hist_n = 0;
    s->hist_max = 0;
    s->messages = 0;
    s->bytes = 0;
    double cpu0 = thread_cpu(), t0 = now(), end = t0 + seconds, t;
    while ((t = now()) < end) {
        int ms = (int)((end - t) * 1000) + 1;
        if (step(s, ms > 100 ? 100 : ms) < 0)
            return -1;
    }
    memset(out, 0, sizeof *out);
    out->elapsed = now() - t0;
    out->client_cpu = thread_cpu() - cpu0;
    out->messages = s->messages;
    out->bytes = s->bytes;
    out->max_us = s->hist_max;
    uint64_t seen = 0, p50 = (s->hist_n + 1) / 2, p99 = (s->hist_n * 99 + 99) / 100;
    int have50 = 0;
    for (int b = 0; b < HIST_BUCKETS && s->hist_n; b++) {
        seen += s->hist[b];
        if (!have50 && seen >= p50) {
            out->p50_us = b + 0.5;
            have50 = 1;
        }
        if (seen >= p99) {
            out->p99_us = b + 0.5;
            break;
        }
    }
    return 0;
}

/* Stop queueing, wait up to drain_seconds for every byte in flight to come back, close. */
int lg_close(struct lg_session *s, double drain_seconds, struct lg_totals *out) {
    s->sending = 0;
    double end = now() + drain_seconds;
    for (;;) {
        int busy = 0;
        for (int i = 0; i < s->nconn; i++) {
            struct lg_conn *c = &s->conns[i];
            if (c->fd >= 0 && !c->failed && c->received < c->queued)
                busy = 1;
        }
        double t = now();
        if (!busy || t >= end)
            break;
        step(s, (int)((end - t) * 1000) + 1);
    }
    for (int i = 0; i < s->nconn; i++) {
        struct lg_conn *c = &s->conns[i];
        if (!c->failed)
            s->totals.lost += c->sent - c->received;
        if (c->fd >= 0)
            close(c->fd);
        free(c->started);
    }
    if (out)
        *out = s->totals;
    close(s->epfd);
    free(s->conns);
    free(s->hist);
    free(s->rbuf);
    free(s->pattern);
    free(s);
    return 0;
}


/* ---- The reference echo server: lg_echo_serve, the peer "c-epoll" ----
 *
 * What one thread costs when it does nothing but the system calls: level-triggered epoll as
 * libuv uses it, one read of up to ECHO_CHUNK bytes per ready connection, and a send of the
 * same bytes.  A client that does not read fills its socket, and then the send is short or
 * fails with EAGAIN.  Retrying would spin and starve every other connection, so the unsent
 * rest goes into the connection's own buffer, the connection waits for EPOLLOUT *instead of*
 * EPOLLIN, and reading resumes only once the rest is written.  As nothing is read while a
 * rest is pending, a rest never exceeds one read: one ECHO_CHUNK buffer per connection at
 * most, allocated on the first short send, freed on close.  The kernel's socket buffers then
 * push back on the client, as they do for every Python peer.
 */

#define ECHO_CHUNK 65536            /* what the Python peers read at a time */
#define ECHO_EVENTS 256

struct echo_conn {
    int fd;
    unsigned char *rest;            /* ECHO_CHUNK bytes once a send was short, else NULL */
    size_t rest_off, rest_len;      /* rest[rest_off:rest_len] is still to be sent */
    struct echo_conn *prev, *next;  /* every open connection, so a failing loop closes them */
};

static void echo_close(struct echo_conn **all, struct echo_conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        *all = c->next;
    if (c->next)
        c->next->prev = c->prev;
    close(c->fd);                   /* also leaves the epoll set: nothing else holds the socket */
    free(c->rest);
    free(c);
}

static int echo_want(int epfd, struct echo_conn *c, uint32_t events) {
    struct epoll_event ev;
    ev.events = events;
    ev.data.ptr = c;
    return epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Send what the socket takes: the count (0 when it is full), or -1 when the connection failed.
 * MSG_NOSIGNAL: a peer that has gone away is an error here, not a SIGPIPE. */
static ssize_t echo_send(int fd, const unsigned char *p, size_t n) {
    for (;;) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k >= 0)
            return k;
        if (errno != EINTR)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    }
}

/* The connection is readable: echo one read.  0, or -1 to close it (EOF or error). */
static int echo_read(int epfd, struct echo_conn *c, unsigned char *buf) {
    ssize_t r, w;
    do
        r = read(c->fd, buf, ECHO_CHUNK);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    if (r == 0)
        return -1;
    w = echo_send(c->fd, buf, (size_t)r);
    if (w < 0)
        return -1;
    if (w == r)
        return 0;
    if (c->rest == NULL && (c->rest = malloc(ECHO_CHUNK)) == NULL)
        return -1;                  /* the bytes cannot be kept: drop the connection */
    memcpy(c->rest, buf + w, (size_t)(r - w));
    c->rest_off = 0;
    c->rest_len = (size_t)(r - w);
    return echo_want(epfd, c, EPOLLOUT);
}

/* The connection is writable while a rest is pending: send more of it; once it is all gone,
 * read again.  0, or -1 to close it. */
static int echo_flush(int epfd, struct echo_conn *c) {
    ssize_t w = echo_send(c->fd, c->rest + c->rest_off, c->rest_len - c->rest_off);
    if (w < 0)
        return -1;
    c->rest_off += (size_t)w;
    if (c->rest_off < c->rest_len)
        return 0;
    c->rest_off = c->rest_len = 0;
    return echo_want(epfd, c, EPOLLIN);
}

/* Take every waiting connection: non-blocking, TCP_NODELAY (the Python peers set it too). */
static void echo_accept(int epfd, int listen_fd, struct echo_conn **all) {
    for (;;) {
        int one = 1, fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            /* EAGAIN: all taken.  EMFILE, ENOBUFS, ...: the connection stays queued and the
             * next epoll_wait reports the listener again (level-triggered). */
            return;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct echo_conn *c = calloc(1, sizeof *c);
        struct epoll_event ev;
        ev.events = EPOLLIN;
        ev.data.ptr = c;
        if (c == NULL || epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->next = *all;
        if (*all)
            (*all)->prev = c;
        *all = c;
    }
}

/* Echo on every connection accepted from listen_fd until the process is killed.  Returns
 * -errno only when epoll itself fails, after closing every connection it opened. */
int lg_echo_serve(int listen_fd) {
    struct epoll_event events[ECHO_EVENTS], ev;
    struct echo_conn *all = NULL;
    unsigned char *buf;
    int err = 0, epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return -errno;
    if ((buf = malloc(ECHO_CHUNK)) == NULL) {
        close(epfd);
        return -ENOMEM;
    }
    /* accept4 runs until EAGAIN, so a blocking listener would hang the loop in accept. */
    fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;             /* NULL: the listener; anything else is a struct echo_conn */
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev) < 0)
        err = -errno;
    while (err == 0) {
        int n = epoll_wait(epfd, events, ECHO_EVENTS, -1);
        if (n < 0) {
            if (errno != EINTR)
                err = -errno;
            continue;
        }
        /* A file appears at most once per epoll_wait, so freeing a connection here cannot
         * leave a stale pointer further down this batch. */
        for (int i = 0; i < n; i++) {
            struct echo_conn *c = events[i].data.ptr;
            if (c == NULL) {
                echo_accept(epfd, listen_fd, &all);
                continue;
            }
            int failed = (events[i].events & EPOLLERR) ? -1
                         : c->rest_len ? echo_flush(epfd, c) : echo_read(epfd, c, buf);
            if (failed)
                echo_close(&all, c);
        }
    }
    while (all)
        echo_close(&all, all);
    close(epfd);
    free(buf);
    return err;
}
