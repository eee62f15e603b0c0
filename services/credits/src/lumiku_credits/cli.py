"""An operator's grant, through the same code as the API. Ships with the credits service, so it runs in its
image: `python -m lumiku_credits.cli grant --user U --amount N` (`lumiku credits grant` in development)."""

from __future__ import annotations

import argparse
import asyncio

from pydantic import ValidationError

from lumiku_common.db import Database
from lumiku_common.errors import AppError
from lumiku_common.ids import new_id
from lumiku_credits import service
from lumiku_credits.schemas import GrantRequest
from lumiku_credits.settings import CreditsSettings


async def grant(settings: CreditsSettings, args: argparse.Namespace) -> str:
    """Returns the line to print; refusals exit with the reason."""
    try:
        return await _grant(settings, args)
    except ValidationError as exc:
        raise SystemExit(f"invalid grant: {exc.errors(include_url=False)[0]['msg']}") from exc
    except AppError as exc:
        raise SystemExit(f"grant refused: {exc.message} {exc.extra or ''}".strip()) from exc


async def _grant(settings: CreditsSettings, args: argparse.Namespace) -> str:
    body = GrantRequest(
        user_id=args.user,
        amount=args.amount,
        type=args.type,
        description=args.description,
        idempotency_key=args.idempotency_key or f"cli:{new_id()}",
    )
    db = Database(settings.database_url, settings.service_name, pool_size=1)
    try:
        async with db.unit_of_work() as session:
            outcome = await service.grant(session, settings, body, granted_by="operator:cli")
    finally:
        await db.dispose()
    entry = outcome.body["transaction"]
    verb = "already granted" if outcome.replayed else "granted"
    return f"{verb} {entry['amount']} credits ({entry['type']}) to {args.user}; balance {outcome.body['balance']}"


def add_grant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", required=True)
    parser.add_argument("--amount", type=int, required=True)
    parser.add_argument("--type", default="adjustment", choices=["purchase", "bonus", "adjustment"])
    parser.add_argument("--description", default="Operator grant")
    parser.add_argument("--idempotency-key")


def run(args: argparse.Namespace) -> None:
    print(asyncio.run(grant(CreditsSettings(), args)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lumiku_credits.cli")
    grant_parser = parser.add_subparsers(dest="command", required=True).add_parser("grant", help="grant credits")
    add_grant_arguments(grant_parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
