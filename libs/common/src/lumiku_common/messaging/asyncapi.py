"""The event contract for apps that are not Python: an AsyncAPI 3 document generated from the event models
(`events.py`), served by the gateway at `/docs/events` and checked in beside this module (`asyncapi.json`);
a test fails when the two differ. Regenerate with `python -m lumiku_common.messaging.asyncapi --write`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from lumiku_common.messaging.events import EVENT_TYPES, Envelope, Event

CHECKED_IN = Path(__file__).with_name("asyncapi.json")
EXCHANGE = "lumiku.events"

# Who publishes and who consumes each event (the suite's services and the sibling apps).
PUBLISHERS: dict[str, list[str]] = {
    "project.": ["projects"],
    "avatar.created": ["avatars"],
    "avatar.updated": ["avatars"],
    "avatar.deleted": ["avatars"],
    "avatar.used": ["pose-generator", "poster-editor"],
    "usage.recorded": ["usage"],
    "credits.": ["credits"],
    "credits.capture": ["avatars", "generation"],
    "credits.release": ["avatars", "generation"],
    "generation.": ["generation"],
}
CONSUMERS: dict[str, list[str]] = {
    "project.deleted": ["avatars", "generation"],
    "generation.run": ["generation"],  # its own work queue, consumed by its workers
    "avatar.created": ["usage"],
    "avatar.deleted": ["usage"],
    "avatar.used": ["usage"],
    "usage.recorded": ["avatars"],
    "credits.capture": ["credits"],
    "credits.release": ["credits"],
}


def _who(table: dict[str, list[str]], event_type: str) -> list[str]:
    exact = table.get(event_type)
    if exact is not None:
        return exact
    return next((v for k, v in table.items() if k.endswith(".") and event_type.startswith(k)), [])


def _name(event: type[Event]) -> str:
    return f"{event.__name__}V{event.version}"


def document() -> dict[str, Any]:
    events = sorted(EVENT_TYPES.values(), key=lambda e: (e.type, e.version))
    _, schemas = models_json_schema(
        [(Envelope, "serialization"), *((e, "validation") for e in events)], ref_template="#/components/schemas/{model}"
    )
    defs: dict[str, Any] = schemas.get("$defs", {})
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event in events:
        name = _name(event)
        envelope = {
            "allOf": [
                {"$ref": "#/components/schemas/Envelope"},
                {
                    "type": "object",
                    "required": ["id", "type", "source", "time", "data"],
                    "properties": {
                        "type": {"const": event.type},
                        "version": {"const": event.version},
                        "data": {"$ref": f"#/components/schemas/{event.__name__}"},
                    },
                },
            ]
        }
        messages[name] = {
            "name": event.type,
            "title": f"{event.type} v{event.version}",
            "summary": (event.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ") or event.type,
            "contentType": "application/json",
            "payload": envelope,
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": "0.3.0"}},
        }
        channels[event.type] = {
            "address": event.type,
            "description": f"Routing key `{event.type}` on the topic exchange `{EXCHANGE}`.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {"name": EXCHANGE, "type": "topic", "durable": True, "autoDelete": False},
                    "bindingVersion": "0.3.0",
                }
            },
        }
        for action, table in (("send", PUBLISHERS), ("receive", CONSUMERS)):
            who = _who(table, event.type)
            if who:
                operations[f"{action}{name}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{event.type}"},
                    "messages": [{"$ref": f"#/channels/{event.type}/messages/{name}"}],
                    "x-services": who,
                }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Lumiku suite events",
            "version": "1.0.0",
            "description": (
                f"Every event the suite publishes or consumes, on the durable topic exchange `{EXCHANGE}`; the "
                "routing key is the event type. Messages are persistent JSON envelopes (`id` is the dedup key "
                "and should also be the AMQP message id); `data` is the versioned event. Publish with "
                "publisher confirms. Generated from lumiku_common.messaging.events."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": defs},
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {CHECKED_IN.name} instead of printing it")
    args = parser.parse_args(argv)
    if args.write:
        CHECKED_IN.write_text(render())
    else:
        print(render(), end="")


if __name__ == "__main__":
    main()
