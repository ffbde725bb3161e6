"""The `streamfit` command: a thin layer over the Python API.

    streamfit accumulate corpus/*.parquet          # statistics into ./streamfit-stats
    streamfit finalize --out weights.npy           # explicit solution from ./streamfit-stats
    streamfit evaluate --weights weights.npy test/*.parquet --json
    streamfit predict --weights weights.npy --context "def __init__ ( self"
    streamfit grow train/*.parquet --validation valid/*.parquet --out grown.npy
    streamfit merge statsA statsB --out stats
    streamfit info weights.npy
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

from . import __version__
from .defaults import (CHECKPOINT_SECONDS, DEFAULT_BATCH_ROWS, DEFAULT_MEMORY, DEFAULT_SMOOTHING, ENCODINGS,
                       FORMS, INSTALL_HINT, MERGE_FAN_IN, MIN_UNITS, NGRAM_FORMS, PHASE_METHODS,
                       SUBSPACE_METHODS, UNIT_VALUES, SubspaceOptions)
from .errors import StreamfitError

# The stages are imported inside the commands that use them: `--help`, and a bad option
# refused, load neither numba nor pyarrow, scipy or Dask (tests/test_structure.py).


def _distributed():
    """streamfit.distributed, imported when a command runs on Dask."""
    from . import distributed

    return distributed


def _ngram_models() -> tuple:
    from .model.compact import CompactNgramModel
    from .model.ngram import NgramModel

    return NgramModel, CompactNgramModel


DEFAULT_STATS = "streamfit-stats"
DEFAULT_FORM = "calibrated"
# refine methods whose full passes run on Dask (auto's one moments pass runs in this process)
DASK_METHODS = ("auto", "gis", "lbfgs", "newton")


def _column_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input columns")
    g.add_argument("--column", default="tokens", help="token column of a token corpus (default: tokens)")
    g.add_argument("--label", default="label", help="label column of a feature corpus (default: label)")
    g.add_argument("--features", default="features",
                   help="dense list<float> feature column (default: features; a corpus without "
                        "it is read as sparse --indices/--values)")
    g.add_argument("--indices", default="indices", help="sparse feature index column (default: indices)")
    g.add_argument("--values", default="values", help="sparse feature value column (default: values)")
    g.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS, metavar="N",
                   help=f"rows per record batch read (default: {DEFAULT_BATCH_ROWS})")


def _columns(args) -> dict:
    text = {"text_column": args.text_column, "tokenizer": args.tokenizer} \
        if getattr(args, "text_column", None) or getattr(args, "tokenizer", None) else {}
    return dict(column=args.column, label=args.label, features=args.features,
                indices=args.indices, values=args.values, **text)


def _text_options(p: argparse.ArgumentParser, context: bool = False) -> None:
    g = p.add_argument_group("text input (language models)")
    g.add_argument("--text-column", metavar="NAME",
                   help="read this string column of the Parquet data as text, tokenized batch "
                        "by batch with --tokenizer (instead of a token column)")
    g.add_argument("--tokenizer", metavar="FILE",
                   help="the tokenizer.json of `streamfit tokenize` (or a Hugging Face "
                        "tokenizer.json) the model's training data was tokenized with"
                        + ("; with --context, the context is tokenized with it and the "
                           "predictions printed as text" if context else ""))


def _progress(args) -> bool:
    return not args.quiet


def _dask_options(p: argparse.ArgumentParser, what: str):
    g = p.add_argument_group(f"distributed (Dask; needs {INSTALL_HINT})", what)
    x = g.add_mutually_exclusive_group()
    x.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask distributed cluster whose scheduler is at ADDRESS "
                        "(e.g. tcp://10.0.0.5:8786); every path must name the same file on "
                        "every worker and here (shared storage)")
    x.add_argument("--dask-workers", type=int, metavar="N",
                   help="run on a local Dask cluster of N worker processes on this machine")
    return g


def _unit_option(g) -> None:
    g.add_argument("--unit-values", type=int, metavar="N",
                   help="with Dask: each task reads consecutive row groups until it has N "
                        f"values (tokens, or feature values) (default: {UNIT_VALUES:,}, or "
                        f"fewer so that a small corpus still makes {MIN_UNITS} tasks)")


def _on_dask(args) -> bool:
    return args.scheduler is not None or args.dask_workers is not None


def _cluster(args):
    return _distributed().cluster(scheduler=args.scheduler, workers=args.dask_workers)


def cmd_accumulate(args) -> int:
    from .count.out_of_core import accumulate_into, parse_size
    from .io.memory import bound_retained_memory  # freed memory returned: RSS within --memory

    sizes = dict(vocab_size=args.vocab_size, n_classes=args.classes, n_features=args.n_features)
    if args.encoding is not None:
        sizes["encoding"] = args.encoding
    if args.eos and args.order is None:
        raise StreamfitError("--eos goes with n-gram statistics: pass --order N too")
    if args.order is not None:
        if args.order < 1:  # 0 would mean "no n-grams" inside: the window model, silently
            raise StreamfitError(f"--order must be at least 1, not {args.order}")
        if args.window is not None:
            raise StreamfitError("--order N counts n-grams, --window M the window model: "
                                 "pass one of them")
        sizes.update(order=args.order, eos=args.eos)
    if _on_dask(args):
        if args.order is not None:
            raise StreamfitError("n-gram statistics (--order) are counted on this machine "
                                 "(--jobs N); not yet with Dask")
        if args.jobs != 1:
            raise StreamfitError("--jobs is for processes on this machine; with Dask the "
                                 "workers are the processes (use --dask-workers N)")
        with _cluster(args) as client:
            summary = _distributed().accumulate_distributed(
                client, args.stats, args.paths, task=args.task, window=args.window,
                overwrite=args.overwrite, memory=parse_size(args.memory), shards=args.shards,
                temp=args.temp, batch_rows=args.batch_rows, unit_values=args.unit_values,
                progress=_progress(args), **sizes, **_columns(args))
    else:
        for given, option in ((args.shards, "--shards"), (args.unit_values, "--unit-values")):
            if given is not None:
                raise StreamfitError(f"{option} is for a Dask run (--scheduler or --dask-workers)")
        bound_retained_memory()
        summary = accumulate_into(args.stats, args.paths, task=args.task, window=args.window,
                                  overwrite=args.overwrite, memory=parse_size(args.memory),
                                  temp=args.temp, jobs=args.jobs, batch_rows=args.batch_rows,
                                  checkpoint_seconds=args.checkpoint,
                                  progress=_progress(args), **sizes, **_columns(args))
    if summary["unchanged"]:
        print(f"{args.stats}: every row group of these files is already counted; nothing to add")
        return 0
    what = "tokens" if summary["task"] == "lm" else "rows"
    if summary.get("order"):
        print(f"{args.stats}: order-{summary['order']} n-gram statistics, "
              f"{summary['n_examples']:,} predictions, {summary['nnz']:,} distinct n-grams, "
              f"vocabulary {summary['n_classes']:,}"
              + (" (resumed an interrupted run)" if summary["resumed"] else ""))
        return 0
    print(f"{args.stats}: {summary['task']} statistics, {summary['n_examples']:,} {what}, "
          f"{summary['n_features']:,} features × {summary['n_classes']:,} classes, "
          f"{summary['nnz']:,} non-zeros"
          + (f", {summary['empty_rows']:,} all-zero rows skipped" if summary["empty_rows"] else "")
          + (" (resumed an interrupted run)" if summary["resumed"] else ""))
    return 0


def _smoothing(text: str) -> float | str:
    """'auto' or a positive finite number; anything else is refused before any work."""
    if text == "auto":
        return text
    try:
        a = float(text)
    except ValueError:
        a = math.nan
    if not (a > 0 and math.isfinite(a)):
        raise StreamfitError(f"--smoothing must be a positive number or 'auto', not {text!r}")
    return a


def cmd_finalize_ngram(args, stats) -> int:
    from .count.stats import read_manifest
    from .io.files import sidecar_path
    from .solve.ngram import finalize_ngram, token_batches

    form = args.form or ("blocks" if args.heldout else "kneser-ney")
    if form not in NGRAM_FORMS:
        raise StreamfitError(f"{args.stats} holds n-gram statistics: --form kneser-ney or "
                             f"blocks, not {form}")
    if args.cache and _small(args):
        raise StreamfitError("--cache is for the full n-gram model (evaluate, score, predict); "
                             "the compact format (--compact, --prune-*, --quantize) has no cache")
    if args.cache and not args.heldout:
        raise StreamfitError("--cache fits its weights on held-out data: pass --heldout PATHS")
    heldout = token_batches(args.heldout, vocab_size=stats.n_classes, column=args.column,
                            batch_rows=args.batch_rows, progress=_progress(args),
                            text_column=args.text_column, tokenizer=args.tokenizer) \
        if args.heldout else None
    source = {"path": str(Path(args.stats).resolve()),
              "checksum": read_manifest(args.stats)["checksum"]}
    if _small(args):
        from .solve.shrink import finalize_small
        model = finalize_small(stats, args.out, form=form, heldout=heldout, source=source,
                               prune_count=args.prune_count or 0,
                               prune_entropy=args.prune_entropy or 0.0, quantize=args.quantize)
    else:
        model = finalize_ngram(stats, args.out, form=form, heldout=heldout, source=source,
                               cache=args.cache)
    m = model.meta
    fit = m.get("fit")
    print(f"{sidecar_path(args.out)}: order-{model.order} {form} model"
          + (f" (compact, {m['quantize']})" if _small(args) else "")
          + f", {model.nbytes / 2**20:.1f} MiB"
          + (f"; pruned to {sum(m['pruned']['ngrams']):,} of {sum(m['pruned']['ngrams_before']):,} "
             f"n-grams" if "pruned" in m else "")
          + (f"; held-out perplexity {math.exp(fit['cross_entropy_kneser_ney']):.2f} "
             f"(Kneser-Ney) → {math.exp(fit['cross_entropy']):.2f} over {fit['positions']:,} "
             f"predictions" if fit else "")
          + (f"; with the document cache {math.exp(m['cache']['cross_entropy_without']):.2f} → "
             f"{math.exp(m['cache']['cross_entropy']):.2f}" if "cache" in m else ""))
    return 0


def _small(args) -> bool:
    """A compact n-gram model asked for (finalize's size options)."""
    return bool(args.compact or args.prune_count or args.prune_entropy or args.quantize)


def cmd_finalize(args) -> int:
    from .count.stats import load, read_manifest

    stats = load(args.stats)
    if stats.order:  # before the imports below: an n-gram finalize needs none of them
        return cmd_finalize_ngram(args, stats)
    from .model.evaluate import iter_examples
    from .model.weights import sidecar_path
    from .solve.explicit import finalize
    if _small(args):
        raise StreamfitError("--compact, --prune-count, --prune-entropy and --quantize are for "
                             "n-gram statistics (accumulate --order N); weights files shrink "
                             "with `streamfit shrink`")
    if args.cache:
        raise StreamfitError("--cache is for n-gram statistics (accumulate --order N)")
    if args.form in NGRAM_FORMS:
        raise StreamfitError(f"--form {args.form} needs n-gram statistics: accumulate with "
                             f"--order N")
    calibrate_on = args.heldout
    if args.form is None:
        args.form = DEFAULT_FORM if args.heldout else "conditional"
        if not args.heldout and stats.task == "classify":
            # features: τ and β (two numbers, the smoothing kept) fitted on the training
            # rows, so that the default model's probabilities mean something
            calibrate_on = training_files(stats)
            if calibrate_on:
                args.form = "calibrated"
            else:
                print("streamfit finalize: the training files of these statistics are gone or "
                      "changed: the conditional form (pass --heldout to calibrate)",
                      file=sys.stderr)
    smoothing = _smoothing(args.smoothing)
    heldout = None
    if calibrate_on:
        heldout = iter_examples(calibrate_on, task=stats.task, window=stats.window,
                                n_classes=stats.n_classes, n_features=stats.n_features,
                                encoding=stats.encoding,
                                progress=_progress(args), desc="calibrate", **_columns(args))
    if args.form == "calibrated" and heldout is None:
        raise StreamfitError("--form calibrated fits on held-out data: pass --heldout PATHS "
                             "(or choose --form conditional / paper)")
    if smoothing == "auto" and heldout is None:
        raise StreamfitError("--smoothing auto chooses on held-out data: pass --heldout PATHS")
    source = {"path": str(Path(args.stats).resolve()),
              "checksum": read_manifest(args.stats)["checksum"]}
    on_training = heldout is not None and not args.heldout
    model = finalize(stats, args.out, form=args.form, smoothing=smoothing, heldout=heldout,
                     layout=args.format, dtype=args.dtype, source=source,
                     calibrated_on="training rows" if on_training else "heldout")
    m = model.meta
    print(f"{sidecar_path(args.out)}: {m['form']} explicit solution"
          f"{' (tau, beta fitted on the training rows: no --heldout)' if on_training else ''}, "
          f"{args.format} {args.dtype}, {model.n_features:,} × {model.n_classes:,}, smoothing "
          f"{m['smoothing']:g}, tau {m['tau']:.4g}, beta {m['beta']:.4g}")
    return 0


def training_files(stats) -> list[str] | None:
    """The files statistics were accumulated from, if every one is still there with its
    recorded size; else None."""
    paths = [s["path"] for s in stats.sources]
    if not paths or not all(Path(p).is_file() and Path(p).stat().st_size == s["size"]
                            for p, s in zip(paths, stats.sources)):
        return None
    return paths


def _top_k(args) -> None:
    if args.top_k < 1:
        raise StreamfitError(f"--top-k must be at least 1, not {args.top_k}")


def cmd_evaluate(args) -> int:
    from .model.evaluate import evaluate
    from .model.weights import load_model

    _top_k(args)
    model = load_model(args.weights, check=args.verify)
    if isinstance(model, _ngram_models()):
        if _on_dask(args):
            raise StreamfitError("n-gram models evaluate on this machine (at lookup speed), "
                                 "not on Dask")
        result = evaluate(model, args.paths, progress=_progress(args),
                          batch_rows=args.batch_rows, **_columns(args))
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['n']:,} tokens: cross-entropy {result['cross_entropy']:.4f} nats, "
                  f"perplexity {result['perplexity']:.2f}"
                  + (f" ({result['perplexity_with_eos']:.2f} with the end token's "
                     f"{result['n_with_eos'] - result['n']:,} predictions)" if model.eos else ""))
        return 0
    if _on_dask(args):
        with _cluster(args) as client:
            result = _distributed().evaluate_distributed(client, args.weights, args.paths, top_k=args.top_k,
                                          progress=_progress(args), batch_rows=args.batch_rows,
                                          unit_values=args.unit_values, **_columns(args))
    else:
        result = evaluate(model, args.paths, top_k=args.top_k, progress=_progress(args),
                          batch_rows=args.batch_rows, **_columns(args))
    if args.json:
        print(json.dumps(result))
    else:
        what = "tokens" if model.task == "lm" else "examples"
        print(f"{result['n']:,} {what}: cross-entropy {result['cross_entropy']:.4f} nats, "
              f"perplexity {result['perplexity']:.2f}, accuracy {result['accuracy']:.4f}, "
              f"top-{args.top_k} accuracy {result[f'top{args.top_k}_accuracy']:.4f}")
    return 0


