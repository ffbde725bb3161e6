#!/usr/bin/env python
"""n-gram language models measured: Kneser-Ney and the block model against KenLM.

One command, per corpus and order N, runs ``streamfit accumulate --order N`` (one pass over
train), ``finalize --form kneser-ney`` (interpolated modified Kneser-Ney from the
statistics) and ``finalize --form blocks`` (τ per level and context-count bucket fitted on
every valid prediction), scores the test split, and writes ``docs/lm.md`` with a plot of test
perplexity against order beside it. Per model: test perplexity over the same predictions,
wall time of accumulate and finalize, scoring speed (tokens per second on one core, the
lookup scorer alone and the whole ``evaluate`` call), model size. Orders 2-4 (no eos):
``refine`` on the block model too, the maximum-entropy n-gram model (``train.ngram``). With ``--eos`` statistics
(an end-of-document token predicted, as KenLM's ``</s>``) the same models are scored with
the end token's predictions left out of the average, which is how KenLM is scored here.
Orders 2-4 (no eos): ``finalize --form blocks --cache`` too, the block model with the document
cache (``model.cache``: it uses the document so far), and for orders 2-3 ``refine`` on it.

KenLM, when its binaries are given (``--kenlm DIR`` holding lmplz, build_binary, query; it
is never part of streamfit): the same tokens written as text (id i as the word ``w<i>``, one
document a line), ``lmplz -o N -S 1G``, ``build_binary``, ``query -v word``; its ``</s>``
predictions are left out of its average, so both score the same positions. The window
model (``--window M``, calibrated, sparse) is measured on GCIDE too, as the baseline the
n-gram forms replace. The ×10 corpus (GCIDE) is train repeated: its counts are all
multiples of 10, so both estimators fall back to the discounts 0.5 / 1 / 1.5 there
(``lmplz --discount_fallback``); it measures time only, in paired rounds of the CLI
(``accumulate --jobs 2`` + ``finalize``, orders 2 and 3 and the window-1 model) against
``lmplz`` on the same tokens.

Corpora: ``gcide`` (tools/make_gcide_corpus.py defaults: vocabulary 16,384) and ``stdlib``
(the quickstart's corpus). Order 5 needs 5 × 15 bits of key at a 16,384-token vocabulary,
more than the 63 of a packed n-gram key: it is measured for KenLM only.

    python tools/bench_lm.py --kenlm /path/to/kenlm/build/bin   # ~30 min on 2 cores
    python tools/bench_lm.py --quick                             # orders 2-3, no window models
    python tools/bench_lm.py --render docs/lm.json               # the page again, running nothing
    python tools/bench_lm.py --refine-into docs/lm.json          # add the refined rows to a run
    python tools/bench_lm.py --cache-into docs/lm.json           # add the document-cache rows
    python tools/bench_lm.py --timing-into docs/lm.json --kenlm DIR   # timings again (~15 min)
    python tools/bench_lm.py --timing-into docs/lm.json --kenlm DIR --paired-only  # ×10 pairs only
"""
from __future__ import annotations

import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import corpus_meta, gcide_corpus, stdlib_corpus  # noqa: E402
from harness import load_average, log, page_main, write_page  # noqa: E402
from internals import context_rows, token_batches  # noqa: E402
import streamfit  # noqa: E402
from streamfit import (accumulate_into, evaluate, finalize_ngram, load_model, load_stats,  # noqa: E402
                       refine_ngram)

DATASETS = ("gcide", "stdlib")
MAX_KEY_ORDER = {"gcide": 4, "stdlib": 4}   # 63 // N bits a token: 15 at order 4, 12 at 5
ORDERS = (2, 3, 4, 5)
QUICK_ORDERS = (2, 3)
REFINE_ORDERS = (2, 3, 4)   # the maximum-entropy refinement (no eos statistics)
CACHE_ORDERS = (2, 3, 4)    # finalize --cache (no eos statistics)
CACHE_REFINE_ORDERS = (2, 3)  # ... and refine on it
WINDOWS = (1, 2)
SCALE = 10


def corpus(name: str, data: Path) -> Path:
    return gcide_corpus(data, 16384) if name == "gcide" else stdlib_corpus(data)


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def scoring_speed(model, folder: Path) -> dict:
    """Tokens per second of the lookup scorer alone over the test split (best of 3, one
    core), and of the whole evaluate call (reading Parquet, contexts, scoring)."""
    parts = [context_rows(a.tokens.astype(np.int64), a.doc_offsets, model.order,
                          model.vocab_size, model.eos)
             for a in token_batches([folder / "test.parquet"], vocab_size=model.vocab_size)]
    context = np.concatenate([c for c, _ in parts])
    target = np.concatenate([t for _, t in parts])
    model.log_prob(context[:10], target[:10])
    best = min(timed(model.log_prob, context, target)[1] for _ in range(3))
    whole = min(timed(evaluate, model, [folder / "test.parquet"])[1] for _ in range(2))
    return {"scorer_tokens_per_s": target.size / best, "scorer_s": best,
            "evaluate_s": whole, "evaluate_tokens_per_s": target.size / whole}


def warm_up(folder: Path, tmp: Path) -> None:
    """Run the timed n-gram calls once, untimed, on the first 200 documents: the first timed
    finalize must not carry numba's compiling (after a change to a kernel's file) or the
    loading of its cached kernels, which every later call in the process is spared."""
    import pyarrow.parquet as pq
    small = tmp / "warm-up.parquet"
    pq.write_table(pq.ParquetFile(folder / "train.parquet").read_row_group(0).slice(0, 200), small)
    for order in (2, 3):
        stats_dir = tmp / f"warm-up-{order}"
        accumulate_into(stats_dir, [small], order=order, overwrite=True)
        stats = load_stats(stats_dir)
        for form in ("kneser-ney", "blocks"):
            path = tmp / f"warm-up-{form}-{order}.npy"
            heldout = token_batches([small], vocab_size=stats.n_classes) if form == "blocks" else None
            finalize_ngram(stats, path, form=form, heldout=heldout)
            evaluate(load_model(path), [small])
        shutil.rmtree(stats_dir, ignore_errors=True)


