"""A real SMTP server for tests/api/notify.rs: aiosmtpd (deploy/test.sh installs it into
~/.cache/trainq/aiosmtpd) on 127.0.0.1:PORT, writing each message it accepts to FOLDER as one
JSON file (envelope recipients, decoded subject, Message-ID, plain-text body), renamed into place
so a reader never sees half a file.

    python smtp_sink.py PORT FOLDER [starttls|smtps CERT KEY]

With SMTP_SINK_DELAY_SECS set, each message takes that long before it is accepted (so a test can
kill the sender in the middle of its deliveries).

With `starttls` the server offers STARTTLS and refuses mail without it; with `smtps` it speaks TLS
from the first byte. Each record says whether its message came over TLS.
"""

import asyncio
import email
import email.header
import email.policy
import itertools
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, folder):
        self.folder = folder
        self.numbers = itertools.count()
        self.delay = float(os.environ.get("SMTP_SINK_DELAY_SECS") or 0)

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(message["From"]),
            "to": str(message["To"]),
            "subject": str(message["Subject"]),
            "message_id": str(message["Message-ID"]),
            "body": body.get_content() if body is not None else "",
            "tls": server.transport.get_extra_info("ssl_object") is not None,
        }
        name = f"{os.getpid()}-{next(self.numbers)}"
        partial = os.path.join(self.folder, f".{name}.partial")
        with open(partial, "w", encoding="utf-8") as file:
            json.dump(record, file)
        os.rename(partial, os.path.join(self.folder, f"{name}.json"))
        return "250 OK"


def main():
    port, folder = int(sys.argv[1]), sys.argv[2]
    os.makedirs(folder, exist_ok=True)
    tls = {}
    if len(sys.argv) > 3:
        mode, cert, key = sys.argv[3:6]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        tls = {"starttls": {"tls_context": context, "require_starttls": True}, "smtps": {"ssl_context": context}}[mode]
    controller = Controller(Sink(folder), hostname="127.0.0.1", port=port, **tls)
    controller.start()
    print("smtp sink ready", flush=True)
    # Until the test kills the process.
    threading.Event().wait()


if __name__ == "__main__":
    main()
