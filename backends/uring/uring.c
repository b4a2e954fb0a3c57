/* portio's io_uring core: ring setup, SQE filling, submit+wait, batch reap.
 *
 * Written against the kernel UAPI <linux/io_uring.h> and raw syscalls (no
 * liburing), so building needs only a C compiler and kernel headers.
 *
 * Memory ordering (the rings are shared with the kernel, which may run on
 * another CPU):
 *   - SQ: we write SQEs, then publish them with a RELEASE store of the SQ
 *     tail; the kernel's head is read with ACQUIRE before reusing a slot.
 *   - CQ: the kernel's CQ tail is read with ACQUIRE before reading CQEs;
 *     the CQ head is published with a RELEASE store after we copied them.
 *   - sq_flags (IORING_SQ_CQ_OVERFLOW) is read with ACQUIRE.
 *   - Provided-buffer ring: we write io_uring_buf entries, then publish them
 *     with a RELEASE store of its tail (the kernel reads the tail with
 *     ACQUIRE before taking an entry).
 *
 * Locking is the caller's job: pio_push() calls are serialised by the
 * Python side's SQ lock; pio_reap() has exactly one caller at a time (the
 * polling thread). pio_enter() may run concurrently with pio_push(): it
 * only reads the published tail, and the kernel serialises submission.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/io_uring.h>
#include <linux/time_types.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

/* user_data reserved for the C core's own timeout SQEs (the fallback timed
 * wait for kernels without IORING_FEAT_EXT_ARG); never reaches Python. */
#define PIO_UDATA_INTERNAL UINT64_MAX

typedef struct {
    int      fd;
    unsigned sq_entries;
    unsigned cq_entries;
    unsigned features;
    unsigned flags;
    unsigned overflow_flushes;
    unsigned busy_retries;
    unsigned flush_delay_us;

    /* private */
    unsigned *sq_khead, *sq_ktail, *sq_kflags, *sq_array;
    unsigned sq_mask;
    struct io_uring_sqe *sqes;
    unsigned sq_tail;                  /* our copy of the tail we published */
    unsigned *cq_khead, *cq_ktail;
    unsigned cq_mask;
    struct io_uring_cqe *cqes;
    void *sq_ptr, *cq_ptr;
    size_t sq_sz, cq_sz, sqes_sz;
    struct __kernel_timespec wait_ts;  /* for the fallback timed wait */
    /* The flusher thread (see pio_defer()): plain C, so it never needs the GIL. */
    pthread_t flusher;
    int flusher_started;
    int flusher_stop;                  /* under mu */
    int flusher_waiting;               /* under mu: asleep on cv, not ticking */
    unsigned deferred;                 /* atomic: SQEs queued but nobody submitted them */
    unsigned epoch;                    /* atomic: bumped by every submitting enter */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* The provided-buffer ring (see pio_pbuf_setup()); pbuf_count 0: none. */
    unsigned pbuf_count;
    unsigned pbuf_size;
    char *pbuf_mem;                    /* pbuf_count buffers of pbuf_size bytes */
    struct io_uring_buf_ring *pbuf_ring;
    size_t pbuf_ring_sz, pbuf_mem_sz;
    uint16_t pbuf_tail;                /* our copy of the tail we published */
    unsigned pbuf_held;                /* bids in pbuf_reaped[], not yet given back */
    uint16_t *pbuf_reaped;             /* buffers of reaped CQEs Python may still read */
} pio_ring;

struct pio_msg {
    struct msghdr hdr;
    struct iovec iov;
    uint32_t addrlen;
    char addr[128];
};

typedef struct {
    uint64_t user_data;
    int32_t  res;
    uint32_t flags;
} pio_cqe;

/* The one buffer group portio registers per ring. */
#define PIO_PBUF_GROUP 0

#define PIO_QUEUE_ONLY 0
#define PIO_SUBMIT 1
#define PIO_DEFER 2

int pio_defer(pio_ring *r, unsigned delay_us);
int pio_enter(pio_ring *r, unsigned wait_nr, int64_t timeout_ns);

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete,
                     unsigned flags, void *arg, size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete,
                        flags, arg, argsz);
}

