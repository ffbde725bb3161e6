#!/usr/bin/env python
"""Small models measured: test perplexity against size on disk, and the numpy-only scorer.

Per corpus (GCIDE, the stdlib corpus) and order (2, 3), one ``accumulate --order N --eos``,
then every reduction and combination ``finalize`` offers, each scored on the test split:
compact files with float64 / float32 / float16 / int8 values; pruning by count
(``--prune-count 2, 3``) and by relative entropy (``--prune-entropy θ``), with float16 and
int8 values; for Kneser-Ney and the block model (τ fitted on valid). The hash-table model
(the default ``finalize``) is the reference. Perplexity is over the real tokens, the end
token's predictions left out, as KenLM is scored; size is the bytes of the model's arrays
on disk (its sidecar, a few kB, aside).

KenLM, when ``--kenlm DIR`` gives its binaries (never part of streamfit): ``lmplz -o N``
with and without ``--prune 0 t …`` (drop n-grams of count ≤ t, orders ≥ 2), each
``build_binary`` as probing (its default), ``trie`` and ``trie -q 8 -b 8`` (8-bit
quantised probabilities and back-offs), scored with ``query`` on the same tokens.

The numpy-only scorer (``streamfit.lite``), in a fresh process of its own for each model
measured: seconds to import it and open the model, the process's anonymous resident memory
(``RssAnon``: everything but the memory-mapped model pages) after the queries, and the
latency of a next-token top-10 (p50 / p99 over contexts drawn from test). Classifiers:
Fashion-MNIST's calibrated dense weights and their ``streamfit shrink`` copies (float16,
int8), test accuracy and size.

    python tools/bench_small.py --kenlm /path/to/kenlm/build/bin    # ~30 min on 2 cores
    python tools/bench_small.py --quick                              # order 2 only, GCIDE
    python tools/bench_small.py --render docs/small.json             # the page again
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lm import kenlm_score, run_timed, write_text  # noqa: E402
from corpora import corpus_meta, fashion_corpus, gcide_corpus, stdlib_corpus  # noqa: E402
from harness import log, page_main, write_page  # noqa: E402
from internals import token_batches  # noqa: E402
import streamfit  # noqa: E402
from streamfit import accumulate_into, evaluate, finalize_ngram, load_model, load_stats  # noqa: E402

DATASETS = ("gcide", "stdlib")
ORDERS = (2, 3)
QUICK_ORDERS = (2,)
QUANTIZE = ("float64", "float32", "float16", "int8")
PRUNE = [("count", 2), ("count", 3), ("entropy", 1e-8), ("entropy", 1e-7), ("entropy", 1e-6)]
PRUNE_QUANTIZE = ("float16", "int8")
BLOCKS = [dict(quantize="float64"), dict(quantize="int8"),
          dict(quantize="int8", prune_count=2), dict(quantize="int8", prune_entropy=1e-7)]
KENLM_PRUNE = (1, 2)
LITE_QUERIES = 2000


def corpus(name: str, data: Path) -> Path:
    return gcide_corpus(data, 16384) if name == "gcide" else stdlib_corpus(data)


def disk_bytes(model) -> int:
    return int(sum(e["size"] for e in model.meta["arrays"].values()))


def label_of(kw: dict) -> str:
    parts = []
    if kw.get("prune_count"):
        parts.append(f"count<{kw['prune_count']}")
    if kw.get("prune_entropy"):
        parts.append(f"entropy<{kw['prune_entropy']:g}")
    parts.append(kw.get("quantize", "hash"))
    return " + ".join(parts)


def variants() -> list[tuple[str, dict]]:
    out = [("kneser-ney", {})] + [("kneser-ney", dict(quantize=q)) for q in QUANTIZE]
    for rule, value in PRUNE:
        for q in PRUNE_QUANTIZE:
            out.append(("kneser-ney", {f"prune_{rule}": value, "quantize": q}))
    out += [("blocks", {})] + [("blocks", kw) for kw in BLOCKS]
    return out


def ngram_runs(folder: Path, tmp: Path, order: int) -> dict:
    from streamfit.solve.shrink import finalize_small
    stats_dir = tmp / f"stats-{order}"
    accumulate_into(stats_dir, [folder / "train.parquet"], order=order, eos=True, overwrite=True)
    stats = load_stats(stats_dir)
    rows = []
    for form, kw in variants():
        path = tmp / f"m-{order}.npy"
        heldout = token_batches([folder / "valid.parquet"], vocab_size=stats.n_classes) \
            if form == "blocks" else None
        t0 = time.perf_counter()
        if kw:
            model = finalize_small(stats, path, form=form, heldout=heldout, **kw)
        else:
            model = finalize_ngram(stats, path, form=form, heldout=heldout)
        seconds = time.perf_counter() - t0
        model = load_model(path)
        res = evaluate(model, [folder / "test.parquet"])
        row = {"form": form, **kw, "label": label_of(kw), "compact": bool(kw),
               "bytes": disk_bytes(model), "perplexity": res["perplexity"], "n": res["n"],
               "perplexity_with_eos": res["perplexity_with_eos"], "finalize_s": seconds}
        if "pruned" in model.meta:
            row["ngrams"] = sum(model.meta["pruned"]["ngrams"])
        rows.append(row)
        log(f"  order {order} {form} {row['label']}: test ppl {res['perplexity']:.3f}, "
            f"{row['bytes'] / 1e6:.2f} MB")
    return {"rows": rows, "ngrams": int(stats.nnz), "stats_dir": str(stats_dir)}


# --------------------------------------------------------------------------- the lite scorer
LITE_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import streamfit.lite as lite
model = lite.load(sys.argv[1])
t_open = time.perf_counter() - t0
t_numpy = t1 - t0
contexts = json.loads(open(sys.argv[2]).read())
lat = []
for c in contexts:
    t = time.perf_counter()
    model.top_k(c, 10)
    lat.append(time.perf_counter() - t)
doc = [t for c in contexts[:200] for t in c[-1:]]
t = time.perf_counter()
lp = model.score(doc)
t_score = time.perf_counter() - t
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
kb = lambda k: int(status[k].split()[0]) if k in status else None
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "pyarrow", "scipy", "tqdm"))
print(json.dumps({"open_s": t_open, "numpy_import_s": t_numpy, "latency_s": lat, "score_tokens": len(doc) + 1,
                  "score_s": t_score, "rss_anon_kib": kb("RssAnon"), "rss_file_kib": kb("RssFile"),
                  "vm_hwm_kib": kb("VmHWM"), "heavy_modules": heavy}))
"""