def ngram_models(folder: Path, tmp: Path, order: int, eos: bool, refine: bool = True) -> dict:
    stats_dir = tmp / f"stats-{order}-{eos}"
    _, t_acc = timed(accumulate_into, stats_dir, [folder / "train.parquet"], order=order,
                     eos=eos, overwrite=True)
    stats = load_stats(stats_dir)
    out = {"accumulate_s": t_acc, "ngrams": stats.nnz,
           "stats_bytes": int(stats.keys.nbytes + stats.data.nbytes)}
    for form in ("kneser-ney", "blocks"):
        path = tmp / f"{form}-{order}-{eos}.npy"
        heldout = token_batches([folder / "valid.parquet"], vocab_size=stats.n_classes) \
            if form == "blocks" else None
        _, t_fin = timed(finalize_ngram, stats, path, form=form, heldout=heldout)
        model = load_model(path)
        res = evaluate(model, [folder / "test.parquet"])
        entry = {"finalize_s": t_fin, "perplexity": res["perplexity"], "n": res["n"],
                 "model_bytes": model.nbytes, "fit": model.meta.get("fit"),
                 "kneser_ney": model.meta["kneser_ney"]}
        if eos:
            entry.update(perplexity_with_eos=res["perplexity_with_eos"], n_with_eos=res["n_with_eos"])
        if not eos and order in (2, 3):
            entry.update(scoring_speed(model, folder))
        out[form] = entry
        log(f"  order {order}{' eos' if eos else ''} {form}: test ppl {res['perplexity']:.3f}, "
            f"accumulate {t_acc:.1f} s, finalize {t_fin:.1f} s")
    if refine and not eos and order in REFINE_ORDERS:
        out["maxent"] = maxent_model(folder, tmp, stats, model)
    if not eos and order in CACHE_ORDERS:
        out["cache"] = cache_models(folder, tmp, stats, refine=order in CACHE_REFINE_ORDERS)
    shutil.rmtree(stats_dir, ignore_errors=True)
    return out


def maxent_model(folder: Path, tmp: Path, stats, blocks) -> dict:
    """`refine` on the block model: the maximum-entropy n-gram model over its statistics,
    L2 candidates and kept iteration chosen on valid, scored on test."""
    path = tmp / f"maxent-{stats.order}.npy"
    heldout = token_batches([folder / "valid.parquet"], vocab_size=stats.n_classes)
    _, t_ref = timed(refine_ngram, stats, blocks.meta, path, heldout=heldout)
    model = load_model(path)
    res = evaluate(model, [folder / "test.parquet"])
    info = model.meta["refinement"]
    log(f"  order {stats.order} maxent: test ppl {res['perplexity']:.3f}, refine {t_ref:.1f} s")
    return {"refine_s": t_ref, "perplexity": res["perplexity"], "n": res["n"],
            "model_bytes": model.nbytes,
            "refinement": {k: info[k] for k in ("l2", "kept_iteration", "heldout_start",
                                                "heldout", "entries", "refine_tau")},
            "runs": [{"l2": r["l2"], "iterations": len(r["log"]), "kept_iteration":
                      r["kept_iteration"], "heldout": r["heldout"]} for r in info["runs"]]}


