# cython: language_level=3, embedsignature=True
"""Compiled core of databuffer: a ring of object pointers per partition.

Same interface as ``databuffer._core_py`` (the reference implementation, whose
docstring describes the protocol with the Python layer).

Thread-safety: every field of ``BufferCore`` and of its ``Part`` structs is
written only with the GIL held, which serializes writers; counters read by
``size()``/``info()`` go through the atomic helpers of ``_atomic.h`` so that no
reader sees a torn value.  The module is not declared free-threading
compatible: on a free-threaded interpreter CPython keeps the GIL enabled for it.
"""

cimport cython
from cpython.list cimport PyList_New
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset


cdef extern from "Python.h":
    # Borrowed references into a list or tuple returned by PySequence_Fast.
    PyObject** PySequence_Fast_ITEMS(object) noexcept
    Py_ssize_t PySequence_Fast_GET_SIZE(object) noexcept
    ctypedef struct PyListObject:
        PyObject **ob_item
    void Py_SET_SIZE(object, Py_ssize_t) noexcept
    const Py_ssize_t PY_SSIZE_T_MAX


cdef extern from "_atomic.h" nogil:
    int64_t db_load(const int64_t *p)
    void db_store(int64_t *p, int64_t v)
    int64_t db_add(int64_t *p, int64_t v)
    Py_ssize_t db_round_robin(int64_t *counter, Py_ssize_t n)


__all__ = ("BufferCore", "insert_telemetry", "set_insert_telemetry")

# Whether any telemetry handler listens to insert events.  Written by
# databuffer.telemetry (GIL held), read by every insert.
cdef bint _insert_events = False


def set_insert_telemetry(bint enabled):
    """Route inserts through the instrumented path (True) or the plain one."""
    global _insert_events
    _insert_events = enabled


def insert_telemetry():
    """Whether inserts currently emit telemetry events."""
    return _insert_events


ctypedef struct Part:
    # Ring of owned references: items ring[head], ring[head+1], ... (mod cap).
    PyObject **ring
    Py_ssize_t cap
    Py_ssize_t head
    Py_ssize_t tail
    int64_t count       # items in the ring (atomic: read by size()/info())
    int64_t threshold   # the current flush size (atomic)
    int64_t busy        # 1 while a batch is handed to the flusher, unfinished
    int64_t inserted    # atomic counters, in items
    int64_t taken
    int64_t flushed
    int64_t failed
    PyObject *ready     # owned: a batch sealed by an insert, or NULL
    int64_t ready_seq
    # Owned: an empty list with room for ``cap`` items, or NULL.  Batches are
    # moved into it, so that sealing or taking a batch allocates nothing and
    # so runs no Python code (an allocation can start the cyclic GC, which
    # runs __del__ methods and callbacks that may switch threads or re-enter
    # the buffer) between deciding on a batch and moving it.
    PyObject *spare


cdef inline void ring_push(Part *part, PyObject *item) noexcept nogil:
    """Append a reference the caller already owns; the ring has room."""
    part.ring[part.tail] = item
    part.tail += 1
    if part.tail == part.cap:
        part.tail = 0
    db_store(&part.count, part.count + 1)
    db_add(&part.inserted, 1)


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
    db_add(&part.taken, k)


cdef int ensure_spare(Part *part) except -1:
    """Give the partition a spare list.  May run Python code: callers re-check."""
    if part.spare is not NULL:
        return 0
    spare = PyList_New(part.cap)
    Py_SET_SIZE(spare, 0)
    if part.spare is NULL:
        Py_INCREF(spare)
        part.spare = <PyObject *>spare
    return 0


cdef list take_spare(Part *part, Py_ssize_t k):
    """Move the ``k`` oldest items into the spare list and return it.

    Runs no Python code; the caller has checked that the spare exists.
    """
    batch = <list>part.spare
    Py_DECREF(batch)  # the struct's reference; ``batch`` holds its own
    part.spare = NULL
    # The list's slots take over the ring's references: no refcount changes.
    ring_move(part, (<PyListObject *>batch).ob_item, k)
    Py_SET_SIZE(batch, k)
    return batch


