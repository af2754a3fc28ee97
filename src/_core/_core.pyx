# cython: language_level=3, embedsignature=True, freethreading_compatible=True
"""Compiled core of databuffer: a ring of object pointers per partition.

Two classes, the same interface as ``databuffer._core_py`` (the reference
implementation); the contract with the engine is ``databuffer._contract``:

- ``Core``: the items and counters of a buffer; the engine holds it and
  calls its methods (``CoreAPI``); it calls the engine back through
  ``hooks`` (``CoreHooks``) on an insert's slow paths;
- ``BufferCore``: the base of ``Buffer`` and ``AsyncBuffer``: ``insert``
  and ``insert_batch``, and one read-only field, ``_databuffer``, the
  ``Core`` that ``attach`` gave it.

Thread-safety.  Each partition's ring and fields (``Part``, in ``_part.h``:
cache-line aligned, so partitions never share a cache line) are guarded by the
partition's lock (``Part.lock``, see ``_atomic.h``): a ``PyMutex`` on a
free-threaded build, nothing on a GIL build, where the GIL serializes the
writers.  The core never runs Python code (no allocation, no decref that
could run ``__del__``, no callback) while it holds a partition: batch lists
are allocated before the lock is taken and the decision re-checked under it.
Counters read without the lock (``size()``, ``finished_upto()``) go
through the atomic helpers, so no reader sees a torn value; ``flushed`` and
``failed`` are also written without it, by atomic adds (``finish()``).  A partition's flusher
sleeps on its wake event (``Part.wake``, see ``_event.h``), which has a
mutex of its own and is set by sealing inserts without the GIL being given
up.  ``Core`` fields other than ``_parts``' contents are written once in
``__init__`` (before the buffer is shared), except ``_rr`` and
``_homes_rr`` (atomic), ``_homes`` (a dict: each operation on it is atomic)
and ``_closed`` (atomic; see ``mark_closed`` and ``set_attention``).  A
thread's cache of its home partitions (``_part.h``) is thread-local: only
that thread touches it.  ``BufferCore._databuffer`` is written once, by
``attach``, before the buffer is shared.
"""

cimport cython
from cpython.list cimport PyList_New
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc

from _decl cimport *

from databuffer._contract import PartStats

__all__ = ("BufferCore", "Core", "attach", "insert_telemetry", "own_methods", "set_insert_telemetry")

# Whether any telemetry handler listens to insert events (0 or 1).  Written
# by databuffer.telemetry under its registry lock, read by every insert
# (atomically: a stale read only delays the switch by one call).
cdef int64_t _insert_events = 0


def set_insert_telemetry(bint enabled):
    """Route inserts through the instrumented path (True) or the plain one."""
    db_store(&_insert_events, 1 if enabled else 0)


def insert_telemetry():
    """Whether inserts currently emit telemetry events."""
    return db_load(&_insert_events) != 0


cdef enum:
    GATE_OPEN = 0
    GATE_CLOSED = 1
    GATE_ATTEND = 2


# Serial numbers of buffer cores (atomic): keys of the threads' home caches.
cdef int64_t _serials = 0


cdef inline void ring_push(Part *part, PyObject *item) noexcept nogil:
    """Append a reference the caller already owns; the ring has room."""
    part.ring[part.tail] = item
    part.tail += 1
    if part.tail == part.cap:
        part.tail = 0
    # Writers hold the partition's lock: a plain store is enough (no locked
    # read-modify-write on the free-threaded insert path); lock-free
    # readers still see whole values.
    db_store(&part.count, part.count + 1)
    db_store(&part.inserted, part.inserted + 1)


cdef inline void ring_move(Part *part, PyObject **dest, Py_ssize_t k) noexcept nogil:
    """Move the ``k`` oldest references out of the ring into ``dest``."""
    cdef Py_ssize_t first = part.cap - part.head
    cdef Py_ssize_t i
    if first > k:
        first = k
    for i in range(first):
        dest[i] = part.ring[part.head + i]
    for i in range(k - first):
        dest[first + i] = part.ring[i]
    part.head += k
    if part.head >= part.cap:
        part.head -= part.cap
    db_store(&part.count, part.count - k)
    db_store(&part.taken, part.taken + k)


