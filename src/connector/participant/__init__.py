"""The participant folder: the git repository an organisation keeps for its connector.

One module for each part of it, each an IO shell around ``config``, ``keys`` and the pure
``core``:

    layout       where each file lives, and the small file helpers the others share
    init         ``connector init``: a new folder from the templates
    datasets     ``datasets/*.toml``: declarations and their rules
    policies     ``policies/*.json`` and ``*.yaml``: loading, hashes, git commits
    trust        ``trust/*.json``: pinned peers and their rules; ``connector trust add``
    keys         signing-key rotation (``connector keys rotate``)
    credentials  ``credentials/*.jwt``: verifiable credentials this participant presents
    lint         ``connector policy check``: every problem as ``file:line: message``

A loader and the linter apply the same rules: each part has one function that lists the
problems of a parsed file as (key, message); a loader raises the first, the linter reports
them all with their lines.
"""
