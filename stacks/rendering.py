"""Synthesized templates as a deployment would see them: intrinsics resolved to concrete strings.

The catalogue checks compare our templates with what AWS publishes (managed policy paths, IAM
actions and their resource types, service principals), and the synth-time checks measure values
against service limits (Elastic Beanstalk's environment properties). Both need strings, so every
`Ref`, `Fn::GetAtt`, `Fn::Join`, `Fn::Sub`, `Fn::Select`, `Fn::Split` and `Fn::ImportValue` is
rendered the way CloudFormation would resolve it: a resource's physical name from its properties
(or a stand-in where CloudFormation generates it) and its ARN in the service's ARN format. A
template parameter of type `AWS::SSM::Parameter::Value<…>` and a `{{resolve:ssm:…}}` dynamic
reference read what another stack of the environment writes to that SSM parameter. With
`worst_case`, every generated name takes the longest length CloudFormation may give it, so a
limit holds for any name a deployment gets. A resource type or attribute without a rendering
raises, so a new kind of resource cannot slip past the checks unrendered.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ACCOUNT = "123456789012"
PARTITION = "aws"
SSM_PARAMETER_TYPE = "AWS::SSM::Parameter::Value"
# {{resolve:ssm:name}} or {{resolve:ssm:name:version}}
SSM_REFERENCE = re.compile(r"\{\{resolve:ssm:([^:}]+)(?::\d+)?\}\}")


# The longest name CloudFormation generates for a resource of each type (its service's limit).
GENERATED_NAME_MAX = {
    "AWS::Lambda::Function": 64,
    "AWS::IAM::Role": 64,
    "AWS::IAM::ManagedPolicy": 128,
    "AWS::IAM::InstanceProfile": 128,
    "AWS::SQS::Queue": 80,
    "AWS::S3::Bucket": 63,
    "AWS::SNS::Topic": 256,
}


@dataclass(frozen=True)
class Stack:
    """One stack's template within its environment."""

    name: str
    template: Mapping[str, Any]
    env: Environment

    @property
    def resources(self) -> Mapping[str, Mapping[str, Any]]:
        return self.template.get("Resources", {})

    def render(self, value: Any) -> Any:
        """`value` with every intrinsic function resolved (recursively)."""
        if isinstance(value, list):
            return [self.render(v) for v in value]
        if isinstance(value, str) and "{{resolve:ssm:" in value:
            return SSM_REFERENCE.sub(lambda m: str(self.env.ssm_parameter(m[1])), value)
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                lid, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(lid, attr)
            if key == "Fn::Join":
                sep, parts = arg
                return sep.join(str(p) for p in self.render(parts))
            if key == "Fn::Select":
                index, items = arg
                return self.render(items)[int(self.render(index))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.render(text)).split(sep)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::ImportValue":
                return self.env.export(str(self.render(arg)))
            if key == "Fn::GetAZs":
                return [f"{self.env.region}{z}" for z in "abc"]
            if key.startswith("Fn::"):
                raise NotImplementedError(f"{self.name}: cannot render {key}")
        return {k: self.render(v) for k, v in value.items()}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])

        def one(m: re.Match[str]) -> str:
            token = m.group(1)
            if token in variables:
                return str(self.render(variables[token]))
            if "." in token:
                lid, attr = token.split(".", 1)
                return str(self.get_att(lid, attr))
            return str(self.ref(token))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    # -- Ref and GetAtt -------------------------------------------------------------------------

    def ref(self, lid: str) -> str:
        env = self.env
        pseudo = {
            "AWS::Partition": PARTITION,
            "AWS::Region": env.region,
            "AWS::AccountId": env.account,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": self.name,
        }
        if lid in pseudo:
            return pseudo[lid]
        if lid in self.template.get("Parameters", {}):
            return self._parameter(lid)
        resource = self.resources[lid]
        kind, props = resource["Type"], resource.get("Properties", {})
        by_arn = {
            "AWS::SNS::Topic",
            "AWS::Lambda::Alias",
            "AWS::Lambda::Version",
            "AWS::Lambda::LayerVersion",
            "AWS::IAM::ManagedPolicy",
            "AWS::SecretsManager::Secret",
        }
        if kind in by_arn:
            return self._arn(lid, kind, props)
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{env.region}.amazonaws.com/{env.account}/{self._queue_name(lid, props)}"
        if kind == "AWS::KMS::Key":
            return self._key_id(lid)
        names = {
            "AWS::S3::Bucket": "BucketName",
            "AWS::DynamoDB::Table": "TableName",
            "AWS::Lambda::Function": "FunctionName",
            "AWS::Logs::LogGroup": "LogGroupName",
            "AWS::IAM::Role": "RoleName",
            "AWS::IAM::InstanceProfile": "InstanceProfileName",
            "AWS::ElasticBeanstalk::Application": "ApplicationName",
            "AWS::ElasticBeanstalk::Environment": "EnvironmentName",
            "AWS::ElasticBeanstalk::ApplicationVersion": None,
            "AWS::AmazonMQ::Broker": None,
            "AWS::CloudWatch::Alarm": "AlarmName",
        }
        if kind in names:
            return self._name(lid, kind, props, names[kind])
        if kind.startswith("AWS::EC2::"):
            # As long as EC2's ids (`subnet-0123456789abcdef0`), and one per resource.
            return f"{kind.split('::')[-1].lower()}-{hashlib.sha256(lid.encode()).hexdigest()[:17]}"
        if kind.startswith("Custom::") or kind == "AWS::CloudFormation::CustomResource":
            return f"custom-{lid.lower()}"
        raise NotImplementedError(f"{self.name}: no Ref rendering for {kind} ({lid})")

    def _parameter(self, lid: str) -> Any:
        """A template parameter: an SSM parameter type reads its parameter (a list type a
        StringList, split as CloudFormation splits it); any other is a stand-in."""
        parameter = self.template["Parameters"][lid]
        kind = parameter["Type"]
        if not kind.startswith(SSM_PARAMETER_TYPE):
            return f"param-{lid}"
        value = self.env.ssm_parameter(parameter["Default"])
        return value.split(",") if kind.startswith(f"{SSM_PARAMETER_TYPE}<List<") else value

    def get_att(self, lid: str, attr: str) -> Any:
        resource = self.resources[lid]
        kind, props = resource["Type"], resource.get("Properties", {})
        if attr == "Arn" or (kind == "AWS::SNS::Topic" and attr == "TopicArn"):
            return self._arn(lid, kind, props)
        if kind == "AWS::SQS::Queue" and attr == "QueueName":
            return self._queue_name(lid, props)
        if kind == "AWS::SQS::Queue" and attr == "QueueUrl":
            return self.ref(lid)
        if kind == "AWS::EC2::SecurityGroup" and attr == "GroupId":
            return self.ref(lid)
        if kind == "AWS::Lambda::Version" and attr == "Version":
            return "1"
        if kind == "AWS::KMS::Key" and attr == "KeyId":
            return self._key_id(lid)
        if kind == "AWS::AmazonMQ::Broker" and attr == "AmqpEndpoints":
            return [f"amqps://b-{lid.lower()}.mq.{self.env.region}.amazonaws.com:5671"]
        if kind == "AWS::EC2::VPC" and attr in ("CidrBlock", "DefaultSecurityGroup"):
            return "10.0.0.0/16" if attr == "CidrBlock" else f"sg-default-{lid.lower()}"
        if kind.startswith("Custom::"):
            return f"custom-{lid.lower()}-{attr}"
        raise NotImplementedError(f"{self.name}: no GetAtt rendering for {kind}.{attr} ({lid})")

    def _queue_name(self, lid: str, props: Mapping[str, Any]) -> str:
        return self._name(lid, "AWS::SQS::Queue", props, "QueueName")

    def _name(self, lid: str, kind: str, props: Mapping[str, Any], key: str | None) -> str:
        """The physical name: the property when set, else a stand-in like CloudFormation's."""
        if key and key in props:
            return str(self.render(props[key]))
        name = f"gen-{lid.lower()[:40]}"
        if self.env.worst_case:
            name = name.ljust(GENERATED_NAME_MAX.get(kind, 64), "x")
        return name

    def _key_id(self, lid: str) -> str:
        return f"00000000-0000-0000-0000-{hashlib.sha256(lid.encode()).hexdigest()[:12]}"

    def _arn(self, lid: str, kind: str, props: Mapping[str, Any]) -> str:
        region, account = self.env.region, self.env.account
        head = f"arn:{PARTITION}"
        if kind == "AWS::SQS::Queue":
            return f"{head}:sqs:{region}:{account}:{self._queue_name(lid, props)}"
        if kind == "AWS::Lambda::Function":
            return f"{head}:lambda:{region}:{account}:function:{self._name(lid, kind, props, 'FunctionName')}"
        if kind == "AWS::Lambda::Alias":
            function = self.render(props["FunctionName"])
            base = function if function.startswith("arn:") else self._function_arn(function)
            return f"{base}:{props['Name']}"
        if kind == "AWS::Lambda::Version":
            function = self.render(props["FunctionName"])
            base = function if function.startswith("arn:") else self._function_arn(function)
            return f"{base}:1"
        if kind == "AWS::Lambda::LayerVersion":
            return f"{head}:lambda:{region}:{account}:layer:{lid.lower()}:1"
        if kind == "AWS::Logs::LogGroup":
            return f"{head}:logs:{region}:{account}:log-group:{self._name(lid, kind, props, 'LogGroupName')}:*"
        if kind == "AWS::KMS::Key":
            return f"{head}:kms:{region}:{account}:key/{self._key_id(lid)}"
        if kind == "AWS::SNS::Topic":
            return f"{head}:sns:{region}:{account}:{self._name(lid, kind, props, 'TopicName')}"
        if kind == "AWS::S3::Bucket":
            return f"{head}:s3:::{self._name(lid, kind, props, 'BucketName')}"
        if kind == "AWS::DynamoDB::Table":
            return f"{head}:dynamodb:{region}:{account}:table/{self._name(lid, kind, props, 'TableName')}"
        if kind == "AWS::IAM::Role":
            return f"{head}:iam::{account}:role/{self._name(lid, kind, props, 'RoleName')}"
        if kind == "AWS::IAM::ManagedPolicy":
            return (
                f"{head}:iam::{account}:policy/{self._name(lid, kind, props, 'ManagedPolicyName')}"
            )
        if kind == "AWS::IAM::InstanceProfile":
            return f"{head}:iam::{account}:instance-profile/{self._name(lid, kind, props, 'InstanceProfileName')}"
        if kind == "AWS::SecretsManager::Secret":
            return f"{head}:secretsmanager:{region}:{account}:secret:{self._name(lid, kind, props, 'Name')}-AbCdEf"
        if kind == "AWS::AmazonMQ::Broker":
            return f"{head}:mq:{region}:{account}:broker:{props.get('BrokerName', lid)}:b-{lid.lower()}"
        if kind == "AWS::CloudWatch::Alarm":
            return f"{head}:cloudwatch:{region}:{account}:alarm:{self._name(lid, kind, props, 'AlarmName')}"
        raise NotImplementedError(f"{self.name}: no ARN rendering for {kind} ({lid})")

    def _function_arn(self, name: str) -> str:
        return f"arn:{PARTITION}:lambda:{self.env.region}:{self.env.account}:function:{name}"


