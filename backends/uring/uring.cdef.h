/* cffi declarations for portio's io_uring core (uring.c).
 *
 * The IORING_* names below are declared with "..." values, so cffi takes
 * them from the kernel's own <linux/io_uring.h> at build time: the build
 * itself is the check that these declarations match the headers.
 */

/* One completion as handed to Python. */
typedef struct {
    uint64_t user_data;
    int32_t  res;
    uint32_t flags;
} pio_cqe;

/* The ring. Python reads the public fields; the rest is private to C. */
typedef struct {
    int      fd;
    unsigned sq_entries;
    unsigned cq_entries;
    unsigned features;        /* IORING_FEAT_* the kernel reported */
    unsigned flags;           /* IORING_SETUP_* the kernel accepted */
    unsigned overflow_flushes;/* times the reaper drained the kernel's overflow list */
    unsigned busy_retries;    /* EAGAIN/EBUSY answers from io_uring_enter */
    unsigned flush_delay_us;  /* the flusher's tick: a deferred SQE waits <= 2 ticks (500) */
    ...;
} pio_ring;

/* Returns 0, or -errno (ENOSYS, EPERM, ENOMEM, EINVAL...). Unsupported
 * optional setup flags are dropped one by one; r->flags says what stuck. */
int pio_setup(pio_ring *r, unsigned sq_entries, unsigned cq_entries, unsigned flags);
void pio_teardown(pio_ring *r);
/* after fork(), in the child: release this process's copy of the ring, nothing shared */
void pio_abandon(pio_ring *r);

/* Free SQ slots. */
unsigned pio_sq_space(pio_ring *r);
/* SQEs queued but not yet taken by the kernel. */
unsigned pio_sq_ready(pio_ring *r);

/* Queue one operation, passed as plain arguments (cheaper to call from
 * Python than filling a struct), then per mode:
 * PIO_QUEUE_ONLY, PIO_SUBMIT (pio_enter(r, 0, 0)) or PIO_DEFER (pio_defer()
 * with r->flush_delay_us; submits now if the flusher cannot start).
 * Returns 1, or 0 if the SQ is full (nothing done). */
int pio_push(pio_ring *r, uint8_t opcode, uint8_t flags, int32_t fd, uint64_t addr,
             uint32_t len, uint32_t op_flags, uint64_t off, uint64_t user_data, int mode);
/* pio_push() for the hot path, a stream's RECV or SEND: the buffer is passed as
 * the cffi object itself (no address arithmetic in Python), offset 0, and two
 * arguments fewer to convert. */
int pio_push_buf(pio_ring *r, uint8_t opcode, int32_t fd, void *buf, uint32_t len,
                 uint32_t op_flags, uint64_t user_data, int mode);
/* pio_push() for a stream receive given a size: an IORING_OP_RECV of at most
 * len bytes with IOSQE_BUFFER_SELECT (see pio_pbuf_setup()), four arguments
 * fewer to convert than pio_push(). */
int pio_push_select(pio_ring *r, int32_t fd, uint32_t len, uint64_t user_data, int mode);
#define PIO_QUEUE_ONLY ...
#define PIO_SUBMIT ...
#define PIO_DEFER ...

/* Submit everything queued and, if wait_nr > 0, wait in the same syscall
 * until wait_nr completions are ready or timeout_ns passes (< 0: no
 * limit). Returns the number submitted, 0 on timeout/EINTR, or -errno
 * (-EAGAIN/-EBUSY: the kernel is short of resources, reap then retry). */
int pio_enter(pio_ring *r, unsigned wait_nr, int64_t timeout_ns);

/* Mark queued SQEs as deferred to the next pio_enter(); if none comes within
 * about 2 x delay_us, the ring's flusher thread (C, started on first use,
 * stopped by pio_teardown) submits them. Returns 0, or -errno if the thread
 * could not start (then submit now). */
int pio_defer(pio_ring *r, unsigned delay_us);

/* Kernels without IORING_FEAT_EXT_ARG: queue a timeout SQE that ends the
 * next pio_enter() wait (the caller holds the SQ lock). Returns 1 or 0. */
