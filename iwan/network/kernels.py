"""Compiled kernels of the IWAN search (numba): the early-stopping Dijkstra, the run merge, and
the parallel distance of queries of several examples (their start's weights, the best k by
parallel distance, their merge with the graph's hits).

The data layout is iwan.network.edges's (read its module doc): word-word edges as CSR over word
ids; each image slot's row of (word, cost) edges; and each word's images in sorted runs, one set
of runs per level (the main block and the delta), each run cheapest first, ties to the lower slot.

`nearest` is the search of iwan/network/index.py's module doc, for a batch of queries. Distances are
summed edge by edge in path order, in float64 without fast-math, exactly as networkx sums them.
The kernels keep no state between calls but the scratch arrays they are given, which they leave
as they found them (all words at distance inf, every live image state 0): callers serialise calls that
share scratch.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _grow(a, n):
    b = np.empty(max(2 * len(a), 16), a.dtype)
    b[:n] = a[:n]
    return b


@numba.njit(nogil=True, cache=True)
def _sift_up(hd, hw, hp, hl, i):
    d, w, p, lv = hd[i], hw[i], hp[i], hl[i]
    while i > 0:
        parent = (i - 1) >> 1
        if hd[parent] <= d:
            break
        hd[i], hw[i], hp[i], hl[i] = hd[parent], hw[parent], hp[parent], hl[parent]
        i = parent
    hd[i], hw[i], hp[i], hl[i] = d, w, p, lv


@numba.njit(nogil=True, cache=True)
def _sift_down(hd, hw, hp, hl, size):
    """Restore the heap after its last entry was moved to the top (size already decremented)."""
    d, w, p, lv = hd[0], hw[0], hp[0], hl[0]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and hd[child + 1] < hd[child]:
            child += 1
        if hd[child] >= d:
            break
        hd[i], hw[i], hp[i], hl[i] = hd[child], hw[child], hp[child], hl[child]
        i = child
    hd[i], hw[i], hp[i], hl[i] = d, w, p, lv


@numba.njit(nogil=True, cache=True)
def edge_cost(row_words, row_costs, s, w):
    """The cost of slot s's edge to word w: its row's cheapest edge to w (a row holds each word
    once when built by iwan.network.graph.image_edges). The runs keep no costs of their own: they
    read them here, from the rows (8 bytes per edge less)."""
    best = np.inf
    for c in range(row_words.shape[1]):
        if row_words[s, c] == w and row_costs[s, c] < best:
            best = row_costs[s, c]
    return best


@numba.njit(nogil=True, cache=True)
def nearest(
    word_ptr, word_next, word_weight,
    row_words, row_costs, state, ids,
    main_ptr, main_slot, delta_ptr, delta_slot,
    word_dist, word_pred, word_done,
    query_words, query_costs, exclude, eligible, k, want_paths,
):
    """The k nearest live images of each query (see the module doc).

    state: per slot, -1 dead, 0 live (during a search: i > 0, settled i-th). main_* and delta_*:
    the two levels of runs, each (ptr (n_words + 1), slot), their costs read from the rows
    (edge_cost). query_words /
    query_costs (q, m): start words (-1: none) and their costs. exclude (q, e): image slots left
    out of each query's results (-1: none); they stay bridges. eligible (n_slots,) uint8: the
    slots that may be results, the same for every query (length 0: all); the others stay bridges
    too, and the early stop counts only eligible images. Returns distances (q, k), slots
    (q, k) (-1 padding), hit counts (q,), and when want_paths, the paths of all hits
    concatenated as node ids (word w: 1 + w, image slot s: 1 + n_words + ids[s]) with their
    offsets ((q * k) + 1, hit r, c at [r * k + c]).
    """
    inf = np.inf
    n_words = len(word_dist)
    width = row_words.shape[1]
    q, m = query_words.shape
    out_dist = np.full((q, k), inf)
    out_slot = np.full((q, k), -1, np.int64)
    out_n = np.zeros(q, np.int64)
    path_ptr = np.zeros(q * k + 1 if want_paths else 1, np.int64)
    path_nodes = np.empty(64 if want_paths else 0, np.int64)
    n_path = 0

    hd = np.empty(256, np.float64)
    hw = np.empty(256, np.int64)
    hp = np.empty(256, np.int64)
    hl = np.empty(256, np.int64)
    touched = np.empty(n_words, np.int64)
    settled = np.empty(256, np.int64)
    settled_pred = np.empty(256, np.int64)
    found_dist = np.empty(256, np.float64)
    found_slot = np.empty(256, np.int64)

    for r in range(q):
        size = 0
        n_touched = 0
        n_settled = 0
        n_found = 0
        bound = inf
        for j in range(m):
            w = query_words[r, j]
            c = query_costs[r, j]
            if w >= 0 and c < word_dist[w]:
                if word_dist[w] == inf:
                    touched[n_touched] = w
                    n_touched += 1
                word_dist[w] = c
                word_pred[w] = -1
                if size == len(hd):
                    hd, hw, hp, hl = _grow(hd, size), _grow(hw, size), _grow(hp, size), _grow(hl, size)
                hd[size], hw[size], hp[size], hl[size] = c, w, -1, 0
                _sift_up(hd, hw, hp, hl, size)
                size += 1

        while size > 0 and hd[0] <= bound:
            d, w, p, lv = hd[0], hw[0], hp[0], hl[0]
            size -= 1
            if size > 0:
                hd[0], hw[0], hp[0], hl[0] = hd[size], hw[size], hp[size], hl[size]
                _sift_down(hd, hw, hp, hl, size)

            if p < 0:  # a word: settle it, relax its associations, open its image runs
                if word_done[w]:
                    continue
                word_done[w] = 1
                for e in range(word_ptr[w], word_ptr[w + 1]):
                    v = word_next[e]
                    nd = d + word_weight[e]
                    if nd < word_dist[v]:
                        if word_dist[v] == inf:
                            touched[n_touched] = v
                            n_touched += 1
                        word_dist[v] = nd
                        word_pred[v] = w
                        if size == len(hd):
                            hd, hw, hp, hl = _grow(hd, size), _grow(hw, size), _grow(hp, size), _grow(hl, size)
                        hd[size], hw[size], hp[size], hl[size] = nd, v, -1, 0
                        _sift_up(hd, hw, hp, hl, size)
                        size += 1
                for level in range(2):
                    ptr, run_slot = (main_ptr, main_slot) if level == 0 else (delta_ptr, delta_slot)
                    e = ptr[w]
                    if e < ptr[w + 1]:
                        if size == len(hd):
                            hd, hw, hp, hl = _grow(hd, size), _grow(hw, size), _grow(hp, size), _grow(hl, size)
                        hd[size], hw[size], hp[size], hl[size] = d + edge_cost(row_words, row_costs, run_slot[e], w), w, e, level
                        _sift_up(hd, hw, hp, hl, size)
                        size += 1
                continue

            # An image offered by word w's run at position p: settle it if live and new.
            ptr, run_slot = (main_ptr, main_slot) if lv == 0 else (delta_ptr, delta_slot)
            s = run_slot[p]
            if state[s] == 0:
                if n_settled == len(settled):
                    settled, settled_pred = _grow(settled, n_settled), _grow(settled_pred, n_settled)
                settled[n_settled] = s
                settled_pred[n_settled] = w
                n_settled += 1
                state[s] = n_settled
                kept = len(eligible) == 0 or eligible[s] != 0
                for j in range(exclude.shape[1]):
                    if exclude[r, j] == s:
                        kept = False
                if kept:
                    if n_found == len(found_dist):
                        found_dist, found_slot = _grow(found_dist, n_found), _grow(found_slot, n_found)
                    found_dist[n_found] = d
                    found_slot[n_found] = s
                    n_found += 1
                    if n_found == k:
                        bound = d
                for c in range(width):
                    v = row_words[s, c]
                    if v >= 0:
                        nd = d + row_costs[s, c]
                        if nd < word_dist[v]:
                            if word_dist[v] == inf:
                                touched[n_touched] = v
                                n_touched += 1
                            word_dist[v] = nd
                            word_pred[v] = n_words + s
                            if size == len(hd):
                                hd, hw, hp, hl = _grow(hd, size), _grow(hw, size), _grow(hp, size), _grow(hl, size)
                            hd[size], hw[size], hp[size], hl[size] = nd, v, -1, 0
                            _sift_up(hd, hw, hp, hl, size)
                            size += 1
            p += 1
            if p < ptr[w + 1]:
                if size == len(hd):
                    hd, hw, hp, hl = _grow(hd, size), _grow(hw, size), _grow(hp, size), _grow(hl, size)
                hd[size], hw[size], hp[size], hl[size] = word_dist[w] + edge_cost(row_words, row_costs, run_slot[p], w), w, p, lv
                _sift_up(hd, hw, hp, hl, size)
                size += 1

        # Found in distance order; ties (also past the k-th) go to the lower slot, i.e. id.
        for i in range(1, n_found):
            d, s = found_dist[i], found_slot[i]
            j = i
            while j > 0 and (found_dist[j - 1] > d or (found_dist[j - 1] == d and found_slot[j - 1] > s)):
                found_dist[j], found_slot[j] = found_dist[j - 1], found_slot[j - 1]
                j -= 1
            found_dist[j], found_slot[j] = d, s
        n = min(k, n_found)
        out_n[r] = n
        for c in range(n):
            out_dist[r, c] = found_dist[c]
            out_slot[r, c] = found_slot[c]
            if want_paths:
                # Walk back to the query, then reverse: image, word, (image, word)...
                start = n_path
                s = found_slot[c]
                while True:
                    if n_path + 2 > len(path_nodes):
                        path_nodes = _grow(path_nodes, n_path)
                    path_nodes[n_path] = 1 + n_words + ids[s]
                    w = settled_pred[state[s] - 1]
                    path_nodes[n_path + 1] = 1 + w
                    n_path += 2
                    pred = word_pred[w]
                    while 0 <= pred < n_words:
                        if n_path == len(path_nodes):
                            path_nodes = _grow(path_nodes, n_path)
                        path_nodes[n_path] = 1 + pred
                        n_path += 1
                        pred = word_pred[pred]
                    if pred < 0:
                        break
                    s = pred - n_words
                path_nodes[start:n_path] = path_nodes[start:n_path][::-1].copy()
                path_ptr[r * k + c + 1] = n_path
        if want_paths:
            for c in range(n, k):
                path_ptr[r * k + c + 1] = n_path

        for i in range(n_touched):
            word_dist[touched[i]] = inf
            word_done[touched[i]] = 0
        for i in range(n_settled):
            state[settled[i]] = 0
    return out_dist, out_slot, out_n, path_nodes[:n_path], path_ptr


@numba.njit(nogil=True, cache=True)
def merge_runs(ptr_a, slot_a, ptr_b, slot_b, row_words, row_costs):
    """Two sets of per-word runs, each sorted by (cost, slot) (costs read from the rows), merged
    into one: (ptr, slot). Each of b's slots is placed by a binary search in a's run, and a's
    slots between are copied as they are: a cost is read (a random access into the rows) only
    log(run) times per slot of b, so merging a small delta into a large main block costs little
    more than copying it."""
    n_words = len(ptr_a) - 1
    ptr = np.empty(n_words + 1, np.int64)
    slot = np.empty(len(slot_a) + len(slot_b), slot_a.dtype)
    o = 0
    for w in range(n_words):
        ptr[w] = o
        i, i_end = ptr_a[w], ptr_a[w + 1]
        for j in range(ptr_b[w], ptr_b[w + 1]):
            sj = slot_b[j]
            cj = edge_cost(row_words, row_costs, sj, w)
            lo, hi = i, i_end  # the first of a's slots that goes after (cj, sj)
            while lo < hi:
                mid = (lo + hi) // 2
                cm = edge_cost(row_words, row_costs, slot_a[mid], w)
                if cm < cj or (cm == cj and slot_a[mid] < sj):
                    lo = mid + 1
                else:
                    hi = mid
            while i < lo:
                slot[o] = slot_a[i]
                i += 1
                o += 1
            slot[o] = sj
            o += 1
        while i < i_end:
            slot[o] = slot_a[i]
            i += 1
            o += 1
    ptr[n_words] = o
    return ptr, slot


@numba.njit(nogil=True, cache=True)
def sorted_runs(n_words, row_words, row_costs, first_slot):
    """The runs of rows (words, costs) (n, width) at slots first_slot.., as (ptr, slot), each
    word's slots sorted by (cost, slot): a counting sort by word (slots ascend in it), then each
    word's run sorted by cost, stably. Beside the runs it needs only one run's worth of scratch,
    where a lexsort of every edge needs several arrays of that size."""
    n, width = row_words.shape
    ptr = np.zeros(n_words + 1, np.int64)
    for s in range(n):
        for j in range(width):
            w = row_words[s, j]
            if w >= 0:
                ptr[w + 1] += 1
    for w in range(n_words):
        ptr[w + 1] += ptr[w]
    slot = np.empty(ptr[n_words], np.int32)
    fill = ptr[:n_words].copy()
    for s in range(n):
        for j in range(width):
            w = row_words[s, j]
            if w >= 0:
                slot[fill[w]] = s
                fill[w] += 1
    longest = 0
    for w in range(n_words):
        longest = max(longest, ptr[w + 1] - ptr[w])
    cost = np.empty(longest, np.float64)
    for w in range(n_words):
        a, b = ptr[w], ptr[w + 1]
        if b - a > 1:
            for e in range(a, b):
                cost[e - a] = edge_cost(row_words, row_costs, slot[e], w)
            order = np.argsort(cost[: b - a], kind="mergesort")
            slot[a:b] = slot[a:b][order]
    for e in range(len(slot)):
        slot[e] += first_slot
    return ptr, slot


@numba.njit(nogil=True, cache=True)
def run_floors(ptr, run_slot, row_words, row_costs, block):
    """Each run's cost at every `block`-th entry, the least cost of the block it opens (a run is
    cheapest first): (block_ptr (n_words + 1) int64, floors float64), word w's blocks at
    block_ptr[w]..block_ptr[w + 1]. Read from the rows (edge_cost), as the runs' order was."""
    n_words = len(ptr) - 1
    block_ptr = np.zeros(n_words + 1, np.int64)
    for w in range(n_words):
        block_ptr[w + 1] = block_ptr[w] + (ptr[w + 1] - ptr[w] + block - 1) // block
    floors = np.empty(block_ptr[n_words], np.float64)
    for w in range(n_words):
        for i in range(block_ptr[w + 1] - block_ptr[w]):
            floors[block_ptr[w] + i] = edge_cost(row_words, row_costs, run_slot[ptr[w] + i * block], w)
    return block_ptr, floors