static void unmap_all(pio_ring *r)
{
    if (r->sqes && r->sqes != MAP_FAILED)
        munmap(r->sqes, r->sqes_sz);
    if (r->cq_ptr && r->cq_ptr != MAP_FAILED && r->cq_ptr != r->sq_ptr)
        munmap(r->cq_ptr, r->cq_sz);
    if (r->sq_ptr && r->sq_ptr != MAP_FAILED)
        munmap(r->sq_ptr, r->sq_sz);
    r->sqes = NULL;
    r->cq_ptr = r->sq_ptr = NULL;
}

static void pbuf_free(pio_ring *r)
{
    if (r->pbuf_ring && r->pbuf_ring != MAP_FAILED)
        munmap(r->pbuf_ring, r->pbuf_ring_sz);
    if (r->pbuf_mem && r->pbuf_mem != MAP_FAILED)
        munmap(r->pbuf_mem, r->pbuf_mem_sz);
    free(r->pbuf_reaped);
    r->pbuf_ring = NULL;
    r->pbuf_mem = NULL;
    r->pbuf_reaped = NULL;
    r->pbuf_count = r->pbuf_held = 0;
}

/* Optional setup flags, dropped in this order when the kernel says EINVAL. */
static const unsigned optional_flags[] = {
    IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SINGLE_ISSUER,
    IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_COOP_TASKRUN,
    IORING_SETUP_SUBMIT_ALL,
};

int pio_setup(pio_ring *r, unsigned sq_entries, unsigned cq_entries, unsigned flags)
{
    struct io_uring_params p;
    int fd;
    size_t i;

    memset(r, 0, sizeof(*r));
    r->fd = -1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    for (i = 0;; i++) {
        memset(&p, 0, sizeof(p));
        p.flags = flags;
        p.cq_entries = cq_entries;
        fd = sys_setup(sq_entries, &p);
        if (fd >= 0)
            break;
        if (errno != EINVAL)
            return -errno;
        /* EINVAL: some flag is unknown to this kernel; drop the next one. */
        while (i < sizeof(optional_flags) / sizeof(optional_flags[0])
               && !(flags & optional_flags[i]))
            i++;
        if (i >= sizeof(optional_flags) / sizeof(optional_flags[0]))
            return -EINVAL;
        flags &= ~optional_flags[i];
    }
    r->fd = fd;
    r->flags = flags;
    r->flush_delay_us = 500;
    r->features = p.features;
    r->sq_entries = p.sq_entries;
    r->cq_entries = p.cq_entries;

    r->sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_sz > r->sq_sz)
            r->sq_sz = r->cq_sz;
        r->cq_sz = r->sq_sz;
    }
    r->sq_ptr = mmap(NULL, r->sq_sz, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (r->sq_ptr == MAP_FAILED)
        goto fail;
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        r->cq_ptr = r->sq_ptr;
    } else {
        r->cq_ptr = mmap(NULL, r->cq_sz, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
        if (r->cq_ptr == MAP_FAILED)
            goto fail;
    }
    r->sqes_sz = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_sz, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        goto fail;

    r->sq_khead = (unsigned *)((char *)r->sq_ptr + p.sq_off.head);
    r->sq_ktail = (unsigned *)((char *)r->sq_ptr + p.sq_off.tail);
    r->sq_kflags = (unsigned *)((char *)r->sq_ptr + p.sq_off.flags);
    r->sq_array = (unsigned *)((char *)r->sq_ptr + p.sq_off.array);
    r->sq_mask = *(unsigned *)((char *)r->sq_ptr + p.sq_off.ring_mask);
    r->cq_khead = (unsigned *)((char *)r->cq_ptr + p.cq_off.head);
    r->cq_ktail = (unsigned *)((char *)r->cq_ptr + p.cq_off.tail);
    r->cq_mask = *(unsigned *)((char *)r->cq_ptr + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)((char *)r->cq_ptr + p.cq_off.cqes);
    /* Identity map: SQ slot i always holds SQE i. */
    for (i = 0; i < p.sq_entries; i++)
        r->sq_array[i] = (unsigned)i;
    r->sq_tail = *r->sq_ktail;
    return 0;

fail:
    {
        int err = errno;
        unmap_all(r);
        close(fd);
        r->fd = -1;
        return -err;
    }
}

