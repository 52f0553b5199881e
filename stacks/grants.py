"""IAM grants with their reasons: one call adds a statement to a customer-managed policy and, for
every wildcard resource it names, the matching cdk-nag acknowledgement (AwsSolutions-IAM5),
written from the resource itself: no ARN is typed twice, in a grant and again in cdk-nag's
notation, and a wildcard without a reason fails synth.

tests/infra/test_acknowledgements.py reruns the packs with the acknowledgements set aside: an
acknowledgement this module writes that hides no finding fails it, so the notation is checked
against cdk-nag itself on every synth of the tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_iam as iam
from constructs import Construct

IAM5 = "AwsSolutions-IAM5"


def _flatten(node: Any) -> str:
    """cdk-nag's flattenCfnReference (cdk-nag 3.0.2, lib/utils/flatten-cfn-reference.js): how an
    IAM5 finding names a resource of the template."""
    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, Mapping):
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return str(delimiter).join(_flatten(item) for item in items)
        if "Fn::Sub" in node:
            return _flatten(node["Fn::Sub"])
        if "Fn::GetAtt" in node:
            resource, attribute = node["Fn::GetAtt"]
            return f"<{_flatten(resource)}.{_flatten(attribute)}>"
        if "Fn::ImportValue" in node:
            return _flatten(node["Fn::ImportValue"])
        if "Ref" in node:
            return f"<{_flatten(node['Ref'])}>"
    return json.dumps(node, separators=(",", ":"))


def nag_resource(scope: Construct, resource: str) -> str:
    """`resource` (an ARN, tokens allowed) as cdk-nag's IAM5 finding names it in `scope`'s
    stack."""
    return _flatten(Stack.of(scope).resolve(resource))


def allow(
    policy: iam.ManagedPolicy,
    actions: Sequence[str],
    resources: Sequence[str],
    *,
    reason: str | Mapping[str, str] | None = None,
    sid: str | None = None,
    conditions: Mapping[str, Any] | None = None,
) -> iam.PolicyStatement:
    """Allow `actions` on `resources` in `policy`; each resource with a wildcard is acknowledged
    for cdk-nag's IAM5 with `reason` (one for all, or one per resource), which it then
    requires."""
    statement = iam.PolicyStatement(
        sid=sid,
        actions=list(actions),
        resources=list(resources),
        conditions=dict(conditions) if conditions else None,
    )
    policy.add_statements(statement)
    _acknowledge(policy, statement, reason)
    return statement


def policy(
    scope: Construct,
    construct_id: str,
    *,
    description: str,
    roles: Sequence[iam.IRole],
    statements: Sequence[iam.PolicyStatement],
    reasons: Mapping[str, str] | None = None,
) -> iam.ManagedPolicy:
    """A customer-managed policy of `statements` for `roles`; a statement with a wildcard
    resource needs its reason in `reasons`, under its Sid."""
    made = iam.ManagedPolicy(scope, construct_id, description=description, roles=list(roles))
    for statement in statements:
        made.add_statements(statement)
        _acknowledge(made, statement, (reasons or {}).get(statement.sid or ""))
    return made


def _acknowledge(
    policy: iam.ManagedPolicy,
    statement: iam.PolicyStatement,
    reason: str | Mapping[str, str] | None,
) -> None:
    # One acknowledgement per finding: a resource granted again for another reason gets both
    # (the last acknowledgement of an id is the one cdk-nag reads).
    given: dict[str, str] = policy.__dict__.setdefault("_sluice_reasons", {})
    for resource in statement.resources:
        flat = nag_resource(policy, resource)
        if "*" not in flat:
            continue
        why = reason.get(resource) if isinstance(reason, Mapping) else reason
        if not why:
            raise ValueError(
                f"{policy.node.path}: {', '.join(statement.actions)} on {flat}: a wildcard "
                "resource needs the reason it cannot be narrower"
            )
        text = given.get(flat, "")
        text = f"{text} {why}".strip() if why not in text else text
        given[flat] = text
        Validations.of(policy).acknowledge(
            Acknowledgment(id=f"{IAM5}[Resource::{flat}]", reason=text)
        )