def corpora_again(saved: dict, args):
    """For a rerun into a saved page: each corpus of --datasets as (its name, its saved
    results, its folder, a scratch folder, the time its part began: its own wall time, not
    since the command began), after an untimed warm-up."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="bench_lm-") as tmp:
        tmp = Path(tmp)
        warm_up(corpus(args.names[0], Path(args.data)), tmp)
        for name in args.names:
            yield name, saved["results"][name], corpus(name, Path(args.data)), tmp, time.perf_counter()


def refine_into(saved_path: Path, args) -> int:
    """Add the maximum-entropy rows to a saved run (accumulate and the block model again,
    then refine), re-rendering the page: the rest of the run is left as it was saved."""
    from harness import command, load_average, load_results, save_and_render, utc_now
    saved = load_results(saved_path)
    started, load_start = time.perf_counter(), load_average()
    orders = [int(o) for o in args.refine_orders.split(",")]
    for name, res, folder, tmp, part in corpora_again(saved, args):
        for order in orders:
            stats_dir = tmp / f"stats-{order}"
            accumulate_into(stats_dir, [folder / "train.parquet"], order=order, overwrite=True)
            stats = load_stats(stats_dir)
            path = tmp / f"blocks-{order}.npy"
            finalize_ngram(stats, path, form="blocks", heldout=token_batches(
                [folder / "valid.parquet"], vocab_size=stats.n_classes))
            res["ngram"][str(order)]["maxent"] = maxent_model(folder, tmp, stats,
                                                              load_model(path))
            shutil.rmtree(stats_dir, ignore_errors=True)
        res.setdefault("refined_by", []).append(
            {"command": command("bench_lm.py", None), "date": utc_now(), "orders": orders,
             "load_start": load_start, "wall_s": time.perf_counter() - part})
    save_and_render(saved_path, saved, render, Path(args.out), plots=not args.no_plots)
    log(f"{saved_path}: maximum-entropy rows added ({(time.perf_counter() - started) / 60:.1f} min)")
    return 0


def without_cache(model):
    """The same n-gram model scored without its document cache."""
    import dataclasses
    return dataclasses.replace(model, meta={k: v for k, v in model.meta.items() if k != "cache"})


def cached_entry(model, folder: Path, seconds: float) -> dict:
    """Test perplexity of an n-gram model with its document cache and without, the whole
    evaluate call's speed with it (best of 2), and the cache's fit."""
    res = evaluate(model, [folder / "test.parquet"])
    plain = evaluate(without_cache(model), [folder / "test.parquet"])
    whole = min(timed(evaluate, model, [folder / "test.parquet"])[1] for _ in range(2))
    return {"seconds": seconds, "perplexity": res["perplexity"], "n": res["n"],
            "perplexity_without_cache": plain["perplexity"], "model_bytes": model.nbytes,
            "evaluate_s": whole, "evaluate_tokens_per_s": res["n"] / whole,
            "cache": model.meta["cache"]}


def cache_models(folder: Path, tmp: Path, stats, *, refine: bool) -> dict:
    """`finalize --form blocks --cache` (the document cache's weights fitted on valid), and
    with `refine` the maximum-entropy refinement of that model (which fits the cache's
    weights again), each scored on test with and without the cache."""
    order = stats.order
    path = tmp / f"blocks-cache-{order}.npy"
    valid = lambda: token_batches([folder / "valid.parquet"], vocab_size=stats.n_classes)
    _, t_fin = timed(finalize_ngram, stats, path, form="blocks", heldout=valid(), cache=True)
    blocks = load_model(path)
    out = {"blocks": cached_entry(blocks, folder, t_fin)}
    log(f"  order {order} blocks + cache: test ppl {out['blocks']['perplexity']:.3f} "
        f"(without {out['blocks']['perplexity_without_cache']:.3f}), finalize {t_fin:.1f} s")
    if refine:
        rpath = tmp / f"maxent-cache-{order}.npy"
        _, t_ref = timed(refine_ngram, stats, blocks.meta, rpath, heldout=valid())
        refined = load_model(rpath)
        out["maxent"] = cached_entry(refined, folder, t_ref)
        out["maxent"]["l2"] = refined.meta["refinement"]["l2"]
        log(f"  order {order} maxent + cache: test ppl {out['maxent']['perplexity']:.3f} "
            f"(without {out['maxent']['perplexity_without_cache']:.3f}), refine {t_ref:.1f} s")
    return out


def cache_into(saved_path: Path, args) -> int:
    """Add the document-cache rows to a saved run (accumulate again, `finalize --cache`,
    refine on it for --cache-refine-orders), re-rendering the page: the rest of the run is
    left as it was saved."""
    from harness import command, load_average, load_results, save_and_render, utc_now
    saved = load_results(saved_path)
    started, load_start, date = time.perf_counter(), load_average(), utc_now()
    orders = [int(o) for o in args.cache_orders.split(",")]
    refine = {int(o) for o in args.cache_refine_orders.split(",") if o}
    for name, res, folder, tmp, part in corpora_again(saved, args):
        for order in orders:
            stats_dir = tmp / f"stats-{order}"
            accumulate_into(stats_dir, [folder / "train.parquet"], order=order, overwrite=True)
            res["ngram"][str(order)]["cache"] = cache_models(
                folder, tmp, load_stats(stats_dir), refine=order in refine)
            shutil.rmtree(stats_dir, ignore_errors=True)
        res["cached_by"] = {"command": command("bench_lm.py", None), "date": date,
                            "orders": orders, "load_start": load_start,
                            "wall_s": time.perf_counter() - part}
    save_and_render(saved_path, saved, render, Path(args.out), plots=not args.no_plots)
    log(f"{saved_path}: document-cache rows added ({(time.perf_counter() - started) / 60:.1f} min)")
    return 0


def timing_into(saved_path: Path, args) -> int:
    """Measure the timings of a saved run again — every n-gram model but the refined ones,
    KenLM, the paired ×10 rounds — and re-render the page: the window, maximum-entropy and
    document-cache rows are kept as saved."""
    from harness import command, load_results, save_and_render, utc_now
    saved = load_results(saved_path)
    started, load_start = time.perf_counter(), load_average()
    for name, res, folder, tmp, part in corpora_again(saved, args):
        if args.paired_only:
            if name == "gcide":
                paired_again(res, folder, tmp, args, load_start, part)
            continue
        for order in res["key_orders"]:
            for key, eos in (("ngram", False), ("ngram_eos", True)):
                new = ngram_models(folder, tmp, order, eos, refine=False)
                for kind, saved_part in res[key][str(order)].items():   # maxent, cache
                    new.setdefault(kind, saved_part)
                res[key][str(order)] = new
        if args.kenlm:
            res["kenlm"] = kenlm(Path(args.kenlm), folder, tmp, res["orders"])
        if name == "gcide":
            res.pop("scaled", None)
            res["paired"] = paired_scaled(folder, tmp, Path(args.kenlm) if args.kenlm else None,
                                          args.rounds)
        res["timed_by"] = [{"command": command("bench_lm.py", None), "date": utc_now(),
                            "load_start": load_start, "paired": name == "gcide",
                            "wall_s": time.perf_counter() - part}]
    save_and_render(saved_path, saved, render, Path(args.out), plots=not args.no_plots)
    log(f"{saved_path}: timings measured again ({(time.perf_counter() - started) / 60:.1f} min)")
    return 0


def paired_again(res: dict, folder: Path, tmp: Path, args, load_start: float, part: float) -> None:
    """--paired-only: the ×10 paired rounds measured again, every other row kept as saved;
    the earlier timing run is still credited for its rows but no longer for the pairs."""
    from harness import command, utc_now
    res["paired"] = paired_scaled(folder, tmp, Path(args.kenlm) if args.kenlm else None,
                                  args.rounds)
    earlier = [dict(r, paired=False) for r in res.get("timed_by", []) if not r.get("paired_only")]
    res["timed_by"] = earlier + [{"command": command("bench_lm.py", None), "date": utc_now(),
                                  "load_start": load_start, "paired": True, "paired_only": True,
                                  "wall_s": time.perf_counter() - part}]


def window_model(folder: Path, tmp: Path, window: int) -> dict:
    from internals import iter_examples
    stats_dir = tmp / f"window-{window}"
    _, t_acc = timed(accumulate_into, stats_dir, [folder / "train.parquet"], window=window,
                     overwrite=True)
    stats = load_stats(stats_dir)
    heldout = iter_examples([folder / "valid.parquet"], task="lm", window=window,
                            n_classes=stats.n_classes, n_features=stats.n_features)
    path = tmp / f"window-{window}.npy"
    _, t_fin = timed(streamfit.finalize, stats, path, form="calibrated", smoothing="auto",
                     heldout=heldout, layout="sparse")
    res, t_eval = timed(evaluate, load_model(path), [folder / "test.parquet"])
    shutil.rmtree(stats_dir, ignore_errors=True)
    log(f"  window {window}: test ppl {res['perplexity']:.3f}")
    return {"accumulate_s": t_acc, "finalize_s": t_fin, "perplexity": res["perplexity"],
            "n": res["n"], "evaluate_s": t_eval}


# --------------------------------------------------------------------------- KenLM
def write_text(parquet: Path, out: Path, copies: int = 1) -> None:
    """Token documents as text for KenLM: id i as the word w<i>, one document a line."""
    import pyarrow.parquet as pq
    with open(out, "w") as fh:
        for _ in range(copies):
            for batch in pq.ParquetFile(parquet).iter_batches(columns=["tokens"]):
                for doc in batch.column(0).to_pylist():
                    fh.write(" ".join(f"w{t}" for t in doc) + "\n")


def run_timed(cmd, stdin=None, stdout=None) -> tuple[float, float]:
    """Wall seconds and the children's CPU seconds of a command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t0, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def kenlm_score(bin_dir: Path, binary: Path, text: Path) -> dict:
    """Test perplexity from `query -v word`: over the real tokens (</s> left out) and with </s>."""
    t0 = time.perf_counter()
    with open(text, "rb") as fi:
        out = subprocess.run([str(bin_dir / "query"), "-v", "word", str(binary)], stdin=fi,
                             capture_output=True, check=True).stdout.decode()
    wall = time.perf_counter() - t0
    lp_tok = lp_end = 0.0
    n_tok = n_end = 0
    for line in out.splitlines():
        if line.startswith(("Perplexity", "OOVs", "Tokens", "Name:")) or not line.strip():
            continue
        for item in line.split("\t"):
            if not item or item.startswith(("Total:", "OOV:")):
                continue
            word_id, _, lp = item.rsplit(" ", 2)
            if word_id.rsplit("=", 1)[0] == "</s>":
                lp_end += float(lp)
                n_end += 1
            else:
                lp_tok += float(lp)
                n_tok += 1
    ln10 = math.log(10)
    return {"perplexity": math.exp(-lp_tok * ln10 / n_tok), "n": n_tok,
            "perplexity_with_eos": math.exp(-(lp_tok + lp_end) * ln10 / (n_tok + n_end)),
            "query_s": wall}


def kenlm(bin_dir: Path, folder: Path, tmp: Path, orders) -> dict:
    texts = tmp / "kenlm"
    texts.mkdir(exist_ok=True)
    for split in ("train", "test"):
        write_text(folder / f"{split}.parquet", texts / f"{split}.txt")
    out = {}
    for order in orders:
        arpa, binary = texts / f"kn{order}.arpa", texts / f"kn{order}.binary"
        with open(texts / "train.txt", "rb") as fi, open(arpa, "wb") as fo:
            t_lmplz, cpu_lmplz = run_timed([str(bin_dir / "lmplz"), "-o", str(order), "-S", "1G",
                                            "-T", str(texts)], stdin=fi, stdout=fo)
        t_bb, cpu_bb = run_timed([str(bin_dir / "build_binary"), str(arpa), str(binary)])
        res = kenlm_score(bin_dir, binary, texts / "test.txt")
        res.update(lmplz_s=t_lmplz, lmplz_cpu_s=cpu_lmplz, build_binary_s=t_bb,
                   build_binary_cpu_s=cpu_bb, binary_bytes=binary.stat().st_size)
        out[str(order)] = res
        arpa.unlink()
        binary.unlink()
        log(f"  KenLM order {order}: test ppl {res['perplexity']:.3f} (</s> left out), lmplz "
            f"{t_lmplz:.1f} s")
    shutil.rmtree(texts, ignore_errors=True)
    return out


def cli_timed(*args) -> tuple[float, float]:
    """Wall and CPU seconds (children's) of one `streamfit` command, as a user runs it."""
    return run_timed([sys.executable, "-m", "streamfit", *map(str, args)], stdout=subprocess.DEVNULL)


def paired_scaled(folder: Path, tmp: Path, bin_dir: Path | None, rounds: int) -> dict:
    """Issue 15 part 5 on train ×SCALE: `streamfit accumulate --jobs 2` + `finalize` (the
    CLI, as a user runs it) against lmplz (+ build_binary) on the same tokens, in paired
    rounds: in each round every configuration runs streamfit and KenLM back to back, the
    first of the two alternating between rounds; the load average is read before each."""
    parts = []
    for i in range(SCALE):
        p = tmp / f"train-copy{i}.parquet"   # copies under other names: each is counted
        shutil.copyfile(folder / "train.parquet", p)
        parts.append(p)
    text = tmp / "train10.txt"
    if bin_dir:
        write_text(folder / "train.parquet", text, copies=SCALE)
    configs = {"order 2": ("--order", 2), "order 3": ("--order", 3), "window 1": ("--window", 1)}
    out = {"copies": SCALE, "rounds": rounds, "jobs": 2, "runs": {k: [] for k in configs}}

    def ours(flag, n):
        stats, r = tmp / "paired-stats", {"load": load_average()}
        r["accumulate_s"], r["accumulate_cpu_s"] = cli_timed(
            "accumulate", *parts, flag, n, "--jobs", 2, "--stats", stats, "--overwrite", "--quiet")
        if flag == "--order":
            r["finalize_kneser_ney_s"], _ = cli_timed(
                "finalize", "--stats", stats, "--out", tmp / "p.npy", "--form", "kneser-ney", "--quiet")
            r["finalize_blocks_s"], _ = cli_timed(
                "finalize", "--stats", stats, "--out", tmp / "p.npy", "--form", "blocks",
                "--heldout", folder / "valid.parquet", "--quiet")
        else:
            r["finalize_conditional_s"], _ = cli_timed(
                "finalize", "--stats", stats, "--out", tmp / "p.npy", "--form", "conditional",
                "--format", "sparse", "--quiet")
        shutil.rmtree(stats, ignore_errors=True)
        for f in tmp.glob("p.*"):
            f.unlink()
        return r

    def theirs(order):
        arpa, binary = tmp / "big.arpa", tmp / "big.binary"
        r = {"load_kenlm": load_average()}
        # every count of a corpus repeated is a multiple of SCALE, so n1..n4 are 0: lmplz
        # needs --discount_fallback (streamfit falls back to the same 0.5 / 1 / 1.5)
        with open(text, "rb") as fi, open(arpa, "wb") as fo:
            r["lmplz_s"], r["lmplz_cpu_s"] = run_timed(
                [str(bin_dir / "lmplz"), "-o", str(order), "-S", "1G", "-T", str(tmp),
                 "--discount_fallback"], stdin=fi, stdout=fo)
        r["build_binary_s"], _ = run_timed([str(bin_dir / "build_binary"), str(arpa), str(binary)])
        arpa.unlink()
        binary.unlink()
        return r

    for rnd in range(rounds):
        for name, (flag, n) in configs.items():
            order = n if flag == "--order" else n + 1
            first_ours = rnd % 2 == 0 or not bin_dir
            r = ours(flag, n) if first_ours else {}
            if bin_dir:
                r.update(theirs(order))
            if not first_ours:
                r.update(ours(flag, n))
            out["runs"][name].append(r)
            log(f"  ×{SCALE} {name}, round {rnd + 1}: accumulate {r['accumulate_s']:.1f} s"
                + (f", lmplz {r['lmplz_s']:.1f} s" if bin_dir else ""))
    for p in parts:
        p.unlink()
    text.unlink(missing_ok=True)
    return out


def bench(name: str, args, tmp: Path) -> dict:
    folder = corpus(name, Path(args.data))
    meta = corpus_meta(folder)
    orders = QUICK_ORDERS if args.quick else ORDERS
    key_orders = [o for o in orders if o <= MAX_KEY_ORDER[name]]
    res = {"name": name, "vocab_size": meta["vocab_size"], "tokens": meta["tokens"],
           "orders": list(orders), "key_orders": key_orders, "ngram": {}, "ngram_eos": {},
           "window": {}}
    warm_up(folder, tmp)
    for order in key_orders:
        res["ngram"][str(order)] = ngram_models(folder, tmp, order, eos=False)
        res["ngram_eos"][str(order)] = ngram_models(folder, tmp, order, eos=True)
    if not args.quick and name == "gcide":
        for w in WINDOWS:
            res["window"][str(w)] = window_model(folder, tmp, w)
    if args.kenlm:
        res["kenlm"] = kenlm(Path(args.kenlm), folder, tmp, orders)
    if not args.quick and name == "gcide":
        res["paired"] = paired_scaled(folder, tmp, Path(args.kenlm) if args.kenlm else None,
                                      args.rounds)
    return res


# --------------------------------------------------------------------------- the page
def fmt_s(x) -> str:
    return f"{x:.1f}"


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, style in (("ngram", "Kneser-Ney (streamfit)", "o--"),
                              ("ngram", "blocks (streamfit)", "o-"),
                              ("ngram_eos", "Kneser-Ney, eos", "s--"),
                              ("ngram_eos", "blocks, eos", "s-")):
        form = "blocks" if "blocks" in label else "kneser-ney"
        xs = [int(o) for o in res[key]]
        ax.plot(xs, [res[key][o][form]["perplexity"] for o in res[key]], style, label=label)
    refined = [o for o in res["ngram"] if "maxent" in res["ngram"][o]]
    if refined:
        ax.plot([int(o) for o in refined], [res["ngram"][o]["maxent"]["perplexity"] for o in refined],
                "D-", label="maximum entropy, refined (streamfit)")
    for kind, label in (("blocks", "blocks + document cache (the document so far)"),
                        ("maxent", "maximum entropy + document cache (the document so far)")):
        cached = [o for o in res["ngram"] if kind in res["ngram"][o].get("cache", {})]
        if cached:
            ax.plot([int(o) for o in cached],
                    [res["ngram"][o]["cache"][kind]["perplexity"] for o in cached],
                    "v-" if kind == "blocks" else "P-", label=label)
    if res.get("kenlm"):
        xs = [int(o) for o in res["kenlm"]]
        ax.plot(xs, [res["kenlm"][str(o)]["perplexity"] for o in xs], "^:", label="KenLM lmplz (eos)")
    if res["window"]:
        xs = [int(w) + 1 for w in res["window"]]
        ax.plot(xs, [res["window"][w]["perplexity"] for w in res["window"]], "x-.",
                label="window model, calibrated")
    ax.set_xlabel("order (context tokens + 1)")
    ax.set_ylabel("test perplexity")
    ax.set_xticks(sorted({int(o) for o in res["orders"]}))
    ax.set_title(f"{res['name']}: test perplexity against order")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def targets(res: dict) -> list[str]:
    lines = [f"### {res['name']}", "", "| target | measured | met |", "|---|---|---|"]
    yes = lambda ok: "yes" if ok else "**no**"
    for o in ("2", "3"):
        if o not in res["ngram"]:
            continue
        kn, bl = res["ngram"][o]["kneser-ney"]["perplexity"], res["ngram"][o]["blocks"]["perplexity"]
        lines.append(f"| order {o}: blocks below our Kneser-Ney | {bl:.2f} vs {kn:.2f} | {yes(bl < kn)} |")
        kn_e = res["ngram_eos"][o]["kneser-ney"]["perplexity"]
        bl_e = res["ngram_eos"][o]["blocks"]["perplexity"]
        lines.append(f"| order {o}, eos: blocks below our Kneser-Ney | {bl_e:.2f} vs {kn_e:.2f} | {yes(bl_e < kn_e)} |")
        if res.get("kenlm"):
            k = res["kenlm"][o]["perplexity"]
            lines.append(f"| order {o}, eos: blocks below KenLM (same predictions) | {bl_e:.2f} vs {k:.2f} "
                         f"| {yes(bl_e < k)} |")
            ours = res["ngram"][o]["accumulate_s"] + res["ngram"][o]["blocks"]["finalize_s"]
            theirs = res["kenlm"][o]["lmplz_s"] + res["kenlm"][o]["build_binary_s"]
            lines.append(f"| order {o}: accumulate + finalize (blocks) ≤ lmplz + build_binary, wall | "
                         f"{ours:.1f} s vs {theirs:.1f} s | {yes(ours <= theirs)} |")
            ours_kn = res["ngram"][o]["accumulate_s"] + res["ngram"][o]["kneser-ney"]["finalize_s"]
            lines.append(f"| order {o}: accumulate + finalize (Kneser-Ney) ≤ lmplz + build_binary, wall | "
                         f"{ours_kn:.1f} s vs {theirs:.1f} s | {yes(ours_kn <= theirs)} |")
    if "3" in res["ngram"]:
        sp = res["ngram"]["3"]["blocks"]
        lines.append(f"| order 3: scoring ≥ 1M tokens/s on one core (lookup scorer / whole evaluate call) | "
                     f"{sp['scorer_tokens_per_s'] / 1e6:.2f}M / {sp['evaluate_tokens_per_s'] / 1e6:.2f}M | "
                     f"{yes(sp['scorer_tokens_per_s'] >= 1e6)} |")
    if res.get("paired"):
        lines += paired_targets(res["paired"])
    refined = [o for o in res["ngram"] if "maxent" in res["ngram"][o]]
    for o in refined:
        kn, me = res["ngram"][o]["kneser-ney"]["perplexity"], res["ngram"][o]["maxent"]["perplexity"]
        lines.append(f"| order {o}: after refinement ≥ 5% below our Kneser-Ney | {me:.2f} vs {kn:.2f} "
                     f"({100 * (1 - me / kn):.1f}% below) | {yes(me <= 0.95 * kn)} |")
    if not refined:
        lines.append("| after refinement ≥ 5% below Kneser-Ney | not measured in this run | **no** |")
    lines += cache_targets(res)
    return lines + [""]


CACHE_LABEL = {"blocks": "blocks + document cache", "maxent": "maximum entropy + document cache"}


def cache_targets(res: dict) -> list[str]:
    """The ≥ 5% target met with the document cache (a model that uses the document so far,
    unlike Kneser-Ney and KenLM)."""
    lines = []
    for o, r in res["ngram"].items():
        kn = r["kneser-ney"]["perplexity"]
        for kind in ("blocks", "maxent"):
            if kind in r.get("cache", {}):
                c = r["cache"][kind]["perplexity"]
                lines.append(f"| order {o}: {CACHE_LABEL[kind]} (uses the document so far) ≥ 5% "
                             f"below our Kneser-Ney | {c:.2f} vs {kn:.2f} ({100 * (1 - c / kn):.1f}% "
                             f"below) | {'yes' if c <= 0.95 * kn else '**no**'} |")
    return lines


PAIRED_FORMS = {"order 2": (("kneser_ney", "Kneser-Ney"), ("blocks", "blocks")),
                "order 3": (("kneser_ney", "Kneser-Ney"), ("blocks", "blocks")),
                "window 1": (("conditional", "conditional, sparse"),)}


def median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=float)))