void pio_teardown(pio_ring *r)
{
    if (r->flusher_started) {
        pthread_mutex_lock(&r->mu);
        r->flusher_stop = 1;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->flusher, NULL);   /* short: at most one flush delay */
        r->flusher_started = 0;
    }
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    if (r->pbuf_count && r->fd >= 0) {
        /* The caller waited for every request's CQE, so no request can still write a
         * buffer; unregistering first makes the kernel let go of the ring's pages now
         * rather than in its asynchronous ring-exit work. */
        struct io_uring_buf_reg reg;
        memset(&reg, 0, sizeof(reg));
        reg.bgid = PIO_PBUF_GROUP;
        syscall(__NR_io_uring_register, r->fd, IORING_UNREGISTER_PBUF_RING, &reg, 1);
    }
    unmap_all(r);
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    pbuf_free(r);
}

/* A process's copy of a ring inherited across fork(): unmap it and close this process's
 * descriptor, touching nothing shared.  The flusher thread was not inherited (fork copies only
 * the calling thread) and the mutex may have been held by it, so neither is used. */
void pio_abandon(pio_ring *r)
{
    r->flusher_started = 0;
    unmap_all(r);
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    pbuf_free(r);   /* private anonymous memory: this is the child's own copy */
}

unsigned pio_sq_space(pio_ring *r)
{
    unsigned head = __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
    return r->sq_entries - (r->sq_tail - head);
}

unsigned pio_sq_ready(pio_ring *r)
{
    /* Reads the published tail, not r->sq_tail: pio_enter() may run in a
     * thread that does not hold the SQ lock. */
    unsigned tail = __atomic_load_n(r->sq_ktail, __ATOMIC_ACQUIRE);
    unsigned head = __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
    return tail - head;
}