@numba.njit(nogil=True, cache=True)
def parallel_rows(words, weights, start_cost, ids, exclude, main_ptr, main_slot, main_block_ptr, main_floors,
                  delta_ptr, delta_slot, delta_block_ptr, delta_floors, block, row_words, row_costs, state,
                  touches, bound, eligible, k):
    """parallel_best for a start given as word ids and weights (a word -1, or a weight <= 0, NaN or
    inf, gives no start; a word given twice keeps its cheaper cost 1/weight) and excluded image ids
    (`ids`: each slot's, ascending; -1 none), with each hit's row: (slots, distances, word ids
    (n, width) int64, path lengths (n, width), inf where the start lacks the word). start_cost
    (n_words + 1,) is scratch, all inf, and left so; the rest as parallel_best's."""
    given = np.empty(len(words), np.int64)
    g = 0
    for i in range(len(words)):
        w, p = words[i], weights[i]
        if w >= 0 and p > 0 and p < np.inf and 1.0 / p < start_cost[w]:
            if start_cost[w] == np.inf:
                given[g] = w
                g += 1
            start_cost[w] = 1.0 / p
    chosen = np.sort(given[:g])
    n_slots = len(touches)
    skip = np.full(len(exclude), -1, np.int64)
    for i in range(len(exclude)):
        s = min(np.searchsorted(ids[:n_slots], exclude[i]), n_slots - 1)
        if n_slots and ids[s] == exclude[i] and state[s] == 0:
            skip[i] = s
    slots, distances = parallel_best(start_cost, chosen, main_ptr, main_slot, main_block_ptr, main_floors,
                                     delta_ptr, delta_slot, delta_block_ptr, delta_floors, block,
                                     row_words, row_costs, state, touches, bound, skip, eligible, k)
    width = row_words.shape[1]
    padding = len(start_cost) - 1
    hit_words = np.empty((len(slots), width), np.int64)
    lengths = np.empty((len(slots), width), np.float64)
    for i in range(len(slots)):
        for c in range(width):
            w = row_words[slots[i], c]
            hit_words[i, c] = w
            lengths[i, c] = start_cost[padding if w < 0 else w] + row_costs[slots[i], c]
    for i in range(g):
        start_cost[given[i]] = np.inf
    return slots, distances, hit_words, lengths