def paired_summary(runs: list, form: str) -> tuple[float, float, float]:
    """Median over rounds of streamfit's accumulate + finalize, of lmplz, and of their ratio
    within a round."""
    ours = [r["accumulate_s"] + r[f"finalize_{form}_s"] for r in runs]
    if "lmplz_s" not in runs[0]:
        return median(ours), math.nan, math.nan
    theirs = [r["lmplz_s"] for r in runs]
    return median(ours), median(theirs), median([a / b for a, b in zip(ours, theirs)])


def paired_targets(p: dict) -> list[str]:
    yes = lambda ok: "yes" if ok else "**no**"
    lines = []
    for name, runs in p["runs"].items():
        order = int(name.split()[1]) + (1 if name.startswith("window") else 0)
        for form, label in PAIRED_FORMS[name]:
            ours, theirs, ratio = paired_summary(runs, form)
            if math.isnan(theirs):
                continue
            lines.append(f"| train ×{p['copies']}, {name}: accumulate --jobs {p['jobs']} + finalize "
                         f"({label}) ≤ 0.5× `lmplz -o {order}`, wall (median of {p['rounds']} paired "
                         f"rounds) | {ours:.1f} s vs {theirs:.1f} s ({ratio:.2f}×) | {yes(ratio <= 0.5)} |")
    return lines


