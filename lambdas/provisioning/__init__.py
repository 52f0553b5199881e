"""Deploy-time functions: CloudFormation custom resources that set up what the AWS API cannot."""
