"""n-gram statistics (`accumulate --order N`), Kneser-Ney and the block model, and the lookup
scorer.

Oracles: the numpy twin of the counting kernel; a plain-Python interpolated modified
Kneser-Ney written from its definition with dictionaries (`kn_oracle`); the full softmax over
the vocabulary computed directly for the block model; a Markov chain the order-2 model must
recover; finite differences for the gradient of the held-out fit.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

import streamfit
from streamfit.count import reference
from streamfit.count.accumulate import Accumulator
from streamfit.count.out_of_core import accumulate_into, merge_into
from streamfit.errors import FormatError, InputError, OptionError, StreamfitError
from streamfit.model.ngram import context_rows
from streamfit.model.weights import load_model
from streamfit.solve import ngram as sn
from streamfit.synthetic import markov_chain, sample_documents

from conftest import run_cli, write_tokens


def random_docs(seed: int, n_docs: int = 60, vocab: int = 9, max_len: int = 14) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    # a skewed distribution, so that some n-grams repeat and count-of-counts are not empty
    p = rng.dirichlet(np.full(vocab, 0.5))
    return [rng.choice(vocab, size=int(rng.integers(0, max_len)), p=p).tolist()
            for _ in range(n_docs)]


def flat(docs):
    tokens = np.array([t for d in docs for t in d], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return tokens, offsets


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ngram")
    train, held = random_docs(1, 120), random_docs(2, 60)
    return (write_tokens(folder / "train.parquet", train, row_group_size=25),
            write_tokens(folder / "held.parquet", held, row_group_size=25), train, held)


# --- counting ---------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3, 5])
@pytest.mark.parametrize("eos", [False, True])
def test_kernel_matches_its_numpy_twin(order, eos):
    docs = random_docs(order, 80)
    tokens, offsets = flat(docs)
    acc = Accumulator("lm", order=order, eos=eos)
    acc.table.clear(4)  # a tiny table: the kernel stops, the table grows, counting resumes
    acc.add_tokens(streamfit.count.accumulate.TokenArrays(tokens, offsets))
    stats = acc.stats()
    keys, counts = reference.count_ngrams(tokens, offsets, order, eos)
    assert np.array_equal(stats.keys, keys) and np.array_equal(stats.data, counts)
    assert stats.n_examples == counts.sum() == tokens.size + (len(docs) if eos else 0)


def test_keys_hold_the_ngram_oldest_first():
    keys, _ = reference.count_ngrams(np.array([4, 7]), np.array([0, 2]), 3, True)
    bits = 63 // 3
    eos = (1 << bits) - 1
    pack = lambda a, b, c: (a << 2 * bits) | (b << bits) | c
    # BOS BOS 4 | BOS 4 7 | 4 7 </s>   (a token is stored as id + 1, BOS as 0)
    assert sorted(keys.tolist()) == sorted([pack(0, 0, 5), pack(0, 5, 8), pack(5, 8, eos)])


def test_token_ids_beyond_the_key_are_refused():
    acc = Accumulator("lm", order=5)
    tokens = np.array([1, (1 << 12)], dtype=np.int64)
    with pytest.raises(InputError, match="order-5 n-gram key"):
        acc.add_tokens(streamfit.count.accumulate.TokenArrays(tokens, np.array([0, 2])))


@pytest.mark.parametrize("eos", [False, True])
def test_merge_equals_accumulating_the_union(corpus, tmp_path, eos):
    train, held, *_ = corpus
    a = streamfit.accumulate([train], order=3, eos=eos)
    b = streamfit.accumulate([held], order=3, eos=eos)
    whole = streamfit.accumulate([train, held], order=3, eos=eos)
    merged = streamfit.merge(a, b)
    assert np.array_equal(merged.keys, whole.keys) and np.array_equal(merged.data, whole.data)
    assert merged.n_examples == whole.n_examples
    # the same through directories and the bounded-memory k-way merge
    streamfit.save_stats(a, tmp_path / "a")
    streamfit.save_stats(b, tmp_path / "b")
    merge_into(tmp_path / "ab", [tmp_path / "a", tmp_path / "b"])
    on_disk = streamfit.load_stats(tmp_path / "ab", check=True)
    assert np.array_equal(on_disk.keys, whole.keys) and np.array_equal(on_disk.data, whole.data)
    assert (on_disk.order, on_disk.eos, on_disk.n_classes) == (3, eos, whole.n_classes)
    # and so every derived quantity, although continuation counts do not add over shards
    want, got = sn.kneser_ney(whole), sn.kneser_ney(on_disk)
    assert all(np.array_equal(x, y) for x, y in zip(want.lps, got.lps))


def test_merging_other_orders_or_windows_is_refused(corpus):
    train, held, *_ = corpus
    with pytest.raises(FormatError, match="order-2"):
        streamfit.merge(streamfit.accumulate([train], order=3), streamfit.accumulate([held], order=2))
    with pytest.raises(FormatError):
        streamfit.merge(streamfit.accumulate([train], order=2), streamfit.accumulate([held], window=1))
    with pytest.raises(FormatError, match="eos"):
        streamfit.merge(streamfit.accumulate([train], order=2),
                        streamfit.accumulate([held], order=2, eos=True))


def test_spilled_out_of_core_run_equals_in_memory(tmp_path):
    chain = markov_chain(300, concentration=0.2, seed=5)
    tokens, offsets = sample_documents(chain, 200, 60, seed=4)
    docs = [tokens[offsets[d]:offsets[d + 1]].tolist() for d in range(200)]
    path = write_tokens(tmp_path / "wide.parquet", docs, row_group_size=20)
    accumulate_into(tmp_path / "s", [path], order=4, eos=True, memory=1 << 20, batch_rows=8,
                    checkpoint_seconds=0, jobs=2)
    got = streamfit.load_stats(tmp_path / "s", check=True)
    want = streamfit.accumulate([path], order=4, eos=True)
    assert np.array_equal(got.keys, want.keys) and np.array_equal(got.data, want.data)
    # adding to existing statistics is refused for another kind, accepted for the same
    with pytest.raises(StreamfitError, match="order-4"):
        accumulate_into(tmp_path / "s", [path], window=2)


@pytest.mark.parametrize("fault,jobs", [("after_batch:5", 1), ("mid_spill:2", 2),
                                        ("mid_merge:1", 1), ("before_commit:1", 2)])
def test_killed_ngram_runs_resume_to_identical_statistics(corpus, tmp_path, fault, jobs):
    train, held, *_ = corpus
    args = ["accumulate", train, held, "--stats", tmp_path / "s", "--order", 3, "--eos",
            "--quiet", "--checkpoint", 0, "--batch-rows", 8, "--jobs", jobs]
    assert run_cli(args, fault=fault).returncode != 0
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed an interrupted run" in resumed.stdout
    got = streamfit.load_stats(tmp_path / "s", check=True)
    want = streamfit.accumulate([train, held], order=3, eos=True)
    assert np.array_equal(got.keys, want.keys) and np.array_equal(got.data, want.data)
    assert got.n_examples == want.n_examples


# --- Kneser-Ney against its definition ---------------------------------------------------------
def kn_oracle(docs, order, eos, vocab):
    """Interpolated modified Kneser-Ney from the definition, with dictionaries: returns
    prob(context tuple of order−1 tokens, y). BOS = 'B', end = 'E'. KenLM's convention for
    document starts: a context with two leading BOS does not exist."""
    classes = list(range(vocab)) + (["E"] if eos else [])
    positions = []
    for d in docs:
        padded = ["B"] * (order - 1) + list(d)
        for t in range(len(d) + (1 if eos else 0)):
            y = d[t] if t < len(d) else "E"
            positions.append((tuple(padded[t:t + order - 1]), y))

    def valid(ctx):  # at most one leading BOS
        return not (len(ctx) >= 2 and ctx[0] == "B" and ctx[1] == "B")

    raw = [defaultdict(int) for _ in range(order)]
    for ctx, y in positions:
        for L in range(order):
            h = ctx[len(ctx) - L:] if L else ()
            if valid(h):
                raw[L][(h, y)] += 1
    adjusted = [dict() for _ in range(order)]
    for L in range(order):
        for (h, y), c in raw[L].items():
            if L == order - 1 or (L >= 1 and h[0] == "B"):
                adjusted[L][(h, y)] = c
            else:
                adjusted[L][(h, y)] = len({hh[0] for (hh, yy) in raw[L + 1] if hh[1:] == h and yy == y})
    D = []
    for L in range(order):
        n = [sum(1 for a in adjusted[L].values() if a == k) for k in (1, 2, 3, 4)]
        if min(n) == 0:
            D.append([0, 0.5, 1.0, 1.5])
        else:
            Y = n[0] / (n[0] + 2 * n[1])
            d = [0, 1 - 2 * Y * n[1] / n[0], 2 - 3 * Y * n[2] / n[1], 3 - 4 * Y * n[3] / n[2]]
            D.append(d if all(0 < d[k] <= k for k in (1, 2, 3)) else [0, 0.5, 1.0, 1.5])
    totals = [defaultdict(int) for _ in range(order)]
    gamma = [defaultdict(float) for _ in range(order)]
    for L in range(order):
        for (h, y), a in adjusted[L].items():
            totals[L][h] += a
            gamma[L][h] += D[L][min(a, 3)]

    def prob(L, h, y):
        if L == 0:
            a = adjusted[0].get(((), y), 0)
            return max(a - D[0][min(a, 3)], 0) / totals[0][()] + gamma[0][()] / totals[0][()] / len(classes)
        lower = prob(L - 1, h[1:], y)
        if totals[L].get(h, 0) == 0:
            return lower
        a = adjusted[L].get((h, y), 0)
        return max(a - D[L][min(a, 3)], 0) / totals[L][h] + gamma[L][h] / totals[L][h] * lower

    return lambda ctx, y: prob(order - 1, tuple(ctx), y), classes


@pytest.mark.parametrize("load", [0.3, 0.7, 0.97])
def test_slot_table_is_a_linear_probing_table(load):
    """Every key sits at the end of an occupied run from its home slot (what a lookup
    probes: the linear-probing invariant, checked slot by slot in Python), and the scorer's
    lookup finds each key where slot_table says and no other key; tables crowded at their
    end make keys wrap round."""
    from streamfit.model.ngram import find_slot, home_slots, slot_table
    rng = np.random.default_rng(int(load * 100))
    for n in list(range(0, 30)) + [200, 1000]:
        keys = rng.choice(1 << 50, n, replace=False).astype(np.int64)
        table, bits, slot = slot_table(keys, 3, load=load)
        size = 1 << bits
        np.testing.assert_array_equal(table[slot, 0], keys)
        assert (table[:, 0] != -1).sum() == n
        for k, h, s in zip(keys, home_slots(keys, bits), slot):
            assert all(table[(h + j) % size, 0] != -1 for j in range((s - h) % size + 1))
            assert find_slot(table, bits, k) == s
        for k in rng.integers(1 << 50, 1 << 51, 10):
            assert find_slot(table, bits, k) == -1


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_split_by_cost_covers_every_item_once_in_balanced_ranges(parts):
    rng = np.random.default_rng(parts)
    for n in list(range(0, 12)) + [100, 1000]:
        cost = rng.integers(0, 50, n).astype(float)
        ranges = sn.split_by_cost(cost, parts)
        assert len(ranges) <= max(parts, 1)
        covered = np.concatenate([np.arange(lo, hi) for lo, hi in ranges])
        np.testing.assert_array_equal(covered, np.arange(n))
        assert all(lo < hi for lo, hi in ranges) or n == 0
        if n >= 100:  # no range above a fair share by more than its largest item
            share = cost.sum() / len(ranges)
            assert max(cost[lo:hi].sum() for lo, hi in ranges) <= share + cost.max()


def test_threaded_sweeps_give_the_same_bits_as_one_thread(corpus, tmp_path, monkeypatch):
    """The block fit's sweeps (held-out positions, Newton moments, log Z) shared out among
    threads write the same model, byte for byte, as one thread: every group and prediction
    is summed by one thread in one order."""
    train, held, *_ = corpus
    stats = streamfit.accumulate([train], order=3, eos=True)
    files = {}
    for threads, min_cost in ((1, 10**9), (3, 1), (8, 1)):
        monkeypatch.setattr(sn, "sweep_threads", lambda: threads)
        monkeypatch.setattr(sn, "MIN_COST_PER_THREAD", min_cost)
        out = tmp_path / f"t{threads}" / "lm.npy"
        sn.finalize_ngram(stats, out, form="blocks",
                          heldout=sn.token_batches([held], vocab_size=stats.n_classes))
        files[threads] = {f.name: f.read_bytes() for f in out.parent.glob("lm.*.npy")}
        meta = streamfit.load_model(out).meta
        files[threads]["theta"] = meta["theta"]
    assert len(files[1]) == 5 and files[1] == files[3] == files[8]


@pytest.mark.parametrize("high", [5, 1000, 10**12, 2**60])  # counted, counted, packed sort, argsort
def test_unique_keys_equal_numpys_without_the_minus_ones(high):
    rng = np.random.default_rng(high)
    for n in list(range(0, 40)) + [500]:
        key = rng.integers(-1, high, n)
        uniq, first, inverse = sn.unique_keys(key)
        ok = key >= 0
        np.testing.assert_array_equal(uniq, np.unique(key[ok]))
        np.testing.assert_array_equal(uniq[inverse[ok]], key[ok])
        assert (inverse[~ok] == -1).all()
        np.testing.assert_array_equal(key[first], uniq)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("eos", [False, True])
def test_kneser_ney_equals_the_definition(corpus, tmp_path, order, eos):
    train, held, train_docs, held_docs = corpus
    stats = streamfit.accumulate([train], order=order, eos=eos)
    V = stats.n_classes
    sn.finalize_ngram(stats, tmp_path / "kn.npy", form="kneser-ney")
    model = load_model(tmp_path / "kn.npy")
    prob, classes = kn_oracle(train_docs, order, eos, V)
    tokens, offsets = flat(held_docs[:25])
    context, target = context_rows(tokens, offsets, order, V, eos)
    got = model.log_prob(context, target)
    name = lambda t: "B" if t == V + 1 else "E" if t == V else int(t)
    want = np.array([math.log(prob([name(t) for t in c], name(y))) for c, y in zip(context, target)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_probabilities_sum_to_one_for_every_context(corpus, tmp_path, order):
    """Kneser-Ney, and the block model at random τ (its normaliser precomputed by shells),
    over contexts seen at every level and unseen ones."""
    train, held, train_docs, held_docs = corpus
    stats = streamfit.accumulate([train], order=order, eos=True)
    levels = sn.kneser_ney(stats)
    blocks = sn.Blocks(levels)
    rng = np.random.default_rng(order)
    contexts = [d[:k] for d in held_docs[:12] for k in range(len(d) + 1)] + [[8, 8, 8, 8], [0] * 5]
    for theta in (sn.kneser_ney_theta(order), sn.kneser_ney_theta(order) + rng.normal(0, 0.3, sn.n_params(order))):
        model = sn.scoring_model(blocks, theta, {}, True)
        for c in contexts:
            assert abs(model.distribution(c).sum() - 1) < 1e-9, c


def test_block_scores_equal_the_full_softmax(corpus):
    train, held, train_docs, held_docs = corpus
    order = 3
    stats = streamfit.accumulate([train], order=order)
    levels = sn.kneser_ney(stats)
    blocks = sn.Blocks(levels)
    theta = sn.kneser_ney_theta(order) + np.random.default_rng(0).normal(0, 0.3, sn.n_params(order))
    model = sn.scoring_model(blocks, theta, {}, False)
    C = levels.n_classes
    for c in ([], [3], [3, 1], [7, 7], [2, 5, 4]):
        row = ([C + 1] * 2 + c)[-2:]
        context = np.tile(np.array(row, np.int64), (C, 1))
        targets = np.arange(C)
        deepest, chain, lp = sn.positions(levels, context, targets)
        logits = (theta[blocks.param_index(chain)] * lp).sum(1)
        want = logits - np.logaddexp.reduce(logits)
        np.testing.assert_allclose(model.log_prob(context, targets), want, rtol=0, atol=1e-12)


def test_order_two_recovers_a_markov_chain(tmp_path):
    chain = markov_chain(6, concentration=1.0, seed=2)
    tokens, offsets = sample_documents(chain, 400, 400, seed=3)
    docs = [tokens[offsets[d]:offsets[d + 1]].tolist() for d in range(400)]
    path = write_tokens(tmp_path / "m.parquet", docs)
    sn.finalize_ngram(streamfit.accumulate([path], order=2), tmp_path / "m.npy", form="kneser-ney")
    model = load_model(tmp_path / "m.npy")
    got = np.array([model.distribution([s]) for s in range(6)])
    np.testing.assert_allclose(got, chain, atol=0.01)


def test_gradient_of_the_heldout_fit_matches_finite_differences(corpus):
    train, held, *_ = corpus
    stats = streamfit.accumulate([train], order=3, eos=True)
    levels = sn.kneser_ney(stats)
    blocks = sn.Blocks(levels)
    batches = sn.token_batches([held], vocab_size=stats.n_classes)
    objective = sn.heldout_objective(blocks, *sn.heldout_positions(levels, batches, True))
    theta = sn.kneser_ney_theta(3) + np.random.default_rng(1).normal(0, 0.2, sn.n_params(3))
    _, g = objective(theta)
    used = np.flatnonzero(g != 0)
    assert used.size >= 4
    for k in used:
        e = np.zeros_like(theta)
        e[k] = 1e-6
        fd = (objective(theta + e)[0] - objective(theta - e)[0]) / 2e-6
        assert abs(fd - g[k]) <= 1e-6 * max(1.0, abs(g[k])), k


def heldout_fit(corpus, order):
    """The eos statistics of the corpus's train split, their Kneser-Ney levels and blocks,
    and the held-out split's positions (deepest level, chain, log P) in them."""
    train, held, *_ = corpus
    stats = streamfit.accumulate([train], order=order, eos=True)
    levels = sn.kneser_ney(stats)
    positions = sn.heldout_positions(
        levels, sn.token_batches([held], vocab_size=stats.n_classes), True)
    return stats, levels, sn.Blocks(levels), positions


