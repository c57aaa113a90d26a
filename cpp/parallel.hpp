// Thread fan-out shared by the kernels: OpenMP where the build has it, plain serial
// execution otherwise (the result never depends on the thread count).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#if SEGRT_HAVE_OPENMP
#include <omp.h>
#endif

namespace segrt {

inline int effective_threads(int requested) {
#if SEGRT_HAVE_OPENMP
    const int avail = omp_get_max_threads();
#else
    const int avail = 1;
#endif
    if (requested <= 0) return std::max(1, avail);
#if SEGRT_HAVE_OPENMP
    return std::max(1, requested);
#else
    return 1;
#endif
}

// fn(begin, end, thread_id) over [0, n) in dynamically handed-out chunks (of `chunk` items;
// 0: about eight per thread).
template <typename F>
void parallel_for_tid(int64_t n, int threads, F&& fn, int64_t chunk = 0) {
    threads = effective_threads(threads);
    if (threads <= 1 || n < 2) {
        fn(0, n, 0);
        return;
    }
#if SEGRT_HAVE_OPENMP
    if (chunk <= 0) chunk = std::max<int64_t>(1, n / (int64_t)(threads * 8));
    std::atomic<int64_t> next(0);
#pragma omp parallel num_threads(threads)
    {
        const int tid = omp_get_thread_num();
        while (true) {
            const int64_t b = next.fetch_add(chunk);
            if (b >= n) break;
            fn(b, std::min(n, b + chunk), tid);
        }
    }
#else
    fn(0, n, 0);
#endif
}

// fn(thread_id, team_size) once on each thread of a team that runs concurrently (code that
// waits on another member relies on it); team_size may be below the request.
template <typename F>
void parallel_team(int threads, F&& fn) {
    threads = effective_threads(threads);
#if SEGRT_HAVE_OPENMP
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
        fn(omp_get_thread_num(), omp_get_num_threads());
        return;
    }
#endif
    fn(0, 1);
}

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

template <typename F>
void parallel_for(int64_t n, int threads, F&& fn) {
    parallel_for_tid(n, threads, [&](int64_t b, int64_t e, int) { fn(b, e); });
}

}  // namespace segrt
