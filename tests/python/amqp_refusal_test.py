"""A connection Courier's AMQP endpoint turns away hears why, in AMQP, with python-qpid-proton.

Run by bridges/amqp/tests/refusal.rs against a gateway that refuses every connection with
amqp:resource-limit-exceeded and `--description`. Clients that choose SASL ANONYMOUS, SASL PLAIN
(with credentials no users file holds: nothing is checked) and no SASL at all each see the
connection closed with that condition and description. Every wait is bounded; exits non-zero on any
failure.
"""

import argparse
import sys

from proton import ConnectionException
from proton.utils import BlockingConnection

DEADLINE = 30.0
CONDITION = "amqp:resource-limit-exceeded"


def expect_refused(what, description, **options):
    try:
        connection = BlockingConnection(**options, timeout=DEADLINE)
        # The CLOSE may be read with the first thing the client waits for.
        connection.create_sender("refused")
    except ConnectionException as error:
        text = str(error)
        if CONDITION not in text or description not in text:
            raise AssertionError(f"{what}: expected {CONDITION} and {description!r}, got {text}")
        print(f"{what}: refused ({text})")
        return
    raise AssertionError(f"{what}: the connection was let in")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--description", required=True)
    args = parser.parse_args()
    url = f"amqp://{args.address}"
    expect_refused("SASL ANONYMOUS", args.description, url=url, allowed_mechs="ANONYMOUS")
    expect_refused("SASL PLAIN", args.description, url=url, user="nobody", password="not-checked",
                   allowed_mechs="PLAIN", allow_insecure_mechs=True)
    expect_refused("no SASL", args.description, url=url, sasl_enabled=False)
    print("all checks passed")


if __name__ == "__main__":
    sys.exit(main())
