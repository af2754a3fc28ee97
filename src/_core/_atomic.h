/*
 * Atomics and the partition lock of the databuffer core.
 *
 * Counters are read without locks by size()/info() from any thread, so every
 * access goes through an atomic primitive: a reader never sees a torn value.
 * One branch per compiler:
 *   - GCC and Clang (clang-cl too): the __atomic builtins.
 *   - MSVC: the Interlocked intrinsics of <intrin.h> for read-modify-writes
 *     and seq_cst stores, and __iso_volatile_load64/__iso_volatile_store64
 *     for relaxed loads and stores: plain 64-bit accesses, which are atomic
 *     on the 64-bit targets (x64, ARM64), and which, unlike a volatile
 *     access, get no barrier from /volatile:ms (the default on x64).
 *     Only 64-bit targets are supported: a 32-bit x86 build stops with
 *     #error, since its plain 64-bit accesses are not atomic.
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

#if defined(_MSC_VER) && !defined(__clang__)
#define DB_ATOMIC_MSVC 1
#if !defined(_M_X64) && !defined(_M_ARM64)
#error "databuffer's core supports MSVC on 64-bit targets only (x64, ARM64)"
#endif
#include <intrin.h>
/* ARM64: the _nf ("no fence") forms are the relaxed read-modify-writes; the
 * plain forms are full barriers there.  On x64 every locked instruction is a
 * full barrier anyway.  (ARM64EC defines _M_X64, not _M_ARM64.) */
#if defined(_M_ARM64)
#define DB_XADD64_RELAXED _InterlockedExchangeAdd64_nf
#else
#define DB_XADD64_RELAXED _InterlockedExchangeAdd64
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define DB_ATOMIC_MSVC 0
#else
#error "databuffer's core needs GCC or Clang __atomic builtins, or MSVC"
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
#if DB_ATOMIC_MSVC
    return __iso_volatile_load64((const volatile __int64 *)p);
#else
    return __atomic_load_n(p, __ATOMIC_RELAXED);
#endif
}

static inline void
db_store(int64_t *p, int64_t v)
{
#if DB_ATOMIC_MSVC
    __iso_volatile_store64((volatile __int64 *)p, v);
#else
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
#endif
}

/* Publish a flag that other threads read without a lock (closing). */
static inline void
db_store_seq_cst(int64_t *p, int64_t v)
{
#if DB_ATOMIC_MSVC
    /* An exchange is a full barrier on x64 and ARM64: what MSVC's own
     * std::atomic does for a seq_cst store. */
    (void)_InterlockedExchange64((volatile __int64 *)p, v);
#else
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
#endif
}

/* Add v to *p; return the new value. */
static inline int64_t
db_add(int64_t *p, int64_t v)
{
#ifdef Py_GIL_DISABLED
#if DB_ATOMIC_MSVC
    return DB_XADD64_RELAXED((volatile __int64 *)p, v) + v;
#else
    return __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
#endif
#else
    int64_t n = db_load(p) + v;
    db_store(p, n);
    return n;
#endif
}

/* If *p == expected, store desired and return 1; else return 0. */
static inline int
db_cas(int64_t *p, int64_t expected, int64_t desired)
{
#if DB_ATOMIC_MSVC
    /* Full barrier on x64 and ARM64, so seq_cst. */
    return _InterlockedCompareExchange64((volatile __int64 *)p, desired, expected) == expected;
#else
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
#endif
}

/* Round-robin dispatcher: the counter modulo n, returned before the step. */
static inline Py_ssize_t
db_round_robin(int64_t *counter, Py_ssize_t n)
{
#ifdef Py_GIL_DISABLED
#if DB_ATOMIC_MSVC
    int64_t cur = DB_XADD64_RELAXED((volatile __int64 *)counter, 1);
#else
    int64_t cur = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
#endif
    return (Py_ssize_t)((uint64_t)cur % (uint64_t)n);
#else
    /* Writers hold the GIL: keep the counter in [0, n) and skip the division. */
    int64_t cur = db_load(counter);
    int64_t nxt = cur + 1;
    if (nxt >= n) {
        nxt = 0;
    }
    db_store(counter, nxt);
    return (Py_ssize_t)cur;
#endif
}

#endif /* DATABUFFER_ATOMIC_H */
