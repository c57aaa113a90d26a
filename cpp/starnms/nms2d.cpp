// The 2D suppression loop: candidates in rank order, each tested against the kept polygons
// near it (bounds first, exact areas only where they cannot decide). See starnms.hpp.
#include <mutex>

#include "polygon2d.hpp"
#include "rays.hpp"

namespace segrt {
namespace starnms {

// ---- NMS ---------------------------------------------------------------------------------
std::vector<uint8_t> nms_2d(const float* dist, int n_rays, const int64_t* order, int64_t n, int64_t width,
                            int grid_y, int grid_x, float thresh, int n_threads, Nms2DStats* stats,
                            const int64_t* rows, float longest_ray) {
    const int64_t* row = rows ? rows : order;  // candidate i's distances: row row[i] of dist
    std::vector<uint8_t> keep(n, 0);
    Nms2DStats st;
    st.candidates = n;
    if (n == 0) {
        if (stats) *stats = st;
        return keep;
    }
    if (n_rays > kMaxRays) throw std::invalid_argument("at most 255 rays are supported");
    const PolygonMaker maker(dist, n_rays, width, grid_y, grid_x);
    const int threads = effective_threads(n_threads);
    constexpr size_t kFetchAhead = 16;  // rows fetched this many candidates ahead (8 left stalls here)
    const auto t_start = std::chrono::steady_clock::now();

    // 1. centres, and the longest ray of any candidate (how far a polygon reaches from its
    //    centre), checking every candidate's rays on the way, unless select_candidates did
    std::unique_ptr<Pt[]> centre(new Pt[n]);  // every entry written below
    const bool measured = longest_ray >= 0.0f;
    std::vector<float> longest(threads, 0.0f);
    std::vector<uint8_t> bad(threads, 0);
    // the centres' extent, per thread
    std::vector<Box64> extent(threads, Box64{std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(),
                                             std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()});
    parallel_for_tid(n, threads, [&](int64_t a, int64_t b, int tid) {
        float r = longest[tid];
        int32_t is_bad = 0;
        Box64 e = extent[tid];
        const size_t row_bytes = sizeof(float) * (size_t)n_rays;
        for (int64_t i = a; i < b; ++i) {
            const Pt c = maker.centre(order[i]);
            centre[i] = c;
            e.x0 = std::min(e.x0, c.x), e.x1 = std::max(e.x1, c.x);
            e.y0 = std::min(e.y0, c.y), e.y1 = std::max(e.y1, c.y);
            if (measured) continue;
            // rank order visits the rows at random: fetch ahead
            if (i + (int64_t)kFetchAhead < b) fetch_row(dist + row[i + kFetchAhead] * n_rays, row_bytes);
            scan_rays(dist + row[i] * n_rays, n_rays, &r, &is_bad);
        }
        extent[tid] = e;
        longest[tid] = r;
        bad[tid] |= (uint8_t)is_bad;
    });
    float rmax_all = measured ? longest_ray : 0.0f;
    for (int t = 0; t < threads; ++t) {
        if (bad[t]) throw std::invalid_argument("dist of a candidate holds NaN, infinite or negative values, or rays longer than 3e38 (the kernels compute areas of such polygons in float)");
        rmax_all = std::max(rmax_all, longest[t]);
    }
    // vertices are stored relative to their centre in int16
    if (rmax_all > 32766.0f) throw std::invalid_argument("rays longer than 32767 pixels are not supported");
    // a polygon's lattice vertices lie within rmax + 1 of its centre (truncation)
    const int64_t reach = (int64_t)std::ceil(rmax_all) + 2;
    int64_t cx0 = std::numeric_limits<int64_t>::max(), cy0 = cx0, cx1 = std::numeric_limits<int64_t>::min(), cy1 = cx1;
    for (const Box64& e : extent) {
        cx0 = std::min(cx0, e.x0), cx1 = std::max(cx1, e.x1);
        cy0 = std::min(cy0, e.y0), cy1 = std::max(cy1, e.y1);
    }
    // a uniform grid over the centres for the index of kept polygons
    const int64_t bucket = 32;  // pixels
    const int64_t nbx = (cx1 - cx0) / bucket + 1, nby = (cy1 - cy0) / bucket + 1;
    std::vector<int64_t> row_start(nby + 1, 0);  // candidates per bucket row, for strips of equal work
    for (int64_t i = 0; i < n; ++i) ++row_start[(centre[i].y - cy0) / bucket + 1];
    for (int64_t by = 0; by < nby; ++by) row_start[by + 1] += row_start[by];
    // the candidates by bucket of that grid (a counting sort, its passes split over the
    // threads), for pushing a kept polygon onto the candidates centred inside it: what a push
    // reads is stored by slot, bucket after bucket (rank order would send it all over memory)
    const int64_t n_keys = nbx * nby;
    const bool pushing = n < std::numeric_limits<int32_t>::max();
    std::vector<int64_t> key_first;
    // what a push reads of a candidate, in one place (one cache line to fill per candidate when
    // the index is made, one to read per candidate a push looks at)
    struct Slot {
        int32_t rank, x, y;
        std::atomic<uint8_t> pushed;  // marked: decided (dropped) before its turn
        int64_t row;
    };
    std::unique_ptr<Slot[]> slots;
    // the same marks by rank: the suppression loop reads them in rank order (through the
    // slots, each read was a cache miss: measured 4 % of the call); the slot keeps its own
    // copy for the pushes' sift, which reads slots bucket by bucket
    std::unique_ptr<std::atomic<uint8_t>[]> dropped;
    if (pushing) {
        auto key_of = [&](const Pt& c) { return ((c.y - cy0) / bucket) * nbx + (c.x - cx0) / bucket; };
        slots.reset(new Slot[n]);
        dropped.reset(new std::atomic<uint8_t>[n]);
        const int parts = threads;
        auto part_lo = [&](int64_t part) { return n * part / parts; };
        std::vector<int64_t> place((size_t)parts * n_keys, 0);  // counts, then where each part writes
        parallel_for(parts, threads, [&](int64_t a, int64_t b) {
            for (int64_t part = a; part < b; ++part) {
                int64_t* count = &place[part * n_keys];
                for (int64_t i = part_lo(part); i < part_lo(part + 1); ++i) ++count[key_of(centre[i])];
            }
        });
        key_first.resize(n_keys + 1);
        int64_t run = 0;
        for (int64_t k = 0; k < n_keys; ++k) {
            key_first[k] = run;
            for (int part = 0; part < parts; ++part) {
                const int64_t here = place[part * n_keys + k];
                place[part * n_keys + k] = run;
                run += here;
            }
        }
        key_first[n_keys] = run;
        parallel_for(parts, threads, [&](int64_t a, int64_t b) {
            // plain pointers: through the owners, every store would make the compiler reload them
            Slot* __restrict s_at = slots.get();
            const Pt* __restrict c = centre.get();
            for (int64_t part = a; part < b; ++part) {
                int64_t* next = &place[part * n_keys];
                for (int64_t i = part_lo(part); i < part_lo(part + 1); ++i) {
                    const int64_t slot = next[key_of(c[i])]++;
                    Slot& to = s_at[slot];
                    to.rank = (int32_t)i;
                    to.x = (int32_t)c[i].x;
                    to.y = (int32_t)c[i].y;
                    to.pushed.store(0, std::memory_order_relaxed);
                    to.row = row[i];
                    dropped[i].store(0, std::memory_order_relaxed);
                }
            }
        });
    }
    const auto t_prepared = std::chrono::steady_clock::now();
    st.seconds_prepare = std::chrono::duration<double>(t_prepared - t_start).count();

    // 2. greedy suppression, pulled: each candidate, in rank order, builds its polygon and
    //    is tested against the kept polygons near it (a per-bucket index of kept polygons);
    //    it is kept when none suppresses it: the same decisions as pushing each kept polygon
    //    onto the later candidates. Threads own horizontal strips of buckets with equal
    //    candidate counts and run their candidates in rank order; a candidate whose
    //    neighbourhood reaches into another strip is kept only once that strip has decided
    //    every candidate ranked before it (a suppression by what is already kept is final).
    //    The thread holding the lowest undecided rank never waits, so all finish. Pushes
    //    (below) settle most candidates before their turn.
    struct Kept {
        Pt z;
        int64_t rank;
        int nverts;
        float area;
        bool star;  // star-shaped about its centre: profile valid
        StarProfile profile;
        const int16_t* rel;  // vertices relative to z
    };
    std::mutex push_mutex;  // guards the kept polygons not yet pushed: push_queue[push_next:]
    std::vector<std::pair<const Kept*, Box>> push_queue;
    size_t push_next = 0;
    std::atomic<int64_t> push_waiting(0);  // push_queue.size() - push_next, read without the lock
    // bucket b lists the kept polygons whose boxes meet it, in chunks of a few entries read
    // without locks (a walk touches one or two chunks instead of chasing a node per polygon);
    // a polygon near a strip's edge may be listed in the next strip's buckets by that strip's
    // thread, so appends take the bucket's lock (a few thousand appends in all)
    struct Entry {  // what the box bound needs is copied in, so that rejected pairs read nothing else
        Box box;
        float area;
        int32_t pad;
        int64_t rank;
        const Kept* kept;
    };
    constexpr int kPerChunk = 6;
    struct alignas(64) Chunk {
        Entry e[kPerChunk];
        std::atomic<int32_t> count;  // entries published (written before the count)
        std::atomic<Chunk*> next;
    };
    constexpr int64_t kChunk = 64;
    std::vector<std::vector<std::unique_ptr<Kept[]>>> kept_store(threads);
    std::vector<std::vector<std::unique_ptr<Chunk[]>>> chunk_store(threads);
    std::vector<std::vector<std::unique_ptr<int16_t[]>>> rel_store(threads);
    std::unique_ptr<std::atomic<Chunk*>[]> bucket_head(new std::atomic<Chunk*>[nbx * nby]);
    std::vector<Chunk*> bucket_tail(nbx * nby, nullptr);
    std::unique_ptr<std::atomic<uint8_t>[]> bucket_lock(new std::atomic<uint8_t>[nbx * nby]);
    for (int64_t b = 0; b < nbx * nby; ++b) {
        bucket_head[b].store(nullptr, std::memory_order_relaxed);
        bucket_lock[b].store(0, std::memory_order_relaxed);
    }
    auto bucket_x = [&](int64_t x) { return std::min<int64_t>(nbx - 1, std::max<int64_t>(0, (x - cx0) / bucket)); };
    auto bucket_y = [&](int64_t y) { return std::min<int64_t>(nby - 1, std::max<int64_t>(0, (y - cy0) / bucket)); };
    struct alignas(64) Progress {
        std::atomic<int64_t> rank;  // every candidate of the strip ranked below this is decided
    };
    std::unique_ptr<Progress[]> progress(new Progress[threads]);
    for (int t = 0; t < threads; ++t) progress[t].rank.store(-1, std::memory_order_relaxed);
    std::vector<int64_t> counts(8 * threads, 0), counts_clipper(threads, 0);
    const bool use_clipper = clipper_available();
    // pushes test eight candidates at a time where the CPU and the ray count allow
    const bool push_in_lanes = star_bound_simd_available() && n_rays >= 3 && n_rays <= kPushRays;
    const double thresh_lo = (double)thresh * (1.0 - 1e-6);

    // a failure in one strip (out of memory) stops them all and is raised after the team
    std::exception_ptr failure;
    std::atomic<bool> failed(false);
    parallel_team(threads, [&](int tid, int team) {
        try {
            // this thread's strip of bucket rows: [row_lo, row_hi)
            std::vector<int64_t> strip_lo(team + 1, nby);
            for (int t = 0; t < team; ++t)
                strip_lo[t] = std::min<int64_t>(
                    nby, std::lower_bound(row_start.begin(), row_start.end(), n * t / team) - row_start.begin());
            strip_lo[0] = 0;
            const int64_t row_lo = strip_lo[tid], row_hi = strip_lo[tid + 1];
            auto strip_of = [&](int64_t by) {
                return (int)(std::upper_bound(strip_lo.begin(), strip_lo.end(), by) - strip_lo.begin()) - 1;
            };
            std::vector<int64_t> mine;  // this strip's candidates in rank order
            mine.reserve(row_start[row_hi] - row_start[row_lo]);
            for (int64_t i = 0; i < n; ++i) {
                const int64_t by = (centre[i].y - cy0) / bucket;
                if (by >= row_lo && by < row_hi) mine.push_back(i);
            }
            progress[tid].rank.store(mine.empty() ? n : mine[0], std::memory_order_release);

            auto& store = kept_store[tid];
            auto& chunks = chunk_store[tid];
            int64_t stored = 0, chunked = 0;
            PairScratch s;
            s.reserve(n_rays);
            std::vector<Pt> pj(n_rays), pa(n_rays), rot_a(n_rays + 1), rot_j(n_rays + 1);
            std::vector<double> key_a(n_rays), rot_key_a(n_rays + 1), keys_j(n_rays), rot_key_j(n_rays + 1);
            std::vector<ClipEdge> clip_a(n_rays);
            std::vector<int16_t> rel_j(2 * n_rays);
            StarProfile j_profile;
            std::vector<int64_t> clip_buf(4 * n_rays);
            std::vector<std::pair<int64_t, const Kept*>> near;  // squared centre distance, kept polygon
            int64_t cnt[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // this thread's counters (no shared cache line)
            auto absolute = [](const int16_t* r, int nv, const Pt& c, Pt* out) {
                for (int k = 0; k < nv; ++k) out[k] = Pt{c.x + r[2 * k], c.y + r[2 * k + 1]};
                return nv;
            };
            // A kept polygon pushed onto the later candidates centred inside it (inside its
            // profile): those its lower bound suppresses are marked, decided then and there
            // with its profile in cache and their rows side by side in memory (the loop would
            // visit them at random). Nothing else is decided here.
            std::vector<int16_t> push_rel(2 * n_rays);
            const size_t row_bytes = sizeof(float) * (size_t)n_rays;
            constexpr int64_t kPushAhead = 6;  // rows fetched this many slots ahead
            // In two passes: the slots of the box's buckets are sifted first (rank, mark and
            // centre tests read only the slots), then the rows of the half that remain are
            // fetched ahead and their polygons tested (fetching every slot's row would read
            // as much again for nothing).
            std::vector<int32_t> push_list;
            push_list.reserve(1024);
            auto push = [&](const Kept& K, const Box& box) {
                const StarProfile& P = K.profile;
                push_list.clear();
                for (int64_t by = bucket_y(box.y0); by <= bucket_y(box.y1); ++by) {
                    for (int64_t bx = bucket_x(box.x0); bx <= bucket_x(box.x1); ++bx) {
                        const int64_t b = by * nbx + bx;
                        for (int64_t slot = key_first[b], end = key_first[b + 1]; slot < end; ++slot) {
                            const Slot& c = slots[slot];
                            if (c.rank <= K.rank || c.pushed.load(std::memory_order_relaxed)) continue;
                            const int64_t dx = c.x - K.z.x, dy = c.y - K.z.y;
                            if (dx != 0 || dy != 0) {  // centred inside K's profile
                                const double rad = P.min_over[key_sector(angle_key((double)dx, (double)dy))][0] * P.unit;
                                if ((double)(dx * dx + dy * dy) >= rad * rad) continue;
                            }
                            push_list.push_back((int32_t)slot);
                        }
                    }
                }
                const size_t listed = push_list.size();
                auto mark = [&](Slot& c) {
                    c.pushed.store(1, std::memory_order_relaxed);
                    dropped[c.rank].store(1, std::memory_order_relaxed);
                };
                // twice the intersection area past which K suppresses a candidate of twice-area s2
                auto enough_for = [&](int64_t s2) {
                    const float area = (float)(0.5 * (double)(s2 < 0 ? -s2 : s2));
                    return (double)suppressing_area2(thresh, std::min((double)K.area, (double)area));
                };
                auto test_one = [&](Slot& c) {
                    Box box_k;
                    int64_t s2_k;
                    bool star_k = false;
                    if (!make_simple(maker, c.row, Pt{c.x, c.y}, push_rel.data(), &box_k, &s2_k, &star_k)) return;
                    if (star_lower_bound2(P, push_rel.data(), n_rays, c.x - K.z.x, c.y - K.z.y, star_k) >= enough_for(s2_k))
                        mark(c);
                };
#if SEGRT_X86_AVX2
                if (push_in_lanes) {
                    // eight candidates at a time (push_bounds8_avx2); the rows of the next eight
                    // fetched while these are tested
                    for (size_t q = 0; q < std::min(listed, (size_t)8); ++q)
                        fetch_row(dist + slots[push_list[q]].row * n_rays, row_bytes);
                    const float* lane_rows[8];
                    int32_t lane_x[8], lane_y[8];
                    PushLanes L;
                    for (size_t q = 0; q < listed; q += 8) {
                        const size_t lanes = std::min<size_t>(8, listed - q);
                        for (size_t u = q + 8; u < std::min(listed, q + 16); ++u)
                            fetch_row(dist + slots[push_list[u]].row * n_rays, row_bytes);
                        for (size_t i = 0; i < 8; ++i) {
                            const Slot& c = slots[push_list[q + std::min(i, lanes - 1)]];  // spare lanes repeat the last
                            lane_rows[i] = dist + c.row * n_rays;
                            lane_x[i] = c.x;
                            lane_y[i] = c.y;
                        }
                        push_bounds8_avx2(P, lane_rows, n_rays, maker.cos_t.data(), maker.sin_t.data(), lane_x, lane_y,
                                          (int32_t)K.z.x, (int32_t)K.z.y, &L);
                        for (size_t i = 0; i < lanes; ++i) {
                            Slot& c = slots[push_list[q + i]];
                            if ((L.fallback >> i) & 1u) {  // out of the lanes' range: one at a time
                                test_one(c);
                                continue;
                            }
                            if (L.lower2[i] >= enough_for(L.area2[i])) mark(c);
                        }
                    }
                    return;
                }
#endif
                for (size_t q = 0; q < std::min(listed, (size_t)kPushAhead); ++q)
                    fetch_row(dist + slots[push_list[q]].row * n_rays, row_bytes);
                for (size_t q = 0; q < listed; ++q) {
                    if (q + kPushAhead < listed) fetch_row(dist + slots[push_list[q + kPushAhead]].row * n_rays, row_bytes);
                    test_one(slots[push_list[q]]);
                }
            };
            // pushes not yet made are shared by the threads: one that would wait on another
            // makes the oldest (so a strip behind in rank gets help), one about to decide a
            // candidate makes those whose boxes hold its centre
            std::vector<std::pair<const Kept*, Box>> mine_now;
            auto push_one = [&]() {
                if (push_waiting.load(std::memory_order_relaxed) == 0) return false;
                std::pair<const Kept*, Box> task;
                {
                    std::lock_guard<std::mutex> hold(push_mutex);
                    if (push_next == push_queue.size()) return false;
                    task = push_queue[push_next++];
                    push_waiting.fetch_sub(1, std::memory_order_relaxed);
                }
                push(*task.first, task.second);
                return true;
            };
            auto push_near = [&](const Pt& z) {
                mine_now.clear();
                if (push_waiting.load(std::memory_order_relaxed) == 0) return;
                {
                    std::lock_guard<std::mutex> hold(push_mutex);
                    size_t back = push_next;
                    for (size_t u = push_next; u < push_queue.size(); ++u) {
                        const Box& b = push_queue[u].second;
                        if (z.x >= b.x0 && z.x <= b.x1 && z.y >= b.y0 && z.y <= b.y1)
                            mine_now.push_back(push_queue[u]);
                        else
                            push_queue[back++] = push_queue[u];
                    }
                    push_waiting.fetch_sub((int64_t)(push_queue.size() - back), std::memory_order_relaxed);
                    push_queue.resize(back);
                }
                for (const auto& task : mine_now) push(*task.first, task.second);
            };
            // the raw polygons of the next kBatch candidates, made in one tight loop: rank order
            // visits the distance rows at random, and there the misses overlap (one at a time
            // in the suppression loop, even fetched ahead)
            constexpr size_t kBatch = 64;
            std::vector<int16_t> batch_rel(kBatch * 2 * n_rays);
            std::vector<Box> batch_box(kBatch);
            std::vector<int64_t> batch_s2(kBatch);
            std::vector<uint8_t> batch_simple(kBatch), batch_star(kBatch), batch_made(kBatch);
            size_t batch_lo = 0, batch_hi = 0;
            auto make_in_batch = [&](size_t t) {
                const size_t b = t - batch_lo;
                bool star = false;
                batch_simple[b] = make_simple(maker, row[mine[t]], centre[mine[t]], &batch_rel[b * 2 * n_rays],
                                              &batch_box[b], &batch_s2[b], &star);
                batch_star[b] = star;
                batch_made[b] = 1;
            };

            for (size_t q = 0; q < mine.size(); ++q) {
                if (failed.load(std::memory_order_relaxed)) {
                    progress[tid].rank.store(n, std::memory_order_release);
                    break;
                }
                const int64_t j = mine[q];
                // a kept polygon is pushed when a candidate centred in its box needs deciding
                // (or while this thread waits on another)
                if (pushing && !dropped[j].load(std::memory_order_relaxed)) push_near(centre[j]);
                if (pushing && dropped[j].load(std::memory_order_relaxed)) {
                    ++cnt[7];
                    progress[tid].rank.store(q + 1 < mine.size() ? mine[q + 1] : n, std::memory_order_release);
                    continue;
                }
                if (q >= batch_hi) {
                    batch_lo = q;
                    batch_hi = std::min(mine.size(), q + kBatch);
                    {
                        // demand loads, independent of each other: the core overlaps their misses
                        // (fetched ahead one at a time in the loop, they still stalled it)
                        float touch = 0;
                        for (size_t t = batch_lo; t < batch_hi; ++t) {
                            if (dropped[mine[t]].load(std::memory_order_relaxed)) continue;
                            const float* r = dist + row[mine[t]] * n_rays;
                            touch += r[0] + r[n_rays - 1];
                        }
                        asm volatile("" : : "x"(touch));
                    }
                    for (size_t t = batch_lo; t < batch_hi; ++t) {
                        const size_t b = t - batch_lo;
                        batch_made[b] = 0;  // pushed since: no polygon needed (never cleared)
                        if (dropped[mine[t]].load(std::memory_order_relaxed)) continue;
                        make_in_batch(t);
                    }
                }
                if (!batch_made[q - batch_lo]) make_in_batch(q);  // pushed onto by nothing after all
                const Pt zj = centre[j];
                // j's polygon: vertices relative to its centre (raw: before Clipper's clean-up,
                // which the first bound does not need), box, area
                const size_t b = q - batch_lo;
                const int16_t* rel_raw = &batch_rel[b * 2 * n_rays];
                Box box_j = batch_box[b];
                int nv_j = 0;
                int64_t s2 = batch_s2[b];
                bool cleaned = false;
                const bool raw_star = batch_star[b];  // j's raw path star-shaped about its centre: j is simple
                if (!batch_simple[b]) {
                    nv_j = maker.make(row[j], zj, pj.data());
                    int64_t x0 = zj.x, x1 = zj.x, y0 = zj.y, y1 = zj.y;
                    if (nv_j > 0) x0 = x1 = pj[0].x, y0 = y1 = pj[0].y;
                    for (int k = 0; k < nv_j; ++k) {
                        x0 = std::min(x0, pj[k].x);
                        x1 = std::max(x1, pj[k].x);
                        y0 = std::min(y0, pj[k].y);
                        y1 = std::max(y1, pj[k].y);
                        rel_j[2 * k] = (int16_t)(pj[k].x - zj.x);
                        rel_j[2 * k + 1] = (int16_t)(pj[k].y - zj.y);
                    }
                    box_j = Box{(int32_t)x0, (int32_t)x1, (int32_t)y0, (int32_t)y1};
                    s2 = shoelace2(pj.data(), nv_j);
                    cleaned = true;
                }
                const int16_t* first_rel = cleaned ? rel_j.data() : rel_raw;
                const int first_n = cleaned ? nv_j : n_rays;
                auto clean = [&]() {
                    if (!cleaned) nv_j = clean_simple(rel_raw, n_rays, rel_j.data());
                    cleaned = true;
                };
                const float area_j = (float)(0.5 * (double)(s2 < 0 ? -s2 : s2));
                const int64_t qy0 = std::max<int64_t>(0, (box_j.y0 - reach - cy0) / bucket);
                const int64_t qy1 = std::min<int64_t>(nby - 1, std::max<int64_t>(-1, (box_j.y1 + reach - cy0)) / bucket);
                const bool seam = box_j.y0 - reach < cy0 + row_lo * bucket || box_j.y1 + reach >= cy0 + row_hi * bucket;
                auto others_ready = [&](bool wait) {
                    for (int u = strip_of(qy0); u <= strip_of(qy1); ++u) {
                        if (u == tid) continue;
                        while (progress[u].rank.load(std::memory_order_acquire) < j) {
                            if (!wait) return false;
                            if (!pushing || !push_one()) spin_pause();
                        }
                    }
                    return true;
                };
                bool ready = !seam || others_ready(false);
                bool have_pj = false;
                int b_star = -1;          // j star-shaped about its own centre: unknown / no / yes
                int j_profile_state = 0;  // j_profile: not made / made / j not star-shaped
                bool suppressed = false;
                for (int attempt = 0; attempt < 2 && !suppressed; ++attempt) {
                    if (attempt == 1) {
                        if (ready) break;
                        ready = others_ready(true);
                    }
                    // kept polygons whose boxes meet j's and leave room for the threshold, nearest
                    // first; a pair is looked at in the one bucket that holds its boxes' common corner
                    near.clear();
                    const int64_t bx0 = bucket_x(box_j.x0), bx1 = bucket_x(box_j.x1);
                    const int64_t by0 = bucket_y(box_j.y0), by1 = bucket_y(box_j.y1);
                    for (int64_t by = by0; by <= by1; ++by) {
                        for (int64_t bx = bx0; bx <= bx1; ++bx) {
                            for (const Chunk* c = bucket_head[by * nbx + bx].load(std::memory_order_acquire); c;
                                 c = c->next.load(std::memory_order_acquire))
                            for (int32_t slot = 0, filled = c->count.load(std::memory_order_acquire); slot < filled; ++slot) {
                                const Entry* e = &c->e[slot];
                                if (e->rank > j) continue;  // another strip ran ahead
                                const Box& bi = e->box;
                                if (bucket_x(std::max(bi.x0, box_j.x0)) != bx || bucket_y(std::max(bi.y0, box_j.y0)) != by)
                                    continue;
                                ++cnt[5];
                                const int64_t w = (int64_t)std::min(bi.x1, box_j.x1) - std::max(bi.x0, box_j.x0);
                                const int64_t h = (int64_t)std::min(bi.y1, box_j.y1) - std::max(bi.y0, box_j.y0);
                                // the intersection lies inside both boxes: an upper bound on its area
                                if (w <= 0 || h <= 0 ||
                                    (double)w * (double)h / (std::min((double)e->area, (double)area_j) + 1.e-10) <= thresh_lo) {
                                    ++cnt[6];
                                    continue;
                                }
                                const Pt zi = e->kept->z;
                                near.emplace_back((zi.x - zj.x) * (zi.x - zj.x) + (zi.y - zj.y) * (zi.y - zj.y), e->kept);
                            }
                        }
                    }
                    std::sort(near.begin(), near.end(), [](const auto& u, const auto& v) { return u.first < v.first; });
                    for (const auto& entry : near) {
                        const Kept& K = *entry.second;
                        const Pt zi = K.z;
                        const float area_i = K.area;
                        const double amin = std::min((double)area_i, (double)area_j);
                        // past this the pair is suppressed whatever the exact area: a margin above the
                        // threshold that covers Clipper's rounding (kClipperMargin); under `below` it is not
                        const int64_t enough = suppressing_area2(thresh, amin);
                        double lb = K.star ? star_lower_bound2(K.profile, first_rel, first_n, zj.x - zi.x, zj.y - zi.y, raw_star) : 0;
                        if (lb >= (double)enough) {
                            ++cnt[3];
                            suppressed = true;
                            break;
                        }
                        clean();
                        if (!have_pj) {
                            absolute(rel_j.data(), nv_j, zj, pj.data());
                            have_pj = true;
                        }
                        // noisy outlines are often star-shaped about their own centre only: j's star
                        // test (once per candidate) for the bound with clockwise triangles about i's
                        // centre, then j's profile (once per candidate, when needed) for the bound
                        // about j's centre
                        int start_j = -1;
                        if (b_star < 0) {
                            start_j = star_prepare(pj.data(), nv_j, Pt{2 * zj.x, 2 * zj.y}, keys_j.data());
                            b_star = start_j >= 0;
                            if (!b_star) j_profile_state = 2;
                        }
                        if (K.star && lb < 0 && b_star == 1)
                            lb = star_lower_bound2(K.profile, rel_j.data(), nv_j, zj.x - zi.x, zj.y - zi.y, true);
                        if (lb < (double)enough && j_profile_state == 0) {
                            if (start_j < 0) start_j = star_prepare(pj.data(), nv_j, Pt{2 * zj.x, 2 * zj.y}, keys_j.data());
                            rotate_star(pj.data(), keys_j.data(), nv_j, start_j, rot_j.data(), rot_key_j.data());
                            star_profile(rot_j.data(), rot_key_j.data(), nv_j, zj, j_profile);
                            j_profile_state = 1;
                        }
                        if (lb < (double)enough && j_profile_state == 1)
                            lb = std::max(lb, star_lower_bound2(j_profile, K.rel, K.nverts, zi.x - zj.x, zi.y - zj.y, K.star));
                        if (lb >= (double)enough) {
                            ++cnt[3];
                            suppressed = true;
                            break;
                        }
                        const int64_t below = sparing_area2(thresh, amin);
                        const int na = absolute(K.rel, K.nverts, zi, pa.data());
                        const int start_a = K.star ? star_prepare(pa.data(), na, Pt{2 * zi.x, 2 * zi.y}, key_a.data()) : -1;
                        if (start_a >= 0) {
                            rotate_star(pa.data(), key_a.data(), na, start_a, rot_a.data(), rot_key_a.data());
                            for (int k = 0; k < na; ++k) clip_a[k] = make_clip_edge(rot_a[k], rot_a[k + 1]);
                        }
                        const PreparedA A{pa.data(), na, zi, start_a, key_a.data(), rot_a.data(), rot_key_a.data(), clip_a.data()};
                        int method = 0;
                        auto j_star = [&]() { return b_star == 1; };
                        // polygons that are star-shaped about no common point are jagged (spikes, noise);
                        // there Clipper's rounding can move the area far from the geometry, so Clipper
                        // decides them outright when it is linked
                        const int64_t i2 = intersection_area2(A, pj.data(), nv_j, zj, j_star, s, &method, 0, use_clipper, enough, below);
                        ++cnt[method - 1];
                        double inter2 = (double)i2;
                        if (use_clipper && (i2 < 0 || near_threshold((double)i2, area_i, area_j, thresh))) {
                            ++counts_clipper[tid];
                            for (int k = 0; k < na; ++k) clip_buf[2 * k] = pa[k].x, clip_buf[2 * k + 1] = pa[k].y;
                            for (int k = 0; k < nv_j; ++k) clip_buf[2 * na + 2 * k] = pj[k].x, clip_buf[2 * na + 2 * k + 1] = pj[k].y;
                            inter2 = 2.0 * clipper_intersection_area(clip_buf.data(), na, clip_buf.data() + 2 * na, nv_j);
                        }
                        if (overlap_exceeds(inter2, area_i, area_j, thresh)) {
                            suppressed = true;
                            break;
                        }
                    }
                }
                if (!suppressed) {
                    keep[j] = 1;
                    clean();
                    if (stored % kChunk == 0) {
                        store.emplace_back(new Kept[kChunk]);
                        rel_store[tid].emplace_back(new int16_t[kChunk * 2 * n_rays]);
                    }
                    Kept& K = store.back()[stored % kChunk];
                    int16_t* kept_rel = rel_store[tid].back().get() + (stored % kChunk) * 2 * n_rays;
                    ++stored;
                    K.z = zj;
                    K.rank = j;
                    K.nverts = nv_j;
                    K.area = area_j;
                    std::copy(rel_j.begin(), rel_j.begin() + 2 * nv_j, kept_rel);
                    K.rel = kept_rel;
                    if (!have_pj) absolute(rel_j.data(), nv_j, zj, pj.data());
                    const int start = star_prepare(pj.data(), nv_j, Pt{2 * zj.x, 2 * zj.y}, key_a.data());
                    K.star = start >= 0;
                    if (K.star) {
                        rotate_star(pj.data(), key_a.data(), nv_j, start, rot_a.data(), rot_key_a.data());
                        star_profile(rot_a.data(), rot_key_a.data(), nv_j, zj, K.profile);
                    }
                    if (K.star && pushing) {
                        std::lock_guard<std::mutex> hold(push_mutex);
                        push_queue.emplace_back(&K, box_j);
                        push_waiting.fetch_add(1, std::memory_order_relaxed);
                    }
                    for (int64_t by = bucket_y(box_j.y0); by <= bucket_y(box_j.y1); ++by) {
                        for (int64_t bx = bucket_x(box_j.x0); bx <= bucket_x(box_j.x1); ++bx) {
                            const int64_t b = by * nbx + bx;
                            while (bucket_lock[b].exchange(1, std::memory_order_acquire)) spin_pause();
                            Chunk* c = bucket_tail[b];
                            if (!c || c->count.load(std::memory_order_relaxed) == kPerChunk) {
                                if (chunked % kChunk == 0) chunks.emplace_back(new Chunk[kChunk]);
                                Chunk* fresh = &chunks.back()[chunked % kChunk];
                                ++chunked;
                                fresh->count.store(0, std::memory_order_relaxed);
                                fresh->next.store(nullptr, std::memory_order_relaxed);
                                if (c)
                                    c->next.store(fresh, std::memory_order_release);
                                else
                                    bucket_head[b].store(fresh, std::memory_order_release);
                                bucket_tail[b] = c = fresh;
                            }
                            const int32_t slot = c->count.load(std::memory_order_relaxed);
                            c->e[slot] = Entry{box_j, area_j, 0, j, &K};
                            c->count.store(slot + 1, std::memory_order_release);
                            bucket_lock[b].store(0, std::memory_order_release);
                        }
                    }
                }
                progress[tid].rank.store(q + 1 < mine.size() ? mine[q + 1] : n, std::memory_order_release);
            }
            // help the strips still deciding
            while (pushing && !failed.load(std::memory_order_relaxed) && push_one()) {
            }
            std::copy(cnt, cnt + 8, &counts[8 * tid]);
        } catch (...) {
            if (!failed.exchange(true)) failure = std::current_exception();
            progress[tid].rank.store(n, std::memory_order_release);  // nobody waits on this strip
        }
    });
    if (failure) std::rethrow_exception(failure);
    for (int t = 0; t < threads; ++t) {
        st.pairs_exact_star += counts[8 * t];
        st.pairs_exact_general += counts[8 * t + 1];
        st.pairs_exact_two_star += counts[8 * t + 2];
        st.pairs_lower_bound += counts[8 * t + 3];
        st.pairs_upper_bound += counts[8 * t + 4];
        st.pairs_considered += counts[8 * t + 5];
        st.pairs_bound_rejected += counts[8 * t + 6];
        st.pairs_clipper += counts_clipper[t];
        st.candidates_pushed += counts[8 * t + 7];
    }
    for (int64_t i = 0; i < n; ++i) st.kept += keep[i];
    st.seconds_suppress = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_prepared).count();
    if (stats) *stats = st;
    return keep;
}

// ---- one pair's decision, outside the loop --------------------------------------------------
// The decision the loop above takes for one pair (kept polygon i, later candidate j), taken
// with the same arithmetic in the same order: the lower bounds, then the exact lattice area
// (Clipper near the threshold or for jagged pairs when it is linked), then StarDist's test.
// One decider per thread (it owns its scratch).
struct PairDecider {
    const PolygonMaker& maker;
    int n_rays;
    float thresh;
    bool use_clipper;
    PairScratch s;
    std::vector<Pt> pa, pj, rot_a, rot_j;
    std::vector<double> key_a, rot_key_a, keys_j, rot_key_j;
    std::vector<ClipEdge> clip_a;
    std::vector<int16_t> rel_a, rel_j, rel_raw;
    std::vector<int64_t> clip_buf;
    StarProfile profile_a, profile_j;

