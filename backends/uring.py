"""The io_uring backend: Linux's completion ring, driven through a small cffi-built C core.

How io_uring works
------------------
``io_uring_setup`` gives the process two rings shared with the kernel: the *submission queue*
(SQ), an array of 64-byte SQEs ("recv 4096 bytes from fd 7 into this address, and tag the
answer with user_data 42"), and the *completion queue* (CQ), an array of 16-byte CQEs
(user_data, result, flags).  The application writes SQEs and publishes them by moving the SQ
tail (a release store: the SQE bytes must be visible before the tail is); one
``io_uring_enter`` both submits them and, if asked, sleeps until N completions are in the CQ.
The kernel writes CQEs and moves the CQ tail; the application reads them after an acquire load
of that tail and hands the slots back by moving the CQ head.  Sockets are never "ready" from the
application's point of view: the kernel tries the operation, arms its own internal poll if it
would block, and posts the CQE when it is done.  The whole model is IOCP's: start an
operation, get its result later, tagged.  The C core (``backends/uring/uring.c``) owns the
rings; Python only says *what* to do and learns *what happened*, in batches.

What portio promises on top
---------------------------
Each operation gets a ``user_data`` number; ``self._inflight`` maps it to the operation *until
the kernel's CQE for it arrives*, holding the cffi views of its buffers, its msghdr and its
sockaddr.  That is the lifetime rule: the kernel owns those bytes from submission to CQE, even
after a cancel, a timeout, ``close_handle`` or ``close``.  ``send`` completes only when every
byte is sent (``MSG_WAITALL`` asks the kernel to retry short sends itself; a short CQE is
re-submitted for the rest anyway).  Threads: the ring has a single consumer, the shared code's
poller (leader/followers); it reaps up to 256 CQEs per call, finishes their operations under
the port lock, and the shared queue fans completions out to every thread in FIFO order with
the concurrency cap.

Traps, and what this module does about them
-------------------------------------------
- *Cancel races.*  ``IORING_OP_ASYNC_CANCEL`` is a request like any other; by the time it runs
  the target may have completed.  The target's own CQE is the only truth: ``-ECANCELED`` (or
  ``-EINTR`` for a request interrupted in a worker) means cancelled and delivers
  ``op.cancel_error``; a real result wins and is delivered, so received bytes are never lost.
  The cancel's own CQE (user_data 0) is ignored.
- *Short sends.*  Stream sends may transfer a prefix; ``op.sent`` grows and the rest is
  re-submitted under the same user_data.  A cancel between the two halves completes with
  ``op.cancel_error`` and ``nbytes`` = what was sent.
- *Overflow.*  The CQ is sized (``IORING_SETUP_CQSIZE``) well beyond what the SQ can have
  outstanding in one go, but thousands of operations can be in flight.  With
  ``IORING_FEAT_NODROP`` (required here) the kernel parks CQEs that do not fit on an overflow
  list and raises ``IORING_SQ_CQ_OVERFLOW``; the reaper drains the ring, flushes that list with
  an ``io_uring_enter(GETEVENTS)``, and reaps again.  Submission may answer ``-EBUSY``/
  ``-EAGAIN`` meanwhile; SQEs that do not fit wait in ``self._backlog`` (user space) and are
  retried after the next reap.
- *One consumer, many producers.* Any thread may start an operation, so SQEs are written under
  the port lock (every hook that writes one already holds it). When no other thread sits in
  ``io_uring_enter``, the SQE is left for the next poll, which submits the whole batch with its
  wait in one syscall; a thread that starts an operation and then blocks elsewhere would starve
  it, so a small C flusher thread (no GIL), ticking every 500 microseconds while submissions
  are being deferred, submits anything still deferred a tick later. When a poller is in the
  kernel, the SQE is submitted at once (that poller would not see it until it wakes). The CQ is
  read only by the poller. Because submitters vary, ``IORING_SETUP_SINGLE_ISSUER`` and
  ``DEFER_TASKRUN`` cannot be used (a submit from a second thread gets ``-EEXIST``), and
  ``COOP_TASKRUN`` is unsafe: the kernel would run a socket's completion work only when the
  *submitting* thread next enters the kernel, which a thread blocked in a user-space lock never
  does. Both are probed and reported by :func:`ring_features`, not used.
- *Threads that exit.*  A socket request's completion work runs in the task that submitted it;
  if that thread has exited, the kernel completes the request with ``-ECANCELED`` instead
  (measured on Linux 6.18), having consumed nothing.  Such a cancel that nobody asked for is
  re-submitted from the reaping thread (bounded by ``_MAX_RESUBMITS``), so a worker thread may
  start an operation and end.
- *Idle receives.*  A ``recv``/``recvfrom`` given a size holds no buffer while it waits.  On a
  stream socket, with a size up to ``_PBUF_SIZE``, it is one ``IORING_OP_RECV`` with
  ``IOSQE_BUFFER_SELECT``: each port registers a provided-buffer ring
  (``IORING_REGISTER_PBUF_RING``, Linux >= 5.19; tried at port open, and a refusal keeps the
  poll path below, as :func:`ring_features` reports), and the kernel takes a buffer from it
  only when data arrives.  The CQE names the buffer (``IORING_CQE_F_BUFFER``); the reap loop
  copies ``res`` bytes out with one ``ffi.unpack`` (67 ns for 64 bytes, against 117 for
  ``ffi.buffer(...)[:]``) and, once the batch is done, ``pio_pbuf_return`` hands the batch's
  buffers back (a release store of the ring's tail; ``pio_reap`` does it first too, so an
  exception in the loop loses none).  A buffer is held from the kernel's fill to the end of
  the reap that copies it, never by a waiting receive.  An empty ring answers ``-ENOBUFS``
  having received nothing: that operation then waits by poll, and the user never sees it.  A
  cancel that meets a waiting one is exact (no buffer was taken); one that loses the race
  delivers the bytes.  Everything else given a size -- ``recvfrom``, a datagram socket (a
  datagram cut to a buffer's size would be a lie about its length), a larger size, a kernel
  without buffer rings -- is an ``IORING_OP_POLL_ADD`` (POLLIN, one-shot), and when its CQE
  says the socket is readable the reaper takes the bytes with one non-blocking ``recv(size)``
  (``_receive_ready``).  A readiness with nothing to read polls again; a cancel that meets it
  is then exact.  A receive into a caller's buffer is still an ``IORING_OP_RECV``.  The
  buffers are private anonymous memory: ``close`` unmaps them only after every CQE arrived
  (like every other buffer the kernel was given), and a forked child unmaps its copy.
- *Waking the poller.*  A post or close from another thread submits a NOP (user_data 1); its CQE
  ends the poller's ``io_uring_enter``.  One NOP at most is outstanding.
- *Refusal.*  Kernels can refuse io_uring at run time: ``ENOSYS`` (too old, or compiled out),
  ``EPERM`` (a seccomp filter, as container runtimes install, or ``kernel.io_uring_disabled``).
  :meth:`UringPort.probe` tries a real ring and a NOP round trip and says which.

Measured (2 vCPUs, Linux 6.18, loopback, 100 connections x 64-byte ping-pong)
---------------------------------------------------------------------------
- Deferring submission to the next poll cut io_uring_enter calls from one per operation to one
  per ~50 messages, and server CPU per message from ~20 to ~15 us.
- The ring features, measured on small C echo servers (so Python cannot hide a kernel effect),
  against plain RECV/SEND SQEs, paired medians over 18 repetitions: SINGLE_ISSUER +
  DEFER_TASKRUN -0.25 us per message (5%, the only reliable gain); COOP_TASKRUN -0.18, less
  consistent; RECVSEND_POLL_FIRST +0.12 (worse); multishot recv with a provided-buffer ring
  +0.52 (worse) alone and -0.18 with DEFER_TASKRUN.  With ~50 messages per io_uring_enter the
  per-call overhead is already negligible: the ~4.4 us per message that remain are loopback
  TCP, the same for every server, epoll included.  None of these features is used: the two
  that help cannot serve many issuing threads (see "One consumer, many producers"), and the
  others do not pay.  Multishot recv would also hand portio data with no receive pending, to
  buffer; the provided-buffer ring serves single-shot receives only (see "Idle receives").
- What is left above that floor is Python: the operation and completion objects, the per-handle
  FIFOs, the lock and this module's bookkeeping, ~4 us of user time per message after the hot
  path was trimmed (one C call per stream send or receive, finished inline in the reap loop).
  Compiled with mypyc, a perf profile (software clock; before the buffer ring below) of the
  server at 100x64B under the benchmark's load: 8.5 us/msg, 65% of it in the kernel (the ring's
  task work, TCP, context switches), 23% in libpython (the interpreted echo handler, object
  allocation, calls into deque, lock and socket), 5% in the compiled port; 94% of the samples
  in the worker thread, 6% in the flusher.  uvloop in the same setup: 3.6 us/msg, 88% kernel;
  the selector backend: 6.3, 57% kernel.  So io_uring's kernel share alone exceeds uvloop's
  whole cost here.
- The provided-buffer receive against the poll-then-recv it replaced (same machine, shared with
  other work; medians (min-max)).  It saves the ``recv`` system call per message (perf: 100,100
  recvfrom calls for 100,000 messages before, none after).  At moderate load (portio's own echo
  client, 100 connections x 1,000 messages, server CPU by ``perf stat`` task-clock, 3-4
  alternating pairs) the server spends 15.7-16.0 us/msg against 17.5-17.9 at 64 B (-11%) and
  18.1-18.7 against 20.5-21.5 at 4 KiB (-12%).  Saturated, in ``portio.bench`` (31 alternating
  paired repetitions), the difference is inside the noise: 100x64B 9.3 (8.4-10.6) us/msg
  against 9.1 (8.3-10.3), 2.09x asyncio against 2.04x; 100x4KiB 11.4 (10.0-14.0) against 11.6
  (10.3-13.2), 2.33x against 2.32x; 1x64B (15 pairs) 47.8 against 49.6; io_uring alone,
  100x64B: 9.0 and 8.9 against 9.0 and 8.9.  So, interpreted, it pays where wake-ups are
  small batches and not measurably at the benchmark's saturation.  Compiled (mypyc, see
  setup.py), where less Python hides it, it pays there too: 100x64B 6.3-6.4 us/msg against
  6.9-7.0, 1.43-1.47x asyncio against 1.58x (two runs of 3 interleaved repetitions each, the
  two builds alternating); 100x4KiB and 1x64B level (7.9-8.3 against 7.9; 38.0-38.5 against
  38.3).  Idle connections are unchanged: 2.31
  KiB each against 2.32 (uvloop 1.26 in the same runs): no waiting receive holds a buffer, and
  buffer pages are faulted in only when first filled.
"""