cdef inline bint can_seal(Part *part) noexcept nogil:
    """Whether ``part`` may seal one more batch (under its lock)."""
    return part.queued + part.holding < part.slots


cdef inline void queue_push(Part *part, PyObject *batch, int64_t k) noexcept nogil:
    """Queue a sealed batch of ``k`` items (a reference the caller owns); ``can_seal`` held.

    Called right after ``ring_move`` took the batch's items out of the ring,
    so its first item's sequence number is ``taken - k``.
    """
    cdef int64_t i = part.qhead + part.queued
    if i >= part.slots:
        i -= part.slots
    part.queue[i] = batch
    part.qfirst[i] = part.taken - k
    db_store(&part.queued, part.queued + 1)


cdef inline PyObject *queue_pop(Part *part) noexcept nogil:
    """Take the oldest sealed batch out of the queue (not empty); the caller owns the reference."""
    cdef PyObject *batch = part.queue[part.qhead]
    part.queue[part.qhead] = NULL
    part.qhead += 1
    if part.qhead == part.slots:
        part.qhead = 0
    db_store(&part.queued, part.queued - 1)
    return batch


cdef object new_seed():
    """A random odd 64-bit seed for a partition's jitter generator (never 0)."""
    import os
    return int.from_bytes(os.urandom(8), "little") | 1


cdef inline uint64_t rng_next(Part *part) noexcept nogil:
    cdef uint64_t x = part.rng
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    part.rng = x
    return x * <uint64_t>0x2545F4914F6CDD1D