@numba.njit(nogil=True, cache=True)
def parallel_best(start_cost, chosen, main_ptr, main_slot, main_block_ptr, main_floors,
                  delta_ptr, delta_slot, delta_block_ptr, delta_floors, block,
                  row_words, row_costs, state, touches, bound, skip, eligible, k):
    """The k live slots holding several of the `chosen` start words nearest by parallel distance
    over their whole row, nearest first, ties to the lower slot: (slots, distances). A path's length
    is start_cost[word] + its row cost (start_cost: per word, inf where no start, its last entry the
    padding word -1's); one finite path: its length; several: 1 / the sum of 1 / length over the
    whole row, summed in numpy's order (_row_sum), so the figures are numpy's bit for bit. `skip`:
    slots that are no results (-1 none); `eligible` (n_slots,) uint8: only slots marked 1 are
    results (empty: every slot). Each level's runs come with their floors (run_floors, every
    `block` entries). Scratch, (n_slots,) each (the slots held, no more), left all 0: `touches`
    uint8 counts each slot's start words, `bound` float64 sums its paths' bounds.

    Each chosen word's runs (both levels) are read once, and each slot met gets, per path, 1 /
    (start cost + the floor of its block): at least the path's 1 / length, so their sum bounds the
    slot's sum of 1 / length from above. The k best so far are kept in a max-heap, and a slot
    whose bound cannot beat the k-th (with a margin of 1e-9, far above the rounding of sums of
    a row's few terms in another order) is not scored: its row is never read. Of the ~11,000
    slots holding several words of a 5-example start at 50,000 images, a few hundred are scored."""
    for level in range(2):
        if level == 0:
            ptr, run_slot, block_ptr, floors = main_ptr, main_slot, main_block_ptr, main_floors
        else:
            ptr, run_slot, block_ptr, floors = delta_ptr, delta_slot, delta_block_ptr, delta_floors
        for i in range(len(chosen)):
            w = chosen[i]
            a = start_cost[w]
            end = ptr[w + 1]
            f = block_ptr[w]
            for first in range(ptr[w], end, block):
                most = 1.0 / (a + floors[f])
                f += 1
                for e in range(first, min(first + block, end)):
                    s = run_slot[e]
                    touches[s] += 1
                    bound[s] += most
    for i in range(len(skip)):
        if skip[i] >= 0:
            touches[skip[i]] = 0
    filtered = len(eligible) > 0
    width = row_words.shape[1]
    padding = len(start_cost) - 1
    inverse = np.empty(width, np.float64)
    heap_distance = np.empty(k, np.float64)
    heap_slot = np.empty(k, np.int64)
    size = 0
    limit = np.inf  # the k-th distance with the margin, once k are held
    # One pass over the counts scores the slots in order and resets them: the runs of a start of hub
    # words touch about as many edges as there are slots, and a sort of the touched slots costs more.
    for s in range(len(touches)):
        held, most = touches[s], bound[s]
        touches[s] = 0
        bound[s] = 0.0
        # One branch, rarely taken once k are held (bitwise, not short-circuit: a branch per test
        # mispredicts on about every candidate and costs more than the scoring it saves).
        if (held > 1) & (state[s] >= 0) & ((size < k) | (most * limit >= 1.0)):
            if filtered and not eligible[s]:
                continue
            count = 0
            least = np.inf
            for c in range(width):
                w = row_words[s, c]
                length = start_cost[padding if w < 0 else w] + row_costs[s, c]
                inverse[c] = 1.0 / length  # a word the start lacks: an infinite length, 0
                if inverse[c] > 0:
                    count += 1
                if length < least:
                    least = length
            distance = least if count == 1 else 1.0 / _row_sum(inverse)
            size = _keep_best(heap_distance, heap_slot, size, distance, s)
            if size == k:
                limit = heap_distance[0] * (1.0 + 1e-9)
    slots = np.empty(size, np.int64)
    distances = np.empty(size, np.float64)
    while size:  # the heap emptied worst first, so filled in from the back: nearest first
        size -= 1
        slots[size], distances[size] = heap_slot[0], heap_distance[0]
        _sift_down_max(heap_distance, heap_slot, size, heap_distance[size], heap_slot[size])
    return slots, distances