from __future__ import annotations

import errno
import importlib
import os
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any

from portio import _sockaddr
from portio._port import HandleEntry, Operation, PortBase
from portio.errors import BackendUnavailable, OperationCancelled, error_from_errno

__all__ = ["UringPort", "ring_features"]

_ffi: Any
_lib: Any
_IMPORT_ERROR: str | None
try:
    _module = importlib.import_module("portio.backends._uring_cffi")
    _ffi, _lib = _module.ffi, _module.lib
    _IMPORT_ERROR = None
except ImportError as _exc:  # not built (no compiler at install time) or not Linux
    _ffi = _lib = None
    _IMPORT_ERROR = str(_exc)

#: SQ slots: enough for a burst of starts between two submits (each start submits at once, so
#: the SQ rarely holds more than a handful); more only costs locked memory.
_SQ_ENTRIES = 256
#: CQ slots: completions that can wait in the ring between two reaps without touching the
#: kernel's (slower, allocating) overflow list; 16 bytes each, so 256 KiB.
_CQ_ENTRIES = 16384
#: CQEs copied per pio_reap() call (one cffi call, GIL released nowhere: it is a memcpy loop).
_REAP_BATCH = 256
#: How long close() waits for the kernel to hand back every buffer before it gives up and
#: deliberately leaks them (a use-after-free would be worse).
_SHUTDOWN_GRACE = 5.0
#: Re-submissions of one operation after cancels nobody asked for (see _complete), before
#: the cancel is delivered as an error: a bound so a kernel that keeps refusing cannot spin us.
_MAX_RESUBMITS = 16
#: The C flusher thread's tick (microseconds): a deferred SQE waits at most two ticks for a
#: poll to submit it before the flusher does.  Pollers normally come back within
#: microseconds; this only bounds the latency for a thread that starts an operation and then
#: blocks on something else.
_FLUSH_DELAY_US = 500
#: How long a cancel waits for the kernel's answer when no poller runs (see _cancel).
_CANCEL_WAIT = 0.5
#: The provided-buffer ring (see "Idle receives").  A buffer is held only from the moment the
#: kernel fills it to the end of the reap batch that copies it out, so the count bounds the
#: stream receives that can complete between two reaps: 128 covers the 100 connections of the
#: benchmark all answering at once; past it a receive meets an empty ring (-ENOBUFS) and
#: waits by poll instead, slower but correct.  The size is the echo server's receive size
#: (and ``_port._DIRECT_RECV``'s): a larger receive waits by poll, so no receive returns less
#: than it would have before.  8 MiB of address space; pages are touched only when filled
#: (one 4 KiB page per buffer for small messages).  0 (tests): no buffer ring, polls only.
_PBUF_COUNT = 128
_PBUF_SIZE = 64 * 1024