def lite_probe(path: Path, folder: Path, order: int, tmp: Path) -> dict:
    """The lite scorer on `path` in a fresh process (see the module doc)."""
    rng = np.random.default_rng(0)
    batch = next(iter(token_batches([folder / "test.parquet"],
                                    vocab_size=corpus_meta(folder)["vocab_size"])))
    tokens, offsets = batch.tokens, batch.doc_offsets
    contexts = []
    while len(contexts) < LITE_QUERIES:
        d = int(rng.integers(0, offsets.size - 1))
        lo, hi = int(offsets[d]), int(offsets[d + 1])
        if hi > lo:
            at = int(rng.integers(lo, hi + 1))
            contexts.append([int(t) for t in tokens[max(lo, at - (order - 1)):at]])
    ctx_file = tmp / "contexts.json"
    ctx_file.write_text(json.dumps(contexts))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LITE_PROBE, str(path), str(ctx_file)],
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    r = json.loads(out.stdout)
    lat = np.array(r.pop("latency_s"))
    base = subprocess.run([sys.executable, "-c", "import numpy, json; status = dict(l.split(':', 1) "
                           "for l in open('/proc/self/status') if ':' in l); "
                           "print(int(status['RssAnon'].split()[0]))"],
                          capture_output=True, text=True, check=True)
    return {**r, "process_s": wall, "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "queries": int(lat.size),
            "numpy_process_rss_anon_kib": int(base.stdout)}