int pio_queue_wait_timeout(pio_ring *r, int64_t timeout_ns, unsigned count);

/* Copy up to max completions into out (noting the provided buffers they
 * carry, see pio_pbuf_return()); drains the kernel's CQ overflow
 * list (IORING_FEAT_NODROP) when the ring runs dry. Returns the count. */
int pio_reap(pio_ring *r, pio_cqe *out, int max);

/* Completions ready in the ring right now (at least 1 if the kernel holds
 * overflowed CQEs: pio_reap() will fetch them). */
unsigned pio_cq_ready(pio_ring *r);

/* A provided-buffer ring (IORING_REGISTER_PBUF_RING, Linux >= 5.19) of count
 * buffers (a power of two) of size bytes, registered as group PIO_PBUF_GROUP:
 * an SQE pushed with IOSQE_BUFFER_SELECT gets sqe->buf_group set to it and
 * the kernel picks a buffer only when data arrives. Returns 0, or -errno
 * (EINVAL on older kernels; then nothing is allocated). pio_teardown()
 * unregisters and frees it; pio_abandon() frees the child's copy. */
int pio_pbuf_setup(pio_ring *r, unsigned count, unsigned size);
/* Buffer bid is at pio_pbuf_base(r) + bid * size. */
char *pio_pbuf_base(pio_ring *r);
/* Give the buffers of the CQEs of the last pio_reap() back to the kernel
 * (pio_reap() does it first thing too): call it once their bytes are copied. */
void pio_pbuf_return(pio_ring *r);
#define PIO_PBUF_GROUP ...

/* Fill supported[op] = 1 for each opcode the kernel supports (n entries).
 * Returns the highest opcode + 1, or -errno. */
int pio_probe_ops(pio_ring *r, uint8_t *supported, int n);

#define IORING_SETUP_CQSIZE ...
#define IORING_SETUP_CLAMP ...
#define IORING_SETUP_SUBMIT_ALL ...
#define IORING_SETUP_COOP_TASKRUN ...
#define IORING_SETUP_TASKRUN_FLAG ...
#define IORING_SETUP_SINGLE_ISSUER ...
#define IORING_SETUP_DEFER_TASKRUN ...

#define IORING_FEAT_NODROP ...
#define IORING_FEAT_FAST_POLL ...
#define IORING_FEAT_EXT_ARG ...
#define IORING_FEAT_NATIVE_WORKERS ...
#define IORING_FEAT_CQE_SKIP ...

#define IORING_OP_NOP ...
#define IORING_OP_READ ...
#define IORING_OP_WRITE ...
#define IORING_OP_SENDMSG ...
#define IORING_OP_RECVMSG ...
#define IORING_OP_SEND ...
#define IORING_OP_RECV ...
#define IORING_OP_ACCEPT ...
#define IORING_OP_CONNECT ...
#define IORING_OP_ASYNC_CANCEL ...
#define IORING_OP_TIMEOUT ...
#define IORING_OP_POLL_ADD ...
#define IORING_OP_LAST ...

#define IOSQE_CQE_SKIP_SUCCESS ...
#define IOSQE_BUFFER_SELECT ...

#define IORING_CQE_F_BUFFER ...
#define IORING_CQE_F_MORE ...
#define IORING_CQE_BUFFER_SHIFT ...
#define IORING_ASYNC_CANCEL_ALL ...
#define IORING_ASYNC_CANCEL_FD ...

#define PIO_UDATA_INTERNAL ...

/* Scratch space for recvmsg/sendmsg/accept/connect: kept alive by the
 * Python operation until its completion arrives. */
struct pio_msg {
    struct msghdr hdr;
    struct iovec iov;
    uint32_t addrlen;   /* socklen_t for accept */
    char addr[128];     /* struct sockaddr_storage */
};
struct msghdr { ...; };
struct iovec { void *iov_base; size_t iov_len; };
/* Point the msghdr at buf/len and at m->addr (addrlen bytes of it). */
void pio_msg_init(struct pio_msg *m, char *buf, size_t len, uint32_t addrlen);
/* The peer address length the kernel wrote back (recvmsg). */
uint32_t pio_msg_namelen(const struct pio_msg *m);