#: Bytes of ``struct pio_msg``'s address buffer: what accept/recvmsg may write and
#: connect/sendmsg copy in (``_sockaddr.encode`` never returns more; a test checks they agree).
_ADDR_MAX = _sockaddr.SOCKADDR_MAX
_UDATA_IGNORE = 0  # the CQEs of cancel requests
_UDATA_WAKE = 1  # the poller's wake-up NOP
_CQE = struct.Struct("=QiI")  # pio_cqe: user_data, res, flags
# Plain ints: IntFlag arithmetic on every send costs more than the rest of the call.
if sys.platform == "linux":
    _SEND_FLAGS = int(socket.MSG_NOSIGNAL | socket.MSG_WAITALL)  # WAITALL: the kernel retries
    _SENDTO_FLAGS = int(socket.MSG_NOSIGNAL)                     # short sends itself
    _ACCEPT_FLAGS = int(socket.SOCK_CLOEXEC)
    _POLLIN = int(select.POLLIN)
    _SOCK_STREAM = int(socket.SOCK_STREAM)
else:  # never used: the backend refuses to run off Linux (this keeps mypy --platform happy)
    _SEND_FLAGS = _SENDTO_FLAGS = _ACCEPT_FLAGS = _POLLIN = _SOCK_STREAM = 0
_OP_RECV, _OP_SEND, _OP_POLL_ADD = (
    (_lib.IORING_OP_RECV, _lib.IORING_OP_SEND, _lib.IORING_OP_POLL_ADD) if _lib is not None
    else (0, 0, 0))
_QUEUE_ONLY, _SUBMIT, _DEFER = (
    (_lib.PIO_QUEUE_ONLY, _lib.PIO_SUBMIT, _lib.PIO_DEFER) if _lib is not None else (0, 1, 2))
_BUFFER_SELECT, _F_BUFFER, _BUFFER_SHIFT = (
    (_lib.IOSQE_BUFFER_SELECT, _lib.IORING_CQE_F_BUFFER, _lib.IORING_CQE_BUFFER_SHIFT)
    if _lib is not None else (0, 0, 0))
#: ``op.pinned`` of a receive given a size that waits by poll, not in a provided buffer.
_POLLED = "poll"

# Buffers the kernel still owned when a port gave up waiting at close: kept forever.
_GRAVEYARD: list[object] = []
# The in-flight registries of ports not yet shut down (see UringPort.__init__).
_LIVE: dict[int, dict[int, Operation]] = {}

_REQUIRED_OPS = ("NOP", "READ", "WRITE", "SEND", "RECV", "SENDMSG", "RECVMSG", "ACCEPT",
                 "CONNECT", "ASYNC_CANCEL", "POLL_ADD")


def _sysctl(name: str) -> str | None:
    try:
        with open(f"/proc/sys/kernel/{name}") as f:
            return f.read().strip()
    except OSError:
        return None


