"""The stateful stack's values that AWS generates, handed to the stateless stack through SSM.

The stateful stack `publish`es each value (a key ARN, VPC and subnet ids, the broker's endpoint,
security group and secrets) as an SSM parameter named by `sluice.naming.parameter`; the stateless
stack `read`s it as a template parameter of type `AWS::SSM::Parameter::Value<…>`, which
CloudFormation resolves from Parameter Store at every create and update of the stack, before any
intrinsic function (so `Fn::Select`/`Fn::Split` work on it) and in any resource property. A
dynamic reference (`{{resolve:ssm:…}}`) would be resolved only where a property takes one, and
only re-read when the template changes. Nothing is looked up at synth: synth needs no AWS.

Neither stack then holds an export the other imports, so either can change without a two-phase
deploy; the stage deploys the stateful stack first (stacks/stage.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Fn
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from sluice import naming


def _construct_id(name: str) -> str:
    """`broker/amqps-endpoint` -> `BrokerAmqpsEndpointParameter`."""
    words = name.replace("/", "-").split("-")
    return "".join(w.title() for w in words) + "Parameter"


def publish(scope: Construct, env: str, name: str, value: str) -> ssm.StringParameter:
    """Write `value` to the SSM parameter `naming.parameter(env, name)` (stateful side)."""
    return ssm.StringParameter(
        scope,
        _construct_id(name),
        parameter_name=naming.parameter(env, name),
        string_value=value,
        description=f"{naming.prefix(env)}: {name}, for the stateless stack",
    )


def publish_list(
    scope: Construct, env: str, name: str, values: Sequence[str]
) -> ssm.StringListParameter:
    """Write `values` to the StringList parameter `naming.parameter(env, name)`."""
    return ssm.StringListParameter(
        scope,
        _construct_id(name),
        parameter_name=naming.parameter(env, name),
        string_list_value=list(values),
        description=f"{naming.prefix(env)}: {name}, for the stateless stack",
    )


def read(scope: Construct, env: str, name: str) -> str:
    """The value of `naming.parameter(env, name)`, resolved when the reading stack deploys."""
    return ssm.StringParameter.value_for_string_parameter(scope, naming.parameter(env, name))


def read_list(scope: Construct, env: str, name: str, count: int) -> list[str]:
    """The first `count` items of the StringList parameter `naming.parameter(env, name)`."""
    values = ssm.StringListParameter.value_for_typed_list_parameter(
        scope, naming.parameter(env, name)
    )
    return [Fn.select(i, values) for i in range(count)]