    PairDecider(const PolygonMaker& m, float t)
        : maker(m), n_rays(m.n_rays), thresh(t), use_clipper(clipper_available()), pa(n_rays), pj(n_rays),
          rot_a(n_rays + 1), rot_j(n_rays + 1), key_a(n_rays), rot_key_a(n_rays + 1), keys_j(n_rays),
          rot_key_j(n_rays + 1), clip_a(n_rays), rel_a(2 * n_rays), rel_j(2 * n_rays), rel_raw(2 * n_rays),
          clip_buf(4 * n_rays) {
        s.reserve(n_rays);
    }

    // row_i / row_j: the pair's rows of dist; zi / zj: their centres
    bool suppresses(int64_t row_i, Pt zi, int64_t row_j, Pt zj) {
        // the kept polygon as the loop stores it: cleaned, relative vertices, star profile
        const int na = maker.make(row_i, zi, pa.data());
        for (int k = 0; k < na; ++k) {
            rel_a[2 * k] = (int16_t)(pa[k].x - zi.x);
            rel_a[2 * k + 1] = (int16_t)(pa[k].y - zi.y);
        }
        const int64_t sa2 = shoelace2(pa.data(), na);
        const float area_i = (float)(0.5 * (double)(sa2 < 0 ? -sa2 : sa2));
        const int start_a = star_prepare(pa.data(), na, Pt{2 * zi.x, 2 * zi.y}, key_a.data());
        const bool a_star = start_a >= 0;
        if (a_star) {
            rotate_star(pa.data(), key_a.data(), na, start_a, rot_a.data(), rot_key_a.data());
            star_profile(rot_a.data(), rot_key_a.data(), na, zi, profile_a);
            for (int k = 0; k < na; ++k) clip_a[k] = make_clip_edge(rot_a[k], rot_a[k + 1]);
        }
        // the candidate: its raw path where make_simple takes it, cleaned otherwise
        Box box_j;
        int64_t s2;
        bool raw_star = false;
        int nv_j = 0;
        const bool simple = make_simple(maker, row_j, zj, rel_raw.data(), &box_j, &s2, &raw_star);
        if (simple) {
            nv_j = clean_simple(rel_raw.data(), n_rays, rel_j.data());
            for (int k = 0; k < nv_j; ++k) pj[k] = Pt{zj.x + rel_j[2 * k], zj.y + rel_j[2 * k + 1]};
        } else {
            nv_j = maker.make(row_j, zj, pj.data());
            for (int k = 0; k < nv_j; ++k) {
                rel_j[2 * k] = (int16_t)(pj[k].x - zj.x);
                rel_j[2 * k + 1] = (int16_t)(pj[k].y - zj.y);
            }
            s2 = shoelace2(pj.data(), nv_j);
        }
        const float area_j = (float)(0.5 * (double)(s2 < 0 ? -s2 : s2));
        const double amin = std::min((double)area_i, (double)area_j);
        const int64_t enough = suppressing_area2(thresh, amin);
        double lb = a_star ? star_lower_bound2(profile_a, simple ? rel_raw.data() : rel_j.data(), simple ? n_rays : nv_j,
                                               zj.x - zi.x, zj.y - zi.y, simple ? raw_star : false)
                           : 0;
        if (lb >= (double)enough) return true;
        const int start_j = star_prepare(pj.data(), nv_j, Pt{2 * zj.x, 2 * zj.y}, keys_j.data());
        const bool j_star = start_j >= 0;
        if (a_star && lb < 0 && j_star)
            lb = star_lower_bound2(profile_a, rel_j.data(), nv_j, zj.x - zi.x, zj.y - zi.y, true);
        if (lb < (double)enough && j_star) {
            rotate_star(pj.data(), keys_j.data(), nv_j, start_j, rot_j.data(), rot_key_j.data());
            star_profile(rot_j.data(), rot_key_j.data(), nv_j, zj, profile_j);
            lb = std::max(lb, star_lower_bound2(profile_j, rel_a.data(), na, zi.x - zj.x, zi.y - zj.y, a_star));
        }
        if (lb >= (double)enough) return true;
        const int64_t below = sparing_area2(thresh, amin);
        const PreparedA A{pa.data(), na, zi, start_a, key_a.data(), rot_a.data(), rot_key_a.data(), clip_a.data()};
        int method = 0;
        const int64_t i2 = intersection_area2(A, pj.data(), nv_j, zj, [&]() { return j_star; }, s, &method, 0,
                                              use_clipper, enough, below);
        double inter2 = (double)i2;
        if (use_clipper && (i2 < 0 || near_threshold((double)i2, area_i, area_j, thresh))) {
            for (int k = 0; k < na; ++k) clip_buf[2 * k] = pa[k].x, clip_buf[2 * k + 1] = pa[k].y;
            for (int k = 0; k < nv_j; ++k) clip_buf[2 * na + 2 * k] = pj[k].x, clip_buf[2 * na + 2 * k + 1] = pj[k].y;
            inter2 = 2.0 * clipper_intersection_area(clip_buf.data(), na, clip_buf.data() + 2 * na, nv_j);
        }
        return overlap_exceeds(inter2, area_i, area_j, thresh);
    }
};

// ---- pairs settled on the host for the GPU kernel -----------------------------------------
std::vector<uint8_t> decide_pairs_2d(const float* dist, int n_rays, const int64_t* cells, int64_t width, int grid_y,
                                     int grid_x, const int64_t* pairs, int64_t n_pairs, float thresh, int n_threads) {
    std::vector<uint8_t> out(n_pairs, 0);
    if (n_pairs == 0) return out;
    if (n_rays > kMaxRays) throw std::invalid_argument("at most 255 rays are supported");
    const PolygonMaker maker(dist, n_rays, width, grid_y, grid_x);
    parallel_for(n_pairs, effective_threads(n_threads), [&](int64_t lo, int64_t hi) {
        PairDecider decide(maker, thresh);
        for (int64_t q = lo; q < hi; ++q) {
            const int64_t i = pairs[2 * q], j = pairs[2 * q + 1];
            out[q] = decide.suppresses(i, maker.centre(cells[i]), j, maker.centre(cells[j])) ? 1 : 0;
        }
    });
    return out;
}

// ---- which decisions over a block are the whole image's -----------------------------------
// One pass in visiting order. A candidate's decision follows from the decisions of the
// higher-ranked candidates that would suppress it; those of a certain candidate are the
// whole image's. So: a kept candidate is certain when nothing outside the block can reach it
// and no uncertain higher-ranked candidate would suppress it (every one that would is then
// certainly dropped, as here); a dropped candidate is certain when a certain kept candidate
// suppresses it. Pair decisions are taken only near uncertain candidates: elsewhere every
// higher-ranked neighbour is certain, and so is the block's decision.
std::vector<uint8_t> certify_2d(const float* dist, int n_rays, const int64_t* order, const int64_t* rows, int64_t n,
                                int64_t width, int grid_y, int grid_x, float thresh, const uint8_t* keep,
                                const uint8_t* exposed) {
    std::vector<uint8_t> certain(n, 1);
    if (n == 0) return certain;
    if (n_rays > kMaxRays) throw std::invalid_argument("at most 255 rays are supported");
    const PolygonMaker maker(dist, n_rays, width, grid_y, grid_x);
    std::vector<Pt> centre(n);
    std::vector<int64_t> reach(n);
    int64_t reach_max = 0, x0 = std::numeric_limits<int64_t>::max(), y0 = x0, x1 = std::numeric_limits<int64_t>::min(),
            y1 = x1;
    for (int64_t i = 0; i < n; ++i) {
        centre[i] = maker.centre(order[i]);
        const float* d = dist + rows[i] * n_rays;
        float r = 0.0f;
        for (int k = 0; k < n_rays; ++k) {
            if (!(d[k] >= 0.0f && d[k] <= 32766.0f)) throw std::invalid_argument("dist of a candidate holds NaN, infinite, negative or too long rays");
            r = std::max(r, d[k]);
        }
        // a polygon's lattice vertices lie within its longest ray + 1 of its centre (truncation)
        reach[i] = (int64_t)std::ceil(r) + 2;
        reach_max = std::max(reach_max, reach[i]);
        x0 = std::min(x0, centre[i].x), x1 = std::max(x1, centre[i].x);
        y0 = std::min(y0, centre[i].y), y1 = std::max(y1, centre[i].y);
    }
    const int64_t bucket = std::max<int64_t>(16, reach_max);
    const int64_t nbx = (x1 - x0) / bucket + 1, nby = (y1 - y0) / bucket + 1;
    std::vector<std::vector<int64_t>> uncertain(nbx * nby), kept_certain(nbx * nby);
    PairDecider decide(maker, thresh);
    std::vector<int64_t> near;
    for (int64_t i = 0; i < n; ++i) {
        const Pt z = centre[i];
        const int64_t span = reach[i] + reach_max;
        const int64_t bx0 = std::max<int64_t>(0, (z.x - span - x0) / bucket),
                      bx1 = std::min<int64_t>(nbx - 1, (z.x + span - x0) / bucket);
        const int64_t by0 = std::max<int64_t>(0, (z.y - span - y0) / bucket),
                      by1 = std::min<int64_t>(nby - 1, (z.y + span - y0) / bucket);
        auto within = [&](int64_t j) {
            const int64_t s = reach[i] + reach[j];
            return std::abs(centre[j].x - z.x) <= s && std::abs(centre[j].y - z.y) <= s;
        };
        near.clear();
        for (int64_t by = by0; by <= by1; ++by)
            for (int64_t bx = bx0; bx <= bx1; ++bx)
                for (int64_t j : uncertain[by * nbx + bx])
                    if (within(j)) near.push_back(j);
        bool ok;
        if (keep[i]) {
            ok = !exposed[i];
            for (size_t q = 0; ok && q < near.size(); ++q)
                ok = !decide.suppresses(rows[near[q]], centre[near[q]], rows[i], z);
        } else if (near.empty() && !exposed[i]) {
            ok = true;  // every higher-ranked candidate that could suppress it is certain
        } else {
            ok = false;
            for (int64_t by = by0; !ok && by <= by1; ++by)
                for (int64_t bx = bx0; !ok && bx <= bx1; ++bx)
                    for (int64_t j : kept_certain[by * nbx + bx])
                        if (within(j) && decide.suppresses(rows[j], centre[j], rows[i], z)) {
                            ok = true;
                            break;
                        }
        }
        certain[i] = ok;
        const int64_t b = ((z.y - y0) / bucket) * nbx + (z.x - x0) / bucket;
        if (!ok)
            uncertain[b].push_back(i);
        else if (keep[i])
            kept_certain[b].push_back(i);
    }
    return certain;
}

}  // namespace starnms
}  // namespace segrt