def _refusal(err: int) -> str:
    """Why io_uring_setup said ``err``, in words a user can act on."""
    if err == errno.ENOSYS:
        return "the kernel has no io_uring (io_uring_setup: ENOSYS; Linux < 5.1 or compiled out)"
    if err == errno.EPERM:
        disabled = _sysctl("io_uring_disabled")
        if disabled == "2":
            return "io_uring is switched off: sysctl kernel.io_uring_disabled=2 (EPERM)"
        if disabled == "1":
            return ("io_uring is restricted: sysctl kernel.io_uring_disabled=1 and this process "
                    "is not in kernel.io_uring_group (EPERM)")
        return "io_uring_setup refused with EPERM (a seccomp filter, e.g. a container's?)"
    if err == errno.ENOMEM:
        return "io_uring_setup failed with ENOMEM (RLIMIT_MEMLOCK too small?)"
    return f"io_uring_setup failed: {errno.errorcode.get(err, err)} ({os.strerror(err)})"


def _open_ring(sq_entries: int, cq_entries: int, flags: int) -> tuple[Any, int]:
    """A new ``pio_ring *`` and 0, or (None, errno)."""
    ring = _ffi.new("pio_ring *")
    rc = _lib.pio_setup(ring, sq_entries, cq_entries, flags)
    if rc < 0:
        return None, -rc
    return ring, 0


def _unavailable_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"io_uring is Linux-only; this is {sys.platform}"
    if _lib is None:
        return (f"the io_uring extension portio.backends._uring_cffi is not built "
                f"({_IMPORT_ERROR}); reinstall portio with a C compiler and Linux headers")
    ring, err = _open_ring(4, 8, 0)
    if ring is None:
        return _refusal(err)
    try:
        if not ring.features & _lib.IORING_FEAT_NODROP:
            return "the kernel's io_uring lacks IORING_FEAT_NODROP (Linux >= 5.5 needed)"
        supported = _ffi.new("uint8_t[256]")
        if _lib.pio_probe_ops(ring, supported, 256) < 0:
            return "the kernel's io_uring cannot be probed (IORING_REGISTER_PROBE; Linux < 5.6)"
        missing = [name for name in _REQUIRED_OPS
                   if not supported[getattr(_lib, f"IORING_OP_{name}")]]
        if missing:
            return f"the kernel's io_uring lacks {', '.join(missing)} (Linux >= 5.6 needed)"
        # A seccomp filter may allow setup yet refuse io_uring_enter: do a real round trip.
        _lib.pio_push(ring, _lib.IORING_OP_NOP, 0, -1, 0, 0, 0, 0, 7, _lib.PIO_QUEUE_ONLY)
        rc = _lib.pio_enter(ring, 1, 1_000_000_000)
        if rc < 0:
            return f"io_uring_enter failed: {errno.errorcode.get(-rc, -rc)}"
        cqe = _ffi.new("pio_cqe[1]")
        if _lib.pio_reap(ring, cqe, 1) != 1 or cqe[0].user_data != 7:
            return "io_uring did not complete a NOP within 1 s"
    finally:
        _lib.pio_teardown(ring)
    return None


def ring_features() -> dict[str, Any]:
    """What this kernel's io_uring offers, and what portio uses (for reports and debugging).

    Raises :class:`~portio.BackendUnavailable` when io_uring cannot run here.
    """
    reason = _unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    lib = _lib
    info: dict[str, Any] = {}
    for name, flags in (
        ("single_issuer+defer_taskrun",
         lib.IORING_SETUP_SINGLE_ISSUER | lib.IORING_SETUP_DEFER_TASKRUN),
        ("coop_taskrun", lib.IORING_SETUP_COOP_TASKRUN | lib.IORING_SETUP_TASKRUN_FLAG),
        ("submit_all", lib.IORING_SETUP_SUBMIT_ALL),
    ):
        ring, err = _open_ring(4, 8, flags)
        info[f"setup:{name}"] = ring is not None and ring.flags & flags == flags
        if ring is not None:
            lib.pio_teardown(ring)
    ring, err = _open_ring(_SQ_ENTRIES, _CQ_ENTRIES, _SETUP_FLAGS)
    if ring is None:
        raise BackendUnavailable(_refusal(err))
    try:
        feats = ring.features
        for name in ("NODROP", "FAST_POLL", "EXT_ARG", "NATIVE_WORKERS", "CQE_SKIP"):
            info[f"feat:{name.lower()}"] = bool(feats & getattr(lib, f"IORING_FEAT_{name}"))
        supported = _ffi.new("uint8_t[256]")
        info["ops"] = _lib.pio_probe_ops(ring, supported, 256)
        info["used:setup_flags"] = hex(ring.flags)
        info["used:pbuf_ring"] = _pbuf_refusal(ring) or f"{_PBUF_COUNT} x {_PBUF_SIZE} bytes"
        info["used:sq_entries"] = ring.sq_entries
        info["used:cq_entries"] = ring.cq_entries
    finally:
        lib.pio_teardown(ring)
    return info


def _pbuf_refusal(ring: Any) -> str | None:
    """Register ``ring``'s provided-buffer ring: None, or why the kernel would not."""
    if _PBUF_COUNT <= 0:
        return "off (no buffer ring: receives given a size wait by poll)"
    rc = _lib.pio_pbuf_setup(ring, _PBUF_COUNT, _PBUF_SIZE)
    if rc < 0:
        return (f"refused: IORING_REGISTER_PBUF_RING {errno.errorcode.get(-rc, -rc)} "
                "(Linux >= 5.19 needed; receives given a size wait by poll)")
    return None


