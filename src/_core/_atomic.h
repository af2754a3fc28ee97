/*
 * Atomic helpers for the databuffer core.
 *
 * Counters are read without locks by size()/info() from any thread, so every
 * access goes through __atomic builtins: a reader never sees a torn value.
 *
 * Writers: on a GIL build every write happens with the GIL held, so writers
 * are already serialized and a relaxed load + store is enough (no locked
 * read-modify-write on the insert path).  On a free-threaded build the same
 * helpers use real read-modify-write operations.
 */
#ifndef DATABUFFER_ATOMIC_H
#define DATABUFFER_ATOMIC_H

#include <Python.h>
#include <stdint.h>

#if !defined(__GNUC__) && !defined(__clang__)
#error "databuffer's core needs GCC or Clang __atomic builtins"
#endif

static inline int64_t
db_load(const int64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void
db_store(int64_t *p, int64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

/* Add v to *p; return the new value. */
static inline int64_t
db_add(int64_t *p, int64_t v)
{
#ifdef Py_GIL_DISABLED
    return __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
#else
    int64_t n = __atomic_load_n(p, __ATOMIC_RELAXED) + v;
    __atomic_store_n(p, n, __ATOMIC_RELAXED);
    return n;
#endif
}

/* Round-robin dispatcher: the counter modulo n, returned before the step. */
static inline Py_ssize_t
db_round_robin(int64_t *counter, Py_ssize_t n)
{
#ifdef Py_GIL_DISABLED
    return (Py_ssize_t)((uint64_t)__atomic_fetch_add(counter, 1, __ATOMIC_RELAXED)
                        % (uint64_t)n);
#else
    /* Writers hold the GIL: keep the counter in [0, n) and skip the division. */
    int64_t cur = __atomic_load_n(counter, __ATOMIC_RELAXED);
    int64_t nxt = cur + 1;
    if (nxt >= n) {
        nxt = 0;
    }
    __atomic_store_n(counter, nxt, __ATOMIC_RELAXED);
    return (Py_ssize_t)cur;
#endif
}

#endif /* DATABUFFER_ATOMIC_H */
