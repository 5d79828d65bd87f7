"""Infrastructure as code: CloudFormation templates and the command that packages and deploys them."""