@dataclass
class Environment:
    """All stacks of one environment (their exports and SSM parameters resolve each other's
    imports and reads)."""

    region: str
    templates: Mapping[str, Mapping[str, Any]]
    account: str = ACCOUNT
    worst_case: bool = False

    @property
    def stacks(self) -> list[Stack]:
        return [Stack(name, t, self) for name, t in self.templates.items()]

    def export(self, name: str) -> Any:
        for stack in self.stacks:
            for output in stack.template.get("Outputs", {}).values():
                export = output.get("Export", {}).get("Name")
                if export is not None and stack.render(export) == name:
                    return stack.render(output["Value"])
        raise KeyError(f"no stack exports {name!r}")

    def ssm_parameter(self, name: str) -> str:
        """The value a stack of the environment writes to the SSM parameter `name`."""
        for stack in self.stacks:
            for resource in stack.resources.values():
                props = resource.get("Properties", {})
                if (
                    resource["Type"] == "AWS::SSM::Parameter"
                    and stack.render(props["Name"]) == name
                ):
                    return str(stack.render(props["Value"]))
        raise KeyError(f"no stack writes the SSM parameter {name!r}")

    def resources(self, kind: str) -> list[tuple[Stack, str, Mapping[str, Any]]]:
        """(stack, logical id, rendered properties) of every resource of type `kind`."""
        found = []
        for stack in self.stacks:
            for lid, resource in stack.resources.items():
                if resource["Type"] == kind:
                    found.append((stack, lid, stack.render(resource.get("Properties", {}))))
        return found
