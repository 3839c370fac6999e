"""``slimbench report``: arguments and output of the report (the work is in ``slimbench.bench.report``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimbench.bench.formats import FORMATS, render
from slimbench.bench.latency import BACKENDS
from slimbench.bench.report import ReportSettings, build_report
from slimbench.bench.variants import METHODS
from slimbench.core.atomic import check_destination, write_text_or_rescue
from slimbench.core.errors import SlimbenchValueError
from slimbench.data import parse_data_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ReportSettings()
    parser.add_argument("--models", nargs="+", default=list(d.models), help="zoo names (slimbench models)")
    parser.add_argument("--ratios", nargs="+", type=float, default=list(d.ratios), help="pruned channel fractions")
    parser.add_argument("--methods", nargs="+", default=list(d.methods), choices=[*METHODS, "uniform"])
    parser.add_argument("--data", default=d.data, help="digits (bundled) or cifar10=DIR, cifar100=DIR, ilsvrc12=DIR")
    parser.add_argument("--checkpoint", help="trained (sparse) weights for the single model in --models")
    def recipe(key: str) -> str:
        return "default: per model, " + _recipe_help(key)

    parser.add_argument("--epochs", type=int, default=d.epochs,
                        help=f"sparse-training epochs without --checkpoint ({recipe('epochs')})")
    parser.add_argument("--sparsity", type=float, default=d.sparsity,
                        help=f"L1 strength s on BN gamma ({recipe('sparsity')})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"sparse-training learning rate ({recipe('lr')})")
    parser.add_argument("--train-batch", type=int, default=d.train_batch, help="training batch size")
    parser.add_argument("--gamma-init", type=float, default=d.gamma_init,
                        help=f"BN gamma before sparse training ({recipe('gamma_init')})")
    parser.add_argument("--train-size", type=int, default=d.train_size,
                        help=f"digits image side for training ({recipe('train_size')}; else 8, or 16 / 32 where the "
                             "model needs more)")
    parser.add_argument("--train-steps", type=int, default=d.train_steps,
                        help="cap on training batches per epoch (smoke runs)")
    parser.add_argument("--finetune-steps", type=int, default=d.finetune_steps,
                        help=f"fine-tuning batches per pruned model, 0: none ({recipe('finetune_steps')})")
    parser.add_argument("--finetune-lr", type=float, default=d.finetune_lr, help=f"({recipe('finetune_lr')})")
    parser.add_argument("--bn-batches", type=int, default=d.bn_batches,
                        help="training batches BN running statistics are recomputed on before each model is "
                             f"evaluated, after sparse training here; 0: off ({recipe('bn_batches')})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="latency batch size")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch / onnxruntime intra-op threads")
    parser.add_argument("--backends", nargs="+", default=list(d.backends), choices=list(BACKENDS),
                        help="latency backends (registered: %(choices)s; each must be installed)")
    parser.add_argument("--latency-time", type=float, default=d.latency_time, help="seconds of timing per model")
    parser.add_argument("--round-to", type=int, default=d.round_to, help="keep channel counts multiples of N")
    parser.add_argument("--latency-aware", action="store_true",
                        help="compare at equal latency, per model at the middle ratio: network slimming "
                             "round_to=8, and network slimming with latency-aware widths planned to that model's "
                             "measured latency (target_latency), on ort (else the first of --backends) at "
                             "--batch-size and --threads; the first run per model/backend/threads measures a layer "
                             "table (cached)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of training, fine-tuning and inputs")
    parser.add_argument("--format", default="table", choices=list(FORMATS))
    parser.add_argument("-o", "--output", help="write the report here (atomically) instead of stdout")
    parser.add_argument("--plot", help="PNG with MACs vs accuracy, latency vs ratio, gamma histogram")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def _recipe_help(key: str) -> str:
    """'0.05 (vgg: 0.02)': the report's training recipe for one setting, from its table."""
    from slimbench.bench.report import FAMILY_TRAINING, TRAINING

    differs = [f"{family}: {entry[key]}" for family, entry in FAMILY_TRAINING.items() if key in entry]
    return f"{TRAINING[key]}" + (f" ({'; '.join(differs)})" if differs else "")


def _check_destination(option: str, path: str | None, suffix: str | None = None) -> None:
    """Fail before the (minute-long) run, not after it: type, folder, writable, space."""
    if path is None:
        return
    check_destination(path, option=option)
    special = path == "-" or (Path(path).exists() and not Path(path).is_file())  # stdout, a device, a FIFO
    if suffix and not special and Path(path).suffix.lower() != suffix:
        raise SlimbenchValueError(f"{option} {path}: expected a {suffix} file name")


def run(args: argparse.Namespace) -> int:
    settings = ReportSettings(
        models=args.models, ratios=args.ratios, methods=args.methods, data=args.data, checkpoint=args.checkpoint,
        epochs=args.epochs, sparsity=args.sparsity, lr=args.lr, train_batch=args.train_batch,
        gamma_init=args.gamma_init, train_size=args.train_size, train_steps=args.train_steps,
        finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr, bn_batches=args.bn_batches,
        batch_size=args.batch_size,
        threads=args.threads, backends=args.backends, latency_time=args.latency_time, round_to=args.round_to,
        seed=args.seed, progress=not args.no_progress, latency_aware=args.latency_aware)
    parse_data_option(args.data)  # `--data DIR` without name= gets a hint now, not after training
    _check_destination("--output", args.output)
    _check_destination("--plot", args.plot, ".png")
    report = build_report(settings)
    caption = report.caption + f" (report took {report.seconds:.0f} s)"
    text = render(report.rows, args.format, caption, report.run)
    if args.output and args.output != "-":
        write_text_or_rescue(args.output, text, what="report's results")
    else:
        sys.stdout.write(text)
    if args.plot:
        from slimbench.bench.formats import add_derived
        from slimbench.bench.plots import plot_report

        plot_report(add_derived(report.rows), report.gammas, args.plot, thresholds=report.thresholds,
                    caption=_figure_caption(report))
    return 0


def _figure_caption(report) -> str:
    """The data set and training behind the figure, in one line under it."""
    s = report.run.get("settings", {})
    if s.get("checkpoint"):
        how = f"weights from {s['checkpoint']}"
    elif any(t["epochs"] for t in report.run.get("training", {}).values()):
        how = "; ".join(f"{name}: {t['epochs']} epoch(s) of sparse training (s={t['sparsity']:g}, lr {t['lr']:g}), "
                        f"{t['finetune_steps']} fine-tuning steps per pruned model"
                        for name, t in report.run["training"].items())
    else:
        how = "UNTRAINED (--epochs 0): accuracy is chance, gamma ranks nothing"
    env = report.run.get("environment", {})
    return (f"data: {s.get('data')}; {how}; latency batch {s.get('latency_batch_size')}, "
            f"{s.get('threads')} thread(s) on {env.get('cpu', '?')}")