# Setup flags asked for: CQSIZE for the CQ above, CLAMP so an over-large request degrades,
# SUBMIT_ALL so one bad SQE does not stop the batch behind it (dropped on kernels < 5.18).
_SETUP_FLAGS = 0
if _lib is not None:
    _SETUP_FLAGS = (_lib.IORING_SETUP_CQSIZE | _lib.IORING_SETUP_CLAMP
                    | _lib.IORING_SETUP_SUBMIT_ALL)


class UringPort(PortBase):
    """A completion port on Linux io_uring (see the module docstring for the model)."""

    __slots__ = (  # see PortBase.__slots__
        "_backlog", "_cqes", "_ext_arg", "_inflight", "_next_uid", "_pbuf_size", "_pbufs",
        "_resubmits", "_ring", "_ring_open", "_wake_pending",
    )

    backend = "io_uring"

    @classmethod
    def probe(cls) -> None:
        reason = _unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)

    def __init__(self, concurrency: object = 0) -> None:
        super().__init__(concurrency)
        if _lib is None:
            raise BackendUnavailable(_unavailable_reason() or "io_uring extension missing")
        # Kernels before 5.12 charge the rings to RLIMIT_MEMLOCK (often 64 KiB): on ENOMEM,
        # retry smaller; the kernel's overflow list absorbs what a small CQ cannot hold.
        for cq_entries in (_CQ_ENTRIES, _CQ_ENTRIES // 4, 1024):
            ring, err = _open_ring(min(_SQ_ENTRIES, cq_entries), cq_entries, _SETUP_FLAGS)
            if ring is not None or err != errno.ENOMEM:
                break
        if ring is None:
            raise BackendUnavailable(_refusal(err))
        self._ring = ring
        self._ext_arg = bool(ring.features & _lib.IORING_FEAT_EXT_ARG)
        ring.flush_delay_us = _FLUSH_DELAY_US
        self._backlog: deque[tuple[int, ...]] = deque()  # SQEs that did not fit (SQ full/busy)
        # Operations the kernel owns, by user_data, until their CQE (see _start).
        self._inflight: dict[int, Operation] = {}
        self._resubmits: dict[int, int] = {}  # user_data -> re-submissions (see _complete)
        # A port dropped without close() must not free buffers the kernel still owns.
        _LIVE[id(self._inflight)] = self._inflight
        self._next_uid = 2
        self._wake_pending = False
        self._ring_open = True
        self._cqes = _ffi.new("pio_cqe[]", _REAP_BATCH)
        # A stream receive given at most this size is one buffer-select RECV (0: none is).
        self._pbuf_size = 0
        self._pbufs: list[Any] = []  # the provided buffers' addresses, by buffer id
        if _pbuf_refusal(ring) is None:
            base = _lib.pio_pbuf_base(ring)
            self._pbufs = [base + i * _PBUF_SIZE for i in range(_PBUF_COUNT)]
            self._pbuf_size = _PBUF_SIZE
        self._constructed = True

    @property
    def ring_info(self) -> dict[str, int]:
        """Sizes, flags and counters of this port's ring (for tests and reports)."""
        ring = self._ring
        return {"sq_entries": ring.sq_entries, "cq_entries": ring.cq_entries,
                "features": ring.features, "setup_flags": ring.flags,
                "overflow_flushes": ring.overflow_flushes, "busy_retries": ring.busy_retries,
                "inflight": len(self._inflight), "backlog": len(self._backlog),
                "pbuf_buffers": len(self._pbufs)}

    # ------------------------------------------------------------------ submission
    # Every SQE is written under the port lock: _start, _cancel and _complete run with it
    # held, the shared code calls _wakeup only with it held, and _poll and _shutdown take it.
    # io_uring_enter itself needs no lock: it only reads the published tail.
    def _push(self, args: tuple[int, ...], eager: bool = True) -> None:
        """(lock held) Queue one SQE (``pio_push`` arguments after the ring); submit it now if
        ``eager``, else leave it for the next poll (or the C flusher thread, within two
        ``_FLUSH_DELAY_US`` ticks)."""
        lib, ring = _lib, self._ring
        if self._backlog or not lib.pio_push(ring, *args, _SUBMIT if eager else _DEFER):
            self._backlog.append(args)
            self._flush_backlog()
            lib.pio_enter(ring, 0, 0)

    def _eager(self) -> bool:
        # Submit now only if another thread sits in io_uring_enter: it would not see this SQE
        # until it wakes.  Otherwise the next poll submits it with its wait, in one syscall
        # for the whole batch (the flusher thread covers a caller that never polls again).
        return self._polling and self._poller_ident != threading.get_ident()

    def _flush_backlog(self) -> None:
        """(lock held) Move backlogged SQEs into the SQ, submitting to make room."""
        lib, ring, backlog = _lib, self._ring, self._backlog
        while backlog:
            if not lib.pio_push(ring, *backlog[0], _QUEUE_ONLY) and (
                    lib.pio_enter(ring, 0, 0) <= 0
                    or not lib.pio_push(ring, *backlog[0], _QUEUE_ONLY)):
                return  # the kernel is busy (CQ overflow): retried after the next reap
            backlog.popleft()

    def _attach(self, entry: HandleEntry) -> None:
        # io_uring itself does not care, but the contract says register() makes sockets
        # non-blocking, and users mixing in direct calls expect the same on every backend.
        if entry.sock is not None:
            entry.sock.setblocking(False)

    def _detach(self, entry: HandleEntry) -> None:
        pass  # its operations were cancelled by uid; the kernel holds its own file references

    def _start(self, op: Operation) -> None:
        ffi = _ffi
        kind = op.kind
        # What the kernel reads or writes must stay put from submission to CQE: the buffer is
        # held by op.buffer, portio's own memoryview (its export pins the bytes and their
        # size), and op.pinned holds the msghdr + sockaddr scratch; the op itself is held by
        # self._inflight until its CQE.  The cffi buffer object that yields an address lives
        # only for the call: kept on the op, it would let the cyclic GC clear the memoryview
        # it exports, and CPython crashes when that export is released afterwards.
        if kind == "recv" or kind == "send":  # noqa: PLR1714 (the hot path, spelled out)
            # One C call, as _sqe() would build it: a stream's receives and sends are most of
            # the operations a server starts.
            uid = self._next_uid
            self._next_uid = uid + 1
            self._inflight[uid] = op
            op.native = uid
            if kind == "send":
                buf = ffi.from_buffer(op.buffer)
                opcode, size, flags = _OP_SEND, len(buf), _SEND_FLAGS
            elif op.buffer is not None:
                buf = ffi.from_buffer("char[]", op.buffer, True)  # True: must be writable
                opcode, size, flags = _OP_RECV, len(buf), 0
            elif op.size <= self._pbuf_size and op.entry.type == _SOCK_STREAM:
                # Given a size: one RECV into a provided buffer the kernel picks when data
                # arrives (see "Idle receives").
                eager = self._polling and self._poller_ident != threading.get_ident()
                if self._backlog or not _lib.pio_push_select(self._ring, op.entry.fd, op.size,
                                                             uid, _SUBMIT if eager else _DEFER):
                    self._push(self._sqe(op), eager)
                return
            else:  # given a size: wait for readability, with no buffer (see _receive_ready)
                op.pinned = _POLLED
                buf, opcode, size, flags = ffi.NULL, _OP_POLL_ADD, 0, _POLLIN
            eager = self._polling and self._poller_ident != threading.get_ident()
            if self._backlog or not _lib.pio_push_buf(self._ring, opcode, op.entry.fd, buf,
                                                      size, flags, uid,
                                                      _SUBMIT if eager else _DEFER):
                self._push(self._sqe(op), eager)  # the SQ is full: into the backlog
            return
        if kind == "accept":
            msg = ffi.new("struct pio_msg *")
            msg.addrlen = _ADDR_MAX
            op.pinned = msg
        elif kind == "connect":
            # An address that cannot be encoded raises: PortBase makes that the completion.
            raw = _sockaddr.encode(op.entry.family or 0, op.address)
            msg = ffi.new("struct pio_msg *")
            ffi.memmove(msg.addr, raw, len(raw))
            op.pinned = (msg, len(raw))
        elif kind == "recvfrom" and op.buffer is None:
            pass  # a poll, like recv's: nothing for the kernel to write
        elif kind in {"recvfrom", "sendto"}:
            raw = b""
            if kind == "sendto":
                raw = _sockaddr.encode(op.entry.family or 0, op.address)
                buf = ffi.from_buffer(op.buffer)
            else:
                buf = ffi.from_buffer(op.buffer, require_writable=True)
            msg = ffi.new("struct pio_msg *")
            if raw:
                ffi.memmove(msg.addr, raw, len(raw))
            _lib.pio_msg_init(msg, buf, len(buf), len(raw) if raw else _ADDR_MAX)  # the iovec
            op.pinned = msg
        uid = self._next_uid
        self._next_uid = uid + 1
        self._inflight[uid] = op
        op.native = uid
        self._push(self._sqe(op), self._eager())

    def _sqe(self, op: Operation) -> tuple[int, ...]:
        """The ``pio_push`` arguments for (what is left of) a started operation."""
        lib, ffi = _lib, _ffi
        kind, fd, uid, pinned = op.kind, op.entry.fd, op.native, op.pinned
        if op.buffer is None and kind in {"recv", "recvfrom"}:
            if kind == "recv" and pinned is None:  # a buffer-select receive
                return (_OP_RECV, _BUFFER_SELECT, fd, 0, op.size, 0, 0, uid)
            return (_OP_POLL_ADD, 0, fd, 0, 0, _POLLIN, 0, uid)
        if kind in {"recv", "send", "read", "write"}:
            assert op.buffer is not None
            base = int(ffi.cast("uintptr_t", ffi.from_buffer(op.buffer))) + op.sent
            left = op.buffer.nbytes - op.sent  # a short send or write re-submits the rest
            if kind == "recv":
                return (lib.IORING_OP_RECV, 0, fd, base, left, 0, 0, uid)
            if kind == "send":
                return (lib.IORING_OP_SEND, 0, fd, base, left, _SEND_FLAGS, 0, uid)
            if kind == "read":
                return (lib.IORING_OP_READ, 0, fd, base, left, 0, op.offset, uid)
            return (lib.IORING_OP_WRITE, 0, fd, base, left, 0, op.offset + op.sent, uid)
        if kind == "accept":
            return (lib.IORING_OP_ACCEPT, 0, fd, int(ffi.cast("uintptr_t", pinned.addr)), 0,
                    _ACCEPT_FLAGS,
                    int(ffi.cast("uintptr_t", ffi.addressof(pinned, "addrlen"))), uid)
        if kind == "connect":
            msg, addrlen = pinned
            return (lib.IORING_OP_CONNECT, 0, fd, int(ffi.cast("uintptr_t", msg.addr)), 0, 0,
                    addrlen, uid)
        hdr = int(ffi.cast("uintptr_t", ffi.addressof(pinned, "hdr")))
        if kind == "sendto":
            return (lib.IORING_OP_SENDMSG, 0, fd, hdr, 1, _SENDTO_FLAGS, 0, uid)
        return (lib.IORING_OP_RECVMSG, 0, fd, hdr, 1, 0, 0, uid)

    def _cancel(self, op: Operation) -> None:
        uid = op.native
        if not isinstance(uid, int) or uid not in self._inflight:
            self._finish(op, None, op.sent, op.cancel_error)
            return
        for args in self._backlog:
            if args[-1] == uid:  # never reached the kernel: finish it here
                self._backlog.remove(args)
                self._forget_uid(uid)
                self._finish(op, None, op.sent, op.cancel_error)
                return
        # The target's own CQE decides: -ECANCELED, or the real result if it won the race.
        self._push((_lib.IORING_OP_ASYNC_CANCEL, 0, -1, uid, 0, 0, 0, _UDATA_IGNORE))
        if not self._polling:
            # Nobody else is reaping (we hold the lock and no poller runs), so wait for the
            # answer here: it is nearly always immediate, and it keeps a handle's completions
            # in order when close_handle() cancels a started operation and the queued ones
            # behind it (those complete at once, in the shared code).
            self._reap_until_gone(uid, _CANCEL_WAIT)

    def _forget_uid(self, uid: int) -> None:
        """(lock held) The kernel has let go of operation ``uid``'s memory."""
        del self._inflight[uid]
        if self._resubmits:
            self._resubmits.pop(uid, None)

    # ------------------------------------------------------------------ completion
    def _poll(self, timeout: float | None) -> None:
        lib, ring = _lib, self._ring
        ns = -1 if timeout is None else int(timeout * 1e9)
        if self._backlog or (ns > 0 and not self._ext_arg):
            with self._lock:
                self._flush_backlog()
                if ns > 0 and not self._ext_arg:
                    lib.pio_queue_wait_timeout(ring, ns, 1)
        # Submit what is deferred, and wait only if nothing is ready (one syscall, no GIL).
        lib.pio_enter(ring, 0 if lib.pio_cq_ready(ring) else 1, ns)
        self._reap()

    def _reap_until_gone(self, uid: int, patience: float) -> None:
        """(lock held, no poller) Reap until operation ``uid``'s CQE arrived, for at most
        ``patience`` seconds (the poller picks it up later otherwise)."""
        lib, ring = _lib, self._ring
        deadline = time.monotonic() + patience
        while True:
            self._drain_locked()
            if uid not in self._inflight:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            lib.pio_enter(ring, 1, int(left * 1e9))

    def _drain_locked(self) -> int:
        """(lock held, and this thread is the only reaper) One batch of CQEs."""
        cqes = self._cqes
        n: int = _lib.pio_reap(self._ring, cqes, _REAP_BATCH)
        inflight, resubmits, finish = self._inflight, self._resubmits, self._finish
        pbufs, unpack = self._pbufs, _ffi.unpack
        for uid, res, flags in _CQE.iter_unpack(_ffi.buffer(cqes, n * _CQE.size)):
            op = inflight.get(uid)
            if op is None:
                if uid == _UDATA_WAKE:
                    self._wake_pending = False
                continue  # a cancel request's own CQE, or a target already finished
            # The hot path inline: a stream receive, or a send sent whole.
            kind = op.kind
            if res > 0 and not resubmits:
                if kind == "recv":
                    del inflight[uid]
                    if op.buffer is not None:
                        finish(op, op.recv_result(res) if op.want_bytes else res, res)
                    elif flags & _F_BUFFER:  # the bytes, in a provided buffer
                        finish(op, unpack(pbufs[flags >> _BUFFER_SHIFT], res), res)
                    elif not self._receive_ready(op):  # readable (res: the poll mask)
                        self._poll_again(uid, op)
                    continue
                buffer = op.buffer
                if kind == "send" and buffer is not None and op.sent + res == buffer.nbytes:
                    del inflight[uid]
                    op.sent += res
                    finish(op, op.sent, op.sent)
                    continue
            self._complete(uid, op, res, flags)
        if pbufs:
            # Their bytes are copied: the buffers of this batch go back to the kernel now.
            _lib.pio_pbuf_return(self._ring)
        return n

    def _reap(self) -> None:
        lib, ring = _lib, self._ring
        while True:
            if not lib.pio_cq_ready(ring) and not self._backlog:
                return
            with self._lock:
                n = self._drain_locked()
                if n < _REAP_BATCH:
                    if self._backlog:
                        self._flush_backlog()
                        lib.pio_enter(ring, 0, 0)
                    return

    def _complete(self, uid: int, op: Operation, res: int, flags: int = 0) -> None:
        """(lock held) Handle the CQE of operation ``uid``, ``op`` (``flags``: the CQE's)."""
        kind = op.kind
        if res >= 0:
            if op.buffer is None and kind in {"recv", "recvfrom"}:
                self._forget_uid(uid)
                if flags & _F_BUFFER:  # a buffer-select receive: the bytes
                    self._finish(op, _ffi.unpack(self._pbufs[flags >> _BUFFER_SHIFT], res), res)
                elif kind == "recv" and op.pinned is None:  # the same, at end of stream
                    self._finish(op, b"", 0)
                elif not self._receive_ready(op):  # a poll: the socket is readable
                    self._poll_again(uid, op)
                return
            if kind in {"recv", "read"}:  # the hot path first
                del self._inflight[uid]
                if self._resubmits:
                    self._resubmits.pop(uid, None)
                self._finish(op, op.recv_result(res) if op.want_bytes else res, res)
                return
            if kind in {"send", "write"}:
                assert op.buffer is not None
                sent = op.sent = op.sent + res
                if sent < op.buffer.nbytes:
                    if op.cancel_error is not None or op._done:
                        self._forget_uid(uid)
                        self._finish(op, None, sent, op.cancel_error)
                    elif res == 0:
                        self._forget_uid(uid)
                        self._finish(op, None, sent, error_from_errno(errno.EPIPE))
                    else:
                        self._push(self._sqe(op), self._eager())  # a short send: the rest
                    return
                self._forget_uid(uid)
                self._finish(op, sent, sent)
                return
        elif res == -errno.ENOBUFS and op.buffer is None and kind == "recv":
            # The provided-buffer ring was empty (more receives completed than it has buffers,
            # between two reaps): nothing was received.  This one waits by poll instead.
            self._forget_uid(uid)
            op.pinned = _POLLED
            self._poll_again(uid, op)
            return
        elif res == -errno.ECANCELED and op.cancel_error is None and not op._done \
                and not self._closed and self._resubmits.get(uid, 0) < _MAX_RESUBMITS:
            # Nobody asked for this cancel: the thread that submitted the request exited, and
            # io_uring cancels a request whose completion work can no longer run in its task.
            # It consumed nothing (the kernel had not done the I/O yet), so submit it again
            # from this thread, which is alive.
            self._resubmits[uid] = self._resubmits.get(uid, 0) + 1
            if kind == "accept":
                op.pinned.addrlen = _ADDR_MAX
            self._push(self._sqe(op), self._eager())
            return
        if res == -errno.EISCONN and kind == "connect" and uid in self._resubmits:
            res = 0  # a re-submitted connect found the first attempt had succeeded
        self._forget_uid(uid)
        if res < 0:
            code = -res
            error: OSError
            if op.cancel_error is not None and code in (errno.ECANCELED, errno.EINTR):
                error = op.cancel_error
            else:
                error = error_from_errno(code)
            self._finish(op, None, op.sent, error)
        elif kind == "accept":
            entry = op.entry
            assert entry.sock is not None
            try:
                msg = op.pinned
                raw = bytes(_ffi.buffer(msg.addr, min(msg.addrlen, _ADDR_MAX)))
                address = _sockaddr.decode(raw)
                conn = socket.socket(entry.family or socket.AF_INET,
                                     entry.type or socket.SOCK_STREAM, entry.sock.proto,
                                     fileno=res)
            except BaseException:
                os.close(res)
                raise
            if not self._finish(op, (conn, address), 0):
                conn.close()  # the port closed meanwhile: nobody will ever see it
        elif kind == "connect":
            self._finish(op, None, 0)
        elif kind == "recvfrom":
            msg = op.pinned
            namelen = min(_lib.pio_msg_namelen(msg), _ADDR_MAX)
            address = _sockaddr.decode(bytes(_ffi.buffer(msg.addr, namelen)))
            self._finish(op, (op.recv_result(res), address), res)
        else:  # sendto
            self._finish(op, res, res)

    def _poll_again(self, uid: int, op: Operation) -> None:
        """(lock held) A receive's socket was reported readable but had nothing (another
        reader took it, or a spurious wake-up): wait for readability again, unless it is being
        cancelled, which is then exact (nothing was received)."""
        if op.cancel_error is not None or not self._ring_open:
            self._finish(op, None, 0, op.cancel_error or OperationCancelled("the port closed"))
            return
        self._inflight[uid] = op
        self._push(self._sqe(op), self._eager())

    def _wakeup(self) -> None:
        # (lock held: the shared code calls it only from under the port lock)
        if self._wake_pending or not self._ring_open:
            return
        self._wake_pending = True
        self._push((_lib.IORING_OP_NOP, 0, -1, 0, 0, 0, 0, _UDATA_WAKE))

    def _abandon(self) -> None:
        # A child's copy after fork(): the ring, its requests and the flusher thread are the
        # parent's; cancelling here would cancel the parent's I/O.  Unmap and close our copy.
        self._ring_open = False
        _LIVE.pop(id(self._inflight), None)
        _lib.pio_abandon(self._ring)

    def _shutdown(self) -> None:
        lib, ring = _lib, self._ring
        # Every operation the kernel holds stays referenced until this returns, outside the
        # lock: the last reference to an operation's data= must not go under it.
        kept = list(self._inflight.values())
        with self._lock:
            self._ring_open = False
            for args in self._backlog:  # never submitted: the kernel never saw their buffers
                self._inflight.pop(args[-1], None)
            self._backlog.clear()
            for uid in list(self._inflight):
                self._push((lib.IORING_OP_ASYNC_CANCEL, 0, -1, uid, 0, 0, 0, _UDATA_IGNORE))
        # Reap until the kernel has answered for every buffer it was given.
        deadline = time.monotonic() + _SHUTDOWN_GRACE
        while self._inflight and time.monotonic() < deadline:
            with self._lock:
                self._flush_backlog()
            lib.pio_enter(ring, 1, 50_000_000)
            self._reap()
        _LIVE.pop(id(self._inflight), None)
        if self._inflight:
            # The kernel still owns some buffers (e.g. a read stuck on a slow device): leak
            # them, and the ring, rather than free memory the kernel may still write.
            _GRAVEYARD.append((ring, dict(self._inflight)))
            return
        lib.pio_teardown(ring)
        kept.clear()
