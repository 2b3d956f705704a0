"""Alembic migrations of the moodtunes database, runnable without an alembic.ini
(`python -m moodtunes.migrations upgrade`, which `moodtunes db upgrade` also calls).

Migrations run as the schema's owner (DATABASE_OWNER_URL, else DATABASE_URL). When DATABASE_URL
names another role, the services' role, `upgrade` then makes sure that role exists with
DATABASE_URL's password and holds row rights only, so a leaked service credential cannot change or
drop the schema. One step for `make up`, the test suite and the production migrate job.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from moodtunes.config import get_settings

HERE = Path(__file__).resolve().parent
APP_TABLE_RIGHTS = "SELECT, INSERT, UPDATE, DELETE"


def sqlalchemy_url(database_url: str) -> str:
    """psycopg 3 under SQLAlchemy; accepts plain postgresql:// URLs."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {database_url!r}")


def owner_url() -> str:
    """The URL migrations connect with: DATABASE_OWNER_URL, else DATABASE_URL."""
    settings = get_settings()
    return settings.database_owner_url or settings.database_url


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url or owner_url()))
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head", app_url: str | None = None) -> None:
    """Migrates as the owner, then grants the application role (APP_URL's user) its row rights.

    Without arguments both come from the settings (DATABASE_OWNER_URL, DATABASE_URL). A caller that
    names DATABASE_URL explicitly names APP_URL too, or no role is granted anything."""
    if database_url is None:
        database_url, app_url = owner_url(), app_url or get_settings().database_url
    command.upgrade(alembic_config(database_url), revision)
    if app_url:
        grant_app_role(database_url, app_url)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def grant_app_role(owner: str, app: str) -> None:
    """Creates APP's role if missing, sets its password to APP's, and gives it row rights only.

    Rights: CONNECT, USAGE on schema public, SELECT/INSERT/UPDATE/DELETE on its tables and USAGE on
    its sequences, now and (ALTER DEFAULT PRIVILEGES) on whatever the owner creates later; no CREATE
    on the schema and read-only on alembic_version. Nothing to do when both URLs name one role."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    o, a = conninfo_to_dict(owner), conninfo_to_dict(app)
    role = a.get("user")
    if not role or role == o.get("user"):
        return
    if a.get("dbname") != o.get("dbname"):
        raise ValueError(
            f"the application URL names database {a.get('dbname')!r}, the owner URL {o.get('dbname')!r}"
        )
    name = sql.Identifier(role)
    with psycopg.connect(owner, autocommit=True) as conn:
        exists = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists and exists[0]:
            raise ValueError(
                f"DATABASE_URL's role {role!r} is a superuser: the services need a role with row rights only"
            )
        password = (
            sql.SQL(" PASSWORD {}").format(sql.Literal(a["password"])) if a.get("password") else sql.SQL("")
        )
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN{}").format(name, password))
        owner_role = sql.Identifier(conn.execute("SELECT current_user").fetchone()[0])
        database = sql.Identifier(conn.execute("SELECT current_database()").fetchone()[0])
        statements = [
            "GRANT CONNECT ON DATABASE {db} TO {app}",
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            "GRANT USAGE ON SCHEMA public TO {app}",
            f"GRANT {APP_TABLE_RIGHTS} ON ALL TABLES IN SCHEMA public TO {{app}}",
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {app}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {{owner}} IN SCHEMA public GRANT {APP_TABLE_RIGHTS} "
            "ON TABLES TO {app}",
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT USAGE ON SEQUENCES TO {app}",
        ]
        if conn.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0]:
            statements.append("REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {app}")
        for statement in statements:
            conn.execute(sql.SQL(statement).format(db=database, app=name, owner=owner_role))
