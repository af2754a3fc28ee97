# The C declarations _core.pyx uses (``from _decl cimport *``): CPython
# internals, and the project's headers (atomics, the wake event, the
# partition struct), so that the .pyx opens with the algorithm.

from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t


cdef extern from "Python.h":
    # Borrowed references into a list or tuple returned by PySequence_Fast.
    PyObject** PySequence_Fast_ITEMS(object) noexcept
    Py_ssize_t PySequence_Fast_GET_SIZE(object) noexcept
    ctypedef struct PyListObject:
        PyObject **ob_item
    # The size of a list (a PyObject * known to be one), without the GIL's help.
    Py_ssize_t PyList_GET_SIZE(PyObject *op) noexcept nogil
    # Shrinks a list the core filled only in part (the slots past the size are NULL).
    void Py_SET_SIZE(PyObject *op, Py_ssize_t size) noexcept nogil
    const Py_ssize_t PY_SSIZE_T_MAX
    # A C method's descriptor, made for another class (see own_methods).
    ctypedef struct PyMethodDef:
        pass
    ctypedef struct PyMethodDescrObject:
        PyMethodDef *d_method
    ctypedef struct PyTypeObject:
        pass
    object PyDescr_NewMethod(PyTypeObject *cls, PyMethodDef *meth)


cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident()


cdef extern from "_atomic.h" nogil:
    const bint DB_FREE_THREADED
    ctypedef struct db_mutex:
        pass
    void db_lock(db_mutex *m)
    void db_unlock(db_mutex *m)
    void db_mutex_reinit(db_mutex *m)
    int64_t db_load(const int64_t *p)
    void db_store(int64_t *p, int64_t v)
    void db_store_seq_cst(int64_t *p, int64_t v)
    int64_t db_add(int64_t *p, int64_t v)
    bint db_cas(int64_t *p, int64_t expected, int64_t desired)
    Py_ssize_t db_round_robin(int64_t *counter, Py_ssize_t n)


cdef extern from "_event.h" nogil:
    # The flusher's wake-up event; see _event.h.
    ctypedef struct db_event:
        pass
    int db_event_init(db_event *e)
    void db_event_destroy(db_event *e)
    void db_event_set(db_event *e)
    int db_event_wait(db_event *e, double seconds)


cdef extern from "_part.h" nogil:
    # One partition; see _part.h (cache-line aligned, so written as C).
    ctypedef struct Part:
        db_mutex lock
        PyObject **ring
        Py_ssize_t cap
        Py_ssize_t head
        Py_ssize_t tail
        int64_t count
        int64_t threshold
        int64_t holding
        int64_t inserted
        int64_t taken
        int64_t flushed
        int64_t failed
        int64_t evicted
        int64_t refused
        PyObject **queue
        int64_t *qfirst
        int64_t slots
        int64_t qhead
        int64_t queued
        uint64_t rng
        db_event wake
    Part *db_parts_new(Py_ssize_t n)
    void db_parts_free(Part *parts)
    Py_ssize_t db_home_get(uint64_t serial)
    void db_home_set(uint64_t serial, Py_ssize_t partition)