def paired_details(p: dict) -> list[str]:
    lines = [f"- train ×{p['copies']}, paired rounds (the CLI as a user runs it, `accumulate "
             f"--jobs {p['jobs']}` on the {p['copies']} copies, then `finalize`; KenLM `lmplz -S 1G "
             f"--discount_fallback` and `build_binary` on the same tokens as text; the two "
             f"back to back, alternating which goes first; 1-minute load average before each):"]
    for name, runs in p["runs"].items():
        for i, r in enumerate(runs):
            fin = ", ".join(f"finalize {label} {r[f'finalize_{form}_s']:.1f} s"
                            for form, label in PAIRED_FORMS[name])
            lines.append(f"  - {name}, round {i + 1}: accumulate {r['accumulate_s']:.1f} s (CPU "
                         f"{r['accumulate_cpu_s']:.1f} s), {fin}; load {r['load']:.1f}"
                         + (f"; lmplz {r['lmplz_s']:.1f} s (CPU {r['lmplz_cpu_s']:.1f} s), "
                            f"build_binary {r['build_binary_s']:.1f} s; load {r['load_kenlm']:.1f}"
                            if "lmplz_s" in r else ""))
    return lines


def table(res: dict) -> list[str]:
    lines = ["| model | order | test ppl | test ppl, eos (</s> left out) | with </s> | accumulate s | "
             "finalize s | model MB |", "|---|---|---|---|---|---|---|---|"]
    for o in res["key_orders"]:
        o = str(o)
        for form, label in (("kneser-ney", "Kneser-Ney"), ("blocks", "blocks")):
            a, e = res["ngram"][o][form], res["ngram_eos"][o][form]
            lines.append(f"| streamfit {label} | {o} | {a['perplexity']:.2f} | {e['perplexity']:.2f} | "
                         f"{e['perplexity_with_eos']:.2f} | {fmt_s(res['ngram'][o]['accumulate_s'])} | "
                         f"{fmt_s(a['finalize_s'])} | {a['model_bytes'] / 1e6:.1f} |")
        if "maxent" in res["ngram"][o]:
            m = res["ngram"][o]["maxent"]
            lines.append(f"| streamfit maximum entropy (refine on blocks) | {o} | {m['perplexity']:.2f} "
                         f"| | | | {fmt_s(m['refine_s'])} (refine) | {m['model_bytes'] / 1e6:.1f} |")
        for kind, c in res["ngram"][o].get("cache", {}).items():
            lines.append(f"| streamfit {CACHE_LABEL[kind]} (uses the document so far) | {o} | "
                         f"{c['perplexity']:.2f} | | | | {fmt_s(c['seconds'])}"
                         f"{' (refine)' if kind == 'maxent' else ''} | {c['model_bytes'] / 1e6:.1f} |")
    for o, k in (res.get("kenlm") or {}).items():
        lines.append(f"| KenLM lmplz + build_binary | {o} | | {k['perplexity']:.2f} | "
                     f"{k['perplexity_with_eos']:.2f} | {fmt_s(k['lmplz_s'])} (lmplz; CPU "
                     f"{fmt_s(k['lmplz_cpu_s'])}) | {fmt_s(k['build_binary_s'])} | "
                     f"{k['binary_bytes'] / 1e6:.1f} |")
    for w, r in res["window"].items():
        lines.append(f"| streamfit window {w}, calibrated, sparse | {int(w) + 1} | {r['perplexity']:.2f} | | | "
                     f"{fmt_s(r['accumulate_s'])} | {fmt_s(r['finalize_s'])} | |")
    return lines


