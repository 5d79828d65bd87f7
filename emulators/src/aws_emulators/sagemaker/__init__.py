"""A local SageMaker: SageMaker pipelines (executed for real), the model registry and asynchronous
endpoints with their scaling, over the services' own protocols; the operations are listed in the README."""
