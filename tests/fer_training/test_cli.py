import csv
import json
import subprocess
import sys

from typer.testing import CliRunner

from moodtunes_fer_training.cli import app

runner = CliRunner()


def test_importing_the_cli_stays_light():
    code = (
        "import sys, moodtunes_fer_training.cli; "
        "heavy = [m for m in ('tensorflow', 'keras', 'sklearn', 'cv2') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "export", "evaluate", "experiment", "plot-history"):
        assert command in result.output


def test_evaluate_json_last_line(exported, tiny_npz):
    models, card = exported
    result = runner.invoke(
        app, ["evaluate", "--data", str(tiny_npz), "--split", "val", "--models-dir", str(models), "--json"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    payload = json.loads(lines[-1])
    assert payload["accuracy"] == card["metrics"]["accuracy"]
    assert payload["route"] == "in_process"
    assert any(line.startswith("accuracy") for line in lines[:-1])
    assert any("confusion matrix" in line for line in lines[:-1])


def test_data_path_from_environment(exported, tiny_npz, monkeypatch):
    models, _ = exported
    monkeypatch.setenv("MOODTUNES_FER_DATA", str(tiny_npz))
    result = runner.invoke(app, ["evaluate", "--models-dir", str(models), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["n"] == 40


def test_plot_history(tmp_path):
    (tmp_path / "history.csv").write_text(
        "epoch,accuracy,loss,val_accuracy,val_loss\n0,0.3,1.5,0.32,1.4\n1,0.4,1.3,0.41,1.2\n"
    )
    result = runner.invoke(app, ["plot-history", "--run", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "history.png").stat().st_size > 1000
    missing = runner.invoke(app, ["plot-history", "--run", str(tmp_path / "nope")])
    assert missing.exit_code == 1


def test_export_options_reach_the_model_card(tmp_path, keras_checkpoint, tiny_npz):
    result = runner.invoke(
        app,
        [
            "export",
            "--checkpoint",
            str(keras_checkpoint),
            "--data",
            str(tiny_npz),
            "--models-dir",
            str(tmp_path),
            "--version",
            "4",
            "--no-tta",
            "--head",
            "logreg",
            "--pca",
            "0",
            "--max-train",
            "40",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout.strip().splitlines()[-1])
    assert card["model_version"] == 4 and card["tta"] is False
    assert card["head"]["kind"] == "logreg" and card["head"]["pca_components"] is None
    assert card["head"]["pipeline"] == "passthrough -> StandardScaler -> LogisticRegression"
    assert card["data"]["head_fit_images"] == 40
    assert card["data"]["head_fit_class_counts"] == [8, 8, 8, 8, 8]  # stratified subset
    assert (tmp_path / "fer_vgg16" / "4" / "head" / "head.joblib").is_file()


def test_plot_history_of_a_continued_run_numbers_epochs_on(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for run, accs in ((first, (0.3, 0.4)), (second, (0.35, 0.45, 0.5))):
        run.mkdir()
        (run / "history.csv").write_text(
            "epoch,accuracy,loss,val_accuracy,val_loss\n"
            + "".join(f"{i},{a},1.0,{a},1.0\n" for i, a in enumerate(accs))
        )
    combined = tmp_path / "all.csv"
    result = runner.invoke(
        app,
        [
            "plot-history",
            "--run",
            str(first),
            "--run",
            str(second),
            "--out",
            str(tmp_path / "all.png"),
            "--csv-out",
            str(combined),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "all.png").stat().st_size > 1000
    with open(combined) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["val_accuracy"] for r in rows] == ["0.3", "0.4", "0.35", "0.45", "0.5"]
    assert rows[2]["run"].endswith("second/history.csv")