def lite_runs(folder: Path, tmp: Path, order: int) -> list[dict]:
    from streamfit.solve.shrink import finalize_small
    stats = load_stats(tmp / f"stats-{order}")
    out = []
    for form, kw in (("kneser-ney", dict(quantize="float64")), ("blocks", dict(quantize="int8"))):
        path = tmp / f"lite-{order}.npy"
        heldout = token_batches([folder / "valid.parquet"], vocab_size=stats.n_classes) \
            if form == "blocks" else None
        model = finalize_small(stats, path, form=form, heldout=heldout, **kw)
        r = lite_probe(path, folder, order, tmp)
        r.update(form=form, order=order, label=label_of(kw), bytes=disk_bytes(model))
        out.append(r)
        log(f"  lite order {order} {form} {r['label']}: open {r['open_s']:.3f} s, RssAnon "
            f"{r['rss_anon_kib'] / 1024:.1f} MiB, top-10 p50 {r['p50_ms']:.2f} ms p99 "
            f"{r['p99_ms']:.2f} ms")
    return out


# --------------------------------------------------------------------------- KenLM
def kenlm_runs(bin_dir: Path, folder: Path, tmp: Path, orders) -> list[dict]:
    texts = tmp / "kenlm"
    texts.mkdir(exist_ok=True)
    for split in ("train", "test"):
        write_text(folder / f"{split}.parquet", texts / f"{split}.txt")
    rows = []
    for order in orders:
        for prune in (0, *KENLM_PRUNE):
            arpa = texts / f"kn{order}-{prune}.arpa"
            cmd = [str(bin_dir / "lmplz"), "-o", str(order), "-S", "1G", "-T", str(texts)]
            if prune:
                cmd += ["--prune", "0", *[str(prune)] * (order - 1)]
            with open(texts / "train.txt", "rb") as fi, open(arpa, "wb") as fo:
                t_lmplz, _ = run_timed(cmd, stdin=fi, stdout=fo)
            for kind, extra in (("probing", []), ("trie", ["trie"]),
                                ("trie -q 8 -b 8", ["-q", "8", "-b", "8", "trie"])):
                if prune and kind == "trie":
                    continue
                binary = texts / "model.binary"
                run_timed([str(bin_dir / "build_binary"), *extra, str(arpa), str(binary)])
                res = kenlm_score(bin_dir, binary, texts / "test.txt")
                rows.append({"order": order, "prune": prune, "binary": kind,
                             "bytes": binary.stat().st_size, "perplexity": res["perplexity"],
                             "perplexity_with_eos": res["perplexity_with_eos"], "n": res["n"],
                             "lmplz_s": t_lmplz})
                binary.unlink()
                log(f"  KenLM order {order} prune {prune} {kind}: test ppl {res['perplexity']:.3f}, "
                    f"{rows[-1]['bytes'] / 1e6:.2f} MB")
            arpa.unlink()
    return rows


# --------------------------------------------------------------------------- classifiers
def classifier_runs(data: Path, tmp: Path) -> dict:
    from streamfit.solve.shrink import shrink_weights
    from internals import iter_examples
    folder = fashion_corpus(data)
    stats_dir = tmp / "fashion-stats"
    accumulate_into(stats_dir, [folder / "train.parquet"], overwrite=True)
    stats = load_stats(stats_dir)
    heldout = iter_examples([folder / "valid.parquet"], task=stats.task, window=0,
                            n_classes=stats.n_classes, n_features=stats.n_features)
    full = streamfit.finalize(stats, tmp / "fashion.npy", form="calibrated", heldout=heldout)
    rows = []
    for q in (None, "float16", "int8"):
        if q is not None:
            shrink_weights(tmp / "fashion.npy", tmp / f"fashion-{q}.npy", quantize=q)
        path = tmp / ("fashion.npy" if q is None else f"fashion-{q}.npy")
        res = evaluate(load_model(path), [folder / "test.parquet"])
        meta = json.loads(Path(str(path).replace(".npy", ".model.json")).read_text())
        rows.append({"values": q or "float32", "bytes": int(sum(e["size"] for e in meta["arrays"].values())),
                     "accuracy": res["accuracy"], "cross_entropy": res["cross_entropy"], "n": res["n"]})
        log(f"  fashion {rows[-1]['values']}: accuracy {res['accuracy']:.4f}, {rows[-1]['bytes'] / 1e6:.2f} MB")
    return {"name": "fashion", "features": stats.n_features, "classes": stats.n_classes,
            "rows": rows, "form": full.meta["form"]}


