/*
 * The wake-up event of a partition's flusher thread (see _core.pyx).
 *
 * A binary event: db_event_set() makes a wake pending (several sets before
 * the flusher runs count as one) and db_event_wait() sleeps until one is
 * pending and consumes it.  The flusher waits without the GIL (or, on a
 * free-threaded build, detached from the interpreter).
 *
 * Why not a Python lock: on CPython 3.13+ a lock acquire that has to wait
 * first spins, calling sched_yield() up to 40 times, before it sleeps.  A
 * flusher waits once per batch, so that spin took most of its CPU time:
 * CPU the producers need on a machine with few cores.  A condition
 * variable sleeps at once.
 *
 * Every field is guarded by `mutex`; the mutex is held only for a few
 * instructions, never while Python code runs.
 */
#ifndef DATABUFFER_EVENT_H
#define DATABUFFER_EVENT_H

#include <Python.h>

#if defined(_WIN32)
#include <math.h>
#include <windows.h>

typedef struct {
    SRWLOCK mutex;
    CONDITION_VARIABLE cond;
    int pending;
    int waiting;        /* threads in db_event_wait (one flusher, normally) */
} db_event;

static inline int
db_event_init(db_event *e)
{
    InitializeSRWLock(&e->mutex);
    InitializeConditionVariable(&e->cond);
    e->pending = 0;
    e->waiting = 0;
    return 0;
}

static inline void db_event_destroy(db_event *e) { (void)e; }

static inline void
db_event_set(db_event *e)
{
    AcquireSRWLockExclusive(&e->mutex);
    e->pending = 1;
    if (e->waiting) {
        WakeConditionVariable(&e->cond);
    }
    ReleaseSRWLockExclusive(&e->mutex);
}

/* Seconds on the performance counter: the clock of time.monotonic() on
 * Windows.  GetTickCount64() moves in steps of the timer tick (15.6 ms by
 * default), so a deadline kept on it could pass up to a tick early. */
static inline double
db_event_clock(void)
{
    LARGE_INTEGER now, freq;
    QueryPerformanceCounter(&now);
    QueryPerformanceFrequency(&freq);
    return (double)now.QuadPart / (double)freq.QuadPart;
}

/* Wait for a pending wake, at most `seconds` (< 0: forever); 1 if consumed. */
static inline int
db_event_wait(db_event *e, double seconds)
{
    int got;
    double deadline = 0.0;
    if (seconds >= 0) {
        if (seconds > 1e9) {
            seconds = 1e9;  /* about 31 years; also turns +inf into a number */
        }
        deadline = db_event_clock() + seconds;
    }
    AcquireSRWLockExclusive(&e->mutex);
    while (!e->pending) {
        DWORD ms = INFINITE;
        if (seconds >= 0) {
            double left = deadline - db_event_clock();
            if (left <= 0) {
                break;
            }
            /* Round up (at least 1 ms: never a busy loop of zero-length
             * waits), and stay below INFINITE; a sleep that ends early, or
             * at the 49.7-day cap, just goes round again. */
            left = ceil(left * 1e3);
            ms = left < 4294967294.0 ? (DWORD)left : 4294967294UL;
        }
        e->waiting += 1;
        SleepConditionVariableSRW(&e->cond, &e->mutex, ms, 0);
        e->waiting -= 1;
    }
    got = e->pending;
    e->pending = 0;
    ReleaseSRWLockExclusive(&e->mutex);
    return got;
}

#else /* POSIX */
#include <errno.h>
#include <pthread.h>
#include <time.h>

typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    int pending;
    int waiting;        /* threads in db_event_wait (one flusher, normally) */
} db_event;

/* 0 on success, an errno value otherwise. */
static inline int
db_event_init(db_event *e)
{
    int err;
    pthread_condattr_t attr;
    e->pending = 0;
    e->waiting = 0;
    err = pthread_mutex_init(&e->mutex, NULL);
    if (err) {
        return err;
    }
    err = pthread_condattr_init(&attr);
    if (err == 0) {
#if !defined(__APPLE__)
        /* Timed waits on the monotonic clock: a clock change cannot stretch them. */
        err = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
#endif
        if (err == 0) {
            err = pthread_cond_init(&e->cond, &attr);
        }
        pthread_condattr_destroy(&attr);
    }
    if (err) {
        pthread_mutex_destroy(&e->mutex);
    }
    return err;
}

static inline void
db_event_destroy(db_event *e)
{
    pthread_cond_destroy(&e->cond);
    pthread_mutex_destroy(&e->mutex);
}

static inline void
db_event_set(db_event *e)
{
    pthread_mutex_lock(&e->mutex);
    e->pending = 1;
    if (e->waiting) {
        pthread_cond_signal(&e->cond);
    }
    pthread_mutex_unlock(&e->mutex);
}

/* Wait for a pending wake, at most `seconds` (< 0: forever); 1 if consumed. */
static inline int
db_event_wait(db_event *e, double seconds)
{
    int got;
    struct timespec deadline;
    if (seconds >= 0) {
        double whole;
        if (seconds > 1e9) {
            seconds = 1e9;  /* about 31 years: no time_t overflow */
        }
#if defined(__APPLE__)
        clock_gettime(CLOCK_REALTIME, &deadline);
#else
        clock_gettime(CLOCK_MONOTONIC, &deadline);
#endif
        whole = (double)(time_t)seconds;
        deadline.tv_sec += (time_t)seconds;
        deadline.tv_nsec += (long)((seconds - whole) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec += 1;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&e->mutex);
    while (!e->pending) {
        int err = 0;
        e->waiting += 1;
        if (seconds < 0) {
            pthread_cond_wait(&e->cond, &e->mutex);
        }
        else {
            err = pthread_cond_timedwait(&e->cond, &e->mutex, &deadline);
        }
        e->waiting -= 1;
        if (err == ETIMEDOUT) {
            break;
        }
    }
    got = e->pending;
    e->pending = 0;
    pthread_mutex_unlock(&e->mutex);
    return got;
}
#endif /* _WIN32 */

#endif /* DATABUFFER_EVENT_H */