@cython.final
cdef class _Rng:
    """xorshift64* for the size jitter; owned by one BufferCore (GIL held)."""
    cdef uint64_t state

    def __cinit__(self, uint64_t seed):
        self.state = seed | 1

    cdef inline uint64_t next(self) noexcept:
        cdef uint64_t x = self.state
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self.state = x
        return x * <uint64_t>0x2545F4914F6CDD1D


cdef class BufferCore:
    """Storage and counters of a buffer: a ring of items per partition."""

    cdef Part *_parts
    cdef Py_ssize_t _n
    cdef int64_t _rr            # round-robin counter (atomic helper)
    cdef bint _closed
    cdef int64_t _max_size
    cdef int64_t _jitter
    cdef _Rng _rng
    cdef tuple _wakers          # per partition: releases the lock its flusher sleeps on

    def __cinit__(self, *args, **kwargs):
        self._parts = NULL
        self._n = 0

    def __dealloc__(self):
        cdef Py_ssize_t p
        if self._parts is NULL:
            return
        for p in range(self._n):
            self._release(&self._parts[p])
            free(self._parts[p].ring)
        free(self._parts)
        self._parts = NULL

    cdef void _release(self, Part *part) noexcept:
        cdef Py_ssize_t _i
        cdef Py_ssize_t k = <Py_ssize_t>part.count
        cdef Py_ssize_t idx = part.head
        for _i in range(k):
            Py_DECREF(<object>part.ring[idx])
            idx += 1
            if idx == part.cap:
                idx = 0
        part.count = 0
        part.head = part.tail = 0
        Py_XDECREF(part.ready)
        part.ready = NULL
        Py_XDECREF(part.spare)
        part.spare = NULL

    def _core_init(self, Py_ssize_t partitions, Py_ssize_t max_size,
                   Py_ssize_t max_size_jitter, wakers):
        """Allocate the rings (capacity ``max_size + max_size_jitter``)."""
        cdef Py_ssize_t p, cap
        import os
        if self._parts is not NULL:
            raise RuntimeError("the buffer core is already initialised")
        if partitions < 1 or max_size < 1 or max_size_jitter < 0:
            raise ValueError("bad core sizes")
        self._wakers = tuple(wakers)
        if len(self._wakers) != partitions:
            raise ValueError("one waker per partition is needed")
        self._max_size = max_size
        self._jitter = max_size_jitter
        self._rng = _Rng(int.from_bytes(os.urandom(8), "little"))
        if max_size_jitter > (PY_SSIZE_T_MAX // <Py_ssize_t>sizeof(PyObject *)) // 2 - max_size:
            raise ValueError(f"max_size + max_size_jitter = {max_size + max_size_jitter} is too large")
        cap = max_size + max_size_jitter
        self._parts = <Part *>malloc(partitions * sizeof(Part))
        if self._parts is NULL:
            raise MemoryError()
        memset(self._parts, 0, partitions * sizeof(Part))
        self._n = partitions
        for p in range(partitions):
            self._parts[p].ring = <PyObject **>malloc(cap * sizeof(PyObject *))
            if self._parts[p].ring is NULL:
                raise MemoryError(
                    f"no memory for a ring of {cap} items (max_size + max_size_jitter) "
                    f"for partition {p}"
                )
            self._parts[p].cap = cap
            self._parts[p].threshold = self._draw()
            ensure_spare(&self._parts[p])

    cdef inline int64_t _draw(self) noexcept:
        if self._jitter == 0:
            return self._max_size
        return self._max_size + <int64_t>(self._rng.next() % <uint64_t>(self._jitter + 1))

    # -- hot path ---------------------------------------------------------

    @cython.binding(False)
    def insert(self, item, timeout=None):
        """Store one item in the next partition (round-robin).

        Waits under backpressure for at most ``timeout`` seconds (``None``:
        the buffer's ``insert_timeout``), then raises ``BufferFull`` having
        stored nothing.  Raises ``BufferClosed`` after ``close()``.
        """
        if _insert_events:
            self._insert_instrumented(item, timeout)
            return
        insert_one(self, item, timeout)

    @cython.binding(False)
    def insert_batch(self, items, timeout=None):
        """Store every item of an iterable, in order, in one partition.

        A batch larger than the flush threshold is split into consecutive
        flushes.  If room runs out for longer than ``timeout`` seconds,
        raises ``BufferFull`` whose ``stored`` counts the leading items
        stored.
        """
        if _insert_events:
            self._insert_batch_instrumented(items, timeout)
            return
        self._insert_many(items, timeout)

    cdef tuple _insert_many(self, object items, object timeout):
        cdef Py_ssize_t p, n, done
        if self._parts is NULL:
            raise RuntimeError("Buffer.__init__ was not called")
        if timeout is not None:
            check_timeout(self, timeout)
        if type(items) is list or type(items) is tuple:
            seq = items
        else:
            seq = list(self._iterate(items))
        n = PySequence_Fast_GET_SIZE(seq)
        if self._closed:
            raise self._closed_error(0)
        if n == 0:
            return (-1, 0)
        p = db_round_robin(&self._rr, self._n)
        done = self._store_many(p, seq, 0)
        if done < n:
            self._insert_batch_wait(p, seq, done, timeout)
        return (p, n)

    cdef Py_ssize_t _store_many(self, Py_ssize_t p, object seq, Py_ssize_t start) except -1:
        """Store ``seq[start:]`` while there is room; index of the first not stored."""
        cdef Part *part = &self._parts[p]
        cdef PyObject **items
        cdef Py_ssize_t n
        cdef Py_ssize_t i = start
        cdef Py_ssize_t room, stop, j
        while True:
            if self._closed:
                raise self._closed_error(i)
            # Read again after every seal: it may have run Python code.
            n = PySequence_Fast_GET_SIZE(seq)
            if i >= n:
                return i
            if part.count >= part.threshold:
                if part.busy:
                    return i
                self._seal(p)
                continue
            items = PySequence_Fast_ITEMS(seq)
            room = <Py_ssize_t>(part.threshold - part.count)
            stop = i + room
            if stop > n:
                stop = n
            for j in range(i, stop):
                Py_INCREF(<object>items[j])
                ring_push(part, items[j])
            i = stop
            if part.count >= part.threshold and not part.busy:
                self._seal(p)

    cdef int _seal(self, Py_ssize_t p) except -1:
        """Hand a full batch to the idle flusher and wake it, if still due.

        Seals nothing when the partition is busy or not full by the time a
        spare list is at hand; the caller tests the partition again.
        """
        cdef Part *part = &self._parts[p]
        cdef Py_ssize_t k
        while True:
            if part.busy or part.count < part.threshold:
                return 0
            if part.spare is not NULL:
                break
            ensure_spare(part)
        k = <Py_ssize_t>part.threshold
        part.ready_seq = part.taken
        batch = take_spare(part, k)
        Py_INCREF(batch)
        part.ready = <PyObject *>batch
        db_store(&part.busy, 1)
        db_store(&part.threshold, self._draw())
        # The partition is consistent again: Python code may run from here on.
        try:
            self._wakers[p]()
        except RuntimeError:
            pass  # the waker is a released lock: a wake is pending already
        ensure_spare(part)
        return 0

    # -- used by the Python layer -----------------------------------------

    def _push_many(self, Py_ssize_t p, seq, Py_ssize_t start):
        """Store ``seq[start:]`` (a list or tuple) in partition ``p`` while there is room.

        Returns the index of the first item not stored.
        """
        self._part(p)
        if not isinstance(seq, (list, tuple)):
            raise TypeError("_push_many() needs a list or a tuple")
        if start < 0:
            raise ValueError("start must be >= 0")
        return self._store_many(p, seq, start)

    def _insert_raw(self, item, timeout):
        """Insert without telemetry; returns the partition used."""
        return insert_one(self, item, timeout)

    def _insert_batch_raw(self, items, timeout):
        """Insert a batch without telemetry; returns ``(partition, count)``."""
        return self._insert_many(items, timeout)

    def _take(self, Py_ssize_t p, int64_t upto):
        """Give the flusher its next batch, or None once it is idle.

        Returns ``(batch, by_size, first_seq)``; see the reference core.
        """
        cdef Part *part = self._part(p)
        cdef int64_t first
        cdef bint by_size
        while True:
            if part.ready is not NULL:
                batch = <object>part.ready
                Py_DECREF(batch)
                part.ready = NULL
                return (batch, True, part.ready_seq)
            first = part.taken
            if part.count > 0 and part.count >= part.threshold:
                by_size = True
            elif part.count > 0 and first < upto:
                by_size = False
            else:
                db_store(&part.busy, 0)
                return None
            if part.spare is not NULL:
                break
            ensure_spare(part)
        batch = take_spare(part, <Py_ssize_t>min(part.count, part.threshold))
        db_store(&part.busy, 1)
        db_store(&part.threshold, self._draw())
        ensure_spare(part)
        return (batch, by_size, first)

    def _finish(self, Py_ssize_t p, int64_t n, bint ok):
        """Count a finished batch of ``n`` items as flushed or failed."""
        cdef Part *part = self._part(p)
        if ok:
            db_add(&part.flushed, n)
        else:
            db_add(&part.failed, n)

    def _is_closed(self):
        return self._closed

    def _mark_closed(self):
        """Refuse every later insert."""
        self._closed = True

    def _stats(self, Py_ssize_t p):
        """``(size, threshold, busy, inserted, taken, flushed, failed)``."""
        cdef Part *part = self._part(p)
        return (
            db_load(&part.count),
            db_load(&part.threshold),
            db_load(&part.busy) != 0,
            db_load(&part.inserted),
            db_load(&part.taken),
            db_load(&part.flushed),
            db_load(&part.failed),
        )

    def _size(self):
        cdef Py_ssize_t p
        cdef int64_t total = 0
        for p in range(self._n):
            total += db_load(&self._parts[p].count)
        return total

    def _dump(self):
        cdef Py_ssize_t p, _i, idx
        cdef Part *part
        out = []
        for p in range(self._n):
            part = &self._parts[p]
            idx = part.head
            for _i in range(<Py_ssize_t>part.count):
                out.append(<object>part.ring[idx])
                idx += 1
                if idx == part.cap:
                    idx = 0
        return out

    cdef Part *_part(self, Py_ssize_t p) except NULL:
        if self._parts is NULL:
            raise RuntimeError("Buffer.__init__ was not called")
        if p < 0 or p >= self._n:
            raise IndexError(f"no partition {p}")
        return &self._parts[p]


cdef inline Py_ssize_t insert_one(BufferCore self, object item, object timeout) except -1:
    """The insert hot path: a plain function so the C compiler can inline it."""
    cdef Py_ssize_t p
    cdef Part *part
    if self._parts is NULL:
        raise RuntimeError("Buffer.__init__ was not called")
    if timeout is not None:
        check_timeout(self, timeout)
    if self._closed:
        raise self._closed_error(0)
    p = db_round_robin(&self._rr, self._n)
    part = &self._parts[p]
    if part.count < part.threshold:
        Py_INCREF(item)
        ring_push(part, <PyObject *>item)
        if part.count >= part.threshold and not part.busy:
            self._seal(p)
    elif self._store_many(p, (item,), 0) == 0:
        # Full (or a seal pending): the general path, which re-checks
        # everything; waits for room if the partition is still flushing.
        self._insert_wait(p, item, timeout)
    return p


cdef inline int check_timeout(BufferCore self, object timeout) except -1:
    """Accept a finite number of seconds >= 0; let the layer name anything else."""
    cdef double seconds
    if type(timeout) is float:
        seconds = timeout
        if seconds >= 0.0 and seconds <= 1e300:
            return 0
    elif type(timeout) is int and timeout >= 0:
        return 0
    self._check_timeout(timeout)
    return 0
