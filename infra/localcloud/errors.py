"""The one exception hierarchy of localcloud."""


class LocalCloudError(Exception):
    """Something localcloud could not do; the message says what to do about it."""