def _read_vocab(path: str | None) -> list[str] | None:
    return None if path is None else Path(path).read_text(encoding="utf-8").splitlines()


def cmd_predict(args) -> int:
    from .model.evaluate import predict
    from .model.weights import load_model

    _top_k(args)
    model = load_model(args.weights, check=args.verify)
    if args.context is not None:
        if model.task != "lm":
            raise StreamfitError("--context is for language models; pass Parquet paths instead")
        vocab = _read_vocab(args.vocab)
        ids = {t: i for i, t in enumerate(vocab)} if vocab else None
        context = []
        if args.tokenizer is not None:
            from .data.tokenize import tokenizer_at

            if args.vocab is not None:
                raise StreamfitError("--tokenizer maps text to ids and back; --vocab is not needed")
            tok = tokenizer_at(args.tokenizer)
            if tok.vocab_size != model.vocab_size:
                raise StreamfitError(f"the tokenizer has {tok.vocab_size:,} ids, the model a "
                                     f"vocabulary of {model.vocab_size:,}: not the tokenizer it "
                                     f"was trained with")
            context = tok.encode(args.context).tolist()
            vocab = tok.vocab
        for word in ([] if args.tokenizer is not None else args.context.split()):
            if ids is not None:
                context.append(ids.get(word, ids.get(args.unknown, 0)))
            elif word.lstrip("-").isdigit():
                context.append(int(word))
            else:
                raise StreamfitError(f"context word {word!r} is not a token id: pass --vocab FILE "
                                     f"to map words to ids")
        examples = [context] if isinstance(model, _ngram_models()) else model.context_examples([context])
        top, probs = model.top_k(examples, args.top_k)
        rows = [{"id": int(c), "probability": float(p),
                 **({"token": vocab[c]} if vocab and c < len(vocab) else {})}
                for c, p in zip(top[0], probs[0]) if c >= 0]  # -1: fewer classes than --top-k
        if args.json:
            print(json.dumps({"context": context, "top": rows}))
        else:
            for r in rows:
                print(f"{r['probability']:.4f}  {r.get('token', r['id'])}")
        return 0
    if not args.paths or args.out is None:
        raise StreamfitError("predict needs --context TEXT, or Parquet PATHS and --out FILE")
    if isinstance(model, _ngram_models()):
        raise StreamfitError("n-gram models predict for a --context; per-token predictions "
                             "of Parquet data are not written for them yet")
    n = predict(model, args.paths, args.out, top_k=args.top_k, progress=_progress(args),
                batch_rows=args.batch_rows, **_columns(args))
    print(f"{args.out}: top-{args.top_k} predictions for {n:,} examples")
    return 0