def details(res: dict) -> list[str]:
    lines = []
    for o in res["key_orders"]:
        b = res["ngram"][str(o)]["blocks"]
        f = b["fit"]
        kn = b["kneser_ney"]
        lines.append(f"- order {o}: {res['ngram'][str(o)]['ngrams']:,} distinct {o}-grams "
                     f"({res['ngram'][str(o)]['stats_bytes'] / 1e6:.1f} MB of statistics); "
                     f"contexts per level {', '.join(f'{c:,}' for c in kn['contexts_per_level'])}; "
                     f"block fit: {f['evaluations']} evaluations over {f['positions']:,} valid "
                     f"predictions ({f['distinct_contexts']:,} distinct deepest contexts), valid "
                     f"perplexity {math.exp(f['cross_entropy_kneser_ney']):.2f} → "
                     f"{math.exp(f['cross_entropy']):.2f}, {f['seconds']:.1f} s.")
    for o in res["key_orders"]:
        m = res["ngram"][str(o)].get("maxent")
        if m:
            r = m["refinement"]
            lines.append(f"- order {o}, maximum entropy: {r['entries']:,} weights (one per seen "
                         f"n-gram at each level) over the block model's τ (kept: τ "
                         f"{'refined too' if r['refine_tau'] else 'as fitted on valid'}); "
                         f"L-BFGS on the training counts, valid perplexity "
                         f"{math.exp(r['heldout_start']):.2f} → {math.exp(r['heldout']):.2f} at "
                         f"l2 {r['l2']:g}, iteration {r['kept_iteration']} kept; per l2 "
                         + ", ".join(f"{x['l2']:g}: {math.exp(x['heldout']):.2f} at iteration "
                                     f"{x['kept_iteration']} of {x['iterations']}" for x in m["runs"])
                         + f"; {m['refine_s']:.0f} s.")
    lines += cache_details(res)
    for o in ("2", "3"):
        if o in res["ngram"] and "scorer_tokens_per_s" in res["ngram"][o]["blocks"]:
            b = res["ngram"][o]["blocks"]
            lines.append(f"- scoring, order {o} blocks: lookup scorer {b['scorer_tokens_per_s'] / 1e6:.2f}M "
                         f"tokens/s ({b['scorer_s']:.3f} s for the test split); the whole "
                         f"`evaluate` call (Parquet, contexts, scoring) {b['evaluate_s']:.2f} s = "
                         f"{b['evaluate_tokens_per_s'] / 1e6:.2f}M tokens/s."
                         + (f" KenLM `query -v word` {res['kenlm'][o]['query_s']:.2f} s (with "
                            f"loading and printing every word)." if res.get("kenlm") else ""))
    if res.get("paired"):
        lines += paired_details(res["paired"])
    missing = [o for o in res["orders"] if o not in res["key_orders"]]
    if missing:
        lines.append(f"- order {', '.join(map(str, missing))}: not measured for streamfit — an "
                     f"order-N n-gram key packs N tokens of 63 // N bits, 12 at order 5, and this "
                     f"vocabulary ({res['vocab_size']:,}) needs 15; KenLM's figure is shown.")
    return lines


