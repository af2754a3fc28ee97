/*
 * One partition of the databuffer core (see _core.pyx for the protocol).
 *
 * Every field but `wake` is guarded by `lock`; the counters are also read without it,
 * through the atomic helpers of _atomic.h.  Partitions are cache-line
 * aligned, so that threads working on different partitions of a buffer (or
 * on different buffers) never write to the same cache line.
 */
#ifndef DATABUFFER_PART_H
#define DATABUFFER_PART_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#include "_atomic.h"
#include "_event.h"

#define DB_CACHE_LINE 64

typedef struct {
    db_mutex lock;
    /* Ring of owned references: ring[head], ring[head+1], ... (mod cap). */
    PyObject **ring;
    Py_ssize_t cap;
    Py_ssize_t head;
    Py_ssize_t tail;
    int64_t count;      /* items in the ring */
    int64_t threshold;  /* the current flush size */
    int64_t busy;       /* 1 while a batch is handed to the flusher, unfinished */
    int64_t inserted;   /* counters, in items */
    int64_t taken;
    int64_t flushed;    /* written by whichever thread settles a batch (atomic add) */
    int64_t failed;
    PyObject *ready;    /* owned: a batch sealed by an insert, or NULL */
    int64_t ready_seq;
    uint64_t rng;       /* xorshift64* state for the size jitter */
    db_event wake;      /* wakes the flusher; guarded by its own mutex */
} __attribute__((aligned(DB_CACHE_LINE))) Part;

/* An array of n zeroed partitions, or NULL. */
static inline Part *
db_parts_new(Py_ssize_t n)
{
    size_t size = (size_t)n * sizeof(Part);
    Part *parts = (Part *)aligned_alloc(DB_CACHE_LINE, size);
    if (parts != NULL) {
        memset(parts, 0, size);
    }
    return parts;
}

#endif /* DATABUFFER_PART_H */