def bench(name: str, args, tmp: Path) -> dict:
    folder = corpus(name, Path(args.data))
    meta = corpus_meta(folder)
    orders = QUICK_ORDERS if args.quick else ORDERS
    res = {"name": name, "vocab_size": meta["vocab_size"], "tokens": meta["tokens"],
           "orders": list(orders), "ngram": {}, "lite": []}
    for order in orders:
        run = ngram_runs(folder, tmp, order)
        run.pop("stats_dir")
        res["ngram"][str(order)] = run
        res["lite"] += lite_runs(folder, tmp, order)
    if args.kenlm and (Path(args.kenlm) / "lmplz").exists():
        res["kenlm"] = kenlm_runs(Path(args.kenlm), folder, tmp, orders)
    elif args.kenlm:
        log(f"{args.kenlm}: no lmplz there; KenLM skipped")
    if name == "gcide" and not args.no_classifier:
        res["classifier"] = classifier_runs(Path(args.data), tmp)
    return res


# --------------------------------------------------------------------------- the page
def family(row: dict) -> str:
    if row["form"] == "blocks":
        return "streamfit blocks"
    if row.get("prune_count"):
        return "streamfit KN, pruned by count"
    if row.get("prune_entropy"):
        return "streamfit KN, pruned by relative entropy"
    return "streamfit KN, all n-grams"


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (matplotlib.ticker below)
    orders = res["orders"]
    fig, axes = plt.subplots(1, len(orders), figsize=(6.0 * len(orders), 4.6), squeeze=False)
    styles = {"streamfit KN, all n-grams": "o", "streamfit KN, pruned by count": "s",
              "streamfit KN, pruned by relative entropy": "D", "streamfit blocks": "*"}
    for ax, order in zip(axes[0], orders):
        rows = res["ngram"][str(order)]["rows"]
        for fam, marker in styles.items():
            pts = sorted((r["bytes"] / 1e6, r["perplexity"]) for r in rows if family(r) == fam)
            if pts:
                ax.plot(*zip(*pts), marker, label=fam, alpha=0.8)
        k = [r for r in res.get("kenlm", []) if r["order"] == order]
        if k:
            ax.plot([r["bytes"] / 1e6 for r in k], [r["perplexity"] for r in k], "^", color="k",
                    label="KenLM (probing, trie, trie -q 8 -b 8; pruned)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("model size on disk (MB, log scale)")
        ax.set_ylabel("test perplexity (</s> left out)")
        ax.set_title(f"{res['name']}, order {order}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (size, perplexity) points no other point beats in both."""
    out, best = [], math.inf
    for size, ppl in sorted(points):
        if ppl < best:
            out.append((size, ppl))
            best = ppl
    return out


def best_at(rows: list[dict], size: float) -> dict | None:
    """The streamfit row of lowest perplexity at most `size` bytes."""
    fit = [r for r in rows if r["bytes"] <= size]
    return min(fit, key=lambda r: r["perplexity"]) if fit else None


def targets(res: dict) -> list[str]:
    lines = [f"### {res['name']}", "", "| target | measured | met |", "|---|---|---|"]
    yes = lambda ok: "yes" if ok else "**no**"
    for order in res["orders"]:
        rows = res["ngram"][str(order)]["rows"]
        for k in (r for r in res.get("kenlm", []) if r["order"] == order and r["binary"] != "probing"):
            ours = best_at(rows, k["bytes"])
            what = f"KenLM {k['binary']}" + (f", --prune {k['prune']}" if k["prune"] else "")
            if ours is None:
                lines.append(f"| order {order}: at ≤ {k['bytes'] / 1e6:.2f} MB ({what}) a lower "
                             f"perplexity than KenLM's {k['perplexity']:.2f} | no streamfit model "
                             f"that small | **no** |")
                continue
            lines.append(f"| order {order}: at ≤ {k['bytes'] / 1e6:.2f} MB ({what}) a lower "
                         f"perplexity than KenLM's {k['perplexity']:.2f} | {ours['perplexity']:.2f} "
                         f"({ours['form']} {ours['label']}, {ours['bytes'] / 1e6:.2f} MB) | "
                         f"{yes(ours['perplexity'] < k['perplexity'])} |")
    for r in res["lite"]:
        lines.append(f"| lite scorer, order {r['order']} {r['form']} {r['label']}: RSS beyond the "
                     f"mapped pages ≤ 40 MiB | {r['rss_anon_kib'] / 1024:.1f} MiB | "
                     f"{yes(r['rss_anon_kib'] <= 40 * 1024)} |")
        lines.append(f"| lite scorer, same model: import and open ≤ 0.3 s | {r['open_s']:.3f} s "
                     f"(of which importing numpy {r['numpy_import_s']:.3f} s) | "
                     f"{yes(r['open_s'] <= 0.3)} |")
        lines.append(f"| lite scorer imports no numba, pyarrow, scipy, tqdm | "
                     f"{', '.join(r['heavy_modules']) or 'none imported'} | {yes(not r['heavy_modules'])} |")
    return lines + [""]


def table(res: dict, order: int) -> list[str]:
    lines = ["| model | values | size MB | n-grams kept | test ppl | with </s> | finalize s |",
             "|---|---|---|---|---|---|---|"]
    rows = sorted(res["ngram"][str(order)]["rows"], key=lambda r: (r["form"], -r["bytes"]))
    front = set(frontier([(r["bytes"], r["perplexity"]) for r in rows]))
    for r in rows:
        name = ("blocks" if r["form"] == "blocks" else "Kneser-Ney") + \
            ("" if r["compact"] else ", hash tables (default finalize)")
        prune = [f"count < {r['prune_count']}"] if r.get("prune_count") else []
        prune += [f"entropy < {r['prune_entropy']:g}"] if r.get("prune_entropy") else []
        if prune:
            name += ", pruned " + " and ".join(prune)
        mark = "**" if (r["bytes"], r["perplexity"]) in front else ""
        lines.append(f"| {name} | {r.get('quantize', 'float64')} | {r['bytes'] / 1e6:.2f} | "
                     f"{r['ngrams']:,} | " if "ngrams" in r else
                     f"| {name} | {r.get('quantize', 'float64')} | {r['bytes'] / 1e6:.2f} | all | ")
        lines[-1] += (f"{mark}{r['perplexity']:.2f}{mark} | {r['perplexity_with_eos']:.2f} | "
                      f"{r['finalize_s']:.1f} |")
    for k in (r for r in res.get("kenlm", []) if r["order"] == order):
        prune = f" --prune 0 {k['prune']}…" if k["prune"] else ""
        lines.append(f"| KenLM lmplz{prune}"
                     f" + build_binary {k['binary']} | | {k['bytes'] / 1e6:.2f} | | "
                     f"{k['perplexity']:.2f} | {k['perplexity_with_eos']:.2f} | |")
    return lines


def lite_table(res: dict) -> list[str]:
    lines = ["| model | size MB | import + open s (numpy's import) | whole process s | RssAnon MiB (numpy alone) | "
             "RssFile MiB (model pages, python, numpy) | top-10 p50 ms | p99 ms | score a document, tokens/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["lite"]:
        lines.append(f"| order {r['order']} {r['form']} {r['label']} | {r['bytes'] / 1e6:.2f} | "
                     f"{r['open_s']:.3f} ({r['numpy_import_s']:.3f}) | {r['process_s']:.2f} | "
                     f"{r['rss_anon_kib'] / 1024:.1f} "
                     f"({r['numpy_process_rss_anon_kib'] / 1024:.1f}) | {r['rss_file_kib'] / 1024:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['score_tokens'] / r['score_s']:,.0f} |")
    return lines


def classifier_table(c: dict) -> list[str]:
    lines = [f"Fashion-MNIST ({c['features']} pixels, {c['classes']} classes), the {c['form']} "
             f"explicit solution, dense; `streamfit shrink` copies:", "",
             "| values | size MB | test accuracy | test cross-entropy |", "|---|---|---|---|"]
    for r in c["rows"]:
        lines.append(f"| {r['values']} | {r['bytes'] / 1e6:.3f} | {r['accuracy']:.4f} | "
                     f"{r['cross_entropy']:.4f} |")
    return lines


def page_lines(results: dict, meta: dict) -> list[str]:
    m = meta["machine"]
    lines = ["# Small models: perplexity against size, and a numpy-only scorer", "",
             f"Generated by `{meta['command']}` on {meta['date']} ({m['cpu']}, {m['cpu_count']} "
             f"cores shared with other work, load average {meta['load_start']:.1f} at the start; "
             f"numpy {m['numpy']}, numba {m['numba']}). Every figure below comes from that run.", "",
             "Each n-gram model below comes from one `streamfit accumulate --order N --eos` and "
             "one `streamfit finalize` with the options named (`--compact`, `--quantize`, "
             "`--prune-count K`, `--prune-entropy θ`; the block model with `--heldout valid`). "
             "Pruning folds the removed mass into the back-off weight and every context's log Z "
             "is computed for the values as stored, so every model is exactly normalised "
             "(tests/test_small.py checks the sum over the vocabulary for every context). Test "
             "perplexity leaves the end token's predictions out, as KenLM's `</s>` is left out "
             "of its figure, so both score the same positions; size is the model's arrays on "
             "disk (KenLM: its binary file). Bold: no other streamfit model of the table is "
             "both smaller and better.", "", "## Targets", ""]
    for res in results.values():
        lines += targets(res)
    for res in results.values():
        lines += [f"## {res['name']}", "",
                  f"Vocabulary {res['vocab_size']:,}; tokens train / valid / test "
                  f"{res['tokens']['train']:,} / {res['tokens']['valid']:,} / "
                  f"{res['tokens']['test']:,}.", "", f"![{res['name']}](small-{res['name']}.png)", ""]
        for order in res["orders"]:
            lines += [f"### order {order}", "", *table(res, order), ""]
        if not res.get("kenlm"):
            lines += ["KenLM was not run for this page (no `--kenlm DIR`).", ""]
        lines += ["### the numpy-only scorer", "",
                  "`streamfit.lite` in a fresh process per model: import it and open the model "
                  f"(memory maps), then {res['lite'][0]['queries']:,} next-token top-10 queries "
                  "on contexts drawn from test, then one document scored. RssAnon is the "
                  "process's memory that is not file-backed — what the scorer costs beyond the "
                  "model's mapped pages; in brackets, a process that imports numpy and nothing "
                  "else.", "", *lite_table(res), ""]
        if res.get("classifier"):
            lines += ["### classifier weights", "", *classifier_table(res["classifier"]), ""]
    return lines


def render(saved: dict, out_dir: Path, *, plots: bool = True) -> Path:
    figures = [(plot, res, f"small-{n}.png") for n, res in saved["results"].items()] if plots else []
    return write_page(out_dir, "small.md", page_lines(saved["results"], saved["meta"]), figures)


def options(ap) -> None:
    ap.add_argument("--kenlm", metavar="DIR",
                    help="folder of KenLM's lmplz, build_binary and query (skipped when absent)")
    ap.add_argument("--no-classifier", action="store_true",
                    help="skip the Fashion-MNIST weights (built from the Debian package when absent)")


def main(argv: list[str] | None = None) -> int:
    return page_main(argv, __doc__.split("\n\n")[0], "bench_small.py", "small", datasets=DATASETS,
                     quick="order 2 only", render=render, run=bench, options=options)


if __name__ == "__main__":
    sys.exit(main())