def cmd_refine_ngram(args, model: "NgramModel") -> int:  # noqa: F821
    """refine on an n-gram model: the maximum-entropy n-gram model over its statistics."""
    from .count.stats import load, read_manifest
    from .model.weights import sidecar_path
    from .solve.ngram import token_batches

    from tqdm.auto import tqdm

    from .train.ngram import L2_CANDIDATES, MAX_ITER, refine_ngram
    if args.method not in ("auto", "lbfgs"):
        raise StreamfitError(f"an n-gram model refines by L-BFGS on its sparse support "
                             f"(--method auto or lbfgs), not {args.method}")
    if model.meta.get("form") not in NGRAM_FORMS:
        raise StreamfitError(f"{args.weights}: a {model.meta.get('form')} model; refine the "
                             f"kneser-ney or blocks model it came from")
    if not args.heldout:
        raise StreamfitError("refining an n-gram model chooses its L2 and keeps its best "
                             "iteration on held-out data: pass --heldout PATHS")
    if _on_dask(args) or args.init != "weights":
        raise StreamfitError("an n-gram model refines in this process from its own weights "
                             "(no --init, --scheduler or --dask-workers)")
    if len(args.paths) != 1 or not Path(args.paths[0]).is_dir():
        raise StreamfitError("an n-gram model refines over its training counts: pass the "
                             "statistics directory it was finalized from as PATHS")
    stats = load(args.paths[0])
    source = model.meta.get("source", {})
    checksum = read_manifest(args.paths[0])["checksum"]
    if (stats.order, stats.eos, stats.n_classes) != (model.order, model.eos, model.vocab_size) \
            or source.get("checksum", checksum) != checksum:
        raise StreamfitError(f"{args.paths[0]}: not the statistics {args.weights} was "
                             f"finalized from ({source.get('path', 'unknown')})")
    heldout = token_batches(args.heldout, vocab_size=stats.n_classes, column=args.column,
                            batch_rows=args.batch_rows, progress=_progress(args), desc="held-out")
    passes = MAX_ITER if args.passes is None else args.passes
    l2s = [args.l2] if args.l2 is not None else list(L2_CANDIDATES)
    with tqdm(total=passes * len(l2s), unit="pass", desc="refine n-gram",
              disable=None if _progress(args) else True) as bar:
        def on_iteration(entry: dict) -> None:
            bar.update(1)
            bar.set_postfix(heldout_ppl=f"{math.exp(entry['heldout']):.2f}", refresh=False)
        refined = refine_ngram(stats, model.meta, args.out, heldout=heldout, l2s=l2s,
                               max_iter=passes, on_iteration=on_iteration)
    info = refined.meta["refinement"]
    if args.json:
        print(json.dumps({"out": str(sidecar_path(args.out)), "method": "lbfgs", **info}))
        return 0
    for run in info["runs"]:
        print(f"l2 {run['l2']:g}: {len(run['log'])} iterations, best held-out perplexity "
              f"{math.exp(run['heldout']):.2f} at iteration {run['kept_iteration']}")
    print(f"{sidecar_path(args.out)}: order-{refined.order} maximum-entropy model, "
          f"{info['entries']:,} entries; held-out perplexity "
          f"{math.exp(info['heldout_start']):.2f} → {math.exp(info['heldout']):.2f} "
          f"(l2 {info['l2']:g}, iteration {info['kept_iteration']} kept)")
    return 0


def cmd_refine(args) -> int:
    from .io.parquet import resolve_paths
    from .model.evaluate import iter_examples
    from .model.ngram import NgramModel
    from .model.weights import load_model, sidecar_path

    from tqdm.auto import tqdm

    from .train.refine import refine

    model = load_model(args.weights, check=True)  # read whole: verified
    if isinstance(model, NgramModel):
        return cmd_refine_ngram(args, model)
    if args.passes is None:
        args.passes = 5
    common = dict(task=model.task, window=model.window, n_classes=model.n_classes,
                  n_features=model.n_features, encoding=model.encoding,
                  batch_rows=args.batch_rows, **_columns(args))
    files = resolve_paths(args.paths)
    held = resolve_paths(args.heldout) if args.heldout else None
    if _on_dask(args) and args.method not in DASK_METHODS:
        raise StreamfitError(f"--scheduler / --dask-workers distribute the full passes of "
                             f"{' and '.join(DASK_METHODS)}; {args.method} takes sequential "
                             f"mini-batch steps in this process")
    with contextlib.ExitStack() as stack, \
            tqdm(total=args.passes, unit="pass", desc=f"refine {args.method}",
                 disable=None if _progress(args) else True) as bar:
        pass_fn = hessian_fn = None
        if _on_dask(args):
            client = stack.enter_context(_cluster(args))
            if args.method == "newton":
                hessian_fn = _distributed().hessian_function(client, files, **common)
            else:
                pass_fn = _distributed().pass_function(client, files, **common)

        def on_pass(entry: dict) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{entry['train_loss']:.4f}", refresh=False)
        refined = refine(model, lambda: iter_examples(files, **common), args.out,
                         method=args.method, passes=args.passes,
                         heldout=(lambda: iter_examples(held, **common)) if held else None,
                         init=args.init, lr=args.lr, batch_size=args.batch_size,
                         l2_relative=args.l2 if args.l2 is not None else "auto",
                         seed=args.seed, resume=not args.restart, on_pass=on_pass,
                         pass_fn=pass_fn, hessian_fn=hessian_fn,
                         subspace=SubspaceOptions(
                             dims=args.dims, compartments=args.compartments,
                             redraw=not args.fixed_basis, workers=args.workers,
                             phase=args.phase, phase_passes=args.phase_passes,
                             snapshot_every=args.snapshot_every, pbfgs_batch=args.pbfgs_batch))
    log = refined.meta["refinement"]["log"]
    if args.json:
        info = refined.meta["refinement"]
        print(json.dumps({"out": str(sidecar_path(args.out)), "method": args.method,
                          **{k: info[k] for k in ("chosen", "l2_chosen", "kept_pass", "start")
                             if k in info},
                          "log": log}))
        return 0
    for e in log:
        held_text = (f", held-out loss {e['heldout_loss']:.4f}, accuracy {e['heldout_accuracy']:.4f}"
                     if "heldout_loss" in e else "")
        print(f"pass {e['pass']:>3}: train loss {e['train_loss']:.4f}, accuracy "
              f"{e['train_accuracy']:.4f}{held_text} ({e['seconds']:.1f} s)")
    info = refined.meta["refinement"]
    if "kept_pass" in info:
        print(f"kept pass {info['kept_pass']} (lowest held-out loss"
              f"{', the start' if info['kept_pass'] == 0 else ''})")
    if "l2_chosen" in info and not info.get("chosen"):
        print(f"l2 {info['l2_chosen']:g} chosen on held-out data")
    picked = f" ({info['chosen']})" if info.get("chosen") else ""
    print(f"{sidecar_path(args.out)}: refined by {args.method}{picked}")
    return 0


