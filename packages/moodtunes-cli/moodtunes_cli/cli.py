"""The `moodtunes` command: client, database, catalogue, local stack, and (when installed) `fer`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="moodtunes: face photo -> emotion -> music.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
catalogue_app = typer.Typer(help="The track catalogue in PostgreSQL.", no_args_is_help=True)
stack_app = typer.Typer(help="The whole system on this machine, without Docker.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(catalogue_app, name="catalogue")
app.add_typer(stack_app, name="stack")
try:  # the FER service is optional in the gateway/recommender images
    from moodtunes_fer_training.cli import app as fer_app

    app.add_typer(fer_app, name="fer")
except ImportError:
    pass

TERMINAL = ("done", "failed")


@app.command()
def submit(
    photo: Path = typer.Argument(..., exists=True, dir_okay=False, help="JPEG, PNG or WebP photo"),
    mode: str = typer.Option("match", help="match (published mapping), uplift or calm"),
    limit: int = typer.Option(10, min=1, max=50),
    wait: bool = typer.Option(False, "--wait", help="poll until the job is done and print the result"),
    url: str = typer.Option("http://127.0.0.1:8000", envvar="MOODTUNES_URL", help="gateway URL"),
    timeout: float = typer.Option(120.0, help="seconds to wait with --wait"),
    as_json: bool = typer.Option(False, "--json", help="print the raw JSON"),
):
    """Submit a photo through the gateway and print the emotions and tracks."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        r = client.post("/v1/jobs", files={"image": (photo.name, photo.read_bytes())},
                        data={"mode": mode, "limit": str(limit)})
        if r.status_code != 202:
            typer.echo(f"rejected ({r.status_code}): {r.text}", err=True)
            raise typer.Exit(1)
        job = r.json()
        if not wait:
            typer.echo(json.dumps(job, indent=2) if as_json else f"job {job['id']} queued: {url}{job['status_url']}")
            return
        deadline, status = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            job = client.get(job["status_url"] if "status_url" in job else f"/v1/jobs/{job['id']}").json()
            if job["status"] != status and not as_json:
                typer.echo(f"... {job['status']}", err=True)
                status = job["status"]
            if job["status"] in TERMINAL:
                break
            time.sleep(0.3)
    if as_json:
        typer.echo(json.dumps(job, indent=2))
    else:
        typer.echo(format_job(job))
    raise typer.Exit(0 if job["status"] == "done" else 1)


def format_job(job: dict) -> str:
    if job["status"] == "failed":
        return f"job {job['id']} failed: {job['error']['code']}: {job['error']['message']}"
    if job["status"] != "done":
        return f"job {job['id']} still {job['status']}"
    lines = [f"job {job['id']}: {len(job['faces'])} face(s); model {job['model']['name']} "
             f"v{job['model']['version']} ({job['model']['head']})"]
    for i, face in enumerate(job["faces"]):
        mark = "*" if i == job["chosen_face"] else " "
        probs = "  ".join(f"{k} {v:.2f}" for k, v in face["probabilities"].items())
        lines.append(f" {mark} face {i} at {face['box']}: {face['emotion']} ({face['confidence']:.2f})   {probs}")
    rec = job["recommendation"]
    target = ", ".join(f"{k} {v:.2f}" for k, v in rec["target"].items())
    lines.append(f"mode {rec['mode']}; target: {target}")
    for n, t in enumerate(rec["tracks"], 1):
        lines.append(f"{n:3d}. {t['name']} - {', '.join(t['artists'])}"
                     f"{' (' + str(t['year']) + ')' if t.get('year') else ''}   d={t['distance']:.3f}")
    return "\n".join(lines)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head"):
    """Apply migrations up to REVISION (default: head)."""
    from moodtunes import migrations

    migrations.upgrade(revision=revision)
    typer.echo(f"database at {revision}")


@catalogue_app.command("load")
def catalogue_load(
    path: Optional[Path] = typer.Argument(None, help="CSV or CSV.gz with the catalogue's columns"),
    default: bool = typer.Option(False, "--default", help="load the catalogue shipped with moodtunes"),
    rejects: Optional[Path] = typer.Option(None, help="write rejected rows (line, reason) to this CSV"),
):
    """Validate and upsert a catalogue (idempotent: upserts by track_id)."""
    from moodtunes_recommender import catalogue

    if default == (path is not None):
        raise typer.BadParameter("give a PATH or --default (not both)")
    source = catalogue.default_catalogue() if default else path
    try:
        report = catalogue.load_csv(source)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{source}: {report.rows} rows, {report.loaded} loaded, {report.rejected} rejected, "
               f"{report.duplicates_in_file} duplicate ids in the file; "
               f"catalogue now {catalogue.count_tracks()} tracks")
    for line, reason in report.rejects[:20]:
        typer.echo(f"  rejected line {line}: {reason}")
    if rejects:
        import csv

        with open(rejects, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["line", "reason"])
            w.writerows(report.rejects)


@stack_app.command("up")
def stack_up():
    """Start embedded Redis/PostgreSQL, the model server, both workers and the gateway."""
    from moodtunes_cli import localstack

    localstack.up()


@stack_app.command("down")
def stack_down():
    """Stop everything `stack up` started (data is kept)."""
    from moodtunes_cli import localstack

    localstack.down()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