def cache_details(res: dict) -> list[str]:
    lines = []
    for o in res["key_orders"]:
        for kind, c in res["ngram"][str(o)].get("cache", {}).items():
            f = c["cache"]
            w = f["weights"]   # rows 2·bucket + (bigram cache exists); bucket 4: t 8-15, 7: 64-127
            lines.append(f"- order {o}, {CACHE_LABEL[kind]}: weights fitted on "
                         f"{f['positions']:,} valid predictions, valid perplexity "
                         f"{math.exp(f['cross_entropy_without']):.2f} → "
                         f"{math.exp(f['cross_entropy']):.2f}; (n-gram, unigram cache, bigram "
                         f"cache) at t 8–15 tokens seen {tuple(round(x, 3) for x in w[9])}, at t "
                         f"64–127 {tuple(round(x, 3) for x in w[15])} (the bigram cache "
                         f"existing); test perplexity {c['perplexity_without_cache']:.2f} without "
                         f"the cache → {c['perplexity']:.2f}; the whole `evaluate` call "
                         f"{c['evaluate_s']:.2f} s = {c['evaluate_tokens_per_s'] / 1e6:.2f}M tokens/s"
                         + (f"; refined at l2 {c['l2']:g}" if kind == "maxent" else "") + ".")
    return lines