def cmd_grow(args) -> int:
    from .io.parquet import resolve_paths
    from .model.evaluate import iter_examples
    from .model.weights import load_model, sidecar_path

    from tqdm.auto import tqdm

    from .count.out_of_core import parse_size
    from .train.grow import data_shape, grow

    files = resolve_paths(args.paths)
    start = load_model(args.weights, check=True) if args.weights else None
    encoding = start.encoding if start is not None else args.encoding
    if start is not None:
        shape = {"task": start.task, "window": start.window, "n_features": start.n_features,
                 "n_classes": start.n_classes}
    else:
        shape = data_shape(files, task=args.task, window=args.window, vocab_size=args.vocab_size,
                           n_classes=args.classes, n_features=args.n_features,
                           progress=_progress(args), batch_rows=args.batch_rows, **_columns(args))
        if encoding == "complement":
            if shape["task"] != "classify":
                raise StreamfitError("--encoding complement is for dense feature corpora")
            shape["n_features"] *= 2
    common = dict(batch_rows=args.batch_rows, encoding=encoding, **shape, **_columns(args))
    held = resolve_paths(args.validation) if args.validation else None
    with contextlib.ExitStack() as stack, \
            tqdm(total=args.max_width, unit="unit", desc="grow",
                 disable=None if _progress(args) else True) as bar:
        def on_step(entry: dict) -> None:
            bar.update(entry.get("added", 0))
            held = "heldout" if "heldout_loss" in entry else "train"
            what = {"tuning": entry["tune"]} if "tune" in entry else \
                {"gain": f"{entry.get('unit_gain', 0):.2g}"}
            bar.set_postfix(width=entry["width"], **what, loss=f"{entry[f'{held}_loss']:.4f}",
                            acc=f"{entry[f'{held}_accuracy']:.4f}", refresh=True)
        pass_fn = None
        if _on_dask(args):
            client = stack.enter_context(_cluster(args))
            pass_fn = _distributed().growth_pass_function(client, files, **common)
        model = grow(lambda: iter_examples(files, **common), args.out, **shape,
                     heldout=(lambda: iter_examples(held, **common)) if held else None,
                     start=start, units_per_step=args.units_per_step, max_width=args.max_width,
                     min_gain=args.min_gain, output_passes=args.output_passes, l2=args.l2,
                     ridge=args.ridge, hidden_moves=args.hidden_moves, on_step=on_step,
                     pass_fn=pass_fn, encoding=encoding, tune_passes=args.tune_passes,
                     tune_step=args.tune_step, cache_bytes=parse_size(args.memory))
    growth = model.meta["growth"]
    if args.json:
        print(json.dumps({"out": str(sidecar_path(args.out)), **growth}))
        return 0
    for e in growth["log"]:
        held_text = (f", held-out loss {e['heldout_loss']:.4f}, accuracy {e['heldout_accuracy']:.4f}"
                     if "heldout_loss" in e else "")
        gain = f", gain {e['unit_gain']:.3g}" if "unit_gain" in e else ""
        gain = f", tuning pass {e['tune']}" if "tune" in e else gain
        print(f"step {e['step']:>3}: width {e['width']:>4}{gain}, train loss {e['train_loss']:.4f}"
              f"{held_text} ({e['passes']} passes, {e['seconds']:.1f} s)")
    print(f"{sidecar_path(args.out)}: 2-layer model, {model.hidden[0].shape[1]} hidden units "
          f"(stopped: {growth['stopped']})")
    return 0


def cmd_merge(args) -> int:
    from .count.out_of_core import merge_into, parse_size
    from .io.memory import bound_retained_memory  # freed memory returned: RSS within --memory

    if _on_dask(args):
        with _cluster(args) as client:
            manifest = _distributed().merge_distributed(client, args.out, args.dirs, memory=parse_size(args.memory))
    else:
        bound_retained_memory()
        manifest = merge_into(args.out, args.dirs, memory=parse_size(args.memory),
                              progress=_progress(args))
    print(f"{args.out}: merged {len(args.dirs)} shards, {manifest['n_examples']:,} examples, "
          f"{manifest['nnz']:,} non-zeros")
    return 0


def _is_parquet(p: Path) -> bool:
    if p.suffix.lower() == ".parquet":
        return True
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


def cmd_shrink(args) -> int:
    from .model.weights import sidecar_path

    from .solve.shrink import shrink_weights
    model = shrink_weights(args.weights, args.out, quantize=args.quantize)
    print(f"{sidecar_path(args.out)}: {args.quantize} weights, {model.n_features:,} × "
          f"{model.n_classes:,}, {sum(a['size'] for a in model.meta['arrays'].values()) / 2**20:.2f} MiB")
    return 0


def cmd_score(args) -> int:
    from .model.score import score

    m = score(args.weights, args.paths, args.out, jobs=args.jobs, id_column=args.id_column,
              max_perplexity=args.max_perplexity, batch_rows=args.batch_rows,
              overwrite=args.overwrite, progress=_progress(args), **_columns(args))
    if args.json:
        print(json.dumps(m))
        return 0
    what = (f"{m['tokens']:,} tokens, {m['tokens_per_second']:,.0f} tokens/s"
            if m["task"] == "lm" else f"{m['rows']:,} rows")
    kept = (f"; {m['kept']:,} with perplexity ≤ {m['max_perplexity']:g} kept"
            if m["max_perplexity"] is not None else "")
    print(f"{args.out}: {m['documents']:,} documents scored ({what}, "
          f"{m['documents_per_second']:,.0f} documents/s on {m['jobs']} process"
          f"{'es' if m['jobs'] > 1 else ''}){kept}")
    return 0


def cmd_tokenize(args) -> int:
    from .data.tokenize import tokenize

    m = tokenize(args.paths, args.out, tokenizer=args.tokenizer, subword=args.subword,
                 vocab_size=args.vocab_size, min_count=args.min_count, lowercase=args.lowercase,
                 lines=args.lines, text_column=args.text_column, pattern=args.glob,
                 max_words=args.max_words, row_group_rows=args.row_group_rows,
                 batch_rows=args.batch_rows, overwrite=args.overwrite, progress=_progress(args))
    print(f"{args.out}: {m['documents']:,} documents, {m['tokens']:,} tokens, vocabulary "
          f"{m['vocab_size']:,} ({m['kind']}), unknown rate {m['unknown_rate']:.4f}"
          + (f"; {m['empty_documents']:,} documents without tokens left out"
             if m["empty_documents"] else ""))
    return 0


