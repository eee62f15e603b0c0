"""`lumiku` — developer commands (dev tooling: not installed in service images).

lumiku token --user U [--email E] [--admin] [--days N]   mint a user JWT signed with JWT_SECRET
lumiku migrate SERVICE                                   migrate a service's database to head
lumiku revision SERVICE -m MESSAGE                       autogenerate a migration for a service
lumiku credits grant --user U --amount N [...]           grant credits (lumiku_credits.cli, which ships with credits)
lumiku fake-hf [--port 8900] [--mode ok] [--delay 2]     a local Hugging Face stand-in (try 503/429/failures)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from datetime import timedelta
from pathlib import Path

from lumiku_common.auth import Role, mint_user_token
from lumiku_common.settings import ServiceSettings
from lumiku_credits import cli as credits_cli


def _service_settings(service: str) -> tuple[ServiceSettings, Path]:
    package = importlib.import_module(f"lumiku_{service}")
    settings_module = importlib.import_module(f"lumiku_{service}.settings")
    settings_cls = next(
        v
        for v in vars(settings_module).values()
        if isinstance(v, type) and issubclass(v, ServiceSettings) and v is not ServiceSettings
    )
    return settings_cls(), Path(package.__file__).parent / "migrations"  # type: ignore[arg-type]


def _token(args: argparse.Namespace) -> None:
    settings = ServiceSettings()
    role: Role = "admin" if args.admin else "user"
    print(mint_user_token(settings.jwt_secret, args.user, args.email, role, timedelta(days=args.days)))


def _migrate(args: argparse.Namespace) -> None:
    from lumiku_common.migrations import upgrade

    settings, path = _service_settings(args.service)
    asyncio.run(upgrade(path, settings.database_url))
    print(f"{args.service}: migrated {settings.database_url.rsplit('/', 1)[-1]} to head")


def _revision(args: argparse.Namespace) -> None:
    from alembic import command

    from lumiku_common.db import ensure_database
    from lumiku_common.migrations import alembic_config, upgrade

    settings, path = _service_settings(args.service)
    asyncio.run(ensure_database(settings.database_url))
    asyncio.run(upgrade(path, settings.database_url))
    command.revision(alembic_config(path, settings.database_url), message=args.message, autogenerate=True)


def _dev(_: argparse.Namespace) -> None:
    from lumiku_devtools.dev import run

    run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lumiku")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("dev", help="run the whole suite locally").set_defaults(func=_dev)

    token = sub.add_parser("token", help="mint a development user JWT")
    token.add_argument("--user", required=True)
    token.add_argument("--email")
    token.add_argument("--admin", action="store_true")
    token.add_argument("--days", type=int, default=7)
    token.set_defaults(func=_token)

    migrate = sub.add_parser("migrate", help="migrate a service's database")
    migrate.add_argument("service")
    migrate.set_defaults(func=_migrate)

    revision = sub.add_parser("revision", help="autogenerate a migration")
    revision.add_argument("service")
    revision.add_argument("-m", "--message", required=True)
    revision.set_defaults(func=_revision)

    fake_hf = sub.add_parser("fake-hf", help="run a local stand-in of the Hugging Face inference API")
    from lumiku_devtools import fake_hf as fake_hf_module

    fake_hf_module.add_arguments(fake_hf)
    fake_hf.set_defaults(func=fake_hf_module.run)

    credits = sub.add_parser("credits", help="credits operations")
    credits_sub = credits.add_subparsers(dest="credits_command", required=True)
    grant = credits_sub.add_parser("grant", help="grant credits to a user")
    credits_cli.add_grant_arguments(grant)
    grant.set_defaults(func=credits_cli.run)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
