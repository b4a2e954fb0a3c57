/* Declarations cffi sees for the load generator and the reference echo server
 * (portio/bench/_loadgen.c). */

struct lg_stats {
    double elapsed;            /* seconds this run_for call measured */
    uint64_t messages;         /* messages whose every byte came back and matched */
    uint64_t bytes;            /* echoed bytes verified during this call */
    double p50_us;             /* round-trip latency percentiles of those messages */
    double p99_us;
    double max_us;
    double client_cpu;         /* CPU seconds the load generator thread used */
};

struct lg_totals {
    uint64_t bytes_sent;       /* over the whole session, warm-up and drain included */
    uint64_t bytes_verified;   /* compared byte for byte with what was sent */
    uint64_t mismatches;       /* connections that got a byte that was not sent there */
    uint64_t errors;           /* connections that failed (reset, EOF before the echo, ...) */
    uint64_t lost;             /* bytes sent that never came back before the drain timeout */
};

struct lg_session;

struct lg_session *lg_open(const char *ipv4, int port, int connections, int message_size,
                           int window, char *error, int error_size);
int lg_run_for(struct lg_session *s, double seconds, struct lg_stats *out);
int lg_close(struct lg_session *s, double drain_seconds, struct lg_totals *out);

/* The peer "c-epoll": serves listen_fd until the process is killed; -errno if epoll fails. */
int lg_echo_serve(int listen_fd);