@cython.final
cdef class Core:
    """Storage and counters of a buffer: a ring of items per partition (``CoreAPI``)."""

    # Every insert reads the fields below; on a free-threaded build every
    # thread that takes a reference to the core writes its header (the
    # shared reference count): the padding keeps them off its cache line.
    cdef char _pad_header[64]
    cdef Part *_parts
    cdef Py_ssize_t _n
    cdef bint _by_thread        # dispatch="thread": each thread has a home partition
    cdef uint64_t _serial       # this core's key in the threads' home caches
    cdef dict _homes            # thread ident -> home partition (dict ops are atomic)
    # The insert gate (atomic helpers): GATE_OPEN, GATE_CLOSED (final, see
    # mark_closed) or GATE_ATTEND (see set_attention).  The hot path only
    # tests it for zero, so one load serves both.
    cdef int64_t _closed
    cdef int64_t _max_size
    cdef int64_t _jitter
    cdef Py_ssize_t _events     # partitions whose wake event is initialised
    cdef bint _seal_hook        # call hooks.sealed(p) after each seal
    # The engine (CoreHooks): called on the slow paths of inserts.
    cdef readonly object hooks
    # Written by inserts (round-robin dispatch): on cache lines of their own.
    cdef char _pad_counters[64]
    cdef int64_t _rr            # round-robin counter (atomic helper)
    cdef int64_t _homes_rr      # round-robin over threads (atomic helper)
    cdef char _pad_end[56]

    def __cinit__(self, *args, **kwargs):
        self._parts = NULL
        self._n = 0
        self._events = 0

    def __dealloc__(self):
        # No other thread can reach the object any more: no locks needed.
        cdef Py_ssize_t p, _i, idx
        cdef Part *part
        if self._parts is NULL:
            return
        for p in range(self._n):
            part = &self._parts[p]
            idx = part.head
            for _i in range(<Py_ssize_t>part.count):
                Py_DECREF(<object>part.ring[idx])
                idx += 1
                if idx == part.cap:
                    idx = 0
            part.count = 0
            while part.queued > 0:
                Py_DECREF(<object>queue_pop(part))
            free(part.queue)
            free(part.qfirst)
            free(part.ring)
            if p < self._events:
                db_event_destroy(&part.wake)
        db_parts_free(self._parts)
        self._parts = NULL

    def __init__(self, Py_ssize_t partitions, Py_ssize_t max_size, Py_ssize_t max_size_jitter,
                 bint by_thread, bint seal_hook, hooks, Py_ssize_t max_queued=0):
        """Allocate the rings (capacity ``max_size + max_size_jitter``).

        ``by_thread``: dispatch by thread (each thread inserts into a home
        partition, assigned round-robin to threads as they first insert)
        instead of round-robin per insert call.  ``seal_hook``: after each
        seal, call ``hooks.sealed(p)`` (with no partition lock held), for an
        engine whose flushers do not sleep on the wake event.  ``hooks``:
        the engine (``CoreHooks``).  ``max_queued``: how many sealed batches
        a partition may hold waiting for its flusher besides the one it
        flushes (a queue of ``max_queued + 1`` slots per partition).
        """
        cdef Py_ssize_t p, cap
        cdef int err
        if self._parts is not NULL:
            raise RuntimeError("the buffer core is already initialised")
        self.hooks = hooks
        if partitions < 1 or max_size < 1 or max_size_jitter < 0 or max_queued < 0:
            raise ValueError("bad core sizes")
        if max_queued >= (PY_SSIZE_T_MAX // <Py_ssize_t>sizeof(PyObject *)) // 2:
            raise ValueError(f"max_queued = {max_queued} is too large")
        self._max_size = max_size
        self._jitter = max_size_jitter
        self._by_thread = by_thread
        self._seal_hook = seal_hook
        self._homes = {}
        self._serial = <uint64_t>db_add(&_serials, 1)
        if max_size_jitter > (PY_SSIZE_T_MAX // <Py_ssize_t>sizeof(PyObject *)) // 2 - max_size:
            raise ValueError(f"max_size + max_size_jitter = {max_size + max_size_jitter} is too large")
        cap = max_size + max_size_jitter
        seeds = [new_seed() for _ in range(partitions)]
        self._parts = db_parts_new(partitions)
        if self._parts is NULL:
            raise MemoryError()
        self._n = partitions
        for p in range(partitions):
            self._parts[p].rng = seeds[p]
            err = db_event_init(&self._parts[p].wake)
            if err:
                raise OSError(err, f"cannot create the wake event of partition {p}")
            self._events = p + 1
            self._parts[p].ring = <PyObject **>malloc(cap * sizeof(PyObject *))
            if self._parts[p].ring is NULL:
                raise MemoryError(
                    f"no memory for a ring of {cap} items (max_size + max_size_jitter) "
                    f"for partition {p}: each partition allocates one up front; lower max_size"
                )
            self._parts[p].cap = cap
            self._parts[p].queue = <PyObject **>malloc((max_queued + 1) * sizeof(PyObject *))
            self._parts[p].qfirst = <int64_t *>malloc((max_queued + 1) * sizeof(int64_t))
            if self._parts[p].queue is NULL or self._parts[p].qfirst is NULL:
                raise MemoryError(f"no memory for a queue of {max_queued + 1} batches for partition {p}")
            self._parts[p].slots = max_queued + 1
            self._parts[p].threshold = self._draw(&self._parts[p])

    cdef inline int64_t _draw(self, Part *part) noexcept nogil:
        """A new flush size for ``part`` (under its lock)."""
        if self._jitter == 0:
            return self._max_size
        return self._max_size + <int64_t>(rng_next(part) % <uint64_t>(self._jitter + 1))

    # -- inserts ----------------------------------------------------------

    cdef tuple _insert_many(self, object items, object timeout, object key):
        cdef Py_ssize_t p, n, done
        if timeout is not None:
            check_timeout(self, timeout)
        # The key's partition before the items are consumed: an unhashable
        # key raises having consumed and stored nothing.
        p = -1 if key is None else key_partition(self, key)
        if type(items) is tuple or (type(items) is list and not DB_FREE_THREADED):
            seq = items
        elif type(items) is list:
            # Another thread may resize a list while its items are copied:
            # take a snapshot (thread-safe) on a free-threaded build.
            seq = tuple(<list>items)
        else:
            # iterate() refuses a str, bytes or bytearray (one item, not its characters).
            seq = list(self.hooks.iterate(items))
        n = PySequence_Fast_GET_SIZE(seq)
        if db_load(&self._closed):
            pass_gate(self, 0)
        if n == 0:
            return (-1, 0)
        if p < 0:
            p = next_partition(self)
        done = self._store_many(p, seq, 0)
        if done < n:
            self.hooks.insert_batch_wait(p, seq, done, timeout)
        return (p, n)

    cdef Py_ssize_t _store_many(self, Py_ssize_t p, object seq, Py_ssize_t start) except -1:
        """Store ``seq[start:]`` while there is room; index of the first not stored.

        ``seq`` is a tuple, or a list no other thread can resize.
        """
        cdef Part *part = &self._parts[p]
        cdef PyObject **items
        cdef Py_ssize_t n
        cdef Py_ssize_t i = start
        cdef Py_ssize_t room, stop, j
        cdef bint full, seal
        while True:
            if db_load(&self._closed):
                pass_gate(self, i)
                continue
            # Read again after every seal: it may have run Python code.
            n = PySequence_Fast_GET_SIZE(seq)
            if i >= n:
                return i
            db_lock(&part.lock)
            if db_load(&self._closed):
                db_unlock(&part.lock)
                continue
            full = part.count >= part.threshold
            if full:
                seal = can_seal(part)
            else:
                items = PySequence_Fast_ITEMS(seq)
                room = <Py_ssize_t>(part.threshold - part.count)
                stop = i + room
                if stop > n:
                    stop = n
                for j in range(i, stop):
                    Py_INCREF(<object>items[j])
                    ring_push(part, items[j])
                i = stop
                seal = part.count >= part.threshold and can_seal(part)
            db_unlock(&part.lock)
            if seal:
                self._seal(p)
            elif full:
                return i

    cdef int _seal(self, Py_ssize_t p) except -1:
        """Queue a full batch for the flusher and wake it, if still due.

        Seals nothing when the partition's queue is full (``can_seal``) or
        the ring not full by the time the batch list is allocated; the
        caller tests the partition again.
        """
        cdef Part *part = &self._parts[p]
        cdef Py_ssize_t k
        cdef bint sealed = False
        while True:
            k = <Py_ssize_t>db_load(&part.threshold)
            # Allocating may run Python code (the cyclic GC): do it before
            # taking the lock, then check that the decision still holds.
            batch = PyList_New(k)
            db_lock(&part.lock)
            if not can_seal(part) or part.count < part.threshold:
                db_unlock(&part.lock)
                break
            if part.threshold == k:
                # The list's slots take over the ring's references.
                ring_move(part, (<PyListObject *>batch).ob_item, k)
                Py_INCREF(batch)
                queue_push(part, <PyObject *>batch, k)
                db_store(&part.threshold, self._draw(part))
                sealed = True
            db_unlock(&part.lock)
            if sealed:
                break
        if sealed:
            db_event_set(&part.wake)
            if self._seal_hook:
                self.hooks.sealed(p)
        return 0

    # -- called by the engine (CoreAPI) -------------------------------------

    def push_many(self, Py_ssize_t p, seq, Py_ssize_t start):
        """Store ``seq[start:]`` (a list or tuple) in partition ``p`` while there is room.

        Returns the index of the first item not stored.
        """
        self._part(p)
        if not isinstance(seq, (list, tuple)):
            raise TypeError("push_many() needs a list or a tuple")
        if start < 0:
            raise ValueError("start must be >= 0")
        if DB_FREE_THREADED and type(seq) is not tuple:
            seq = tuple(seq)
        return self._store_many(p, seq, start)

    def wake(self, Py_ssize_t p):
        """Wake the flusher of partition ``p``; wakes before it runs count once."""
        db_event_set(&self._part(p).wake)

    def wait_wake(self, Py_ssize_t p, timeout=None):
        """Sleep until partition ``p``'s flusher is woken (the flusher only).

        Consumes the wake and returns True; False if ``timeout`` seconds
        (``None``: no limit) passed first.
        """
        cdef Part *part = self._part(p)
        cdef double seconds = -1.0
        cdef int got
        if timeout is not None:
            seconds = timeout
            if not seconds >= 0.0:
                raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        with nogil:
            got = db_event_wait(&part.wake, seconds)
        return got != 0

    def insert_raw(self, item, timeout, key=None):
        """Insert without telemetry (into ``key``'s partition, if given); returns the partition used."""
        if self._parts is NULL:
            raise not_made()
        if key is None:
            return insert_one(self, item, timeout)
        return insert_keyed(self, item, timeout, key)

    def insert_batch_raw(self, items, timeout, key=None):
        """Insert a batch without telemetry; returns ``(partition, count)``."""
        if self._parts is NULL:
            raise not_made()
        return self._insert_many(items, timeout, key)

    def take(self, Py_ssize_t p, int64_t upto):
        """Give the flusher its next batch, or None once it is idle.

        Returns ``(batch, by_size, first_seq)``; see the reference core.
        The batch the flusher took before has finished.
        """
        cdef Part *part = self._part(p)
        cdef int64_t first
        cdef Py_ssize_t due
        cdef Py_ssize_t k = -1
        cdef PyObject *ready
        cdef bint by_size
        batch = None
        while True:
            db_lock(&part.lock)
            db_store(&part.holding, 0)
            if part.queued > 0:
                first = part.qfirst[part.qhead]
                ready = queue_pop(part)
                db_store(&part.holding, 1)
                db_unlock(&part.lock)
                sealed = <object>ready
                Py_DECREF(sealed)  # the queue's reference
                return (sealed, True, first)
            first = part.taken
            if part.count > 0 and part.count >= part.threshold:
                by_size = True
            elif part.count > 0 and first < upto:
                by_size = False
            else:
                db_unlock(&part.lock)
                return None
            due = <Py_ssize_t>(part.count if part.count < part.threshold else part.threshold)
            if batch is not None and due == k:
                ring_move(part, (<PyListObject *>batch).ob_item, k)
                db_store(&part.holding, 1)
                db_store(&part.threshold, self._draw(part))
                db_unlock(&part.lock)
                return (batch, by_size, first)
            db_unlock(&part.lock)
            # A batch is due: allocate its list without the lock (it may run
            # Python code), then check under the lock that it is still due.
            k = due
            batch = PyList_New(k)

    def finish(self, Py_ssize_t p, int64_t n, bint ok):
        """Count a finished batch of ``n`` items as flushed or failed."""
        cdef Part *part = self._part(p)
        if ok:
            db_add(&part.flushed, n)
        else:
            db_add(&part.failed, n)

    def finished_upto(self, Py_ssize_t p, int64_t target):
        """Whether every item of partition ``p`` before sequence ``target`` has finished."""
        cdef Part *part = self._part(p)
        return db_load(&part.flushed) + db_load(&part.failed) >= target

    def evict(self, Py_ssize_t p, Py_ssize_t n):
        """Remove up to ``n`` of partition ``p``'s oldest buffered items (``on_full="drop_oldest"``).

        Never a sealed batch: only items still in the ring.  They count as
        ``evicted``, not taken: the items after them take over their
        sequence numbers.  Returns them in a list, for the caller to release
        with no lock held (it may run ``__del__``).
        """
        cdef Part *part = self._part(p)
        cdef Py_ssize_t k
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        # Allocated before the lock (it may run Python code); shrunk to what was moved.
        out = PyList_New(n)
        db_lock(&part.lock)
        k = <Py_ssize_t>part.count
        if k > n:
            k = n
        ring_move(part, (<PyListObject *>out).ob_item, k)
        db_store(&part.taken, part.taken - k)  # ring_move counted them as taken
        db_store(&part.evicted, part.evicted + k)
        Py_SET_SIZE(<PyObject *>out, k)
        db_unlock(&part.lock)
        return out

    def refuse(self, Py_ssize_t p, Py_ssize_t n):
        """Count ``n`` items an insert dropped instead of storing (``on_full="drop_newest"``)."""
        cdef Part *part = self._part(p)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        db_lock(&part.lock)
        db_store(&part.refused, part.refused + n)
        db_unlock(&part.lock)

    def is_closed(self):
        return db_load(&self._closed) == GATE_CLOSED

    def lock_held(self):
        """Always False: no partition lock is held while Python code runs."""
        return False

    def set_attention(self):
        """Make the next insert call ``hooks.attend()`` (once).

        The engine calls this when one of its threads ended early.  Inserts
        see the gate closed-for-now, take their slow path, and the one that
        reopens it calls ``hooks.attend()`` before going on.
        """
        db_cas(&self._closed, GATE_OPEN, GATE_ATTEND)

    def mark_closed(self):
        """Refuse every later insert.

        Inserts read ``_closed`` under the partition's lock: passing through
        every lock after publishing the flag means that an insert either
        finished storing before this returns, or sees the flag.
        """
        cdef Py_ssize_t p
        db_store_seq_cst(&self._closed, GATE_CLOSED)
        for p in range(self._n):
            db_lock(&self._parts[p].lock)
            db_unlock(&self._parts[p].lock)

    # -- fork (called by the engine from the os.register_at_fork hooks) ----

    def fork_prepare(self):
        """Before ``fork()``: take every partition's lock, so that no ring is
        half-updated in the child.  Released by ``fork_parent`` in the
        parent; the child starts over (``fork_child``)."""
        cdef Py_ssize_t p
        for p in range(self._n):
            db_lock(&self._parts[p].lock)

    def fork_parent(self):
        """After ``fork()``, in the parent: release what ``fork_prepare`` took."""
        cdef Py_ssize_t p
        for p in range(self._n):
            db_unlock(&self._parts[p].lock)

    def fork_child(self):
        """After ``fork()``, in the child: an empty buffer with fresh locks and events.

        The items buffered or in flight belong to the parent, which flushes
        them: the child drops its copies (so nothing is delivered twice) and
        its counters start from zero.  Returns the dropped references in a
        list, for the caller to release once the buffer is consistent again
        (releasing them may run ``__del__`` methods).
        """
        cdef Py_ssize_t p, k
        cdef Part *part
        dropped = []
        if self._parts is NULL:
            return dropped
        for p in range(self._n):
            part = &self._parts[p]
            db_mutex_reinit(&part.lock)
            k = <Py_ssize_t>part.count
            batch = PyList_New(k)
            ring_move(part, (<PyListObject *>batch).ob_item, k)
            dropped.append(batch)
            while part.queued > 0:
                sealed = <object>queue_pop(part)
                Py_DECREF(sealed)  # the queue's reference; `sealed` holds one
                dropped.append(sealed)
            part.head = part.tail = part.qhead = 0
            part.count = part.holding = 0
            part.inserted = part.taken = part.flushed = part.failed = 0
            part.evicted = part.refused = 0
            part.rng = new_seed()
            part.threshold = self._draw(part)
            if p < self._events and db_event_init(&part.wake):
                raise OSError(f"cannot create the wake event of partition {p} after fork")
        self._rr = 0
        self._homes_rr = 0
        self._homes = {}
        db_cas(&self._closed, GATE_ATTEND, GATE_OPEN)
        return dropped

    def stats(self, Py_ssize_t p):
        """A ``PartStats``: ``(size, threshold, busy, inserted, taken, flushed, failed, queued,
        evicted, refused)``.

        One consistent snapshot: read under the partition's lock, so that
        ``inserted == size + taken + evicted``, and ``flushed + failed <=
        taken`` (batches are counted as finished only after they were taken).
        """
        cdef Part *part = self._part(p)
        cdef int64_t count, threshold, busy, inserted, taken, flushed, failed, queued, evicted, refused
        db_lock(&part.lock)
        count = part.count
        threshold = part.threshold
        queued = part.queued
        busy = part.holding or queued
        inserted = part.inserted
        taken = part.taken
        flushed = db_load(&part.flushed)
        failed = db_load(&part.failed)
        evicted = part.evicted
        refused = part.refused
        db_unlock(&part.lock)
        return PartStats(
            count, threshold, busy != 0, inserted, taken, flushed, failed, queued, evicted, refused
        )

    def size(self):
        cdef Py_ssize_t p
        cdef int64_t total = 0
        for p in range(self._n):
            total += db_load(&self._parts[p].count)
        return total

    def dump(self):
        cdef Py_ssize_t p, i, idx, k
        cdef Part *part
        cdef PyObject **dest
        out = []
        for p in range(self._n):
            part = &self._parts[p]
            while True:
                k = <Py_ssize_t>db_load(&part.count)
                # Allocated before the lock (it may run Python code), checked under it.
                chunk = PyList_New(k)
                db_lock(&part.lock)
                if part.count == k:
                    dest = (<PyListObject *>chunk).ob_item
                    idx = part.head
                    for i in range(k):
                        Py_INCREF(<object>part.ring[idx])
                        dest[i] = part.ring[idx]
                        idx += 1
                        if idx == part.cap:
                            idx = 0
                    db_unlock(&part.lock)
                    break
                db_unlock(&part.lock)
            out += chunk
        return out

    cdef Part *_part(self, Py_ssize_t p) except NULL:
        if self._parts is NULL:
            raise not_made()
        if p < 0 or p >= self._n:
            raise IndexError(f"no partition {p}")
        return &self._parts[p]


cdef inline Py_ssize_t next_partition(Core self) except -1:
    """The partition of the next insert call: round-robin, or the thread's home."""
    cdef Py_ssize_t p
    if not self._by_thread:
        return db_round_robin(&self._rr, self._n)
    p = db_home_get(self._serial)
    if p >= 0:
        return p
    return home_partition(self)


cdef Py_ssize_t home_partition(Core self) except -1:
    """The calling thread's home partition, from the buffer's table (cache miss)."""
    ident = PyThread_get_thread_ident()
    home = self._homes.get(ident)
    if home is None:
        # A thread ident is only reused after its thread ended: a new
        # thread with it takes over that thread's home.
        home = self._homes.setdefault(ident, db_round_robin(&self._homes_rr, self._n))
    db_home_set(self._serial, <Py_ssize_t>home)
    return <Py_ssize_t>home


cdef inline Py_ssize_t insert_one(Core self, object item, object timeout) except -1:
    """The insert hot path: a plain function so the C compiler can inline it."""
    if timeout is not None:
        check_timeout(self, timeout)
    return insert_at(self, next_partition(self), item, timeout)


cdef Py_ssize_t insert_keyed(Core self, object item, object timeout, object key) except -1:
    """An insert into ``key``'s partition (per-key order)."""
    if timeout is not None:
        check_timeout(self, timeout)
    return insert_at(self, key_partition(self, key), item, timeout)


cdef Py_ssize_t key_partition(Core self, object key) except -1:
    """``hash(key) % partitions``: equal keys, one partition, so their items keep their order."""
    cdef Py_hash_t h
    cdef Py_ssize_t p
    try:
        h = hash(key)
    except TypeError as exc:
        raise TypeError(f"key must be hashable, not {type(key).__name__} ({exc})") from None
    # Python's modulo (never negative), so that it is hash(key) % partitions exactly.
    p = <Py_ssize_t>(h % self._n)
    if p < 0:
        p += self._n
    return p


cdef inline Py_ssize_t insert_at(Core self, Py_ssize_t p, object item, object timeout) except -1:
    """Store ``item`` in partition ``p`` (``timeout`` checked), or take the slow path."""
    cdef Part *part
    cdef bint stored = False
    cdef bint seal = False
    part = &self._parts[p]
    db_lock(&part.lock)
    if part.count < part.threshold and not db_load(&self._closed):
        Py_INCREF(item)
        ring_push(part, <PyObject *>item)
        stored = True
        seal = part.count >= part.threshold and can_seal(part)
    db_unlock(&part.lock)
    if stored:
        if seal:
            self._seal(p)
        return p
    if db_load(&self._closed):
        pass_gate(self, 0)
    if self._store_many(p, (item,), 0) == 0:
        # Full (or a seal pending): the general path, which re-checks
        # everything; waits for room if the partition is still flushing.
        self.hooks.insert_wait(p, item, timeout)
    return p


cdef int pass_gate(Core self, Py_ssize_t stored) except -1:
    """The gate is not open: raise if the buffer is closed, else attend (once)."""
    if db_load(&self._closed) == GATE_CLOSED:
        raise self.hooks.closed_error(stored)
    if db_cas(&self._closed, GATE_ATTEND, GATE_OPEN):
        self.hooks.attend()
    return 0


cdef inline int check_timeout(Core self, object timeout) except -1:
    """Accept a finite number of seconds >= 0; let the engine name anything else.

    The fast path takes floats up to 1e300 and ints that fit a C long long
    (well within a double's range); any other value, a giant int included,
    goes to the engine's full check, which refuses it before anything is
    stored.
    """
    cdef double seconds
    cdef int overflow
    if type(timeout) is float:
        seconds = timeout
        if seconds >= 0.0 and seconds <= 1e300:
            return 0
    elif type(timeout) is int:
        if PyLong_AsLongLongAndOverflow(timeout, &overflow) >= 0 and not overflow:
            return 0
    self.hooks.check_timeout(timeout)
    return 0


cdef class BufferCore:
    """The base of ``Buffer`` and ``AsyncBuffer``: the insert methods, over a ``Core``.

    Its only state is ``_databuffer``, the ``Core`` given by ``attach``
    (read-only, written once before the buffer is shared).
    """

    cdef readonly Core _databuffer

    @cython.binding(False)
    def insert(self, item, timeout=None, *, key=None):
        """Store one item in a partition: the next one round-robin, or the thread's own (``dispatch``).

        With a ``key``, the partition ``hash(key) % partitions`` instead, so
        that items with equal keys are flushed in insertion order.  Waits
        under backpressure for at most ``timeout`` seconds (``None``: the
        buffer's ``insert_timeout``), then raises ``BufferFull`` having
        stored nothing.  Raises ``BufferClosed`` after ``close()``.
        """
        # Borrowed: written once by attach() and held by self, which the
        # caller holds.  Taking a reference would make every insert write
        # the core's reference count, one cache line for every thread
        # (contended atomics on a free-threaded build).
        cdef PyObject *core = <PyObject *>self._databuffer
        if core == <PyObject *>None:
            raise not_initialised(self)
        if db_load(&_insert_events):
            (<Core>core).hooks.insert_instrumented(item, timeout, key)
            return
        if key is None:
            insert_one(<Core>core, item, timeout)
        else:
            insert_keyed(<Core>core, item, timeout, key)

    @cython.binding(False)
    def insert_batch(self, items, timeout=None, *, key=None):
        """Store every item of an iterable, in order, in one partition (``key``'s, if given).

        A batch larger than the flush threshold is split into consecutive
        flushes.  If room runs out for longer than ``timeout`` seconds,
        raises ``BufferFull`` whose ``stored`` counts the leading items
        stored.
        """
        # Borrowed, as in insert().
        cdef PyObject *core = <PyObject *>self._databuffer
        if core == <PyObject *>None:
            raise not_initialised(self)
        if db_load(&_insert_events):
            (<Core>core).hooks.insert_batch_instrumented(items, timeout, key)
            return
        (<Core>core)._insert_many(items, timeout, key)


cdef object not_initialised(BufferCore buf):
    return RuntimeError(
        f"{type(buf).__name__} is not set up: its __init__ must call super().__init__(...) "
        "before the buffer is used"
    )


cdef object not_made():
    return RuntimeError("the buffer core was not initialised (Core.__init__ did not run)")


def attach(BufferCore buf not None, Core core not None):
    """Give ``buf`` its core (once: a second call raises ``RuntimeError``).

    The core must be initialised: the insert methods rely on it.
    """
    if core._parts is NULL:
        raise not_made()
    if buf._databuffer is not None:
        raise RuntimeError(
            f"{type(buf).__name__}.__init__ ran twice on the same buffer: a buffer is set up once; "
            "make a new one instead"
        )
    buf._databuffer = core


def own_methods(cls):
    """Give ``cls`` descriptors of its own for ``insert`` and ``insert_batch``.

    CPython specializes a call through an attribute (``buf.insert(x)``)
    to a C method only when the instance's type is exactly the class the
    method descriptor was made for; a buffer is always an instance of a
    subclass of ``BufferCore``, so every such call took the generic path
    (about 1.5x slower).  The front classes call this for each subclass:
    the same C functions, in descriptors made for that class.  A method the
    class (or a base between it and the core) overrides is left alone.
    """
    cdef PyMethodDescrObject *ours
    cdef PyMethodDescrObject *found
    if not isinstance(cls, type) or not issubclass(cls, BufferCore):
        raise TypeError(f"own_methods() needs a subclass of BufferCore, not {cls!r}")
    for name in ("insert", "insert_batch"):
        core = BufferCore.__dict__[name]
        attr = getattr(cls, name)
        if type(attr) is not type(core):
            continue  # overridden in Python
        ours = <PyMethodDescrObject *>core
        found = <PyMethodDescrObject *>attr
        if found.d_method != ours.d_method or attr.__objclass__ is cls:
            continue  # another C method, or made for this class already
        setattr(cls, name, PyDescr_NewMethod(<PyTypeObject *>cls, ours.d_method))
