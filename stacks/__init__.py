"""Infrastructure: the CDK stacks and constructs of oncopipe."""