def page_lines(results: dict, meta: dict) -> list[str]:
    m = meta["machine"]
    lines = ["# n-gram language models: Kneser-Ney and the block model, against KenLM", "",
             f"Generated by `{meta['command']}` on {meta['date']} ({m['cpu']}, {m['cpu_count']} "
             f"cores shared with other work, load average {meta['load_start']:.1f} at the start; "
             f"numpy {m['numpy']}, numba {m['numba']}). Every figure below comes from that run; "
             "rerun it to reproduce them. Seconds are wall time on a shared machine: compare "
             "them within a factor of two.", "",
             "Models: `streamfit accumulate --order N` counts every BOS-padded N-gram of train "
             "in one pass (exact sums: shards merge exactly); `finalize --form kneser-ney` "
             "derives interpolated modified Kneser-Ney from those counts (continuation counts, "
             "count-of-counts and discounts at finalize, KenLM's convention at document starts); "
             "`finalize --form blocks --heldout valid` fits the log-linear model over the "
             "Kneser-Ney levels, one τ per level and context-count bucket, on every valid "
             "prediction with the exact normaliser (METHODS.md §6); `refine` on a block model "
             "(orders 2–4, no eos) is the maximum-entropy n-gram model: one weight per n-gram "
             "seen in training at each level added to the block logits, L-BFGS on the training "
             "counts, its L2 and best iteration chosen on valid. Test perplexity is over "
             "every token of test; the `eos` columns use statistics with an end-of-document "
             "token predicted, and leave its predictions out of the average as KenLM's `</s>` "
             "is left out here, so those columns and KenLM's score the same positions.", "",
             "The document cache (`finalize --cache`, rows marked \"uses the document so "
             "far\"): each prediction is w0 · the n-gram probability + w1 · the share of its "
             "token among the t tokens seen so far in the same document + w2 · its share among "
             "the tokens that followed the previous token there (the bigram cache), one weight "
             "triple per log2 bucket of t and per whether the bigram cache exists, fitted on "
             "valid (exactly normalised; `refine` fits the weights again over the refined "
             "model). It conditions on the whole document before the "
             "token, not on the N−1 previous tokens only: Kneser-Ney's, the block model's, "
             "the maximum-entropy model's and KenLM's figures are pure n-gram models.", "",
             "## Targets", ""]
    for res in results.values():
        lines += targets(res)
    for res in results.values():
        for r in res.get("refined_by", []):
            lines += [f"{res['name']}, order {', '.join(map(str, r['orders']))}: the maximum-entropy "
                      f"rows were added by `{r['command']}` on {r['date']} (load average "
                      f"{r['load_start']:.1f} at its start, {r['wall_s'] / 60:.0f} min), which "
                      "counts and fits the block models again (the same figures) and refines "
                      "them; the rest is the run above.", ""]
        if res.get("cached_by"):
            r = res["cached_by"]
            lines += [f"{res['name']}, order {', '.join(map(str, r['orders']))}: the document-"
                      f"cache rows were added by `{r['command']}`, started {r['date']} (load "
                      f"average {r['load_start']:.1f} at its start; {r['wall_s'] / 60:.0f} min "
                      "for this corpus), which counts and fits the block models again and "
                      "refines them with the cache; the rest is the run above.", ""]
    for res in results.values():
        for r in res.get("timed_by", []):
            if r.get("paired_only"):
                lines += [f"{res['name']}: the ×10 pairs were measured again by `{r['command']}` "
                          f"on {r['date']} (load average {r['load_start']:.1f} at its start, "
                          f"{r['wall_s'] / 60:.0f} min).", ""]
                continue
            lines += [f"{res['name']}: the streamfit n-gram rows (Kneser-Ney and blocks, with and "
                      f"without eos), the KenLM rows{' and the ×10 pairs' if r['paired'] else ''} "
                      f"were measured again by `{r['command']}` on {r['date']} (load average "
                      f"{r['load_start']:.1f} at its start, {r['wall_s'] / 60:.0f} min); the "
                      "window, maximum-entropy and document-cache rows are from the runs "
                      "above (their block models fitted then by L-BFGS, since by Newton's "
                      "method: the same optimum to about 1e-9 nats).", ""]
    for res in results.values():
        lines += [f"## {res['name']}", "",
                  f"Vocabulary {res['vocab_size']:,}; tokens train / valid / test "
                  f"{res['tokens']['train']:,} / {res['tokens']['valid']:,} / {res['tokens']['test']:,}.", ""]
        lines += table(res)
        lines += ["", *details(res), "", f"![{res['name']}](lm-{res['name']}.png)", ""]
    return lines


def render(saved: dict, out_dir: Path, *, plots: bool = True) -> Path:
    figures = [(plot, res, f"lm-{n}.png") for n, res in saved["results"].items()] if plots else []
    return write_page(out_dir, "lm.md", page_lines(saved["results"], saved["meta"]), figures)


def options(ap) -> None:
    ap.add_argument("--kenlm", metavar="DIR",
                    help="folder of KenLM's lmplz, build_binary and query (skipped when absent)")
    ap.add_argument("--refine-into", metavar="JSON",
                    help="add the maximum-entropy refinement to a saved run (lm.json) and render "
                         "the page again, running nothing else")
    ap.add_argument("--refine-orders", default=",".join(map(str, REFINE_ORDERS)),
                    help="orders --refine-into refines (default: %(default)s)")
    ap.add_argument("--cache-into", metavar="JSON",
                    help="add the document-cache models (finalize --cache, refine on it) to a "
                         "saved run (lm.json) and render the page again, running nothing else")
    ap.add_argument("--cache-orders", default=",".join(map(str, CACHE_ORDERS)),
                    help="orders --cache-into measures (default: %(default)s)")
    ap.add_argument("--cache-refine-orders", default=",".join(map(str, CACHE_REFINE_ORDERS)),
                    help="orders --cache-into also refines (default: %(default)s)")
    ap.add_argument("--timing-into", metavar="JSON",
                    help="measure the timings of a saved run (lm.json) again — n-gram models "
                         "but the refined ones, KenLM, the paired ×10 rounds — and render the "
                         "page again")
    ap.add_argument("--paired-only", action="store_true",
                    help="with --timing-into: measure only the paired ×10 rounds again (GCIDE), "
                         "keeping every other row as saved")
    ap.add_argument("--rounds", type=int, default=2,
                    help="paired rounds on the ×10 corpus (default: %(default)s)")


def main(argv: list[str] | None = None) -> int:
    import argparse
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--refine-into")
    pre.add_argument("--cache-into")
    pre.add_argument("--timing-into")
    known = pre.parse_known_args(argv)[0]
    if known.refine_into or known.cache_into or known.timing_into:
        from harness import dataset_names, page_options
        ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        page_options(ap, "lm", DATASETS, "unused")
        options(ap)
        args = ap.parse_args(argv)
        args.names = dataset_names(args.datasets, DATASETS)
        if known.cache_into:
            return cache_into(Path(args.cache_into), args)
        if args.timing_into:
            return timing_into(Path(args.timing_into), args)
        return refine_into(Path(args.refine_into), args)
    return page_main(argv, __doc__.split("\n\n")[0], "bench_lm.py", "lm", datasets=DATASETS,
                     quick="orders 2 and 3 only, no window models, no ×10 corpus",
                     render=render, run=bench, options=options)


if __name__ == "__main__":
    sys.exit(main())