static void ns_to_ts(struct __kernel_timespec *ts, int64_t ns)
{
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

static struct io_uring_sqe *next_sqe(pio_ring *r, unsigned *tail)
{
    struct io_uring_sqe *sqe = &r->sqes[*tail & r->sq_mask];
    memset(sqe, 0, sizeof(*sqe));
    (*tail)++;
    return sqe;
}

int pio_push(pio_ring *r, uint8_t opcode, uint8_t flags, int32_t fd, uint64_t addr,
             uint32_t len, uint32_t op_flags, uint64_t off, uint64_t user_data, int mode)
{
    unsigned head = __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
    unsigned tail = r->sq_tail;
    struct io_uring_sqe *sqe;

    if (r->sq_entries - (tail - head) < 1)
        return 0;   /* SQ full: the caller keeps it in its backlog */
    sqe = next_sqe(r, &tail);
    sqe->opcode = opcode;
    sqe->flags = flags;
    sqe->fd = fd;
    sqe->addr = addr;
    sqe->len = len;
    sqe->msg_flags = op_flags;   /* the union: rw/accept/cancel/timeout flags */
    sqe->off = off;
    if (flags & IOSQE_BUFFER_SELECT)
        sqe->buf_group = PIO_PBUF_GROUP;   /* the kernel picks a buffer when data comes */
    sqe->user_data = user_data;
    /* Publish the SQE: everything written above happens-before the tail. */
    __atomic_store_n(r->sq_ktail, tail, __ATOMIC_RELEASE);
    r->sq_tail = tail;
    /* One call from Python does it all: the hot path pays one GIL round trip. */
    if (mode == PIO_DEFER && pio_defer(r, r->flush_delay_us) == 0)
        return 1;
    if (mode != PIO_QUEUE_ONLY)
        pio_enter(r, 0, 0);
    return 1;
}

int pio_push_buf(pio_ring *r, uint8_t opcode, int32_t fd, void *buf, uint32_t len,
                 uint32_t op_flags, uint64_t user_data, int mode)
{
    return pio_push(r, opcode, 0, fd, (uint64_t)(uintptr_t)buf, len, op_flags, 0, user_data,
                    mode);
}

int pio_push_select(pio_ring *r, int32_t fd, uint32_t len, uint64_t user_data, int mode)
{
    return pio_push(r, IORING_OP_RECV, IOSQE_BUFFER_SELECT, fd, 0, len, 0, 0, user_data, mode);
}

int pio_enter(pio_ring *r, unsigned wait_nr, int64_t timeout_ns)
{
    unsigned flags = 0;
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts;
    void *argp = NULL;
    size_t argsz = 0;
    unsigned to_submit;
    int ret;

    if (wait_nr) {
        flags |= IORING_ENTER_GETEVENTS;
        if (timeout_ns == 0) {
            wait_nr = 0;   /* just flush/peek */
        } else if (timeout_ns > 0) {
            if (r->features & IORING_FEAT_EXT_ARG) {
                ns_to_ts(&ts, timeout_ns);
                memset(&arg, 0, sizeof(arg));
                arg.ts = (uint64_t)(uintptr_t)&ts;
                flags |= IORING_ENTER_EXT_ARG;
                argp = &arg;
                argsz = sizeof(arg);
            }
            /* Without EXT_ARG the caller queued pio_queue_wait_timeout(). */
        }
    }
    if (pio_sq_ready(r)) {
        /* This enter submits whatever was deferred: the flusher need not. Clear
         * the flag *before* reading the tail (a full fence: this store and the
         * tail load pair with pio_defer()'s tail store and flag load), so an SQE
         * published after our read re-arms the flusher. */
        __atomic_store_n(&r->deferred, 0, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&r->epoch, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    to_submit = pio_sq_ready(r);
    if (!to_submit && !flags)
        return 0;
    for (;;) {
        ret = sys_enter(r->fd, to_submit, wait_nr, flags, argp, argsz);
        if (ret >= 0)
            return ret;
        switch (errno) {
        case EINTR:
        case ETIME:
            return 0;   /* a signal (Python must run its handler) or the wait timed out */
        case EAGAIN:
        case EBUSY:
            r->busy_retries++;
            /* Out of resources, or the CQ overflow list is backed up: the
             * caller must reap first. If it asked to wait, wait without
             * submitting: completions free what the kernel is short of. */
            if (to_submit && wait_nr) {
                to_submit = 0;
                continue;
            }
            return -errno;
        default:
            return -errno;
        }
    }
}

/* The flusher: SQEs deferred (left for the next poll to submit with its wait)
 * must not wait for ever when no poll comes, e.g. after a thread started an
 * operation and then blocked elsewhere. While submissions are being deferred,
 * this thread ticks every flush_delay_us and submits whatever is still deferred
 * and was deferred before the previous tick with no submitting enter since (the
 * epoch): a deferred SQE waits at most two ticks. It keeps ticking through short
 * lulls and goes to sleep on the condition only after PIO_FLUSHER_IDLE_TICKS
 * ticks with nothing deferred: waking it by the condition costs the deferring
 * thread a futex call and this one a context switch, which once per message (a
 * single connection's ping-pong) was measured at ~0.5 futex calls and ~0.5
 * context switches per message; a tick costs one wake-up per flush_delay_us,
 * shared by every message in between. */
#define PIO_FLUSHER_IDLE_TICKS 200   /* 100 ms at the default 500 us */

static void *flusher_main(void *arg)
{
    pio_ring *r = arg;
    sigset_t all;
    unsigned idle_ticks = 0;

    sigfillset(&all);   /* signals are the Python main thread's business */
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&r->mu);
    while (!r->flusher_stop) {
        struct timespec delay;
        unsigned epoch;

        if (__atomic_load_n(&r->deferred, __ATOMIC_ACQUIRE)) {
            idle_ticks = 0;
        } else if (++idle_ticks > PIO_FLUSHER_IDLE_TICKS) {
            r->flusher_waiting = 1;
            pthread_cond_wait(&r->cv, &r->mu);
            r->flusher_waiting = 0;
            idle_ticks = 0;
            continue;
        }
        epoch = __atomic_load_n(&r->epoch, __ATOMIC_ACQUIRE);
        pthread_mutex_unlock(&r->mu);
        delay.tv_sec = 0;
        delay.tv_nsec = (long)r->flush_delay_us * 1000;
        nanosleep(&delay, NULL);
        pthread_mutex_lock(&r->mu);
        if (r->flusher_stop)
            break;
        if (__atomic_load_n(&r->deferred, __ATOMIC_ACQUIRE)
            && __atomic_load_n(&r->epoch, __ATOMIC_ACQUIRE) == epoch) {
            unsigned n;
            __atomic_store_n(&r->deferred, 0, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(&r->epoch, 1, __ATOMIC_SEQ_CST);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            n = pio_sq_ready(r);
            if (n)
                sys_enter(r->fd, n, 0, 0, NULL, 0);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int pio_defer(pio_ring *r, unsigned delay_us)
{
    int err;

    /* Pairs with the fence in pio_enter(): our SQE's tail store is ordered
     * before this load of the flag. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&r->deferred, __ATOMIC_SEQ_CST))
        return 0;   /* already armed: the common case costs one load */
    pthread_mutex_lock(&r->mu);
    r->flush_delay_us = delay_us;
    __atomic_store_n(&r->deferred, 1, __ATOMIC_RELEASE);
    if (!r->flusher_started) {
        err = pthread_create(&r->flusher, NULL, flusher_main, r);
        if (err) {
            pthread_mutex_unlock(&r->mu);
            return -err;   /* caller submits eagerly instead */
        }
        r->flusher_started = 1;
    }
    if (r->flusher_waiting)   /* else it is ticking and will see the flag */
        pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int pio_queue_wait_timeout(pio_ring *r, int64_t timeout_ns, unsigned count)
{
    /* Pre-5.11 kernels (no IORING_FEAT_EXT_ARG): a timeout SQE that
     * completes after timeout_ns, or once count other CQEs arrived. Its CQE
     * carries PIO_UDATA_INTERNAL and is dropped by pio_reap(). Only the
     * polling thread calls this, right before pio_enter(), so wait_ts is
     * consumed by the kernel before it is written again. */
    ns_to_ts(&r->wait_ts, timeout_ns);
    return pio_push(r, IORING_OP_TIMEOUT, 0, -1, (uint64_t)(uintptr_t)&r->wait_ts, 1, 0,
                    count, PIO_UDATA_INTERNAL, PIO_QUEUE_ONLY);
}

unsigned pio_cq_ready(pio_ring *r)
{
    unsigned tail = __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE);
    unsigned n = tail - *r->cq_khead;

    /* CQEs parked on the kernel's overflow list count too: pio_reap() fetches them. */
    if (!n && (__atomic_load_n(r->sq_kflags, __ATOMIC_ACQUIRE) & IORING_SQ_CQ_OVERFLOW))
        n = 1;
    return n;
}

static void pbuf_add(pio_ring *r, uint16_t bid)
{
    struct io_uring_buf *buf = &r->pbuf_ring->bufs[r->pbuf_tail & (r->pbuf_count - 1)];
    buf->addr = (uint64_t)(uintptr_t)(r->pbuf_mem + (size_t)bid * r->pbuf_size);
    buf->len = r->pbuf_size;
    buf->bid = bid;
    r->pbuf_tail++;
}

void pio_pbuf_return(pio_ring *r)
{
    unsigned i;

    if (!r->pbuf_held)
        return;
    for (i = 0; i < r->pbuf_held; i++)
        pbuf_add(r, r->pbuf_reaped[i]);
    r->pbuf_held = 0;
    /* The entries written above happen-before the kernel sees the new tail. */
    __atomic_store_n(&r->pbuf_ring->tail, r->pbuf_tail, __ATOMIC_RELEASE);
}

int pio_pbuf_setup(pio_ring *r, unsigned count, unsigned size)
{
    struct io_uring_buf_reg reg;
    long page = sysconf(_SC_PAGESIZE);
    unsigned i;
    int err;

    if (count == 0 || count > 32768 || (count & (count - 1)) || size == 0)
        return -EINVAL;   /* the kernel wants a power of two entries, bids are 16 bits */
    if (r->pbuf_count)
        return -EEXIST;   /* one group per ring: the fields below describe it */
    r->pbuf_ring_sz = ((count * sizeof(struct io_uring_buf) + page - 1) / page) * page;
    r->pbuf_mem_sz = (size_t)count * size;
    /* No MAP_POPULATE: a buffer's pages are touched only when the kernel first fills it. */
    r->pbuf_ring = mmap(NULL, r->pbuf_ring_sz, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    r->pbuf_mem = mmap(NULL, r->pbuf_mem_sz, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    r->pbuf_reaped = calloc(count, sizeof(uint16_t));
    if (r->pbuf_ring == MAP_FAILED || r->pbuf_mem == MAP_FAILED || !r->pbuf_reaped) {
        pbuf_free(r);
        return -ENOMEM;
    }
    r->pbuf_count = count;
    r->pbuf_size = size;
    r->pbuf_tail = 0;
    for (i = 0; i < count; i++)
        pbuf_add(r, (uint16_t)i);
    __atomic_store_n(&r->pbuf_ring->tail, r->pbuf_tail, __ATOMIC_RELEASE);
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)r->pbuf_ring;
    reg.ring_entries = count;
    reg.bgid = PIO_PBUF_GROUP;
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        err = errno;
        pbuf_free(r);
        return -err;   /* EINVAL before Linux 5.19; EPERM from a filter */
    }
    return 0;
}

char *pio_pbuf_base(pio_ring *r)
{
    return r->pbuf_mem;
}

int pio_reap(pio_ring *r, pio_cqe *out, int max)
{
    int n = 0;

    /* The buffers of the previous batch: Python copied their bytes before reaping again. */
    pio_pbuf_return(r);

    for (;;) {
        unsigned head = *r->cq_khead;   /* only we write it */
        unsigned tail = __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE);

        while (head != tail && n < max) {
            const struct io_uring_cqe *cqe = &r->cqes[head & r->cq_mask];
            head++;
            if (cqe->user_data == PIO_UDATA_INTERNAL)
                continue;
            /* The buffer goes back to the kernel at the next pio_pbuf_return(). At most
             * pbuf_count are held: the kernel can take no more before they are returned
             * (the bound is checked anyway). */
            if ((cqe->flags & IORING_CQE_F_BUFFER) && r->pbuf_held < r->pbuf_count)
                r->pbuf_reaped[r->pbuf_held++] = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
            out[n].user_data = cqe->user_data;
            out[n].res = cqe->res;
            out[n].flags = cqe->flags;
            n++;
        }
        /* Our reads of the CQEs happen-before the kernel may reuse them. */
        __atomic_store_n(r->cq_khead, head, __ATOMIC_RELEASE);
        if (n >= max)
            break;
        /* With IORING_FEAT_NODROP the kernel parks CQEs that did not fit
         * on an overflow list and raises IORING_SQ_CQ_OVERFLOW; an enter
         * with GETEVENTS moves them into the space we just freed. */
        if (!(__atomic_load_n(r->sq_kflags, __ATOMIC_ACQUIRE) & IORING_SQ_CQ_OVERFLOW))
            break;
        r->overflow_flushes++;
        if (sys_enter(r->fd, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0) < 0
            && errno != EINTR && errno != EAGAIN && errno != EBUSY)
            break;
        if (__atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE) == head)
            break;   /* nothing moved; do not spin */
    }
    return n;
}

int pio_probe_ops(pio_ring *r, uint8_t *supported, int n)
{
    /* struct io_uring_probe ends in a flexible array of 256 op entries. */
    char buf[sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op)];
    struct io_uring_probe *probe = (struct io_uring_probe *)buf;
    int i;

    memset(buf, 0, sizeof(buf));
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_PROBE, probe, 256) < 0)
        return -errno;
    for (i = 0; i < n; i++)
        supported[i] = (i < probe->ops_len
                        && (probe->ops[i].flags & IO_URING_OP_SUPPORTED)) ? 1 : 0;
    return probe->last_op + 1;
}

void pio_msg_init(struct pio_msg *m, char *buf, size_t len, uint32_t addrlen)
{
    memset(&m->hdr, 0, sizeof(m->hdr));
    m->iov.iov_base = buf;
    m->iov.iov_len = len;
    m->hdr.msg_iov = &m->iov;
    m->hdr.msg_iovlen = 1;
    m->hdr.msg_name = addrlen ? m->addr : NULL;
    m->hdr.msg_namelen = addrlen;
    m->addrlen = addrlen;
}

uint32_t pio_msg_namelen(const struct pio_msg *m)
{
    return m->hdr.msg_namelen;
}
