/*
 * Atomics and the partition lock of the databuffer core.
 *
 * Counters are read without locks by size()/info() from any thread, so every
 * access goes through __atomic builtins: a reader never sees a torn value.
 *
 * The partition lock (db_mutex) guards a partition's ring and fields.
 *   - GIL build: the GIL already serializes every writer, and the core runs
 *     no Python code while it holds a partition "locked", so the lock is an
 *     empty struct and db_lock/db_unlock compile to nothing.  db_add is then
 *     a relaxed load + store (no locked read-modify-write on the insert path).
 *   - Free-threaded build (Py_GIL_DISABLED): a PyMutex, which detaches the
 *     thread state while it waits (so a stop-the-world pause or a GC cannot
 *     deadlock on it), and real read-modify-write atomics.
 */
#ifndef DATABUFFER_ATOMIC_H
#define DATABUFFER_ATOMIC_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__GNUC__) && !defined(__clang__)
#error "databuffer's core needs GCC or Clang __atomic builtins"
#endif

#ifdef Py_GIL_DISABLED
#define DB_FREE_THREADED 1
typedef PyMutex db_mutex;
static inline void db_lock(db_mutex *m) { PyMutex_Lock(m); }
static inline void db_unlock(db_mutex *m) { PyMutex_Unlock(m); }
#else
#define DB_FREE_THREADED 0
typedef struct { char unused; } db_mutex;
static inline void db_lock(db_mutex *m) { (void)m; }
static inline void db_unlock(db_mutex *m) { (void)m; }
#endif

/* In a child process after fork(): the lock is free (zero is the unlocked
 * state of a PyMutex); the parent thread that held it does not exist here. */
static inline void db_mutex_reinit(db_mutex *m) { memset(m, 0, sizeof(*m)); }

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

/* Publish a flag that other threads read without a lock (closing). */
static inline void
db_store_seq_cst(int64_t *p, int64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
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

/* If *p == expected, store desired and return 1; else return 0. */
static inline int
db_cas(int64_t *p, int64_t expected, int64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
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
