"""localcloud: local emulators of the Google Cloud APIs the product uses.

Every piece speaks the real wire protocol, so the official client libraries and the
product's own functions run against it unchanged.
"""
