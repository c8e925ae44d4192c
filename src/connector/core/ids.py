"""Ids as people read and type them: short ids in tables, and the short id someone typed
matched back to the whole one.

Our process and agreement ids are time-ordered UUIDs (``service.process.new_urn``, RFC 9562
version 7): their first characters are the time they were made, shared by every id of the
same minute, and their last ones are random. So a short id is the **last** eight hex digits;
a typed id matches an id it begins or ends (a peer's or an older random id still matches by
its beginning).
"""

from __future__ import annotations

URN_UUID = "urn:uuid:"
# Eight hex digits tell apart 4 billion ids: plenty for one participant's processes.
SHORT_ID_LEN = 8


def short_id(value: str) -> str:
    """``urn:uuid:01a24975-df92-7a28-b2e7-aff5643184de`` -> ``643184de``; any other id
    unchanged."""
    if value.startswith(URN_UUID):
        return value[-SHORT_ID_LEN:]
    return value


def names(given: str, value: str) -> bool:
    """Whether ``given`` (typed, ``urn:uuid:`` optional) names the id ``value``: the whole
    id, or its beginning or end."""
    if given == value:
        return True
    part = given.removeprefix(URN_UUID)
    bare = value.removeprefix(URN_UUID)
    return bool(part) and (bare.startswith(part) or bare.endswith(part))
