"""A local SageMaker: the subset of the SageMaker API this product calls, executing pipelines for real."""