@pytest.mark.parametrize("order", [2, 3, 4])
def test_newton_terms_of_the_heldout_fit_equal_the_full_softmax(corpus, order):
    """Value, gradient and Hessian of the held-out fit (group moments by shells) against
    the numpy twin over every class of every held-out prediction."""
    from streamfit.solve import reference as ref
    stats, levels, blocks, (deepest, chain, lp) = heldout_fit(corpus, order)
    objective = sn.heldout_objective(blocks, deepest, chain, lp)
    C = levels.n_classes
    tokens, offsets = flat(corpus[3])
    context, target = context_rows(tokens, offsets, order, stats.n_classes, True)
    dense = [sn.positions(levels, np.repeat(context[i:i + 1], C, 0), np.arange(C))
             for i in range(target.size)]
    param = np.stack([blocks.param_index(c) for _, c, _ in dense])
    lps = np.stack([x for _, _, x in dense])
    rng = np.random.default_rng(order)
    for theta in (sn.kneser_ney_theta(order),
                  sn.kneser_ney_theta(order) + rng.normal(0, 0.3, sn.n_params(order))):
        value, g, H = objective.newton(theta)
        want = ref.block_newton(theta, param, lps, target)
        assert abs(value - want[0]) < 1e-10
        np.testing.assert_allclose(g, want[1], rtol=0, atol=1e-10)
        np.testing.assert_allclose(H, want[2], rtol=0, atol=1e-9)
        assert np.abs(H).max() > 0.01
        np.testing.assert_allclose(objective(theta)[1], g, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_level_one_table_of_the_moments_gives_the_same_bits(corpus, order):
    """The Newton moments with level 1's parent-shell weights taken from the table over the
    distinct values of log P_0 equal, bit for bit, the moments with one exp per row (which
    the full-softmax test above checks)."""
    _, levels, blocks, (deepest, chain, _) = heldout_fit(corpus, order)
    q = blocks.queries(deepest, chain[np.arange(deepest.size), deepest])
    value_of_row, combo = sn.level_one_combos(blocks, q)
    assert (combo >= 0).sum() >= 3 and (combo[q["g_level"] != 1] == -1).all()
    np.testing.assert_array_equal(blocks.lp0_values[value_of_row], levels.lps[1][:, 0])
    theta = sn.kneser_ney_theta(order) + np.random.default_rng(order).normal(0, 0.3, sn.n_params(order))
    args = (theta, q["g_level"], q["g_start"], q["g_end"], q["g_param"], blocks.lp_off,
            blocks.lp_flat, order, blocks.lp0_values, blocks.lp0_counts, value_of_row)
    for got, want in zip(sn.group_moments(*args, combo),
                         sn.group_moments(*args, np.full_like(combo, -1))):
        np.testing.assert_array_equal(got, want)


def test_the_newton_fit_reaches_the_minimum(corpus):
    """The fitted τ zero the gradient on every τ the held-out data reaches, and no other
    τ moves from Kneser-Ney's."""
    train, held, *_ = corpus
    stats = streamfit.accumulate([train], order=3, eos=True)
    levels = sn.kneser_ney(stats)
    blocks = sn.Blocks(levels)
    positions = sn.heldout_positions(levels, sn.token_batches([held], vocab_size=stats.n_classes),
                                     True)
    theta, fit = sn.fit_blocks(blocks, *positions)
    objective = sn.heldout_objective(blocks, *positions)
    value, g = objective(theta)
    _, _, H = objective.newton(theta)
    used = np.diag(H) > 0
    assert fit["converged"] and fit["cross_entropy"] < fit["cross_entropy_kneser_ney"]
    assert np.abs(g[used]).max() < 1e-6
    np.testing.assert_array_equal(theta[~used], sn.kneser_ney_theta(3)[~used])
    assert value == pytest.approx(fit["cross_entropy"], abs=1e-12)


# --- the commands --------------------------------------------------------------------------
def test_cli_order_kneser_ney_and_blocks(corpus, tmp_path):
    train, held, *_ = corpus
    s = tmp_path / "s"
    r = run_cli(["accumulate", train, "--order", 3, "--stats", s, "--quiet"])
    assert r.returncode == 0, r.stderr
    assert "order-3 n-gram statistics" in r.stdout
    r = run_cli(["finalize", "--stats", s, "--out", tmp_path / "models" / "kn.npy"])  # folder made
    assert r.returncode == 0, r.stderr
    r = run_cli(["finalize", "--stats", s, "--out", tmp_path / "b.npy", "--heldout", held])
    assert r.returncode == 0, r.stderr
    import json
    kn = json.loads(run_cli(["evaluate", "--weights", tmp_path / "models" / "kn.npy", held,
                          "--json"]).stdout)
    bl = json.loads(run_cli(["evaluate", "--weights", tmp_path / "b.npy", held, "--json"]).stdout)
    assert kn["form"] == "kneser-ney" and bl["form"] == "blocks" and kn["n"] == bl["n"]
    assert bl["cross_entropy"] <= kn["cross_entropy"] + 1e-12  # fitted on these predictions
    r = run_cli(["predict", "--weights", tmp_path / "b.npy", "--context", "3 1", "--json", "--top-k", 3])
    top = json.loads(r.stdout)["top"]
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"]
    assert run_cli(["info", tmp_path / "b.npy"]).returncode == 0
    r = run_cli(["predict", "--weights", tmp_path / "b.npy", "--context", "3 99999"])
    assert r.returncode == 1 and "out of range" in r.stderr  # as the window model says


@pytest.mark.parametrize("args,message", [
    (["--order", 3, "--window", 2], "one of them"),
    (["--eos"], "--order N"),
    (["--order", 9], "between 1 and"),
    (["--order", 0], "at least 1"),  # not silently the window model
])
def test_cli_refuses_bad_option_combinations(corpus, tmp_path, args, message):
    train, *_ = corpus
    r = run_cli(["accumulate", train, "--stats", tmp_path / "s", "--quiet", *args])
    assert r.returncode != 0 and message in r.stderr
    assert not (tmp_path / "s").exists()


def test_finalize_refuses_forms_of_the_other_statistics(corpus, tmp_path):
    train, held, *_ = corpus
    streamfit.save_stats(streamfit.accumulate([train], order=2), tmp_path / "ng")
    streamfit.save_stats(streamfit.accumulate([train], window=2), tmp_path / "win")
    r = run_cli(["finalize", "--stats", tmp_path / "ng", "--out", tmp_path / "x.npy", "--form", "paper"])
    assert r.returncode != 0 and "kneser-ney or blocks" in r.stderr
    r = run_cli(["finalize", "--stats", tmp_path / "win", "--out", tmp_path / "x.npy", "--form", "blocks"])
    assert r.returncode != 0 and "--order N" in r.stderr
    with pytest.raises(OptionError, match="held-out"):
        sn.finalize_ngram(streamfit.accumulate([train], order=2), tmp_path / "y.npy", form="blocks")


def test_finalize_refuses_up_front_what_memory_cannot_hold(corpus, tmp_path, monkeypatch):
    train, *_ = corpus
    stats = streamfit.accumulate([train], order=3)
    monkeypatch.setattr(sn, "available_memory", lambda: 1000)
    with pytest.raises(StreamfitError, match=r"needs about .* GiB .* lower --order"):
        sn.finalize_ngram(stats, tmp_path / "x.npy", form="kneser-ney")
    assert not (tmp_path / "x.model.json").exists()


def test_sidecar_recognised_past_a_long_array_list(tmp_path):
    """Sorted keys put "arrays" before "format": a long array list must not hide the format."""
    import json

    from streamfit.model.ngram import FORMAT, is_ngram_sidecar
    arrays = {f"a{i}": {"file": f"m.a{i}.npy", "sha256": "0" * 64, "size": 1} for i in range(200)}
    path = tmp_path / "m.model.json"
    path.write_text(json.dumps({"arrays": arrays, "format": FORMAT}, sort_keys=True))
    assert path.stat().st_size > 4096 and is_ngram_sidecar(path)
    path.write_text(json.dumps({"arrays": arrays, "format": "something else"}, sort_keys=True))
    assert not is_ngram_sidecar(path)
