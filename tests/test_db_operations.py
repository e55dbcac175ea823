"""`iwan db` in operations: a role that is no superuser (as on managed services), an upgrade that
fails midway, concurrent upgrades, and what `iwan db status` says about the embedded server."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import private_folder

from iwan.db import migrate
from iwan.db.engine import DatabaseError

_numbers = itertools.count()
HEAD = "0006"
PASSWORD = "managed-secret"


def iwan(*args: str, database_url: str | None = None, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("IWAN_DATABASE_URL", None)
    if database_url:
        env["IWAN_DATABASE_URL"] = database_url
    if home:
        env["IWAN_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "iwan", *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@contextlib.contextmanager
def empty_database(template, role: str | None = None):
    """A new database from template0 (no extension, no table); with `role`, a LOGIN role that is no
    superuser and has what a managed service grants (CREATE on the database and on schema public).
    Yields (the superuser's URL, the role's URL or None)."""
    admin, template_url = template
    number = next(_numbers)
    name = f"ops_{number}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} TEMPLATE template0"))
        if role:
            conn.execute(sa.text(f"CREATE ROLE {role} LOGIN NOSUPERUSER PASSWORD '{PASSWORD}'"))
            conn.execute(sa.text(f"GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {name} TO {role}"))
    superuser_url = template_url.set(database=name)
    if role:
        owner = sa.create_engine(superuser_url, isolation_level="AUTOCOMMIT")
        with owner.connect() as conn:
            conn.execute(sa.text(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}"))
        owner.dispose()
    role_url = superuser_url.set(username=role, password=PASSWORD) if role else None
    try:
        yield (
            superuser_url.render_as_string(hide_password=False),
            role_url.render_as_string(hide_password=False) if role_url else None,
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
            if role:
                conn.execute(sa.text(f"DROP ROLE {role}"))


def run_sql(url: str, *statements: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    return found


def extensions(url: str) -> set[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = set(conn.scalars(sa.text("SELECT extname FROM pg_extension")))
    engine.dispose()
    return found


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_role_without_superuser_is_told_what_to_run_and_upgrades_once_the_extension_exists(_template_database):
    with empty_database(_template_database, role=f"managed_{os.getpid()}") as (superuser_url, role_url):
        assert "vector" not in extensions(superuser_url)

        # (a) no vector extension, and this role may not create it: one line, nothing changed
        refused = iwan("db", "upgrade", database_url=role_url)
        assert refused.returncode != 0
        line = one_error_line(refused)
        assert "CREATE EXTENSION vector;" in line
        assert "administrator" in line
        assert tables(superuser_url) == set()  # not even alembic_version

        # (b) an administrator creates it; the same role then upgrades to head
        run_sql(superuser_url, "CREATE EXTENSION vector")
        upgraded = iwan("db", "upgrade", database_url=role_url)
        assert upgraded.returncode == 0, upgraded.stderr
        assert f"schema at revision {HEAD}" in upgraded.stdout
        assert {"alembic_version", "images", "hash_codes", "collections"} <= tables(superuser_url)
        status = json.loads(iwan("db", "status", "--json", database_url=role_url).stdout)
        assert status["revision"] == status["head"] == HEAD


def test_an_upgrade_that_fails_midway_leaves_the_schema_as_it_was(_template_database):
    with empty_database(_template_database) as (url, _):
        # 0004 creates `collections`: here it exists already, so 0004 fails after 0001-0003 ran
        run_sql(url, "CREATE EXTENSION vector", "CREATE TABLE collections (id integer)")
        failed = iwan("db", "upgrade", database_url=url)
        assert failed.returncode != 0
        line = one_error_line(failed)
        assert "collections" in line and "nothing was changed" in line
        assert tables(url) == {"collections"}  # no alembic_version, no table of 0001-0003
        # From a revision part-way, too: the version stays where it was.
        run_sql(url, "DROP TABLE collections")
        engine = sa.create_engine(url)
        try:
            migrate.upgrade(engine, "0002")
            run_sql(url, "CREATE TABLE collections (id integer)")
            before = tables(url)
            with pytest.raises(DatabaseError, match="stays at revision 0002"):
                migrate.upgrade(engine)
            assert migrate.current_revision(engine) == "0002"
            assert tables(url) == before
            assert "hash_codes" not in before
        finally:
            engine.dispose()


def test_concurrent_upgrades_wait_for_one_another(_template_database):
    """The advisory lock still serialises upgrades, now that each runs in one transaction."""
    with empty_database(_template_database) as (url, _):
        run_sql(url, "CREATE EXTENSION vector")
        env = {**os.environ, "IWAN_DATABASE_URL": url}
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "iwan", "db", "upgrade"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=env,
            )
            for _ in range(2)
        ]
        for run in runs:
            stdout, stderr = run.communicate(timeout=300)
            assert run.returncode == 0, stderr
            assert f"schema at revision {HEAD}" in stdout


def test_status_reports_the_embedded_servers_pid_and_data_folder(database_url):
    external = json.loads(iwan("db", "status", "--json", database_url=database_url).stdout)
    assert (external["pid"], external["data_dir"]) == (None, None)

    # IWAN_HOME through a symbolic link: data_dir is where the data really lives
    real_home = private_folder("iwan-test-dbops-") / "home"
    real_home.mkdir()
    home = real_home.parent / "link"
    home.symlink_to(real_home)
    env = {**os.environ, "IWAN_HOME": str(home)}
    env.pop("IWAN_DATABASE_URL", None)
    holder = subprocess.Popen(  # keeps the server up, so that its pid can be compared
        [sys.executable, "-c",
         "import sys; from iwan.db.engine import database_url; print(database_url(), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert holder.stdout.readline().strip(), "the holder did not start the server"
        pgdata = real_home.resolve() / "pgdata"
        status = iwan("db", "status", "--json", home=home)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["data_dir"] == str(pgdata)
        assert report["pid"] == int((pgdata / "postmaster.pid").read_text().split()[0])
        text = iwan("db", "status", home=home)
        assert f"embedded  {pgdata} (server pid {report['pid']})" in text.stdout
    finally:
        holder.communicate("", timeout=120)