@numba.njit(nogil=True, cache=True)
def _keep_best(heap_distance, heap_slot, size, distance, slot):
    """Offer (distance, slot) to a max-heap by (distance, slot) of at most len(heap_distance)
    entries, `size` of them held; returns the new size."""
    if size == len(heap_distance):
        top = heap_distance[0]
        if distance > top or (distance == top and slot > heap_slot[0]):
            return size
        _sift_down_max(heap_distance, heap_slot, size, distance, slot)  # in place of the worst
        return size
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if heap_distance[parent] > distance or (heap_distance[parent] == distance and heap_slot[parent] > slot):
            break
        heap_distance[i], heap_slot[i] = heap_distance[parent], heap_slot[parent]
        i = parent
    heap_distance[i], heap_slot[i] = distance, slot
    return size + 1


@numba.njit(nogil=True, cache=True)
def _sift_down_max(heap_distance, heap_slot, size, distance, slot):
    """Put (distance, slot) at the top of the max-heap's first `size` entries and sift it down."""
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        right = child + 1
        if right < size and (heap_distance[right] > heap_distance[child] or (
                heap_distance[right] == heap_distance[child] and heap_slot[right] > heap_slot[child])):
            child = right
        if heap_distance[child] < distance or (heap_distance[child] == distance and heap_slot[child] < slot):
            break
        heap_distance[i], heap_slot[i] = heap_distance[child], heap_slot[child]
        i = child
    if size:
        heap_distance[i], heap_slot[i] = distance, slot


