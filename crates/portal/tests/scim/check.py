"""Runs scim2-tester (PyPI), the SCIM 2.0 compliance checks, against a
portal's SCIM endpoint: check.py BASE_URL TOKEN. Prints one line per check
and a summary; exits 1 when any check fails or errors, or when none ran."""

import collections
import sys

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server


def main() -> int:
    base_url, token = sys.argv[1], sys.argv[2]
    http = Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    client = SyncSCIMClient(http)
    results = check_server(client, raise_exceptions=False)
    counts = collections.Counter()
    for result in results:
        status = result.status.name
        counts[status] += 1
        where = f" [{result.resource_type}]" if getattr(result, "resource_type", None) else ""
        reason = (result.reason or "").replace("\n", " | ")
        print(f"{status:8} {result.title}{where}: {reason}")
    print("SUMMARY " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    bad = [r for r in results if r.status not in (Status.SUCCESS, Status.SKIPPED)]
    if bad or counts["SUCCESS"] == 0:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
