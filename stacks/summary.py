"""Print what `cdk synth` produced: stacks, resource counts per type, compliance packs and result."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from stacks import compliance, config


def templates(outdir: Path) -> dict[str, dict]:
    """Stack name -> template, for every stack of every nested assembly under `outdir`."""
    found: dict[str, dict] = {}
    for manifest in sorted(outdir.rglob("manifest.json")):
        artifacts = json.loads(manifest.read_text()).get("artifacts", {})
        for artifact in artifacts.values():
            if artifact.get("type") != "aws:cloudformation:stack":
                continue
            props = artifact["properties"]
            template = json.loads((manifest.parent / props["templateFile"]).read_text())
            found[props.get("stackName", props["templateFile"])] = template
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--env", default="dev")
    args = parser.parse_args(argv)
    cfg = config.load(args.env)
    stacks = templates(args.outdir)
    if not stacks:
        print(f"no stacks found under {args.outdir}", file=sys.stderr)
        return 1
    print(f"\nSluice {cfg.name} ({cfg.region}): {len(stacks)} stacks in {args.outdir}/")
    for name, template in stacks.items():
        kinds = Counter(r["Type"] for r in template.get("Resources", {}).values())
        print(f"  {name}: {sum(kinds.values())} resources")
        for kind, count in sorted(kinds.items()):
            print(f"      {count:3d}  {kind}")
    report = args.outdir / "validation-report.json"
    violations = 0
    if report.exists():
        for plugin in json.loads(report.read_text()).get("pluginReports", []):
            violations += len(plugin.get("violations", []))
    packs = ", ".join(cfg.compliance_packs)
    verdict = "passed, 0 findings" if violations == 0 else f"FAILED, {violations} findings"
    waived = ", ".join(w.control for w in compliance.guard_waivers(cfg)) or "none"
    print(f"  compliance: cdk-nag 3 ({packs}) and AWS Control Tower proactive controls")
    print(f"    (cfn-guard; waived here, see stacks/compliance.py: {waived}): {verdict}")
    return 0 if violations == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
