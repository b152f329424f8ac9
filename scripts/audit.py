"""Audit the installed Python dependencies for known vulnerabilities with pip-audit, honestly.

    python scripts/audit.py [--strict]

pip-audit prints "No known vulnerabilities found" and exits 0 even when it could not look a single package up
(no route to its vulnerability service: every dependency is reported with a ``skip_reason``). A CI gate that
trusted that line would be green without auditing anything, so this wrapper reads pip-audit's JSON and tells the
three outcomes apart:

* exit 1: at least one known vulnerability (package, version, advisory id and fixed versions are printed);
* exit 0: every third-party package was looked up and none is affected;
* not audited: packages could not be looked up. Printed loudly; exit 3 with ``--strict`` (a machine that must
  audit), else 0 so an offline CI machine does not fail for a reason that has nothing to do with the code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

#: Our own distribution is not on PyPI by design; it is never "not audited".
OWN = {"atomicsig"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strict", action="store_true", help="exit 3 when any package could not be audited")
    ap.add_argument("--timeout", type=float, default=300, help="seconds before giving up on pip-audit")
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "pip_audit", "--local", "--format", "json", "--progress-spinner", "off"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"audit: pip-audit did not finish in {args.timeout:.0f} s; NOT AUDITED", file=sys.stderr)
        return 3 if args.strict else 0
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"audit: pip-audit failed (exit {proc.returncode}): {tail}; NOT AUDITED", file=sys.stderr)
        return 3 if args.strict else 0
    deps = [d for d in report.get("dependencies", []) if d.get("name", "").lower() not in OWN]
    vulnerable = [d for d in deps if d.get("vulns")]
    skipped = [d for d in deps if d.get("skip_reason")]
    for d in vulnerable:
        for v in d["vulns"]:
            fixed = ", ".join(v.get("fix_versions") or []) or "no fix released"
            print(f"VULNERABLE {d['name']} {d.get('version', '?')}: {v.get('id')} (fixed in {fixed})")
    audited = len(deps) - len(skipped)
    print(f"audit: {len(deps)} packages, {audited} looked up, {len(vulnerable)} vulnerable, "
          f"{len(skipped)} not audited", file=sys.stderr)
    if vulnerable:
        return 1
    if skipped:
        names = ", ".join(sorted(d["name"] for d in skipped)[:8]) + (" …" if len(skipped) > 8 else "")
        print(f"audit: NOT AUDITED ({len(skipped)} packages, e.g. {names}): "
              f"{skipped[0]['skip_reason'].split(':')[0]}; no vulnerability database reachable from here",
              file=sys.stderr)
        return 3 if args.strict else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
