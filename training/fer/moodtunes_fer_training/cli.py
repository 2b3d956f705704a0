"""`moodtunes fer ...`: train, export, evaluate the FER model and run the paper's experiments.

TensorFlow and scikit-learn are imported inside the commands, so `moodtunes --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Facial-expression model: train, export to TF Serving layout, evaluate, "
    "and the paper's experiments.",
    no_args_is_help=True,
)

DATA_HELP = "FER npz (default: $MOODTUNES_FER_DATA, else ../shared/data/fer2013_5class_trainval.npz)"
DataOpt = Annotated[str | None, typer.Option("--data", help=DATA_HELP)]
ModelsDirOpt = Annotated[Path, typer.Option("--models-dir", help="TF Serving model base dir")]
ModelNameOpt = Annotated[str, typer.Option("--model-name")]
VersionOpt = Annotated[int | None, typer.Option("--version", help="default: latest / next")]


class HeadKind(StrEnum):
    svm = "svm"
    knn = "knn"
    tree = "tree"
    logreg = "logreg"


class Experiment(StrEnum):
    layers = "layers"
    pca = "pca"
    classifiers = "classifiers"
    all = "all"


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


def _gamma(value: str) -> float | str:
    return value if value in ("scale", "auto") else float(value)


@app.command()
def train(
    data: DataOpt = None,
    out: Annotated[Path, typer.Option(help="run dir (resumes if it holds a run)")] = Path("runs/fer_vgg16"),
    epochs: Annotated[int, typer.Option()] = 30,
    batch_size: Annotated[int, typer.Option()] = 64,
    limit: Annotated[int | None, typer.Option(help="use only N images per split")] = None,
    seed: Annotated[int, typer.Option()] = 1337,
    peak_lr: Annotated[float, typer.Option(help="SGD peak learning rate (cosine schedule)")] = 0.01,
    init_from: Annotated[
        Path | None,
        typer.Option(help="start from these weights: a .keras checkpoint or an exported version folder"),
    ] = None,
    mixup: Annotated[float, typer.Option(help="mixup Beta(alpha, alpha); 0 = off")] = 0.0,
    extra_data: Annotated[
        Path | None,
        typer.Option(help="supplement npz (x_train/y_train) added to the training split, e.g. AffectNet"),
    ] = None,
    time_budget: Annotated[
        float | None,
        typer.Option(help="fit the run to this many seconds (per-epoch cosine; --epochs becomes a cap)"),
    ] = None,
    width: Annotated[float, typer.Option(help="multiplies every block's filters (2: VGG16's own)")] = 1.0,
):
    """Train (or resume) the VGG16-layout CNN; writes best.keras, last.keras, history, state."""
    _quiet_tf()
    from moodtunes_fer_training import train as fer_train

    state = fer_train.train(
        data,
        out,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        limit=limit,
        peak_lr=peak_lr,
        init_from=init_from,
        mixup_alpha=mixup,
        extra_data=extra_data,
        time_budget_s=time_budget,
        width=width,
    )
    typer.echo(json.dumps(state, indent=2))


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="Keras checkpoint")] = Path("runs/fer_vgg16/best.keras"),
    data: DataOpt = None,
    models_dir: ModelsDirOpt = Path("models"),
    model_name: ModelNameOpt = "fer_vgg16",
    version: VersionOpt = None,
    tta: Annotated[bool, typer.Option(help="average image and mirror in the signature")] = True,
    head: Annotated[HeadKind, typer.Option(help="classifier after PCA + scaler")] = HeadKind.svm,
    pca: Annotated[int, typer.Option(help="PCA components; 0 = no PCA")] = 50,
    c: Annotated[float, typer.Option("--C", help="SVM C")] = 1.0,
    gamma: Annotated[str, typer.Option(help="SVM gamma: scale, auto or a number")] = "scale",
    k: Annotated[int, typer.Option(help="KNN neighbours")] = 5,
    max_depth: Annotated[int | None, typer.Option(help="tree depth")] = None,
    max_train: Annotated[
        int | None,
        typer.Option(help="fit the head on a stratified subset of N training images (default: all)"),
    ] = None,
    train_dir: Annotated[
        Path | None, typer.Option(help="run dir with train_state.json (default: the checkpoint's folder)")
    ] = None,
    batch_size: Annotated[int, typer.Option()] = 128,
    head_teacher: Annotated[
        Path | None,
        typer.Option(help="fit the head on this ensemble's labels (a teacher npz) instead of FER2013's"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="last line: the model card")] = False,
):
    """Export a checkpoint as <models-dir>/<model-name>/<version>/ with its head and model card."""
    _quiet_tf()
    from moodtunes_fer_training.export import export as do_export

    card = do_export(
        checkpoint,
        data,
        models_dir,
        model_name,
        version,
        tta=tta,
        head_kind=head.value,
        pca_components=pca or None,
        C=c,
        gamma=_gamma(gamma),
        k=k,
        max_depth=max_depth,
        max_train=max_train,
        train_dir=train_dir,
        batch_size=batch_size,
        log=_log,
        head_teacher=head_teacher,
    )
    m = card["metrics"]
    typer.echo(
        f"exported {model_name} v{card['model_version']} to {models_dir}: val accuracy "
        f"{m['accuracy']:.4f} (CNN softmax {m['cnn_softmax']['accuracy']:.4f}), "
        f"macro-F1 {m['macro_f1']:.4f}, {card['size_bytes'] / 1e6:.1f} MB"
    )
    if as_json:
        typer.echo(json.dumps(card))


@app.command()
def evaluate(
    data: DataOpt = None,
    split: Annotated[str, typer.Option(help="scores x_<split> against y_<split>")] = "val",
    server: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of TF Serving / the model server; default: load the SavedModel here"),
    ] = None,
    models_dir: ModelsDirOpt = Path("models"),
    model_name: ModelNameOpt = "fer_vgg16",
    version: VersionOpt = None,
    batch_size: Annotated[int, typer.Option()] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="last line: the metrics as JSON")] = False,
):
    """Score the deployed pipeline (crop -> CNN features -> head) on a labelled split."""
    _quiet_tf()
    from moodtunes_fer_training.evaluate import evaluate as do_evaluate
    from moodtunes_fer_training.evaluate import format_report

    result = do_evaluate(data, split, models_dir, model_name, version, server=server, batch_size=batch_size)
    typer.echo(format_report(result))
    if as_json:
        typer.echo(json.dumps(result))


@app.command()
def experiment(
    name: Annotated[Experiment, typer.Argument(help="which experiment")],
    checkpoint: Annotated[Path, typer.Option()] = Path("runs/fer_vgg16/best.keras"),
    data: DataOpt = None,
    reports_dir: Annotated[Path, typer.Option()] = Path("reports"),
    cache_dir: Annotated[Path, typer.Option(help="extracted-feature cache")] = Path(".var/fer_features"),
    max_train: Annotated[
        int | None, typer.Option(help="stratified subset of N training images, for speed")
    ] = None,
    tta: Annotated[bool, typer.Option(help="average features of image and mirror")] = False,
    seed: Annotated[int, typer.Option()] = 1337,
):
    """The paper's experiments: feature layer, PCA size, classifier. Writes reports/<name>.json/.png."""
    _quiet_tf()
    from moodtunes_fer_training import experiments

    reports = experiments.run(
        name.value,
        checkpoint,
        data,
        reports_dir,
        cache_dir,
        max_train=max_train,
        tta=tta,
        seed=seed,
        log=_log,
    )
    for exp, report in reports.items():
        typer.echo(f"\n{report['title']}  ->  {reports_dir / (exp + '.json')}")
        for r in report["results"]:
            typer.echo(f"  {r['name']:<12} accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}")
        typer.echo(
            f"  best: {report['best']} ({report['best_accuracy']:.4f}); paper best "
            f"{experiments.PAPER['best']['accuracy']:.3f} on AffectNet"
        )


