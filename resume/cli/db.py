"""``resume db``: create, upgrade and inspect the state database."""

from __future__ import annotations

import argparse

from resume.cli.options import add_db_option


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "db", help="manage the state database", description="Manage the state database schema."
    )
    commands = parser.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    up = commands.add_parser(
        "upgrade",
        help="create the database or migrate it to the newest schema",
        description="Create the database if needed and apply every pending Alembic migration.",
    )
    add_db_option(up)
    up.set_defaults(run=run_upgrade)
    current = commands.add_parser(
        "current",
        help="print the schema revision of the database",
        description="Print the Alembic revision the database is at and the newest one known.",
    )
    add_db_option(current)
    current.set_defaults(run=run_current)


def run_upgrade(args: argparse.Namespace) -> int:
    from resume.store import migrate, open_store

    with open_store(args.db) as store:
        revision = migrate.current_revision(store.engine)
    print(f"{store.url}: at revision {revision} (head)")
    return 0


def run_current(args: argparse.Namespace) -> int:
    from resume.store import migrate, resolve_url, store_exists
    from resume.store.engine import make_engine

    url = resolve_url(args.db)
    head = migrate.head_revision()
    if not store_exists(args.db):
        print(f"{url}: no database yet (head is {head}; `resume db upgrade` creates it)")
        return 0
    engine = make_engine(url, readonly=True)
    try:
        revision = migrate.current_revision(engine)
    finally:
        engine.dispose()
    marker = "(head)" if revision == head else f"(head is {head}; run `resume db upgrade`)"
    print(f"{url}: at revision {revision} {marker}")
    return 0
