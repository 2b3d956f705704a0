"""The `moodtunes` command: client, database, catalogue, local stack, and (when installed) `fer`."""

from __future__ import annotations

import json
import os
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
keys_app = typer.Typer(
    help="API keys for programs that call the API (sent as `Authorization: Bearer <key>`).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
try:  # the FER service is optional in the gateway/recommender images
    from moodtunes_fer_training.cli import app as fer_app

    app.add_typer(fer_app, name="fer")
except ImportError:
    pass

TERMINAL = ("done", "failed")
LONG_POLL_S = 2.0  # each status request waits up to this long for the job to finish (?wait=)


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
    drive: str = typer.Option("face", help="face: the largest face drives the music; group: every face"),
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
    api_key: str | None = typer.Option(
        None,
        envvar="MOODTUNES_API_KEY",
        show_default=False,
        show_envvar=True,
        help="API key (`moodtunes keys create`) [default: none: a session cookie, kept while it polls]",
    ),
):
    """Submit a photo through the gateway and print the emotions and tracks."""
    import httpx

    url = (url or default_url()).rstrip("/")
    job: dict = {}
    # One client for the POST and every poll: without a key the job is the session cookie's, which
    # the client keeps and sends back (the gateway answers 404 to anyone else).
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            # with --wait the POST itself waits a first LONG_POLL_S: a quick job is one request (200)
            r = client.post(
                "/v1/jobs",
                files={"image": (photo.name, photo.read_bytes())},
                data={"mode": mode, "limit": str(limit), "drive": drive},
                params={"wait": LONG_POLL_S} if wait else None,
            )
            if r.status_code not in (200, 202):
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
            while job["status"] not in TERMINAL and (left := deadline - time.monotonic()) > 0:
                asked = time.monotonic()
                # a long poll: the gateway answers when the job finishes, else with its status
                wait_s = round(min(LONG_POLL_S, left), 1)
                r = client.get(job.get("status_url") or f"/v1/jobs/{job['id']}", params={"wait": wait_s})
                if r.status_code != 200:
                    fail(f"gateway at {url} answered {r.status_code} for job {job['id']}: {_error_text(r)}")
                job = r.json()
                if job["status"] != status and not as_json:
                    typer.echo(f"... {job['status']}", err=True)
                    status = job["status"]
                if job["status"] in TERMINAL:
                    break
                if time.monotonic() - asked < 0.2:  # a gateway that did not hold the request
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


def use_local_stack_database() -> None:
    """With no DATABASE_URL set, the database commands reach the local stack's PostgreSQL with its
    role passwords (kept under .var/ by `make up`), as `eval "$(moodtunes stack env)"` would."""
    if os.environ.get("DATABASE_URL"):
        return
    from moodtunes.config import get_settings
    from moodtunes_cli import localstack

    os.environ.update(localstack.database_env())
    get_settings.cache_clear()


@db_app.command("upgrade")
def db_upgrade(revision: str = "head"):
    """Apply migrations up to REVISION (default: head).

    Production runs the same code as `python -m moodtunes.migrations upgrade`."""
    from moodtunes import migrations

    use_local_stack_database()

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

    use_local_stack_database()
    if default == (path is not None):
        raise typer.BadParameter("give a PATH or --default (not both)")
    source = catalogue.default_catalogue() if default else path
    try:
        catalogue.load_and_report(source, rejects, echo=typer.echo)
    except (OSError, ValueError) as exc:
        fail(f"error: {exc}", code=2)


@app.command()
def purge(
    older_than: float | None = typer.Option(
        None,
        "--older-than",
        min=0,
        metavar="DAYS",
        show_default=False,
        help="age since the job finished [default: JOB_RETENTION_DAYS, 7]",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="count what would be deleted, delete nothing"),
):
    """Delete finished jobs (their results) older than the retention. Feedback stays, unlinked.

    The reconciler does this on its own every few minutes; this is for doing it now."""
    import psycopg

    from moodtunes import jobs
    from moodtunes.config import get_settings

    use_local_stack_database()
    days = get_settings().job_retention_days if older_than is None else older_than
    try:
        n = jobs.purge_finished(days * 86400, dry_run=dry_run)
    except psycopg.OperationalError as exc:
        fail(f"database unavailable: {' '.join(str(exc).split())}")
    typer.echo(f"{'would delete' if dry_run else 'deleted'} {n} finished job(s) older than {days:g} days")


