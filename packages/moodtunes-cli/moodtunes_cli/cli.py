"""The `moodtunes` command: client, database, catalogue, local stack, and (when installed) `fer`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import NoReturn

import typer

app = typer.Typer(
    help="moodtunes: face photo -> emotion -> music.", no_args_is_help=True, pretty_exceptions_enable=False
)
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


def default_url() -> str:
    """The local stack's gateway (MOODTUNES_GATEWAY_PORT); MOODTUNES_URL or --url override it."""
    from moodtunes_cli.localstack import HOST, StackError, stack_settings

    try:
        return f"http://{HOST}:{stack_settings().gateway_port}"
    except StackError as exc:
        fail(str(exc), code=2)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr and an exit code: what a user needs, instead of a traceback."""
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _error_text(r) -> str:
    """The gateway's {"error": {"code", "message"}} as one line, or the start of whatever else answered."""
    try:
        error = r.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return " ".join(r.text.split())[:200]


@app.command()
def submit(
    photo: Path = typer.Argument(..., exists=True, dir_okay=False, help="JPEG, PNG or WebP photo"),
    mode: str = typer.Option("match", help="match (published mapping), uplift or calm"),
    limit: int = typer.Option(10, min=1, max=50),
    wait: bool = typer.Option(False, "--wait", help="poll until the job is done and print the result"),
    url: str | None = typer.Option(
        None,
        envvar="MOODTUNES_URL",
        show_default=False,
        help="gateway URL [default: http://127.0.0.1:$MOODTUNES_GATEWAY_PORT, port 8000]",
    ),
    timeout: float = typer.Option(120.0, help="seconds to wait with --wait"),
    as_json: bool = typer.Option(False, "--json", help="print the raw JSON"),
):
    """Submit a photo through the gateway and print the emotions and tracks."""
    import httpx

    url = (url or default_url()).rstrip("/")
    job: dict = {}
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            r = client.post(
                "/v1/jobs",
                files={"image": (photo.name, photo.read_bytes())},
                data={"mode": mode, "limit": str(limit)},
            )
            if r.status_code != 202:
                fail(f"rejected ({r.status_code}): {_error_text(r)}")
            job = r.json()
            if not wait:
                typer.echo(
                    json.dumps(job, indent=2)
                    if as_json
                    else f"job {job['id']} queued: {url}{job['status_url']}"
                )
                return
            deadline, status = time.monotonic() + timeout, None
            while time.monotonic() < deadline:
                r = client.get(job.get("status_url") or f"/v1/jobs/{job['id']}")
                if r.status_code != 200:
                    fail(f"gateway at {url} answered {r.status_code} for job {job['id']}: {_error_text(r)}")
                job = r.json()
                if job["status"] != status and not as_json:
                    typer.echo(f"... {job['status']}", err=True)
                    status = job["status"]
                if job["status"] in TERMINAL:
                    break
                time.sleep(0.3)
    except httpx.TransportError:  # refused, reset, timed out: the gateway is down or went away
        queued = f" (job {job['id']} was queued)" if job.get("id") else ""
        fail(f"gateway not reachable at {url}: run `make up`{queued}")
    except httpx.InvalidURL as exc:
        fail(f"not a gateway URL: {url!r} ({exc})", code=2)
    except (ValueError, KeyError):  # not the gateway's JSON: something else answers on that port
        fail(f"{url} does not answer like the moodtunes gateway: check --url / MOODTUNES_URL")
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
    lines = [
        f"job {job['id']}: {len(job['faces'])} face(s); model {job['model']['name']} "
        f"v{job['model']['version']} ({job['model']['head']})"
    ]
    for i, face in enumerate(job["faces"]):
        mark = "*" if i == job["chosen_face"] else " "
        probs = "  ".join(f"{k} {v:.2f}" for k, v in face["probabilities"].items())
        lines.append(
            f" {mark} face {i} at {face['box']}: {face['emotion']} ({face['confidence']:.2f})   {probs}"
        )
    rec = job["recommendation"]
    target = ", ".join(f"{k} {v:.2f}" for k, v in rec["target"].items())
    lines.append(f"mode {rec['mode']}; target: {target}")
    for n, t in enumerate(rec["tracks"], 1):
        lines.append(
            f"{n:3d}. {t['name']} - {', '.join(t['artists'])}"
            f"{' (' + str(t['year']) + ')' if t.get('year') else ''}   d={t['distance']:.3f}"
        )
    return "\n".join(lines)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head"):
    """Apply migrations up to REVISION (default: head).

    Production runs the same code as `python -m moodtunes.migrations upgrade`."""
    from moodtunes import migrations

    migrations.upgrade(revision=revision)
    typer.echo(f"database at {revision}")


@catalogue_app.command("load")
def catalogue_load(
    path: Path | None = typer.Argument(None, help="CSV or CSV.gz with the catalogue's columns"),
    default: bool = typer.Option(False, "--default", help="load the catalogue shipped with moodtunes"),
    rejects: Path | None = typer.Option(None, help="write rejected rows (line, reason) to this CSV"),
):
    """Validate and upsert a catalogue (idempotent: upserts by track_id).

    Production runs the same code as `python -m moodtunes_recommender.catalogue load --default`."""
    from moodtunes_recommender import catalogue

    if default == (path is not None):
        raise typer.BadParameter("give a PATH or --default (not both)")
    source = catalogue.default_catalogue() if default else path
    try:
        catalogue.load_and_report(source, rejects, echo=typer.echo)
    except (OSError, ValueError) as exc:
        fail(f"error: {exc}", code=2)


@stack_app.command("up")
def stack_up():
    """Start embedded Redis/PostgreSQL, the model server, both workers and the gateway.

    Ports: MOODTUNES_GATEWAY_PORT (8000), MOODTUNES_MODEL_SERVER_PORT (8500), MOODTUNES_POSTGRES_PORT
    (55432), MOODTUNES_REDIS_PORT (56379); DATABASE_URL / REDIS_URL use those servers instead."""
    from moodtunes_cli import localstack

    try:
        localstack.up()
    except localstack.StackError as exc:
        fail(f"moodtunes stack up failed: {exc}")


@stack_app.command("down")
def stack_down():
    """Stop everything `stack up` started (data is kept)."""
    from moodtunes_cli import localstack

    localstack.down()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
