/*
 * One partition of the databuffer core (see _core.pyx for the protocol).
 *
 * Every field but `wake`, `flushed` and `failed` is guarded by `lock`; the
 * counters are also read without it, through the atomic helpers of
 * _atomic.h, and `flushed` and `failed` are written by atomic adds (the
 * thread that settles a batch needs no lock for them).  Partitions are cache-line
 * aligned, so that threads working on different partitions of a buffer (or
 * on different buffers) never write to the same cache line.
 */
#ifndef DATABUFFER_PART_H
#define DATABUFFER_PART_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_atomic.h"
#include "_event.h"

#define DB_CACHE_LINE 64

/*
 * Each partition starts on a cache line of its own, so that producers and
 * flushers of different partitions never share one.  The array comes from
 * db_parts_new and goes back through db_parts_free: posix_memalign and
 * free() on POSIX (glibc, musl, macOS from 10.6: C11 aligned_alloc would
 * need macOS 10.15, above the deployment target of the x86_64 wheels);
 * _aligned_malloc and _aligned_free on Windows, whose free() cannot release
 * an aligned block.
 */
#if defined(_MSC_VER)
#define DB_PART_ALIGN __declspec(align(DB_CACHE_LINE))
#else
#define DB_PART_ALIGN __attribute__((aligned(DB_CACHE_LINE)))
#endif
#if defined(_WIN32)
#include <malloc.h>
#endif

typedef struct DB_PART_ALIGN {
    db_mutex lock;
    /* Ring of owned references: ring[head], ring[head+1], ... (mod cap). */
    PyObject **ring;
    Py_ssize_t cap;
    Py_ssize_t head;
    Py_ssize_t tail;
    int64_t count;      /* items in the ring */
    int64_t threshold;  /* the current flush size */
    int64_t holding;    /* 1 while the flusher has a batch it took (until its next take) */
    int64_t inserted;   /* counters, in items */
    int64_t taken;      /* items sealed into a batch or taken by the flusher */
    int64_t flushed;    /* written by whichever thread settles a batch (atomic add) */
    int64_t failed;
    /* Dropped by on_full: evicted = buffered items removed from the ring's
     * head ("drop_oldest"; counted in taken too, and finished); refused =
     * items an insert dropped instead of storing ("drop_newest"; never in
     * the ring, not in inserted). */
    int64_t evicted;
    int64_t refused;
    /* The batches sealed by inserts, waiting for the flusher, oldest first:
     * owned references queue[qhead], queue[qhead+1], ... (mod slots).
     * queued + holding <= slots, which is max_queued_batches + 1. */
    PyObject **queue;
    int64_t *qfirst;    /* qfirst[i]: the sequence number of queue[i]'s first item */
    int64_t slots;
    int64_t qhead;
    int64_t queued;
    uint64_t rng;       /* xorshift64* state for the size jitter */
    db_event wake;      /* wakes the flusher; guarded by its own mutex */
} Part;

/* An array of n zeroed partitions (n >= 1), or NULL; db_parts_free releases it. */
static inline Part *
db_parts_new(Py_ssize_t n)
{
    size_t size = (size_t)n * sizeof(Part);
    void *parts;
#if defined(_WIN32)
    parts = _aligned_malloc(size, DB_CACHE_LINE);
#else
    if (posix_memalign(&parts, DB_CACHE_LINE, size) != 0) {
        parts = NULL;
    }
#endif
    if (parts != NULL) {
        memset(parts, 0, size);
    }
    return (Part *)parts;
}

/* Release an array from db_parts_new (NULL: nothing). */
static inline void
db_parts_free(Part *parts)
{
#if defined(_WIN32)
    _aligned_free(parts);
#else
    free(parts);
#endif
}

/*
 * Thread dispatch ("dispatch='thread'"): each thread inserts into a home
 * partition of its own.  A thread finds its home in a small cache of its
 * own (thread-local, so never shared: no lock), keyed by the buffer's
 * serial number (unique for the life of the process, so a cache entry can
 * never point into another buffer).  On a miss the buffer's home table (a
 * dict, see _core.pyx) decides, and the entry is filled.
 */
#define DB_HOME_CACHE 8

/* MSVC (and clang-cl): __declspec(thread), which works in a DLL loaded at
 * run time (a .pyd) since Windows Vista; C11 _Thread_local would need
 * /std:c11.  GCC and Clang: __thread. */
#if defined(_MSC_VER)
#define DB_THREAD_LOCAL __declspec(thread)
#else
#define DB_THREAD_LOCAL __thread
#endif

typedef struct {
    uint64_t serial;    /* 0: empty */
    Py_ssize_t partition;
} db_home;

static DB_THREAD_LOCAL db_home db_homes[DB_HOME_CACHE];

/* This thread's home partition in the buffer `serial`, or -1 if unknown. */
static inline Py_ssize_t
db_home_get(uint64_t serial)
{
    db_home *h = &db_homes[serial % DB_HOME_CACHE];
    return h->serial == serial ? h->partition : -1;
}

static inline void
db_home_set(uint64_t serial, Py_ssize_t partition)
{
    db_home *h = &db_homes[serial % DB_HOME_CACHE];
    h->serial = serial;
    h->partition = partition;
}

#endif /* DATABUFFER_PART_H */