def cmd_info(args) -> int:
    from .count.stats import load, read_manifest
    from .model.compact import is_compact_sidecar
    from .model.ngram import is_ngram_sidecar
    from .model.weights import existing_sidecar, load_model, read_sidecar, sidecar_path

    p = Path(args.path)
    if not p.exists() and not sidecar_path(p).exists():
        raise StreamfitError(f"{p}: no such file or directory (info reads a statistics "
                             f"directory or a weights file)")
    if p.is_file() and _is_parquet(p):
        raise StreamfitError(f"{p}: a Parquet data file; info reads a statistics directory "
                             f"or a weights file (.npy / .json)")
    if p.is_dir():
        info = read_manifest(p)
        if args.check:
            load(p, check=True)
        info = {k: v for k, v in info.items() if k not in ("arrays",)} | \
            {"bytes": sum(a["size"] for a in info["arrays"].values())}
    elif is_ngram_sidecar(existing_sidecar(p)) or is_compact_sidecar(existing_sidecar(p)):
        model = load_model(p, check=args.check)
        info = {k: v for k, v in model.meta.items() if k not in ("arrays", "theta")} | \
            {"bytes": sum(a["size"] for a in model.meta["arrays"].values())}
    else:
        info = read_sidecar(p)
        if args.check:
            load_model(p, check=True)
        info = {k: v for k, v in info.items() if k != "arrays"} | \
            {"files": {k: v["file"] for k, v in info["arrays"].items()},
             "bytes": sum(a["size"] for a in info["arrays"].values())}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "sources":
            value = f"{len(value)} files, {sum(len(s['row_groups']) for s in value)} row groups"
        elif key == "refinement" and value and "runs" in value:  # an n-gram model's
            value = (f"maximum entropy over {value['entries']:,} entries, l2 {value['l2']:g}, "
                     f"iteration {value['kept_iteration']} kept, held-out cross-entropy "
                     f"{value['heldout_start']:.4f} → {value['heldout']:.4f}")
        elif key == "cache" and value:  # an n-gram model's document cache
            value = (f"document cache (unigram and bigram), weights fitted on "
                     f"{value['positions']:,} held-out predictions, cross-entropy "
                     f"{value['cross_entropy_without']:.4f} → {value['cross_entropy']:.4f}")
        elif key == "refinement" and value:
            last = value["log"][-1] if value["log"] else {}
            value = (f"{value['method']} from {value.get('from')}, {len(value['log'])} passes, "
                     f"final train loss {last.get('train_loss', float('nan')):.4f}"
                     + (f", held-out {last['heldout_loss']:.4f}" if "heldout_loss" in last else ""))
        elif key == "growth" and value:
            log = value["log"]
            last = log[-1] if log else {}
            kept = next((e for e in log if e["step"] == value.get("kept_step")), last)
            tuned = sum("tune" in e for e in log)
            value = (f"{len(log) - tuned} steps" + (f" and {tuned} tuning passes" if tuned else "")
                     + f", {last.get('passes', 0)} passes, stopped at {value['stopped']}"
                     + (f"; held-out loss {kept['heldout_loss']:.4f}, accuracy "
                        f"{kept['heldout_accuracy']:.4f}" if "heldout_loss" in kept else ""))
        elif key == "hidden":
            value = f"{value['units']} {value['activation']} units"
        elif key == "calibration" and value:
            value = f"{value.get('examples', 0):,} held-out examples, best of {len(value.get('grid', []))}"
        print(f"{key:>18}: {value}")
    if args.check:
        print(f"{'checksums':>18}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamfit",
        description="Softmax models (next-token language models, classifiers) from corpora "
                    "larger than memory: one streaming pass of sufficient statistics, then an "
                    "explicit solution — no backpropagation.",
        epilog="Run `streamfit COMMAND --help` for each command's options.")
    parser.add_argument("--version", action="version", version=f"streamfit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("accumulate", help="stream Parquet files into sufficient statistics",
                       description="Count co-occurrence statistics of Parquet files in one "
                       "streaming pass, within --memory (spilling sorted runs to disk) on --jobs "
                       "processes. Into an existing statistics directory, only row groups not "
                       "yet counted are added (re-running is safe); --overwrite starts over. A "
                       "killed run resumes where its last spill left off when run again.")
    p.add_argument("paths", nargs="+", metavar="PATHS", help="Parquet files, globs or directories")
    p.add_argument("--stats", default=DEFAULT_STATS, metavar="DIR",
                   help=f"statistics directory (default: ./{DEFAULT_STATS})")
    p.add_argument("--task", choices=("lm", "classify"),
                   help="lm: next token from a token column; classify: label from features "
                        "(default: detected from the columns)")
    p.add_argument("--window", type=int, metavar="M",
                   help="lm: how many previous tokens are the context (default: 1, a bigram)")
    p.add_argument("--order", type=int, metavar="N",
                   help="lm: count n-grams of order N instead (each token with its N−1 "
                        "previous tokens as one context), for finalize --form kneser-ney / "
                        "blocks")
    p.add_argument("--eos", action="store_true",
                   help="with --order: an end-of-document token is predicted after each "
                        "document (as KenLM's </s>)")
    p.add_argument("--vocab-size", type=int, metavar="V",
                   help="lm: fix the vocabulary size (default: largest token id + 1)")
    p.add_argument("--classes", type=int, metavar="C",
                   help="classify: fix the number of classes (default: largest label + 1)")
    p.add_argument("--n-features", type=int, metavar="D",
                   help="classify: fix the number of features (default: discovered)")
    p.add_argument("--encoding", choices=ENCODINGS, default=None,
                   help="classify, dense features: normalised (default; each row read as x/Σx) "
                        "or complement (features in [0, 1] read as [x, 1 − x]: the sum is "
                        "constant, so normalising loses nothing — logistic regression with an "
                        "intercept; rows outside [0, 1] are refused). Recorded in the "
                        "statistics and the model: evaluate, predict, refine and grow read "
                        "inputs the same way; adding to statistics keeps theirs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing statistics (and drop an interrupted run's work)")
    p.add_argument("--memory", default=f"{DEFAULT_MEMORY >> 30}G", metavar="SIZE",
                   help="memory budget, e.g. 512M or 4G, or a share of this machine's memory "
                        "(or container limit), e.g. 50%%: statistics beyond it are spilled to "
                        "disk as sorted runs and merged at the end (default: %(default)s)")
    p.add_argument("--temp", metavar="DIR",
                   help="where spilled runs and the resume journal go (default: STATS/.work): "
                        "in a subdirectory of DIR that streamfit creates and removes, leaving "
                        "everything else in DIR alone; an interrupted run resumes when rerun "
                        "with the same --temp")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes, each on its own row groups (default: 1)")
    p.add_argument("--checkpoint", type=float, default=CHECKPOINT_SECONDS, metavar="SECONDS",
                   help="spill and journal at least this often, bounding the work a crash "
                        "loses (default: %(default)s; not with Dask, where a lost row group "
                        "is redone whole)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _column_options(p)
    _text_options(p)
    g = _dask_options(p, "One task per unit of consecutive row groups (--unit-values), each "
                  "counted into its own shard in memory, within --memory (past it, spilling "
                  "to --temp on its worker, default: the worker's temporary directory); the "
                  "shards are merged in a tree on the workers and finally into --stats here. "
                  "A worker lost mid-task is retried by Dask; a rerun after an interruption "
                  "reuses the finished shards.")
    _unit_option(g)
    g.add_argument(
        "--shards", metavar="DIR",
        help="with Dask: directory of the per-unit shards, shared by the workers: they go "
             "in a subdirectory of DIR that streamfit creates and removes once merged "
             "(default: STATS/.shards)")
    p.set_defaults(func=cmd_accumulate)

    p = sub.add_parser("finalize", help="explicit-solution weights from statistics",
                       description="Compute the explicit solution W_ij = log(F_ij + a) − "
                       "log(f_i + a·C), logits = tau·(x̃·W) − beta·log(c_j + a·D), and write it "
                       "block by block to memory-mapped files: OUT (.npy, dense) or "
                       "OUT.S.*.npy (sparse), OUT.bias.npy when beta ≠ 0, and the sidecar "
                       "OUT.model.json. Forms: conditional (tau=1, beta=0: the maximum-likelihood "
                       "bigram), paper (tau=K, beta=K−1, naive-Bayes-like, K = mean input L1 "
                       "norm), calibrated (tau, beta fitted on --heldout data in one pass).")
    p.add_argument("--stats", default=DEFAULT_STATS, metavar="DIR",
                   help=f"statistics directory (default: ./{DEFAULT_STATS})")
    p.add_argument("--out", required=True, metavar="FILE", help="weights file, e.g. weights.npy")
    p.add_argument("--form", choices=FORMS + NGRAM_FORMS, default=None,
                   help=f"which explicit solution (default: {DEFAULT_FORM} with --heldout; "
                        f"without, feature corpora: calibrated with tau and beta fitted on the "
                        f"training rows the statistics name, token corpora: conditional; "
                        f"n-gram statistics: blocks with --heldout, else "
                        f"kneser-ney — interpolated modified Kneser-Ney, and the log-linear "
                        f"model over its levels with τ per level and context-count bucket "
                        f"fitted on every --heldout prediction)")
    p.add_argument("--format", choices=("dense", "sparse"), default="dense",
                   help="dense: one features × classes .npy; sparse: CSR of log1p(F/a), "
                        "nnz-sized, same predictions — for large vocabularies (default: dense)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="stored weight precision (default: float32)")
    p.add_argument("--smoothing", default=None, metavar="A",
                   help=f"additive smoothing a > 0 added to every cell of F (lm: counts), or "
                        f"'auto' to choose it on --heldout data (default: auto with --heldout, "
                        f"else {DEFAULT_SMOOTHING})")
    p.add_argument("--heldout", nargs="+", metavar="PATHS",
                   help="held-out Parquet data for --form calibrated / --smoothing auto")
    p.add_argument("--cache", action="store_true",
                   help="n-gram statistics: add a document cache — each prediction mixed "
                        "with the distribution of the tokens seen so far in its document and "
                        "of those that followed the previous token there, the weights per log2 "
                        "bucket of the tokens seen fitted on --heldout "
                        "(still exactly normalised; evaluate, score and predict then condition "
                        "on the whole document so far: for predict, --context is that "
                        "document; refine keeps it, its weights fitted again)")
    g = p.add_argument_group("small n-gram models (any of these writes the compact format, "
                             "which `streamfit.lite` scores with numpy alone; every context "
                             "stays exactly normalised)")
    g.add_argument("--compact", action="store_true",
                   help="sorted runs and the narrowest index types instead of hash tables "
                        "(same probabilities)")
    g.add_argument("--prune-count", type=int, metavar="K",
                   help="drop n-grams (order ≥ 2) whose adjusted count — the count Kneser-Ney "
                        "discounts — is below K (K = 2: singletons); their mass goes to the "
                        "back-off")
    g.add_argument("--prune-entropy", type=float, metavar="THETA",
                   help="drop n-grams whose removal changes the model by less than THETA in "
                        "relative entropy (Stolcke; e.g. 1e-8 — larger drops more)")
    g.add_argument("--quantize", choices=("float32", "float16", "int8"),
                   help="stored log-probabilities: float32, float16 or int8 (8-bit codes, an "
                        "offset and step per 64 values); default float64")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _column_options(p)
    _text_options(p)
    p.set_defaults(func=cmd_finalize)

    p = sub.add_parser("evaluate", help="cross-entropy, perplexity and accuracy on Parquet data",
                       description="Stream Parquet data through a model: cross-entropy (nats "
                       "per token / example), perplexity, accuracy and top-k accuracy.")
    p.add_argument("--weights", required=True, metavar="FILE", help="weights (.npy or .model.json)")
    p.add_argument("paths", nargs="+", metavar="PATHS", help="Parquet files, globs or directories")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="k of top-k accuracy (default: 5)")
    p.add_argument("--verify", action="store_true",
                   help="check the sha256 of every weights file first (one more read of them)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: cross_entropy, perplexity, accuracy, topK_accuracy, n")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _column_options(p)
    _text_options(p)
    _unit_option(_dask_options(
        p, "One task per unit of consecutive row groups (--unit-values); the sums of the tasks "
           "(loss, correct, top-k, n) are added up: the same figures as one process, up to "
           "float summation order."))
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k next tokens for a context, or predictions for Parquet data",
                       description="With --context: the most probable next tokens after it "
                       "(words mapped through --vocab, one token per line, line number = id). "
                       "With PATHS and --out: a Parquet file of top-k classes and probabilities "
                       "for every example (every token of a token corpus).")
    p.add_argument("--weights", required=True, metavar="FILE", help="weights (.npy or .model.json)")
    p.add_argument("paths", nargs="*", metavar="PATHS", help="Parquet files, globs or directories")
    p.add_argument("--context", metavar="TEXT", help="lm: space-separated context tokens (ids, or words with --vocab)")
    p.add_argument("--vocab", metavar="FILE", help="vocabulary file: one token per line, line number = id")
    p.add_argument("--unknown", default="<unk>", help="vocabulary entry for unknown words (default: <unk>)")
    p.add_argument("--out", metavar="FILE", help="Parquet output for PATHS")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="how many classes (default: 5)")
    p.add_argument("--verify", action="store_true",
                   help="check the sha256 of every weights file first (one more read of them)")
    p.add_argument("--json", action="store_true", help="print JSON (with --context)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _column_options(p)
    _text_options(p, context=True)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("refine", help="improve weights with streaming passes (GIS, L-BFGS, Newton, SGD, Adam, "
                       "random bases, DLDR)",
                       description="Refine a weights file by streaming passes over training "
                       "Parquet data; writes dense weights (logits = x̃·W) with a per-pass log "
                       "in the sidecar. gis: generalised iterative scaling, backprop-free; "
                       "lbfgs: full-batch L-BFGS, one pass per evaluation (the optimum of the "
                       "same model); newton: the whole Hessian summed in each pass, with a line search in "
                       "the same pass (models whose (features × classes)² fits in memory); sgd / adam: "
                       "mini-batch steps; random-bases: mini-batch "
                       "steps along --dims random directions re-drawn every step (never "
                       "stored; --workers processes exchange only their coordinates); dldr: "
                       "--phase-passes of --phase training save snapshots (OUT.dldr.*.npy), "
                       "whose top --dims principal directions P-BFGS then trains for the "
                       "remaining passes. A checkpoint after every pass (OUT.ckpt.*) lets a "
                       "killed run resume when run again. An n-gram model (--weights from "
                       "finalize --form kneser-ney or blocks): PATHS is the statistics directory "
                       "it was finalized from (its counts are the training data), and L-BFGS "
                       "refines one weight per n-gram seen in training plus the block τ kept "
                       "(a maximum-entropy n-gram model, exactly normalised), starting from the "
                       "model itself; --l2 K shrinks each weight by about K pseudo-counts "
                       "(default: 4, 16 and 64 tried), the held-out perplexity is measured "
                       "after every iteration and the best point kept; it writes an n-gram "
                       "model that evaluate and predict read.")
    p.add_argument("--weights", required=True, metavar="FILE", help="weights to start from (.npy or .model.json)")
    p.add_argument("paths", nargs="+", metavar="PATHS",
                   help="training Parquet files, globs or directories (an n-gram model: its "
                        "statistics directory)")
    p.add_argument("--method", default="auto",
                   choices=("auto", "plbfgs", "gis", "lbfgs", "newton", "sgd", "adam",
                            *SUBSPACE_METHODS),
                   help="auto (default; one extra moments pass; it says what it picked): "
                        "plbfgs on classifiers whose per-class curvature blocks fit (up to "
                        "4,096 features), else L-BFGS in coordinates whitened by the feature "
                        "covariance. plbfgs: one whitened Adam pass, then one gradient per pass "
                        "turned into a step by L-BFGS with per-class curvature blocks from a "
                        "sample of 8,192 rows")
    p.add_argument("--passes", type=int, default=None, metavar="N",
                   help="passes over the data (lbfgs: function evaluations) (default: 5; an "
                        "n-gram model: L-BFGS iterations per L2 candidate, default 30)")
    p.add_argument("--out", required=True, metavar="FILE", help="refined weights, e.g. refined.npy")
    p.add_argument("--heldout", nargs="+", metavar="PATHS", help="held-out data, evaluated after every pass")
    p.add_argument("--init", choices=("weights", "zeros", "random"), default="weights",
                   help="start from --weights (default), or from zeros / small random values "
                        "of its shape (the backpropagation baseline)")
    p.add_argument("--lr", type=float,
                   help="sgd / adam / random-bases step size, dldr: of its phase (default: sgd "
                        "300, adam 0.3, random-bases 100); random-bases steps are scaled so "
                        "that their mean is SGD's step at the same --lr")
    p.add_argument("--l2", type=float, default=None, metavar="K",
                   help="L2 strength relative to each feature's variance: ½·K·Σ_i Var(x̃_i)·‖W_i‖², "
                        "K = 1/(C·n) is scikit-learn's C on standardised inputs (all but gis; "
                        "default: 3e-3, the best of 1e-3..1e-2 on three image sets — with --heldout, "
                        "plbfgs (auto on classifiers) chooses 1e-2, 3e-3 or 1e-3 there; 0 for none). "
                        "An n-gram model: ½·(K/n)·‖δ‖² "
                        "over its n-gram weights, about K pseudo-counts of shrinkage (default: "
                        "4, 16, 64 tried, the best on --heldout kept)")
    p.add_argument("--batch-size", type=int, default=256, metavar="B",
                   help="sgd / adam / random-bases mini-batch, dldr: of its phase (default: 256)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of --init random and of the random bases (default: 0)")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint of an earlier run")
    g = p.add_argument_group("random-bases and dldr")
    d = SubspaceOptions()
    g.add_argument("--dims", type=int, default=d.dims, metavar="D",
                   help="random-bases: directions per step; dldr: size of the basis (default: %(default)s)")
    g.add_argument("--compartments", type=int, default=d.compartments, metavar="K",
                   help="random-bases: row blocks of the weights with their own directions, "
                        "--dims split by size (default: %(default)s)")
    g.add_argument("--fixed-basis", action="store_true",
                   help="random-bases: keep the first step's directions instead of new ones every step")
    g.add_argument("--workers", type=int, default=d.workers, metavar="N",
                   help="random-bases: shared-seed worker processes, mini-batch i to worker i mod "
                        "N; they exchange only their coordinates (default: %(default)s)")
    g.add_argument("--phase", choices=PHASE_METHODS, default=d.phase,
                   help="dldr: how the snapshot phase trains (default: %(default)s)")
    g.add_argument("--phase-passes", type=int, default=d.phase_passes, metavar="P",
                   help="dldr: passes of the snapshot phase, counted in --passes (default: half "
                        "of --passes)")
    g.add_argument("--snapshot-every", type=int, default=d.snapshot_every, metavar="K",
                   help="dldr: a snapshot every K mini-batch steps (gis: passes) of the phase, "
                        "plus its start and end (default: %(default)s)")
    g.add_argument("--pbfgs-batch", type=int, default=d.pbfgs_batch, metavar="B",
                   help="dldr: P-BFGS mini-batch size (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the log as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _column_options(p)
    _dask_options(p, "gis, lbfgs and newton: every full pass over PATHS runs on the workers (W, or "
                  "newton's candidate steps, sent once a pass, one task per unit of row groups, the sums "
                  "added); --heldout is evaluated here. The mini-batch methods (sgd, adam, "
                  "random-bases, dldr) are sequential and refuse these options.")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("grow", help="grow hidden units: a 2-layer model, closed-form growth then tuning passes",
                       description="Grow a 2-layer model softmax(W·[h; 1]), h = relu(x̃·A + a₀), "
                       "from no hidden units (or from --weights, a grown model). Each step: one "
                       "streaming pass of covariance statistics, new units in closed form where "
                       "the output layer cannot follow the loss gradient (an expressivity "
                       "bottleneck) and the best move of the existing hidden units, their "
                       "amplitudes chosen in one pass over --validation data, then the output "
                       "layer re-solved by L-BFGS passes on the frozen hidden "
                       "features (convex). Units come in ± pairs. At the last width, "
                       "--tune-passes passes of alternating preconditioned steps of each layer "
                       "given the other (the hidden layer's gradient is the output error sent back through the "
                       "output weights, as in the growth statistics). The model is written after "
                       "every step, so a killed run leaves the last finished step. Inputs are "
                       "limited to 4,096 features (S₂ is features × features). See docs/growth.md.")
    p.add_argument("paths", nargs="+", metavar="PATHS", help="training Parquet files, globs or directories")
    p.add_argument("--out", required=True, metavar="FILE", help="the grown model, e.g. grown.npy")
    p.add_argument("--validation", nargs="+", metavar="PATHS",
                   help="held-out data: chooses each step's amplitude and is logged per step "
                        "(default: the amplitude is chosen on the training data)")
    p.add_argument("--weights", metavar="FILE", help="a grown model to keep growing")
    p.add_argument("--max-width", type=int, default=256, metavar="N",
                   help="stop at this many hidden units (default: %(default)s)")
    p.add_argument("--units-per-step", type=int, default=18, metavar="K",
                   help="units added per step, at most; even (± pairs); a step makes at most "
                        "2 × (classes − 1) (default: %(default)s)")
    p.add_argument("--min-gain", type=float, default=0.0, metavar="G",
                   help="stop growing before --max-width when the new units' first-order gain "
                        "Σλ² (nats) is below G (default: %(default)s)")
    p.add_argument("--tune-passes", type=int, default=10, metavar="T",
                   help="at the last width, passes of alternating preconditioned mini-batch "
                        "steps of the output layer (given the hidden one) and the hidden layer "
                        "(given the output one); with --validation the pass of the best "
                        "held-out accuracy (then loss) is kept; 0: none (default: %(default)s)")
    p.add_argument("--tune-step", type=float, default=0.6, metavar="η",
                   help="the first tuning pass's fraction of the preconditioned "
                        "(curvature-bound) step, decayed linearly to 0 over the passes "
                        "(default: %(default)s)")
    p.add_argument("--memory", default=f"{DEFAULT_MEMORY >> 30}G", metavar="SIZE",
                   help="memory for the training and --validation rows, decoded once and kept "
                        "between passes, and the hidden features the output layer's passes "
                        "reuse, e.g. 512M, 4G or 50%%; past it every pass reads the files again "
                        "(default: %(default)s)")
    p.add_argument("--output-passes", type=int, default=5, metavar="P",
                   help="L-BFGS passes re-solving the output layer after each step (default: %(default)s)")
    p.add_argument("--l2", type=float, default=1e-3,
                   help="L2 strength on the output weights (default: %(default)s)")
    p.add_argument("--ridge", type=float, default=1.0,
                   help="ridge on the input covariance when making new units, relative to its "
                        "mean eigenvalue; 0 is the plain formula (default: %(default)s)")
    p.add_argument("--hidden-moves", type=int, default=0, metavar="H",
                   help="moves of the existing hidden layer per step: the closed-form best move "
                        "Δ_A = −S₂⁻¹M₁ of its weights, amplitude chosen on the held-out data, "
                        "then the output layer re-solved; each after the first costs one pass "
                        "more plus the re-solve; 0 keeps existing units frozen until the "
                        "tuning passes (default: %(default)s)")
    p.add_argument("--task", choices=("lm", "classify"), help="default: detected from the columns")
    p.add_argument("--window", type=int, metavar="M", help="lm: context tokens (default: 1)")
    p.add_argument("--vocab-size", type=int, metavar="V", help="lm: vocabulary size (default: largest id + 1)")
    p.add_argument("--classes", type=int, metavar="C", help="classify: classes (default: largest label + 1)")
    p.add_argument("--n-features", type=int, metavar="D", help="classify: features (default: discovered)")
    p.add_argument("--encoding", choices=ENCODINGS, default="normalised",
                   help="without --weights: how rows are read, as accumulate --encoding "
                        "(default: normalised); with --weights, the start model's")
    p.add_argument("--json", action="store_true", help="print the settings and log as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _dask_options(p, "Every training pass over PATHS (the growth statistics, the output layer's "
                  "L-BFGS passes) runs on the workers, the layers sent once per pass; the "
                  "amplitude search, --validation and the tuning passes (sequential "
                  "mini-batches) run here.")
    _column_options(p)
    p.set_defaults(func=cmd_grow)

    p = sub.add_parser("merge", help="exact merge of statistics shards",
                       description="Sum statistics directories into one: the same result as "
                       "accumulating all their sources at once. Shards that counted the same "
                       "row group are refused.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="statistics directories")
    p.add_argument("--out", required=True, metavar="DIR", help="output statistics directory")
    p.add_argument("--memory", default=f"{DEFAULT_MEMORY >> 30}G", metavar="SIZE",
                   help="memory budget of the streaming merge, e.g. 512M, 4G or 50%% "
                        "(default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _dask_options(p, f"More than {MERGE_FAN_IN} shards are merged in groups of {MERGE_FAN_IN} "
                  f"on the workers (into OUT/.shards), the last merge here.")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("shrink", help="a smaller weights file: float16 or 8-bit values",
                       description="Write a copy of a one-layer dense weights file (window "
                       "model or classifier) with its values as float16, or as 8-bit codes "
                       "with one step per row (the row's offset cancels in the softmax); "
                       "evaluate, predict and streamfit.lite decode them on the fly. n-gram "
                       "models are made small at finalize (--prune-count, --prune-entropy, "
                       "--quantize).")
    p.add_argument("weights", metavar="WEIGHTS", help="the weights file (.npy or .model.json)")
    p.add_argument("--out", required=True, metavar="FILE", help="the small weights file")
    p.add_argument("--quantize", choices=("int8", "float16"), default="int8",
                   help="stored values (default: int8)")
    p.set_defaults(func=cmd_shrink)

    p = sub.add_parser("score", help="per-document scores (perplexity; a classifier's label) of Parquet data",
                       description="Score every document (row) of Parquet files, streaming, on "
                       "--jobs processes: a language model's n_tokens, log_prob (total "
                       "log-probability in nats, each token predicted from its context, BOS "
                       "before the document start, no end token) and perplexity "
                       "exp(−log_prob / n_tokens) (null without tokens); a classifier's "
                       "predicted class and its probability. OUT gets one Parquet file per "
                       "input (same relative name), row for row, with the input's columns but "
                       "the token or feature lists (or only --id-column), and score.json "
                       "(counts, documents/s, tokens/s). Written whole or not at all.")
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="a model (.npy or .model.json: window, n-gram or classifier)")
    p.add_argument("paths", nargs="+", metavar="PATHS", help="Parquet files, globs or directories")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes, row groups shared out in order (default: 1)")
    p.add_argument("--id-column", metavar="NAME",
                   help="keep only this input column beside the scores (default: all but the "
                        "token or feature lists)")
    p.add_argument("--max-perplexity", type=float, metavar="P",
                   help="write only documents of perplexity ≤ P (the filtering use); "
                        "documents without tokens are left out too")
    _text_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it holds an earlier score output (any other "
                        "non-empty folder is refused)")
    p.add_argument("--json", action="store_true", help="print score.json's content")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _column_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("tokenize", help="text files or a Parquet text column to a token corpus",
                       description="Tokenize text into a token corpus in OUT: tokens.parquet "
                       "(tokens: list<int32>, path, row), tokenizer.json (the vocabulary or "
                       "subword model; pass it as --tokenizer to tokenize more text the same "
                       "way), vocab.txt (one token per line, line number = id) and "
                       "tokenize.json. Words: runs of word characters and single other "
                       "characters, <nl> at line ends; id 0 is <unk>, then the --vocab-size − 1 "
                       "most frequent words. Two streaming passes (count, then encode); memory "
                       "holds one document, one batch and the vocabulary. Documents without "
                       "tokens are left out. OUT is written whole or not at all.")
    p.add_argument("paths", nargs="+", metavar="PATHS",
                   help="text files, globs or directories (searched for --glob); with "
                        "--text-column, Parquet files, globs or directories")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--lines", action="store_true",
                   help="one document per line (default: one per file)")
    p.add_argument("--text-column", metavar="NAME",
                   help="read PATHS as Parquet, one document per row of this string column")
    p.add_argument("--glob", default="*.txt", metavar="PATTERN",
                   help="files a directory in PATHS is searched for (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=32768, metavar="V",
                   help="ids in the vocabulary, <unk> included (default: %(default)s)")
    p.add_argument("--min-count", type=int, default=1, metavar="N",
                   help="words seen fewer times are <unk> (subwords: BPE's minimum pair "
                        "frequency) (default: %(default)s)")
    p.add_argument("--lowercase", action="store_true", help="lowercase text before splitting")
    p.add_argument("--subword", choices=("bpe", "unigram"),
                   help="train a subword model with Hugging Face tokenizers instead of words "
                        "(needs pip install 'streamfit[text]')")
    p.add_argument("--tokenizer", metavar="FILE",
                   help="use this tokenizer (a tokenize output's tokenizer.json, or a Hugging "
                        "Face tokenizer.json) instead of building one: no counting pass")
    p.add_argument("--max-words", type=int, default=4_000_000, metavar="N",
                   help="distinct words held while counting; past it the rarest are dropped "
                        "until half remain (counts exact until then) (default: %(default)s)")
    p.add_argument("--row-group-rows", type=int, default=1024, metavar="N",
                   help="documents per row group at most (also at most 2^20 tokens) "
                        "(default: %(default)s)")
    p.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS, metavar="N",
                   help=f"documents read per batch (default: {DEFAULT_BATCH_ROWS})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it holds an earlier tokenize output (any other "
                        "non-empty folder is refused)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("info", help="what a statistics directory or weights file holds")
    p.add_argument("path", metavar="PATH", help="statistics directory or weights file (.npy / .model.json)")
    p.add_argument("--check", action="store_true", help="verify every file's checksum")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)
    return parser


def os_error_line(exc: OSError) -> str:
    """One line for an error the system gave: the file(s) and the reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    return f"{' → '.join(files)}: {reason}" if files else reason


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "finalize":
        if args.smoothing is None:
            args.smoothing = "auto" if args.heldout else str(DEFAULT_SMOOTHING)
    try:
        return args.func(args)
    except StreamfitError as exc:
        print(f"streamfit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the system refused: permissions, a full disk, a missing path
        print(f"streamfit {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"streamfit {args.command}: interrupted; outputs were left as they were",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