@keys_app.command("create")
def keys_create(name: str = typer.Option("", help="what the key is for (shown by `keys list`)")):
    """Make an API key and print it, on stdout alone (KEY=$(moodtunes keys create)); it is shown
    only this once, the database keeps only its hash."""
    from moodtunes import api_keys

    key, token = _with_database(lambda: api_keys.create(name))
    typer.echo(token)
    typer.echo(
        f"API key {key.id}{f' ({name})' if name else ''} created: store it now, it is not shown again. "
        "Send it as `Authorization: Bearer <key>`; `moodtunes submit` reads MOODTUNES_API_KEY.",
        err=True,
    )


@keys_app.command("list")
def keys_list(as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Every API key: id, name, when made and last used, and whether it is revoked (never the key)."""
    from moodtunes import api_keys

    keys = _with_database(api_keys.list_keys)
    if as_json:
        typer.echo(json.dumps([_key_json(k) for k in keys], indent=2))
        return
    if not keys:
        typer.echo("no API keys (make one with `moodtunes keys create`)", err=True)
        return
    typer.echo(f"{'ID':<12}  {'CREATED':<16}  {'LAST USED':<16}  {'STATUS':<7}  NAME")
    for k in keys:
        used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never"
        status = "revoked" if k.revoked else "active"
        typer.echo(f"{k.id:<12}  {k.created_at:%Y-%m-%d %H:%M}  {used:<16}  {status:<7}  {k.name}")


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="the key's ID (see `keys list`)")):
    """Revoke an API key for good: the gateway answers 401 api_key_revoked to it from now on."""
    from moodtunes import api_keys

    key = _with_database(lambda: api_keys.revoke(key_id))
    if key is None:
        fail(f"no API key with ID {key_id!r} (see `moodtunes keys list`)")
    typer.echo(f"API key {key.id} revoked ({key.revoked_at:%Y-%m-%d %H:%M:%S %Z})")


def _key_json(key) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def _with_database(action):
    """Runs a database action; an unreachable database is one line on stderr, not a traceback."""
    import psycopg

    use_local_stack_database()
    try:
        return action()
    except psycopg.errors.UndefinedTable:
        fail("the database has no API key table yet: run `moodtunes db upgrade`")
    except psycopg.OperationalError as exc:
        fail(f"database unavailable: {' '.join(str(exc).split())}")


@stack_app.command("up")
def stack_up():
    """Start embedded Redis/PostgreSQL, the model server, the workers and the gateway under supervisord,
    which restarts any of them that exits.

    Ports: MOODTUNES_GATEWAY_PORT (8000), MOODTUNES_MODEL_SERVER_PORT (8500), MOODTUNES_POSTGRES_PORT
    (55432), MOODTUNES_REDIS_PORT (56379); DATABASE_URL / REDIS_URL use those servers instead.
    Workers: MOODTUNES_FER_WORKERS, MOODTUNES_RECOMMENDER_WORKERS (1 each; `make up FER_WORKERS=2`).
    MOODTUNES_MODEL_SERVER_BATCHING=false turns the model server's request batching off;
    MOODTUNES_POSTGRES_SHARED_BUFFERS (256MB) sizes the embedded PostgreSQL's page cache."""
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


@stack_app.command("status")
def stack_status():
    """Show supervisord's view: every program's state, pid, uptime, port and log (exit 3: not running)."""
    from moodtunes_cli import localstack

    if not localstack.status():
        raise typer.Exit(3)


@stack_app.command("env")
def stack_env():
    """Print `export` lines for the stack's database roles, for `eval "$(moodtunes stack env)"`:
    DATABASE_URL (application role) and DATABASE_OWNER_URL (migrations, catalogue load)."""
    import shlex

    from moodtunes_cli import localstack

    env = localstack.database_env()
    if not env:
        fail("no local stack database yet: run `make up` first")
    for key, value in env.items():
        typer.echo(f"export {key}={shlex.quote(value)}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
