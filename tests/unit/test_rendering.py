"""The template renderer reads SSM-typed template parameters and `{{resolve:ssm:…}}` references
from the SSM parameter another stack of the environment writes, as CloudFormation does."""

from __future__ import annotations

import pytest

from stacks.rendering import Environment, Stack

WRITER = {
    "Resources": {
        "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "Sluice-dev-events"}},
        "QueueArn": {
            "Type": "AWS::SSM::Parameter",
            "Properties": {
                "Name": "/Sluice-dev/queue-arn",
                "Type": "String",
                "Value": {"Fn::GetAtt": ["Queue", "Arn"]},
            },
        },
        "Subnets": {
            "Type": "AWS::SSM::Parameter",
            "Properties": {"Name": "/Sluice-dev/subnets", "Type": "StringList", "Value": "a,b"},
        },
    }
}
READER = {
    "Parameters": {
        "Arn": {"Type": "AWS::SSM::Parameter::Value<String>", "Default": "/Sluice-dev/queue-arn"},
        "Subnets": {
            "Type": "AWS::SSM::Parameter::Value<List<String>>",
            "Default": "/Sluice-dev/subnets",
        },
        "Missing": {"Type": "AWS::SSM::Parameter::Value<String>", "Default": "/Sluice-dev/none"},
        "Plain": {"Type": "String"},
    }
}


def _reader() -> Stack:
    env = Environment(region="eu-west-1", templates={"writer": WRITER, "reader": READER})
    (reader,) = [st for st in env.stacks if st.name == "reader"]
    return reader


def test_an_ssm_typed_parameter_reads_what_the_writing_stack_puts_there():
    reader = _reader()
    arn = "arn:aws:sqs:eu-west-1:123456789012:Sluice-dev-events"
    assert reader.render({"Ref": "Arn"}) == arn
    assert reader.render({"Fn::Select": [1, {"Ref": "Subnets"}]}) == "b"
    assert reader.render("{{resolve:ssm:/Sluice-dev/queue-arn}}") == arn
    assert reader.render({"Ref": "Plain"}) == "param-Plain"


def test_a_parameter_no_stack_writes_is_refused():
    with pytest.raises(KeyError, match="/Sluice-dev/none"):
        _reader().render({"Ref": "Missing"})