@numba.njit(nogil=True, cache=True)
def _row_sum(a):
    """a's sum as numpy's sum(axis=1) adds a row of up to 128 (its pairwise block; rows here are
    at most MAX_TOP_IWK wide): under 8 left to right, else 8 running sums over whole blocks of 8
    added as a tree, then the rest left to right (numpy 2.4's pairwise_sum, checked bit for bit
    by tests/test_parallel_kernel.py)."""
    n = len(a)
    if n < 8:
        total = 0.0
        for i in range(n):
            total += a[i]
        return total
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    i = 8
    while i < n - n % 8:
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        total += a[i]
        i += 1
    return total


@numba.njit(nogil=True, cache=True)
def start_weights(word_ids, weights):
    """The words of examples' rows (word ids int64, weights float64, both (n, m)) as one start:
    (words, sorted; each word's weights summed example by example, in their order, of each
    example's largest weight of it (0 where it lacks it); the first example giving it the
    largest weight; how many examples hold it). A word counts where its id is >= 0 and its weight
    > 0 and finite. iwan.retrieval.iwan.combined_start weighs them."""
    n, m = word_ids.shape
    given = np.empty(n * m, np.int64)
    g = 0
    for e in range(n):
        for j in range(m):
            p = weights[e, j]
            if word_ids[e, j] >= 0 and p > 0 and p < np.inf:
                given[g] = word_ids[e, j]
                g += 1
    words = np.unique(given[:g])
    best = np.zeros((n, len(words)))
    for e in range(n):
        for j in range(m):
            p = weights[e, j]
            if word_ids[e, j] >= 0 and p > 0 and p < np.inf:
                i = np.searchsorted(words, word_ids[e, j])
                if p > best[e, i]:
                    best[e, i] = p
    total = best[0].copy()
    for e in range(1, n):
        total += best[e]
    leader = np.zeros(len(words), np.int64)
    holders = np.zeros(len(words), np.int64)
    for i in range(len(words)):
        for e in range(n):
            if best[e, i] > best[leader[i], i]:
                leader[i] = e
            if best[e, i] > 0:
                holders[i] += 1
    return words, total, leader, holders


@numba.njit(nogil=True, cache=True)
def lesser_of_two(first_ids, first_distances, second_ids, second_distances, depth):
    """Two lists of hits (ids, distances; each id once per list) as one: per id its lesser
    distance (the first list's on a tie), then the best `depth` nearest first, ties to the lower
    id. Returns positions in the two lists concatenated."""
    n = len(first_ids) + len(second_ids)
    ids = np.empty(n, np.int64)
    distances = np.empty(n, np.float64)
    ids[:len(first_ids)], ids[len(first_ids):] = first_ids, second_ids
    distances[:len(first_ids)], distances[len(first_ids):] = first_distances, second_distances
    by_id = np.argsort(ids, kind="mergesort")  # stable: within an id, the first list's entry first
    kept = np.empty(n, np.int64)
    m = 0
    i = 0
    while i < n:
        best = by_id[i]
        j = i + 1
        while j < n and ids[by_id[j]] == ids[best]:
            if distances[by_id[j]] < distances[best]:
                best = by_id[j]
            j += 1
        kept[m] = best
        m += 1
        i = j
    kept = kept[:m]  # in id order, so a stable sort by distance breaks ties by id
    order = np.argsort(distances[kept], kind="mergesort")
    return kept[order[:depth]]

