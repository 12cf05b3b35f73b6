#!/usr/bin/env python3
"""Lists the tests CTest skipped, with the reason each gave, and under CI=true fails on any that is not
a GPU test (label gpu or multi_gpu): in CI a skipped test is a check that did not run, and only the
GPU ones may be absent (CI has no GPU). Outside CI the skips stay skips.

usage: check_skips.py BUILD_DIR JUNIT_XML        (JUNIT_XML: ctest --output-junit; exit 1 = failed)
"""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

ALLOWED = {"gpu", "multi_gpu"}


def labels_by_test(build_dir):
    """Test name -> its CTest labels, from ctest --show-only=json-v1."""
    out = subprocess.run(["ctest", "--test-dir", build_dir, "--show-only=json-v1"], capture_output=True, text=True,
                         check=True).stdout
    labels = {}
    for t in json.loads(out)["tests"]:
        props = {p["name"]: p["value"] for p in t.get("properties", [])}
        labels[t["name"]] = set(props.get("LABELS", []))
    return labels


def reason(output):
    """The line a skipped test gave as its reason: GoogleTest's message after "Skipped", or the scripts'
    "SKIP ..." / "skipped: ..." line."""
    lines = (output or "").splitlines()
    for i, line in enumerate(lines):
        if line.endswith(": Skipped") and i + 1 < len(lines):
            return lines[i + 1].strip()
        if line.lower().startswith(("skip", "skipped:")):
            return line.strip()
    return "(no reason printed)"


def main():
    build_dir, junit = sys.argv[1:3]
    skipped = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("skipped") is not None:
            skipped.append((case.get("name"), reason(case.findtext("system-out"))))
    if not skipped:
        return 0
    labels = labels_by_test(build_dir)
    in_ci = os.environ.get("CI", "").lower() == "true"
    bad = [(n, r) for n, r in skipped if not (labels.get(n, set()) & ALLOWED)]
    for name, why in skipped:
        tag = "NOT ALLOWED IN CI" if in_ci and (name, why) in bad else "skipped"
        print(f"{tag}: {name}: {why}")
    if in_ci and bad:
        print(f"check_skips: CI=true and {len(bad)} test(s) other than the GPU ones did not run (above); "
              f"each needs what its line names. Outside CI these are skips.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