@app.command("plot-history")
def plot_history(
    run: Annotated[
        list[Path],
        typer.Option(help="run dir holding history.csv; repeat for runs that continue each other, in order"),
    ] = [Path("runs/fer_vgg16")],  # noqa: B006 - typer reads the default, never mutates it
    out: Annotated[Path | None, typer.Option(help="PNG path (default: <run>/history.png)")] = None,
    csv_out: Annotated[
        Path | None, typer.Option(help="also write the runs' logs as one CSV, epochs numbered on")
    ] = None,
):
    """Redraw the loss/accuracy curves of a training run (or of a run and its continuations)."""
    import csv

    from moodtunes_fer_training.train import plot_history as draw
    from moodtunes_fer_training.train import read_history

    csv_paths = [r / "history.csv" for r in run]
    missing = [str(p) for p in csv_paths if not p.is_file()]
    if missing:
        typer.echo(f"no history.csv: {', '.join(missing)}", err=True)
        raise typer.Exit(1)
    png = out or run[-1] / "history.png"
    draw(csv_paths, png)
    if csv_out:
        rows = read_history(csv_paths)
        with open(csv_out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        typer.echo(str(csv_out))
    typer.echo(str(png))


def main() -> None:  # `python -m moodtunes_fer_training.cli`
    app()


if __name__ == "__main__":
    sys.exit(main())
