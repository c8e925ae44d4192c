"""The public-reuse example (housing, education): one public provider, reusers admitted by a
data-space authority, each under time and count limits. See README.md next to this file.

Run from the repository root: ``make examples``, or
``.venv/bin/python examples/public-reuse/run.py [N]`` (N reusers, 5 by default).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from space import (  # noqa: E402
    Daemon,
    admit,
    check,
    consumer_folder,
    dcp_identity,
    free_port_pair,
    main,
    provider_folder,
    running,
)

from connector import authority  # noqa: E402
from connector.participant.trust import add_trusted_peer  # noqa: E402

DATASET = "social-housing"
COUNT_LIMIT = 2  # policies/reuse-licence.yaml: count lteq 2


def story(root: Path, n: int) -> None:
    ministry = Daemon("authority", root / "authority", f"https://127.0.0.1:{free_port_pair()}",
                      command=("authority", "run"), ready_word=b"serving")
    settings = authority.init_authority(ministry.dir, url=ministry.url)
    provider = provider_folder(root, "housing-registry", HERE)
    reusers = [consumer_folder(root, f"reuser-{i}") for i in range(1, n + 1)]
    outsider = consumer_folder(root, "outsider")  # in DCP mode too, but never admitted
    ca = [ministry.dir / authority.TLS_CERT, provider.dir / "tls" / "cert.pem",
          *(r.dir / "tls" / "cert.pem" for r in (*reusers, outsider))]
    for member in (provider, *reusers, outsider):
        dcp_identity(member, settings.did, ca)
        if member is not outsider:
            admit(ministry.dir, member)
    for reuser in (*reusers, outsider):  # each knows the provider; the provider pins nobody
        add_trusted_peer(reuser.dir, provider.dir, attributes={}, tls_cert=None)
    print(f"[1] the authority {settings.did} admitted housing-registry and {n} reusers "
          "(membership credentials; the provider pins nobody)")
    source = (provider.dir / "data" / f"{DATASET}.jsonl").read_bytes()
    with running([ministry, provider, *reusers, outsider]):
        agreements = {}
        for reuser in reusers:
            agreement = agreements[reuser.name] = reuser.negotiate(provider.url, DATASET)
            out = root / f"{reuser.name}.jsonl"
            reuser.cli("transfer", agreement, "--out", str(out))
            check(out.read_bytes() == source, f"{reuser.name}'s copy differs from the register")
        records = len(source.splitlines())
        print(f"[2] {n} reusers negotiated and pulled {records} records each, every copy "
              "verified")
        first = reusers[0]
        for use in range(2, COUNT_LIMIT + 1):
            first.cli("transfer", agreements[first.name], "--out", str(root / "again.jsonl"))
            print(f"[3] {first.name} pulls again: use {use} of {COUNT_LIMIT} allowed")
        refused = first.cli("transfer", agreements[first.name], "--out",
                            str(root / "refused.jsonl"), ok=False)
        reason = (refused.stderr + refused.stdout).strip()
        check(refused.returncode != 0, f"{first.name}'s use {COUNT_LIMIT + 1} was served")
        check("count" in reason, f"the refusal does not name the count limit: {reason!r}")
        print(f"[4] {first.name}'s use {COUNT_LIMIT + 1} is refused:")
        for line in reason.splitlines():
            print(f"      {line}")
        stranger = outsider.cli("negotiate", provider.url, DATASET, ok=False)
        check(stranger.returncode != 0 and "401" in stranger.stderr + stranger.stdout,
              "the outsider, never admitted, was not refused as unauthorised")
        print("[5] outsider (no membership credential) is refused:")
        for line in (stranger.stderr + stranger.stdout).strip().splitlines():
            print(f"      {line}")
        listed = json.loads(provider.cli("agreements", "--json").stdout)
        uses = {a["id"]: a["uses"] for a in listed}
        check(set(uses) == set(agreements.values()),
              f"the provider holds {len(uses)} agreements, not the {n} made")
        print(f"[6] the provider's side (connector agreements): {len(uses)} agreements, uses "
              + ", ".join(f"{name} {uses[a]}" for name, a in agreements.items()))


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    sys.exit(main("public-reuse", lambda root: story(root, size)))
